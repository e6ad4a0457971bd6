"""A tiny Chrome DevTools Protocol client for tests: headless Chromium over ``--remote-debugging-pipe``.

The browser reads commands from its fd 3 and writes replies and events to its fd 4, each message one JSON object
followed by a NUL byte. One reader thread routes replies (by ``id``) to the waiting caller and events (by
``sessionId``) to the :class:`Page` they belong to.

    with Browser() as browser:
        page = browser.open("file:///tmp/site/index.html")
        page.wait_for("document.querySelector('#list .row')")
        assert page.evaluate("1 + 1") == 2
        assert not page.errors() and all(u.startswith("file://") for u in page.requests)

``require_browser()`` finds the executable, or skips the calling test when there is none, unless
``ATTNSAE_REQUIRE_BROWSER=1`` (as in CI), where a missing browser is a failure.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

# Headless, and nothing that phones home: no updaters, sync, safe browsing, translation, metrics or first-run UI.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-default-apps", "--disable-sync",
    "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-breakpad",
    "--disable-client-side-phishing-detection", "--disable-domain-reliability", "--metrics-recording-only",
    "--safebrowsing-disable-auto-update", "--password-store=basic", "--use-mock-keychain", "--mute-audio",
    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,"
    "AutofillServerCommunication,CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions",
    "--remote-debugging-pipe",
]


class BrowserError(RuntimeError):
    """A DevTools command failed, the page threw, or the browser went away."""


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
    """The browser executable; skip the test without one, or fail when ``ATTNSAE_REQUIRE_BROWSER=1``."""
    found = find_browser()
    if found:
        return found
    message = f"no headless browser found (looked for {', '.join(BROWSER_NAMES)} on PATH, and $ATTNSAE_BROWSER)"
    if os.environ.get("ATTNSAE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{message}; ATTNSAE_REQUIRE_BROWSER=1 requires one: install Debian's chromium", pytrace=False)
    pytest.skip(message)


class Page:
    """One tab, attached in flat mode: everything it logged and requested, plus evaluate/wait/screenshot."""

    def __init__(self, browser: Browser, target_id: str, session_id: str):
        self.browser, self.target_id, self.session_id = browser, target_id, session_id
        self.console: list[dict] = []      # {"source", "level", "text"} from console.*, exceptions and the log
        self.requests: list[str] = []      # every request URL, in order
        self.events: list[dict] = []       # every raw event of this session

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        return self.browser.send(method, params, session_id=self.session_id, timeout=timeout)

    # -- events --------------------------------------------------------------------------------------------------
    def _on_event(self, message: dict) -> None:
        method, params = message["method"], message.get("params", {})
        self.events.append(message)
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append({"source": "console", "level": params.get("type", "log"), "text": text})
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.console.append({"source": "exception", "level": "error", "text": text})
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append({"source": "log", "level": entry.get("level", "info"),
                                 "text": f"{entry.get('text', '')} {entry.get('url', '')}".strip()})
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])

    def errors(self) -> list[dict]:
        """Console errors, uncaught exceptions and error log entries (warnings count too)."""
        return [m for m in self.console if m["level"] in ("error", "assert", "warning")]

    # -- actions -------------------------------------------------------------------------------------------------
    def navigate(self, url: str, timeout: float = 30) -> None:
        """Load ``url`` and wait for its load event."""
        seen = len(self.events)
        reply = self.send("Page.navigate", {"url": url}, timeout=timeout)
        if reply.get("errorText"):
            raise BrowserError(f"navigation to {url} failed: {reply['errorText']}")
        self.wait_for_event("Page.loadEventFired", timeout=timeout, after=seen)

    def wait_for_event(self, method: str, timeout: float = 30, after: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.events[after:]:
                if message["method"] == method:
                    return message
            time.sleep(0.02)
        raise BrowserError(f"no {method} within {timeout}s")

    def evaluate(self, expression: str, timeout: float = 30) -> Any:
        """Value of a JavaScript expression in the page (promises awaited, result returned by value)."""
        reply = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                               "returnByValue": True, "userGesture": True}, timeout=timeout)
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text", "")
            raise BrowserError(f"evaluating {expression!r} threw: {text}")
        return reply["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 10, interval: float = 0.05) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value (true for a DOM node), or raise after
        ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(f"(v => v instanceof Node ? true : v)({condition})")
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout}s waiting for {condition!r}; console: {self.console}")
            time.sleep(interval)

    def type(self, text: str) -> None:
        """Type into the focused element, as the keyboard would."""
        self.send("Input.insertText", {"text": text})

    def press(self, key: str = "Enter") -> None:
        """Press and release one named key (Enter, Escape, Tab) on the focused element."""
        codes = {"Enter": (13, "\r"), "Escape": (27, ""), "Tab": (9, "\t")}
        code, text = codes[key]
        common = {"key": key, "code": key, "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code}
        self.send("Input.dispatchKeyEvent", {"type": "keyDown", "text": text, **common})
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", **common})

    def screenshot(self, path: str | os.PathLike, full_page: bool = False) -> Path:
        """Save a PNG of the viewport (or of the whole page) to ``path``."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = self.send("Page.captureScreenshot", params)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path


class Browser:
    """A headless Chromium process driven over the DevTools pipe; a context manager that always cleans up."""

    def __init__(self, executable: str | None = None, width: int = 1400, height: int = 1000):
        self.executable = executable or find_browser()
        if not self.executable:
            raise BrowserError("no Chromium/Chrome executable found")
        self.width, self.height = width, height
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._cond = threading.Condition()
        self._pages: dict[str, Page] = {}
        self._closed = False
        self._pipe_closed = False

    def __enter__(self) -> Browser:
        self._profile = tempfile.mkdtemp(prefix="attnsae-chromium-")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # The browser wants the pipe on fds 3 and 4 exactly: copy both ends above them (close-on-exec), then
        # dup2 them into place in the child. dup2 clears close-on-exec, so only 3 and 4 reach the browser.
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def place_pipe() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self._stderr = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(
                [self.executable, *FLAGS, f"--user-data-dir={self._profile}",
                 f"--window-size={self.width},{self.height}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
                close_fds=False, preexec_fn=place_pipe)
        except OSError:
            for fd in (to_browser_w, from_browser_r):
                os.close(fd)
            self._stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        finally:
            os.close(child_in)
            os.close(child_out)
        self._writer = os.fdopen(to_browser_w, "wb", buffering=0)
        self._reader = os.fdopen(from_browser_r, "rb", buffering=0)
        self._thread = threading.Thread(target=self._read_loop, daemon=True)
        self._thread.start()
        try:
            self.send("Browser.getVersion", timeout=60)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.send("Browser.close", timeout=5)
            except BrowserError:
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self._writer.close()
            self._thread.join(timeout=5)
            self._reader.close()
            self._stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    # -- protocol ------------------------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                data = self._reader.read(1 << 16)
            except (OSError, ValueError):
                data = b""
            if not data:
                break
            buffer += data
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._cond:
                        self._replies[message["id"]] = message
                        self._cond.notify_all()
                elif message.get("sessionId") in self._pages:
                    self._pages[message["sessionId"]]._on_event(message)
        with self._cond:
            self._pipe_closed = True
            self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session_id: str | None = None,
             timeout: float = 30) -> dict:
        """Send one command and wait for its reply's ``result`` (raises BrowserError on an error reply)."""
        with self._cond:
            self._next_id += 1
            message_id = self._next_id
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        try:
            self._writer.write(json.dumps(message).encode() + b"\0")
        except (OSError, ValueError) as e:
            raise BrowserError(f"browser pipe closed while sending {method}: {e}") from e
        deadline = time.monotonic() + timeout
        with self._cond:
            while message_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self._pipe_closed:
                    raise BrowserError(f"no reply to {method} within {timeout}s; browser stderr:\n{self._log()}")
                self._cond.wait(left)
            reply = self._replies.pop(message_id)
        if "error" in reply:
            raise BrowserError(f"{method} failed: {reply['error']}")
        return reply.get("result", {})

    def _log(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def open(self, url: str, timeout: float = 30) -> Page:
        """A new tab with console, log and network recording on, a fixed viewport, navigated to ``url``."""
        target_id = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session_id = self.send("Target.attachToTarget", {"targetId": target_id, "flatten": True})["sessionId"]
        page = self._pages[session_id] = Page(self, target_id, session_id)
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        page.navigate(url, timeout=timeout)
        return page
