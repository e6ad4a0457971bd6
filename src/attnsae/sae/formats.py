"""SAE files: write SAELens directories, read SAELens directories, the paper's ``.pt`` files and Hub paths.

Formats
* SAELens directory (what :func:`save_sae` writes): ``cfg.json`` + ``sae_weights.safetensors`` with
  ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` and, for JumpReLU,
  ``threshold [d_sae]`` (the threshold itself, not its log). ``cfg.json`` is a SAELens 6.x config: top-level
  ``architecture`` (SAELens names: "standard" for our "relu"), ``d_in, d_sae, dtype, device, apply_b_dec_to_input,
  normalize_activations, reshape_activations`` (+ ``k`` for topk) and ``metadata{model_name, hook_name, ...}``.
  Fields SAELens has no place for (our architecture name, layer, JumpReLU training settings, ``extra``) ride in
  ``metadata["attnsae"]``.
* The paper's release: ``{run}.pt`` (state dict with the same four tensors) next to ``{run}_cfg.json``
  (``act_size, dict_size, layer, site, model_name, l1_coeff, seed, dict_mult, enc_dtype, ...``); pass the ``.pt``.
* Hub: ``hf://org/repo/subdir`` or ``org/repo:subdir`` (subdir holds a SAELens directory or ends in ``.pt``).

Every problem with a file is one :class:`AttnsaeError` line saying what is wrong and what to do.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from attnsae.errors import AttnsaeError
from attnsae.io import atomic_dir
from attnsae.models import dtype_name
from attnsae.sae.model import SAE, SAEConfig

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
TO_SAELENS_ARCHITECTURE = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}
FROM_SAELENS_ARCHITECTURE = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu"}
# SAELens' `handle_config_defaulting` treats a cfg without metadata.sae_lens_version >= 6.0.0 as a pre-6 file and
# rebuilds `metadata` from top-level keys only (losing ours), so we declare the 6.0 cfg layout we write.
SAELENS_CFG_VERSION = "6.0.0"
_HUB_COLON = re.compile(r"^([\w.-]+/[\w.-]+):(.*)$")
_LAYER_IN_HOOK = re.compile(r"blocks\.(\d+)\.")


def _one_line(e: BaseException) -> str:
    """An exception as ``Type: message`` on one line (at most 200 characters)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


# ---------------------------------------------------------------------------------------------------- writing


def saelens_cfg(sae: SAE) -> dict[str, Any]:
    """The SAELens 6.x ``cfg.json`` dict for ``sae`` (see the module docstring)."""
    cfg = sae.cfg
    layer = cfg.layer
    if layer is None and (m := _LAYER_IN_HOOK.search(cfg.hook_name)):
        layer = int(m.group(1))
    d: dict[str, Any] = {
        "architecture": TO_SAELENS_ARCHITECTURE[cfg.architecture],
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": str(sae.device),
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        # SAELens reshapes [..., n_heads, d_head] inputs itself when this is "hook_z" (it rejects other hook names).
        "reshape_activations": "hook_z" if not cfg.hook_name or cfg.hook_name.endswith("_z") else "none",
    }
    if cfg.k is not None:  # SAELens reads k for topk and ignores top-level fields its config class lacks
        d["k"] = cfg.k
    if cfg.architecture == "topk":
        d["rescale_acts_by_decoder_norm"] = False
    d["metadata"] = {
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name or None,
        "hook_layer": layer,
        "hook_head_index": None,
        "context_size": cfg.context_size,
        "prepend_bos": cfg.prepend_bos,
        "dataset_path": cfg.extra.get("dataset_path"),
        "sae_lens_version": SAELENS_CFG_VERSION,
        "sae_lens_training_version": None,
        "attnsae": {
            "architecture": cfg.architecture,
            "layer": cfg.layer,
            "jumprelu_init_threshold": cfg.jumprelu_init_threshold,
            "jumprelu_bandwidth": cfg.jumprelu_bandwidth,
            "extra": cfg.extra,
        },
    }
    return d


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_sae(sae: SAE, path: str | os.PathLike[str]) -> Path:
    """Write ``sae`` as a SAELens directory at ``path``, atomically; returns the path.

    Files are written into a temporary sibling directory, flushed, then renamed into place, so ``path`` is
    either the old SAE or the new one, never half of one. An existing SAE directory at ``path`` is replaced.
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or (path / CFG_FILENAME).exists())):
        raise AttnsaeError(f"refusing to overwrite {path}: it is not an SAE directory; choose another path")
    try:
        cfg_text = json.dumps(saelens_cfg(sae), indent=2)
    except TypeError as e:
        raise AttnsaeError(f"cannot save SAE config as JSON ({_one_line(e)}); keep cfg.extra to plain values") from e
    tensors = {name: getattr(sae, name).detach().cpu().contiguous() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if sae.cfg.architecture == "jumprelu":
        tensors["threshold"] = sae.threshold.detach().cpu().contiguous()

    try:
        with atomic_dir(path) as tmp:
            safetensors.torch.save_file(tensors, str(tmp / WEIGHTS_FILENAME))
            (tmp / CFG_FILENAME).write_text(cfg_text)
            for f in (tmp / WEIGHTS_FILENAME, tmp / CFG_FILENAME, tmp):
                _fsync(f)
    except AttnsaeError:
        raise
    except Exception as e:
        raise AttnsaeError(f"could not save SAE to {path} ({_one_line(e)}); check the path and free disk space") from e
    return path


# ---------------------------------------------------------------------------------------------------- reading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AttnsaeError(f"could not read SAE config {path} ({_one_line(e)}); the file is missing or corrupt") from e
    if not isinstance(d, dict):
        raise AttnsaeError(f"SAE config {path} is not a JSON object; the file is corrupt")
    return d


def _sae_from_tensors(cfg: SAEConfig, tensors: dict[str, torch.Tensor], where: str, device: str) -> SAE:
    """Check names and shapes of ``tensors`` against ``cfg``, then build the SAE on ``device``."""
    expected = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_dec": (cfg.d_in,),
    }
    tensors = dict(tensors)
    if cfg.architecture == "jumprelu":
        expected["threshold"] = (cfg.d_sae,)
        if "threshold" not in tensors and "log_threshold" in tensors:  # a training checkpoint
            tensors["threshold"] = tensors.pop("log_threshold").exp()
    for name in ("scaling_factor", "finetuning_scaling_factor"):  # SAELens once saved all-ones scaling factors
        if name in tensors:
            if not torch.all(tensors[name] == 1):
                raise AttnsaeError(f"{where}: has a {name} that is not all ones; fold it into W_dec before loading")
            del tensors[name]
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise AttnsaeError(f"{where}: missing weights {', '.join(missing)} for a {cfg.architecture} SAE; re-save it")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise AttnsaeError(
            f"{where}: unexpected weights {', '.join(unexpected)} for a {cfg.architecture} SAE; "
            "check the architecture in its config"
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise AttnsaeError(
                f"{where}: {name} has shape {list(tensors[name].shape)} but the config (d_in={cfg.d_in}, "
                f"d_sae={cfg.d_sae}) needs {list(shape)}; the weights and config do not belong together"
            )
        if tensors[name].is_floating_point() and not torch.isfinite(tensors[name]).all():
            n_bad = int((~torch.isfinite(tensors[name])).sum())
            raise AttnsaeError(f"{where}: {name} holds {n_bad} non-finite value(s) (NaN or inf); the SAE is corrupt "
                               "or diverged in training, re-save or retrain it")
    sae = SAE(cfg, device=device)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(tensors[name])
        if cfg.architecture == "jumprelu":
            sae.set_threshold(tensors["threshold"])
    return sae


def _config_from_saelens(raw: dict[str, Any], where: str) -> SAEConfig:
    """Our config from a SAELens cfg.json: 6.x (``metadata{...}``) or older (hook_name etc. at top level)."""
    meta = raw.get("metadata") or raw.get("meta") or {}
    ours = meta.get("attnsae") or {}

    def get(*names: str, default: Any = None) -> Any:  # metadata first, then top level (older cfgs)
        for source in (meta, raw):
            for name in names:
                if source.get(name) is not None:
                    return source[name]
        return default

    saelens_arch = raw.get("architecture") or "standard"
    if saelens_arch == "standard" and (raw.get("activation_fn_str") or raw.get("activation_fn")) == "topk":
        saelens_arch = "topk"  # pre-6 SAELens stored TopK as a "standard" SAE with a topk activation
    if saelens_arch not in FROM_SAELENS_ARCHITECTURE:
        raise AttnsaeError(
            f"{where}: unsupported SAE architecture {saelens_arch!r}; attnsae reads "
            f"{', '.join(sorted(set(FROM_SAELENS_ARCHITECTURE) - {'relu'}))}"
        )
    k = raw.get("k")
    if k is None and isinstance(raw.get("activation_fn_kwargs"), dict):
        k = raw["activation_fn_kwargs"].get("k")
    normalize = raw.get("normalize_activations")
    if isinstance(normalize, bool):  # SAELens' old boolean meant "expected_average_only_in"
        normalize = "expected_average_only_in" if normalize else "none"
    hook_name = get("hook_name", "hook_point", default="")
    layer = ours["layer"] if "layer" in ours else get("hook_layer", "hook_point_layer")
    if layer is None and (m := _LAYER_IN_HOOK.search(hook_name)):
        layer = int(m.group(1))
    extra = dict(ours["extra"]) if "extra" in ours else {}
    if "attnsae" not in meta and get("dataset_path") is not None:
        extra["dataset_path"] = get("dataset_path")
    fields: dict[str, Any] = dict(
        d_in=raw.get("d_in"),
        d_sae=raw.get("d_sae"),
        architecture=ours.get("architecture", FROM_SAELENS_ARCHITECTURE[saelens_arch]),
        k=k,
        dtype=str(raw.get("dtype") or "float32").removeprefix("torch."),
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        normalize_activations=normalize or "none",
        hook_name=hook_name,
        model_name=get("model_name", default=""),
        context_size=get("context_size", default=128),
        prepend_bos=get("prepend_bos", default=True),
        layer=layer,
        extra=extra,
    )
    for name in ("jumprelu_init_threshold", "jumprelu_bandwidth"):
        if name in ours:
            fields[name] = ours[name]
    try:
        return SAEConfig(**fields)
    except AttnsaeError as e:
        raise AttnsaeError(f"{where}: {e}") from e


def _load_saelens_dir(directory: Path, device: str) -> SAE:
    cfg_path, weights_path = directory / CFG_FILENAME, directory / WEIGHTS_FILENAME
    for f in (cfg_path, weights_path):
        if not f.is_file():
            raise AttnsaeError(
                f"{directory} is not an SAE directory: {f.name} is missing (it needs {CFG_FILENAME} and "
                f"{WEIGHTS_FILENAME}); check the path"
            )
    cfg = _config_from_saelens(_read_json(cfg_path), str(cfg_path))
    try:
        tensors = safetensors.torch.load_file(str(weights_path), device="cpu")
    except Exception as e:
        raise AttnsaeError(
            f"could not read {weights_path} ({_one_line(e)}); the file is corrupt or truncated, "
            "re-save or re-download it"
        ) from e
    return _sae_from_tensors(cfg, tensors, str(weights_path), device)


def _config_from_paper(raw: dict[str, Any], W_enc: torch.Tensor, where: str) -> SAEConfig:
    """Our config from the paper's ``{run}_cfg.json``; sizes come from the weights, checked against the cfg."""
    if W_enc.ndim != 2:
        raise AttnsaeError(f"{where}: W_enc must be [d_in, d_sae], got shape {list(W_enc.shape)}; not an SAE file")
    d_in, d_sae = W_enc.shape
    for name, size in (("act_size", d_in), ("d_in", d_in), ("dict_size", d_sae)):
        if raw.get(name) is not None and raw[name] != size:
            raise AttnsaeError(
                f"{where}: cfg {name}={raw[name]} but W_enc is {list(W_enc.shape)}; the files do not match"
            )
    layer = raw.get("layer")
    site = raw.get("site", "z")
    if raw.get("act_name"):
        hook_name = raw["act_name"]
    elif layer is not None and site == "z":
        hook_name = f"blocks.{layer}.attn.hook_z"
    else:
        raise AttnsaeError(f"{where}: cannot tell the hook from layer={layer!r}, site={site!r}; attnsae reads site 'z'")
    if layer is None and (m := _LAYER_IN_HOOK.search(hook_name)):
        layer = int(m.group(1))
    try:
        return SAEConfig(
            d_in=int(d_in),
            d_sae=int(d_sae),
            architecture="relu",
            dtype=dtype_name(raw.get("enc_dtype") or "float32"),
            hook_name=hook_name,
            model_name=raw.get("model_name", ""),
            context_size=int(raw.get("seq_len", 128)),
            prepend_bos=True,
            layer=layer,
            extra={"paper_cfg": raw},
        )
    except (AttnsaeError, TypeError, ValueError) as e:
        raise AttnsaeError(f"{where}: {e}") from e


def _load_paper_pt(pt_path: Path, device: str) -> SAE:
    cfg_path = pt_path.with_name(pt_path.name.removesuffix(".pt") + "_cfg.json")
    if not cfg_path.is_file():
        raise AttnsaeError(f"{cfg_path.name} not found next to {pt_path}; the paper's format needs both files")
    raw = _read_json(cfg_path)
    try:
        state = torch.load(pt_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AttnsaeError(f"could not read {pt_path} ({_one_line(e)}); the file is corrupt or truncated") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AttnsaeError(f"{pt_path} is not a state dict of tensors; expected W_enc, b_enc, W_dec, b_dec")
    if "W_enc" not in state:
        raise AttnsaeError(f"{pt_path}: missing weights W_enc; expected W_enc, b_enc, W_dec, b_dec")
    cfg = _config_from_paper(raw, state["W_enc"], str(cfg_path))
    return _sae_from_tensors(cfg, state, str(pt_path), device)


def parse_hub_name(name: str) -> tuple[str, str] | None:
    """``hf://org/repo/sub/dir`` or ``org/repo:sub/dir`` -> (repo_id, subdir); None if ``name`` is neither."""
    if name.startswith("hf://"):
        parts = [p for p in name.removeprefix("hf://").split("/") if p]
        if len(parts) < 2:
            raise AttnsaeError(f"bad hub path {name!r}; write hf://org/repo/subdir")
        return "/".join(parts[:2]), "/".join(parts[2:])
    if m := _HUB_COLON.match(name):
        return m.group(1), m.group(2).strip("/")
    return None


def _download(name: str, repo_id: str, subdir: str) -> Path:
    """Fetch the files of a hub SAE into the local cache; returns the local directory or ``.pt`` path."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise AttnsaeError(f"loading {name!r} needs huggingface_hub; pip install huggingface_hub") from e
    prefix = f"{subdir}/" if subdir else ""
    if subdir.endswith(".pt"):
        files = [subdir, subdir.removesuffix(".pt") + "_cfg.json"]
    else:
        files = [prefix + CFG_FILENAME, prefix + WEIGHTS_FILENAME]
    try:
        local = [Path(hf_hub_download(repo_id=repo_id, filename=f)) for f in files]
    except Exception as e:
        raise AttnsaeError(
            f"could not download SAE {name!r} from the Hugging Face Hub ({_one_line(e)}); "
            "check the name and your network (offline?), or pass a local directory"
        ) from e
    return local[0] if subdir.endswith(".pt") else local[0].parent


def load_sae(path_or_name: str | os.PathLike[str], device: str = "cpu") -> SAE:
    """Load an SAE from a SAELens directory, the paper's ``{run}.pt`` (+ ``{run}_cfg.json``) or a hub path.

    A file inside a SAELens directory (its ``cfg.json`` or weights) stands for the directory.
    """
    path = Path(path_or_name)
    if not path.exists():
        hub = parse_hub_name(str(path_or_name))
        if hub is None:
            raise AttnsaeError(
                f"no SAE at {str(path_or_name)!r}: the path does not exist (for the Hub write hf://org/repo/subdir "
                "or org/repo:subdir)"
            )
        path = _download(str(path_or_name), *hub)
    if path.is_file() and path.suffix == ".pt":
        return _load_paper_pt(path, device)
    if path.is_file() and path.name in (CFG_FILENAME, WEIGHTS_FILENAME):
        path = path.parent
    if not path.is_dir():
        raise AttnsaeError(f"{path} is neither an SAE directory nor a paper .pt file; check the path")
    return _load_saelens_dir(path, device)


__all__ = ["save_sae", "load_sae", "saelens_cfg", "parse_hub_name", "CFG_FILENAME", "WEIGHTS_FILENAME"]
