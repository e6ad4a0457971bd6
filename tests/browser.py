"""Headless Chromium for tests, driven by Playwright for Python. It launches the system's Chromium (Debian's
``chromium``) through ``executable_path``; Playwright never downloads a browser here.

    with Browser() as browser:                # in a test: the ``browser`` fixture of tests/conftest.py
        page = browser.open("file:///tmp/site/index.html")          # or "http://127.0.0.1:8000/"
        page.wait_for("document.querySelector('#list .row')")
        assert page.evaluate("1 + 1") == 2
        page.fill("#search", "L1/123")
        page.press("#search", "Enter")
        assert not page.errors() and all(u.startswith("file://") for u in page.requests)

A :class:`Page` is a Playwright page (``page.page``; every Playwright ``Page`` method works on the wrapper too) that
also keeps what the page logged and every URL it requested, from before its first request.

``require_browser()`` finds the executable, or skips the calling test when there is none (or no ``playwright``
package), unless ``ATTNSAE_REQUIRE_BROWSER=1`` (as in CI), where either is a failure.
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import pytest

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import sync_playwright
except ImportError:  # require_browser() skips the test (or fails it under ATTNSAE_REQUIRE_BROWSER=1)
    sync_playwright = None

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage
    from playwright.sync_api import Page as PlaywrightPage

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

# Nothing that phones home: no updaters, sync, safe browsing, metrics, QUIC or first-run UI (Playwright adds
# --headless and its pipe). No --disable-features: Chromium keeps only the last one given, and it would replace
# Playwright's own list (OptimizationHints, MediaRouter, NetworkTimeServiceQuerying, ...).
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--disable-background-networking", "--disable-component-update", "--disable-default-apps", "--disable-sync",
    "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-breakpad",
    "--disable-client-side-phishing-detection", "--disable-domain-reliability", "--metrics-recording-only",
    "--safebrowsing-disable-auto-update", "--password-store=basic", "--use-mock-keychain", "--mute-audio",
]


def find_browser() -> str | None:
    """Path of a Chromium/Chrome executable: ``$ATTNSAE_BROWSER``, else the first of BROWSER_NAMES on PATH."""
    explicit = os.environ.get("ATTNSAE_BROWSER")
    if explicit:
        return explicit
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_browser() -> str:
    """The browser executable; skip the test without one or without playwright, or fail when
    ``ATTNSAE_REQUIRE_BROWSER=1``."""
    found = find_browser()
    if found and sync_playwright is not None:
        return found
    if not found:
        message = f"no headless browser found (looked for {', '.join(BROWSER_NAMES)} on PATH, and $ATTNSAE_BROWSER)"
    else:
        message = "the playwright package is not installed (pip install -e '.[dev]')"
    if os.environ.get("ATTNSAE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{message}; ATTNSAE_REQUIRE_BROWSER=1 requires both Debian's chromium and the dev extra",
                    pytrace=False)
    pytest.skip(message)


class Page:
    """A Playwright page that records everything it logged and requested; other attributes are the page's own."""

    def __init__(self, page: PlaywrightPage):
        self.page = page
        self.console: list[dict] = []      # {"source": "console" | "exception", "level", "text"}, in order
        self.requests: list[str] = []      # every request URL, in order
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.console.append(
            {"source": "exception", "level": "error", "text": error.stack or error.message}))
        page.on("request", lambda request: self.requests.append(request.url))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.page, name)

    def _on_console(self, message: ConsoleMessage) -> None:
        text = f"{message.text} {message.location.get('url', '')}".strip()
        self.console.append({"source": "console", "level": message.type, "text": text})

    def errors(self) -> list[dict]:
        """Console errors (failed loads included), uncaught exceptions and warnings."""
        return [m for m in self.console if m["level"] in ("error", "assert", "warning")]

    def wait_for(self, condition: str, timeout: float = 10) -> Any:
        """Wait until a JavaScript expression is truthy; return its value (true for a DOM node), or raise
        TimeoutError after ``timeout`` s."""
        try:
            # a function, not an expression: Playwright evaluates a bare expression with eval, which a page's
            # Content-Security-Policy (the explorer's) forbids
            handle = self.page.wait_for_function(
                f"() => {{ const v = ({condition}); return v instanceof Node ? true : v; }}", timeout=timeout * 1000)
        except PlaywrightTimeoutError as e:
            raise TimeoutError(f"timed out after {timeout}s waiting for {condition!r}; console: {self.console}") from e
        return handle.json_value()


class Browser:
    """Headless Chromium launched by Playwright; a context manager that always cleans up."""

    def __init__(self, executable: str | None = None, width: int = 1400, height: int = 1000):
        self.executable = executable or find_browser()
        if not self.executable:
            raise FileNotFoundError("no Chromium/Chrome executable found")
        self.width, self.height = width, height

    def __enter__(self) -> Browser:
        with ExitStack() as stack:
            playwright = stack.enter_context(sync_playwright())
            self._browser = stack.enter_context(
                playwright.chromium.launch(executable_path=self.executable, args=FLAGS))
            self._cleanup = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cleanup.close()

    def open(self, url: str, timeout: float = 30, stand_ins: dict[str, str] | None = None) -> Page:
        """A new page in a context of its own (fresh storage, fixed viewport), loaded from ``url`` (file:// or
        http://); ``timeout`` s is its default for navigation, waits and actions. With ``stand_ins`` (file name ->
        script text), a request to another origin is answered with the script of its file name, an empty script
        for any other ``.js``, and refused otherwise (for third-party pages that load libraries from CDNs)."""
        context = self._browser.new_context(viewport={"width": self.width, "height": self.height})
        context.set_default_timeout(timeout * 1000)
        if stand_ins is not None:
            origin = url.split("/", 3)[:3]

            def answer(route) -> None:
                target = route.request.url
                if target.split("/", 3)[:3] == origin:
                    route.continue_()
                    return
                name = target.split("?")[0].rsplit("/", 1)[-1]
                if name in stand_ins or name.endswith(".js"):
                    route.fulfill(body=stand_ins.get(name, ""), content_type="text/javascript")
                else:
                    route.abort()

            context.route("**/*", answer)
        page = Page(context.new_page())
        page.goto(url, wait_until="load")
        return page

    def close_pages(self) -> None:
        """Close every page opened so far, with its context."""
        for context in self._browser.contexts:
            context.close()


def select_chip(page, chip) -> None:
    """Click a feature chip and wait until the page shows that chip's feature as the selected one."""
    layer, feature = chip.get_attribute("data-layer"), chip.get_attribute("data-feature")
    chip.click()
    page.wait_for_selector(f'#feature-name[data-layer="{layer}"][data-feature="{feature}"]')
