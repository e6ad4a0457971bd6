"""Model loading: a TransformerLens ``TransformerBridge`` (with its tokenizer) for any causal LM.

``load_model()`` with no argument gives the shipped reference model (``attnsae-stdlib-2l``, fully offline). A local
HF-format directory (``config.json`` + weights + tokenizer) loads from disk; any other string is a hub name passed on
to TransformerLens (which needs network the first time).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch

from attnsae.errors import AttnsaeError
from attnsae.reference import REFERENCE_DIR, REFERENCE_NAME

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise AttnsaeError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}") from None


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
        name_or_path: ``None`` or ``"attnsae-stdlib-2l"`` for the shipped reference model, a local HF-format
            directory, or a hub name (e.g. ``"gpt2"``), which TransformerLens downloads (needs network).
        device: torch device.
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``.

    Hook names are TransformerLens's: ``blocks.{L}.attn.hook_z`` ``[batch, pos, head, d_head]``, ``hook_v``,
    ``hook_pattern`` ``[batch, head, dest, src]``, ...
    """
    from transformer_lens.model_bridge import TransformerBridge

    target = resolve_model_path(name_or_path)
    torch_dtype = parse_dtype(dtype)
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
    path = getattr(model.cfg, "model_name", None) or ""
    if Path(str(path)).resolve() == REFERENCE_DIR.resolve():
        return REFERENCE_NAME
    return str(path)


def n_ctx(model) -> int:
    return int(model.cfg.n_ctx)
