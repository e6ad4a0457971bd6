"""The explorer server's guards: which ``Host`` it answers, how long a request waits for the model, and how large an
answer may be (the bounds themselves are stated in :mod:`attnsae.serve.schemas`).

* :class:`ServedHosts`: an ASGI middleware making the check of Starlette's ``TrustedHostMiddleware`` (the host
  exactly, any port) and refusing as the API refuses. A request whose ``Host`` header names anything but
  ``127.0.0.1``, ``localhost``, ``[::1]`` (any port) or the ``--host`` the server was started with gets a 400 with
  one line naming the hosts served: a web page on another site cannot reach the explorer by pointing its own domain
  name at 127.0.0.1 (DNS rebinding).
* :class:`ModelLock`: the one lock over the model; a request waits for it at most
  :data:`~attnsae.serve.schemas.LOCK_WAIT_S`, then is refused with 503 and ``Retry-After`` (:class:`ModelBusy`).
* :func:`check_items` refuses a request whose answer would list more than
  :data:`~attnsae.serve.schemas.MAX_ANSWER_ITEMS` entries, before the work; :func:`answer` renders an answer and
  refuses it past :data:`~attnsae.serve.schemas.MAX_RESPONSE_BYTES` (the backstop: no API answer is larger).
"""

from __future__ import annotations

import json
import re
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from attnsae.errors import AttnsaeError
from attnsae.serve import schemas as S

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_HOST = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?")


def host_name(header: str | None) -> str | None:
    """The host a ``Host`` header names, lower case and without brackets or port (``"[::1]:8000"`` -> ``"::1"``);
    None for a missing or malformed header."""
    m = _HOST.fullmatch(header or "")
    return m["host"].strip("[]").lower() if m else None


def served_hosts(extra: str | None = None) -> tuple[str, ...]:
    """The hosts the explorer answers: this machine's loopback names and ``extra`` (the ``--host`` it was started
    with), each once."""
    return tuple(dict.fromkeys([*LOCAL_HOSTS, *([extra.strip("[]").lower()] if extra else [])]))


class ServedHosts:
    """ASGI middleware: requests addressed to any host outside ``hosts`` get 400 ``{"detail": one line}``."""

    def __init__(self, app: ASGIApp, hosts: tuple[str, ...]) -> None:
        self.app, self.hosts = app, hosts
        names = ", ".join(f"[{h}]" if ":" in h else h for h in hosts)
        self.refusal = (f"this explorer serves requests addressed to {names} (any port), not to {{}} (a guard against "
                        f"DNS rebinding): open it at http://127.0.0.1:PORT/, or start it with --host set to the "
                        f"address you use")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            header = Headers(scope=scope).get("host")
            if host_name(header) not in self.hosts:
                said = repr(header[:100]) if header is not None else "a request without a Host header"
                await JSONResponse({"detail": self.refusal.format(said)}, 400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ModelBusy(Exception):
    """The model stayed busy with another request for the whole wait (answered 503 with ``Retry-After``)."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(f"the model is busy with another request (waited {waited_s:g} s): try again in a moment")


class ModelLock:
    """One lock over the model: :meth:`held` waits at most ``wait_s`` for it, else raises :class:`ModelBusy`.
    ``longest_s`` is the longest time any request has held it (for measuring the worst case)."""

    def __init__(self, wait_s: float = S.LOCK_WAIT_S) -> None:
        self.lock = threading.Lock()
        self.wait_s = wait_s
        self.longest_s = 0.0

    @contextmanager
    def held(self) -> Iterator[None]:
        if not self.lock.acquire(timeout=self.wait_s):
            raise ModelBusy(self.wait_s)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.longest_s = max(self.longest_s, time.perf_counter() - start)
            self.lock.release()


def check_items(items: int, what: str, lower: str) -> None:
    """Refuse, before the work, an answer that would list ``items`` entries (``what``: how they were counted) past
    :data:`~attnsae.serve.schemas.MAX_ANSWER_ITEMS`; ``lower``: what the user can lower."""
    if items > S.MAX_ANSWER_ITEMS:
        raise AttnsaeError(f"this answer would list up to {items:,} entries ({what}), over the limit of "
                           f"{S.MAX_ANSWER_ITEMS:,}: {lower}")


def answer(data: dict, lower: str) -> Response:
    """``data`` as a JSON response, refused (400 saying what to ``lower``) past
    :data:`~attnsae.serve.schemas.MAX_RESPONSE_BYTES`."""
    body = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    if len(body) > S.MAX_RESPONSE_BYTES:
        raise AttnsaeError(f"the answer is {len(body) / 1e6:.1f} MB, over the limit of "
                           f"{S.MAX_RESPONSE_BYTES / 1e6:g} MB: {lower}")
    return Response(body, media_type="application/json")
