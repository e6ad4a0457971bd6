"""The Circuit Explorer's server: a FastAPI app over one model and its attention SAEs (``attnsae explore``).

The app holds no maths: every answer is a :class:`~attnsae.serve.session.PromptSession` method's plain data
(the API is described in :mod:`attnsae.serve.schemas` and served at ``/openapi.json``). Sessions are kept per
prompt, the ``max_sessions`` most recently used, so clicks on a prompt cost no forward pass; one lock serialises
the model.

What it serves, and nothing else: ``/`` (the page), ``/static/<name>`` for the page's own assets (a fixed list read at
start-up, so no path from a request reaches the file system), ``/api/...``, ``/openapi.json``, and with
``dashboard`` the files of that dashboards folder under ``/dashboard/`` (resolved and refused outside it). Request
bodies are bounded (413 past :data:`~attnsae.serve.schemas.MAX_BODY_BYTES`, 411 without a length) and so are
prompts (characters, then tokens against the model's context); the page may talk only to this origin (a
Content-Security-Policy of ``'self'``). Only requests addressed to this machine's loopback names or the ``host`` it
was started with are served, a request waits a bounded time for the model (503 after), and every answer's size is
bounded before the work (:mod:`attnsae.serve.guards`; the bounds are in :mod:`attnsae.serve.schemas`).
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import Callable, Mapping, Sequence

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response

from attnsae import __version__
from attnsae.serve.session import PromptSession, check_prompt_length
from attnsae.errors import AttnsaeError
from attnsae.evals.interventions import Edit
from attnsae.models import model_name, n_ctx
from attnsae.sae.model import SAE
from attnsae.serve import schemas as S
from attnsae.serve.guards import ModelBusy, ModelLock, ServedHosts, answer, check_items, served_hosts

PAGE_CSP = ("default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
            "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
DASHBOARD_CSP = "default-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"
MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}


def page_assets() -> dict[str, bytes]:
    """The explorer's static files, read once: ``explorer*.html/.js/.css`` and the shared ``common.css/.js``, by
    file name."""
    folder = resources.files("attnsae.views").joinpath("assets")
    return {f.name: f.read_bytes() for f in folder.iterdir()
            if f.name in ("common.css", "common.js") or (f.name.startswith("explorer") and Path(f.name).suffix in MEDIA)}


MAX_DETAIL = 300  # characters of an error line: a message never echoes a long input back


def _bounded(text: str) -> str:
    """``text`` cut to :data:`MAX_DETAIL` characters (saying how much was left out)."""
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + f"… ({len(text) - MAX_DETAIL:,} more characters)"


def _one_line(err: RequestValidationError) -> str:
    """A validation error as one line: where, and what is wrong."""
    e = err.errors()[0]
    where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
    more = len(err.errors()) - 1
    return f"{where}: {e.get('msg', 'invalid')}" + (f" ({more} more)" if more else "")


def _limit_body(app: FastAPI) -> None:
    @app.middleware("http")
    async def limit(request: Request, call_next: Callable):
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "send a Content-Length: request bodies must state their size"}, 411)
            if not length.isdigit() or int(length) > S.MAX_BODY_BYTES:
                return JSONResponse({"detail": f"the request body is over {S.MAX_BODY_BYTES:,} bytes: send a "
                                               f"shorter prompt"}, 413)
        return await call_next(request)


def listen(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one) for uvicorn to serve on; a one-line refusal when the
    address is taken or not this machine's."""
    if not host:
        raise AttnsaeError("--host is empty; give an address of this machine (default 127.0.0.1)")
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        if "sock" in locals():
            sock.close()
        why = e.strerror or str(e)
        if e.errno == errno.EADDRINUSE:
            raise AttnsaeError(f"cannot listen on {host}:{port} ({why}): pick another --port") from None
        raise AttnsaeError(f"cannot listen on {host}:{port} ({why}): give an address of this machine as --host "
                           "(default 127.0.0.1)") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> tuple[str, Callable[[], None]]:
    """Serve ``app`` from a daemon thread (for tests and scripts): (its URL, a function that stops it)."""
    sock = listen(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the explorer server did not start")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)
        sock.close()

    return url_of(sock), stop


def dashboard_of(site: Path, by_layer: Mapping[int, SAE]) -> dict[int, dict]:
    """Each explored SAE's entry in the dashboards folder ``site`` (:func:`attnsae.views.dashboards.read_families`);
    a folder built from other SAEs, or without one of these, is refused rather than half used."""
    from attnsae.sae.checks import fingerprint
    from attnsae.views.dashboards import read_families

    try:
        entries = read_families(site)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise AttnsaeError(f"--dashboard {site}: cannot read its index.html ({type(e).__name__}); rebuild it with "
                           "`attnsae dashboard`") from None
    found = {}
    for layer, sae in sorted(by_layer.items()):
        mine = fingerprint(sae)
        match = [e for e in entries if e["layer"] == layer and e["fingerprint"] == mine]
        if not match:
            there = [e["name"] for e in entries if e["layer"] == layer]
            why = (f"its SAE of layer {layer} ({', '.join(there)}) has other weights" if there else
                   f"it has no SAE of layer {layer}")
            raise AttnsaeError(f"--dashboard {site} was not built from these SAEs: {why}; give the dashboards of "
                               f"these SAEs (`attnsae dashboard --sae ...`), or leave out --dashboard")
        found[layer] = match[0]
    return found


def create_app(model, saes: list[SAE] | Mapping[int, SAE], dashboard: str | Path | None = None,
               max_sessions: int = 4, host: str | None = None, lock_wait_s: float = S.LOCK_WAIT_S,
               labels: str | Path | None = None, card_corpus: str = "stdlib",
               card_tokens: int | None = None) -> FastAPI:
    """The explorer app for ``model`` and its ``saes``; ``dashboard``: a folder written by ``attnsae dashboard``
    for the same SAEs (family labels, links to feature pages, and the feature cards' data); ``host``: the address it
    is served on, whose name requests may carry besides ``127.0.0.1``, ``localhost`` and ``[::1]``; ``lock_wait_s``:
    how long a request waits for the model before a 503 (``app.state.model_lock`` is the
    :class:`~attnsae.serve.guards.ModelLock`); ``labels``: the labels file (None: labels live in memory only;
    ``attnsae explore`` gives :func:`attnsae.views.labels.default_labels_path`); without ``dashboard``, feature cards
    scan ``card_tokens`` tokens of ``card_corpus`` (:mod:`attnsae.serve.cards`)."""
    from attnsae.evals.splice import saes_by_layer

    by_layer = saes_by_layer(model, saes)
    if not by_layer:
        raise AttnsaeError("give at least one SAE to explore")
    site = Path(dashboard).resolve() if dashboard is not None else None
    families: dict[int, dict] = {}
    if site is not None:
        if not (site / "index.html").is_file():
            raise AttnsaeError(f"{dashboard} is not a dashboards folder (no index.html): give the folder "
                               "`attnsae dashboard` or the quickstart wrote")
        families = dashboard_of(site, by_layer)
    assets = page_assets()
    sessions: OrderedDict[tuple[str, ...], PromptSession] = OrderedDict()
    lock = ModelLock(lock_wait_s)
    bos = by_layer[max(by_layer)].cfg.prepend_bos

    app = FastAPI(title="attnsae Circuit Explorer", version=__version__, docs_url=None, redoc_url=None,
                  description="Any prompt through attention-output SAEs: features, DFA, recursive DFA, effects, "
                  "attention, interventions. Positions count BOS as 0.")  # /docs and /redoc would load a CDN
    _limit_body(app)
    app.add_middleware(ServedHosts, hosts=served_hosts(host))  # added last: the outermost check
    app.state.model_lock = lock

    @app.exception_handler(AttnsaeError)
    async def refused(request: Request, exc: AttnsaeError) -> JSONResponse:
        return JSONResponse({"detail": _bounded(str(exc))}, 400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _bounded(_one_line(exc))}, 422)

    @app.exception_handler(ModelBusy)
    async def busy(request: Request, exc: ModelBusy) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 503, headers={"Retry-After": str(S.RETRY_AFTER_S)})

    def session(prompt: str) -> PromptSession:
        """The prompt's session, made on first use (call with ``lock`` held)."""
        key = (prompt,)
        if key in sessions:
            sessions.move_to_end(key)
        else:
            sessions[key] = PromptSession(model, by_layer, prompt)
            while len(sessions) > max_sessions:
                sessions.popitem(last=False)
        return sessions[key]

    def n_tokens(prompt: str) -> int:
        """The prompt's token count (BOS included) before any work: its session's, or the tokenizer's."""
        s = sessions.get((prompt,))
        return s.S if s is not None else check_prompt_length(model, prompt, bos)

    def n_layers(layers: Sequence[int] | None) -> int:
        return len(by_layer) if layers is None else len(set(layers))

    def family(layer: int, feature: int) -> str | None:
        f = families.get(layer)
        return f["families"][feature] if f else None

    # ------------------------------------------------------------------------------------------- pages

    def static(name: str, csp: str = PAGE_CSP) -> Response:
        if name not in assets:
            return JSONResponse({"detail": f"no such file: {name}"}, 404)
        return Response(assets[name], media_type=MEDIA[Path(name).suffix],
                        headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
                                 "Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return static("explorer.html")

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        return static(name)

    @app.get("/dashboard/{path:path}", include_in_schema=False)
    def dashboard_file(path: str) -> Response:
        if site is None:
            return JSONResponse({"detail": "no dashboards: start the explorer with --dashboard DIR"}, 404)
        try:
            target = (site / (path or "index.html")).resolve()
        except (ValueError, OSError):  # a NUL byte, a name the file system refuses
            return JSONResponse({"detail": f"no such dashboard file: {_bounded(repr(path))}"}, 404)
        if not target.is_relative_to(site) or not target.is_file():
            return JSONResponse({"detail": f"no such dashboard file: {path}"}, 404)
        return FileResponse(target, headers={"Content-Security-Policy": DASHBOARD_CSP,
                                             "X-Content-Type-Options": "nosniff"})

    # ------------------------------------------------------------------------------------------- API

    def post(path: str):
        return app.post(path, response_model=dict, responses=S.API_ERRORS)

    @app.get("/api/info", responses=S.INFO_ERRORS)
    def info() -> dict:
        return {"model": model_name(model), "n_layers": int(model.cfg.n_layers), "n_heads": int(model.cfg.n_heads),
                "d_head": int(model.cfg.d_head), "n_ctx": n_ctx(model), "max_prompt_chars": S.MAX_PROMPT_CHARS,
                "saes": [{"layer": l, "d_sae": s.cfg.d_sae, "hook_name": s.cfg.hook_name,
                          "architecture": s.cfg.architecture, "name": f"L{l}",
                          "dashboard": families[l]["name"] if l in families else None}
                         for l, s in sorted(by_layer.items())],
                "dashboard": site is not None, "version": __version__}

    def ask(prompt: str, question: Callable[[PromptSession], dict], lower: str,
            count: Callable[[], None] | None = None) -> Response:
        """``question`` put to the prompt's session with the model held (after ``count``, the size check that needs
        no session); the answer written once the model is free, refused past MAX_RESPONSE_BYTES saying what to
        ``lower``."""
        with lock.held():
            if count is not None:
                count()
            out = question(session(prompt))
        return answer(out, lower)

    @post("/api/features")
    def features(body: S.FeaturesBody) -> Response:
        def count() -> None:
            n, L = n_tokens(body.prompt), n_layers(body.layers)
            cells = n * max(L, 1)
            check_items(cells * body.k, f"{n} tokens x {L} layers x k={body.k}",
                        f"lower k to {S.MAX_ANSWER_ITEMS // cells}" if cells <= S.MAX_ANSWER_ITEMS else
                        f"ask for at most {max(1, S.MAX_ANSWER_ITEMS // n)} layers, or shorten the prompt")

        def listed(s: PromptSession) -> dict:
            out = s.features(body.order, body.k, body.layers)
            for row in out["rows"]:
                for e in row:
                    e["family"] = family(e["layer"], e["feature"])
            return out

        return ask(body.prompt, listed, "lower k or ask for fewer layers", count)

    @post("/api/dfa")
    def dfa(body: S.FeatureAt) -> Response:
        def count() -> None:
            n, H = n_tokens(body.prompt), int(model.cfg.n_heads)
            check_items(n * H, f"{n} tokens x {H} heads", "shorten the prompt")

        return ask(body.prompt, lambda s: s.dfa(body.layer, body.feature, body.position), "shorten the prompt", count)

    @post("/api/rdfa")
    def rdfa(body: S.RDFABody) -> Response:
        n = body.node
        return ask(body.prompt, lambda s: s.rdfa(n.kind, n.layer, n.position, n.feature, n.coef, n.head, n.source,
                                                 body.top_k, body.threshold), "lower top_k")

    @post("/api/effect")
    def effect(body: S.EffectBody) -> Response:
        return ask(body.prompt, lambda s: s.effect(body.layer, body.feature, body.position, body.k), "lower k")

    @post("/api/attention")
    def attention(body: S.AttentionBody) -> Response:
        return ask(body.prompt, lambda s: s.attention(body.layer, body.head, body.dest), "shorten the prompt")

    @post("/api/intervene")
    def intervene(body: S.InterveneBody) -> Response:
        edits = [Edit(**e) for e in body.edit_list()]
        return ask(body.prompt, lambda s: s.intervene(edits, body.at, body.logit_tokens, body.k, body.other),
                   "lower k")

    @post("/api/generate")
    def generate(body: S.GenerateBody) -> Response:
        edits = [Edit(**e.model_dump()) for e in body.edits]
        return ask(body.prompt, lambda s: s.generate(edits, body.n, body.other, S.MAX_GENERATE_S), "lower n")

    @post("/api/graph")
    def graph(body: S.GraphBody) -> Response:
        return ask(body.prompt, lambda s: s.graph(body.target, body.mlp, body.node_threshold, body.edge_threshold),
                   "lower node_threshold and edge_threshold to prune more")

    @post("/api/qk")
    def qk(body: S.EdgeBody) -> Response:
        return ask(body.prompt, lambda s: s.edge(body.target, body.mlp, body.source, body.dest), "shorten the prompt")

    @post("/api/compare")
    def compare(body: S.CompareBody) -> Response:
        def count() -> None:
            n, L = min(n_tokens(body.prompt), n_tokens(body.other)), len(by_layer)
            check_items(n * L * body.k, f"{n} positions x {L} layers x k={body.k}",
                        f"lower k to {max(1, S.MAX_ANSWER_ITEMS // (n * L))} or shorten the prompts")

        return ask(body.prompt, lambda s: s.compare(session(body.other), body.k), "lower k", count)

    # ------------------------------------------------------------------------------------------- feature cards

    from attnsae.sae.checks import fingerprint
    from attnsae.serve.cards import CARD_TOKENS, FeatureCards
    from attnsae.views.labels import Labels

    cards = FeatureCards(model, by_layer, lock, Labels(labels, {l: fingerprint(s) for l, s in by_layer.items()}),
                         site, families, card_corpus, card_tokens or CARD_TOKENS)

    @post("/api/card")
    def card(body: S.CardBody) -> Response:
        return answer(cards.card(body.layer, body.feature), "ask for another feature")

    @post("/api/search")
    def search(body: S.SearchBody) -> Response:
        acts = None
        if body.prompt is not None:
            with lock.held():
                acts = session(body.prompt).acts
        return answer(cards.search(body.query, body.layers, body.k, acts), "lower k")

    @app.get("/api/labels", responses=S.INFO_ERRORS)
    def labels_list() -> Response:
        return answer(cards.all_labels(), "remove labels")

    @post("/api/label")
    def label(body: S.LabelBody) -> Response:
        return answer(cards.set_label(body.layer, body.feature, body.label), "shorten the label")

    return app
