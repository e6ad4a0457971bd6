"""SAE files: write SAELens directories, read SAELens directories, the paper's ``.pt`` files and Hub paths.

Formats
* SAELens directory (what :func:`save_sae` writes): ``cfg.json`` + ``sae_weights.safetensors`` with
  ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` and, for JumpReLU,
  ``threshold [d_sae]`` (the threshold itself, not its log). ``cfg.json`` is a SAELens 6.x config: top-level
  ``architecture`` (SAELens names: "standard" for our "relu"), ``d_in, d_sae, dtype, device, apply_b_dec_to_input,
  normalize_activations, reshape_activations`` (+ ``k`` for topk) and ``metadata{model_name, hook_name, ...}``.
  Fields SAELens has no place for (our architecture name, layer, JumpReLU training settings, ``extra``) ride in
  ``metadata["attnsae"]``. BatchTopK and Matryoshka are written as SAELens writes them after training
  (``TrainingSAE.save_inference_model``): a "jumprelu" SAE whose ``threshold`` is ``topk_threshold`` for every latent
  (``BatchTopKTrainingSAE.process_state_dict_for_saving_inference``), with ``metadata.training_architecture``
  ("batchtopk", "matryoshka_batchtopk") and its ``training_architecture_details`` (k, widths); attnsae reads them
  back as what they were, the float64 ``topk_threshold`` included (``metadata.attnsae``).
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

from attnsae.errors import AttnsaeError, short
from attnsae.io import atomic_dir, current_umask, read_json
from attnsae.sae import BATCH_TOPK
from attnsae.sae.model import SAE, SAEConfig

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
TO_SAELENS_ARCHITECTURE = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu",
                           "matryoshka": "jumprelu"}  # SAELens' inference architecture
SAELENS_TRAINING_ARCHITECTURE = {"batchtopk": "batchtopk", "matryoshka": "matryoshka_batchtopk"}
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
    if cfg.architecture == "topk":  # SAELens reads k for topk (BatchTopK's is in training_architecture_details)
        d["k"] = cfg.k
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
    if cfg.architecture in BATCH_TOPK:
        batch = {"k": cfg.k, "topk_threshold_lr": cfg.topk_threshold_lr}
        if cfg.matryoshka_widths is not None:
            batch["matryoshka_widths"] = cfg.matryoshka_widths
        d["metadata"]["training_architecture"] = SAELENS_TRAINING_ARCHITECTURE[cfg.architecture]
        d["metadata"]["training_architecture_details"] = {**batch, "rescale_acts_by_decoder_norm": False}
        d["metadata"]["attnsae"].update(batch, topk_threshold=float(sae.topk_threshold))
    return d


def _utf8(path: Path) -> bool:
    """Whether ``path`` is valid UTF-8 (a name read from a non-UTF-8 file system holds surrogate escapes)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    if sae.cfg.architecture in ("jumprelu", *BATCH_TOPK):
        tensors["threshold"] = sae.threshold.detach().cpu().contiguous()

    try:
        with atomic_dir(path) as tmp:
            weights = tmp / WEIGHTS_FILENAME
            if _utf8(weights):
                safetensors.torch.save_file(tensors, str(weights))
            else:  # safetensors' file functions refuse a path that is not UTF-8
                weights.write_bytes(safetensors.torch.save(tensors))
            os.chmod(weights, 0o666 & ~current_umask())  # save_file makes it 0600, unlike cfg.json beside it
            (tmp / CFG_FILENAME).write_text(cfg_text)
            for f in (tmp / WEIGHTS_FILENAME, tmp / CFG_FILENAME, tmp):
                _fsync(f)
    except AttnsaeError:
        raise
    except Exception as e:
        raise AttnsaeError(f"could not save SAE to {path} ({_one_line(e)}); check the path and free disk space") from e
    return path


# ---------------------------------------------------------------------------------------------------- reading


CFG_MAX_BYTES = 16 << 20  # an SAE config is a few kB; a bigger file is no SAE config (and is never read whole)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = read_json(path, CFG_MAX_BYTES)
    except (OSError, UnicodeDecodeError, RecursionError, ValueError) as e:
        raise AttnsaeError(f"could not read SAE config {path} ({_one_line(e)}); the file is missing or corrupt") from e
    if not isinstance(d, dict):
        raise AttnsaeError(f"SAE config {path} is not a JSON object; the file is corrupt")
    return d


def _sae_from_tensors(cfg: SAEConfig, tensors: dict[str, torch.Tensor], where: str, device: str,
                      topk_threshold: float | None = None) -> SAE:
    """Check names and shapes of ``tensors`` against ``cfg``, then build the SAE on ``device``; a BatchTopK SAE
    takes the float64 ``topk_threshold`` when it rounds to the file's threshold, else the file's."""
    expected = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_dec": (cfg.d_in,),
    }
    tensors = dict(tensors)
    for name in (*expected, "threshold", "log_threshold"):
        t = tensors.get(name)
        if t is not None and not t.is_floating_point():
            raise AttnsaeError(f"{where}: {name} is {str(t.dtype).removeprefix('torch.')}, but SAE weights are "
                               "floating point numbers; the file holds something else, re-save the SAE")
    if cfg.architecture in ("jumprelu", *BATCH_TOPK):
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
        if cfg.architecture in BATCH_TOPK:
            t = tensors["threshold"]
            if bool((t != t[0]).any()) or float(t[0]) < 0:
                raise AttnsaeError(f"{where}: a {cfg.architecture} SAE has one threshold >= 0 for every latent, but "
                                   f"these are {float(t.min()):g}..{float(t.max()):g}; remove metadata.attnsae from "
                                   "cfg.json to read it as a jumprelu SAE")
            for value in (topk_threshold, float(t[0])):
                if value is not None:
                    sae.topk_threshold.fill_(value)
                    if torch.equal(sae.threshold, t.to(sae.device, sae.dtype)):
                        break
    return sae


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# what each kind of cfg field must be: (test, words for the error)
_STR = (lambda v: isinstance(v, str), "a string")
_BOOL = (lambda v: isinstance(v, bool), "a JSON boolean (true or false)")
_SIZE = (lambda v: _is_int(v) and v >= 1, "a positive integer")
_LAYER = (lambda v: v is None or (_is_int(v) and v >= 0), "a layer number (an integer >= 0) or null")
_OBJECT = (lambda v: isinstance(v, dict), "a JSON object")
_POSITIVE = (lambda v: _is_number(v) and v > 0, "a number > 0")
_NUMBER = (lambda v: _is_number(v) and v == v, "a number")
_WIDTHS = (lambda v: isinstance(v, list) and all(_is_int(w) for w in v), "a list of integers")
_ANY = (lambda v: True, "")


def _check_field(where: str, field: str, value: Any, kind: tuple) -> Any:
    """``value`` (the cfg's ``field``) if it is of ``kind``; else one line naming the file, the field, the type and
    the start of the value."""
    ok, expected = kind
    if not ok(value):
        raise AttnsaeError(f"{where}: {field} must be {expected}, got {short(value)}; fix the file or re-save the SAE")
    return value


def _config_from_saelens(raw: dict[str, Any], where: str) -> tuple[SAEConfig, float | None]:
    """Our config from a SAELens cfg.json: 6.x (``metadata{...}``) or older (hook_name etc. at top level), and a
    BatchTopK SAE's float64 ``topk_threshold`` (None if not given). Every field read is checked by type first (a
    string "false" is no boolean)."""
    meta_key = "metadata" if raw.get("metadata") is not None else "meta"
    meta = raw.get(meta_key) or {}
    _check_field(where, meta_key, meta, _OBJECT)
    ours = meta.get("attnsae") or {}
    _check_field(where, f"{meta_key}.attnsae", ours, _OBJECT)

    def get(kind: tuple, *names: str, default: Any = None) -> Any:  # metadata first, then top level (older cfgs)
        for prefix, source in ((f"{meta_key}.", meta), ("", raw)):
            for name in names:
                if source.get(name) is not None:
                    return _check_field(where, prefix + name, source[name], kind)
        return default

    def top(kind: tuple, name: str, default: Any = None) -> Any:  # a top-level field; null: the default
        return default if raw.get(name) is None else _check_field(where, name, raw[name], kind)

    saelens_arch = top(_STR, "architecture", "standard")
    if saelens_arch == "standard" and (raw.get("activation_fn_str") or raw.get("activation_fn")) == "topk":
        saelens_arch = "topk"  # pre-6 SAELens stored TopK as a "standard" SAE with a topk activation
    if saelens_arch not in FROM_SAELENS_ARCHITECTURE:
        raise AttnsaeError(
            f"{where}: unsupported SAE architecture {short(saelens_arch)}; attnsae reads "
            f"{', '.join(sorted(set(FROM_SAELENS_ARCHITECTURE) - {'relu'}))}"
        )
    k = top(_SIZE, "k")
    kwargs = raw.get("activation_fn_kwargs")
    if k is None and isinstance(kwargs, dict) and kwargs.get("k") is not None:
        k = _check_field(where, "activation_fn_kwargs.k", kwargs["k"], _SIZE)
    batch = {}  # a BatchTopK SAE's own settings (metadata.attnsae)
    for name, kind in (("k", _SIZE), ("matryoshka_widths", _WIDTHS), ("topk_threshold_lr", _POSITIVE),
                       ("topk_threshold", _NUMBER)):
        if ours.get(name) is not None:
            batch[name] = _check_field(where, f"{meta_key}.attnsae.{name}", ours[name], kind)
    k = batch.pop("k", k)
    topk_threshold = batch.pop("topk_threshold", None)
    normalize = top((lambda v: isinstance(v, (str, bool)), "a string (or a JSON boolean)"), "normalize_activations")
    if isinstance(normalize, bool):  # SAELens' old boolean meant "expected_average_only_in"
        normalize = "expected_average_only_in" if normalize else "none"
    hook_name = get(_STR, "hook_name", "hook_point", default="")
    head = get(_LAYER, "hook_head_index", "hook_point_head_index")
    if head is not None:  # an SAE of one head's z: its d_in is d_head, not the heads concatenated
        raise AttnsaeError(f"{where}: hook_head_index {head}: an SAE of one head's output; attnsae reads SAEs of all "
                           "heads concatenated (hook_head_index null)")
    if "layer" in ours:
        layer = _check_field(where, f"{meta_key}.attnsae.layer", ours["layer"], _LAYER)
    else:
        layer = get(_LAYER, "hook_layer", "hook_point_layer")
    if layer is None and (m := _LAYER_IN_HOOK.search(hook_name)):
        layer = int(m.group(1))
    extra = dict(_check_field(where, f"{meta_key}.attnsae.extra", ours["extra"], _OBJECT)) if "extra" in ours else {}
    if "attnsae" not in meta and (dataset_path := get(_ANY, "dataset_path")) is not None:
        extra["dataset_path"] = dataset_path
    architecture = FROM_SAELENS_ARCHITECTURE[saelens_arch]
    if "architecture" in ours:
        architecture = _check_field(where, f"{meta_key}.attnsae.architecture", ours["architecture"], _STR)
    apply_b_dec = raw.get("apply_b_dec_to_input", True)  # null: false, as SAELens reads it (a falsy value)
    if apply_b_dec is not None:
        _check_field(where, "apply_b_dec_to_input", apply_b_dec, _BOOL)
    if "d_in" not in raw or "d_sae" not in raw:
        raise AttnsaeError(f"{where}: no {'d_in' if 'd_in' not in raw else 'd_sae'}; the SAE config is incomplete, "
                           "re-save the SAE")
    fields: dict[str, Any] = dict(
        d_in=_check_field(where, "d_in", raw["d_in"], _SIZE),
        d_sae=_check_field(where, "d_sae", raw["d_sae"], _SIZE),
        architecture=architecture,
        k=k,
        dtype=(top(_STR, "dtype") or "float32").removeprefix("torch."),
        apply_b_dec_to_input=bool(apply_b_dec),
        normalize_activations=normalize or "none",
        hook_name=hook_name,
        model_name=get(_STR, "model_name", default=""),
        context_size=get(_SIZE, "context_size", default=128),
        prepend_bos=get(_BOOL, "prepend_bos", default=True),
        layer=layer,
        extra=extra,
        **batch,
    )
    for name in ("jumprelu_init_threshold", "jumprelu_bandwidth"):
        if name in ours:
            fields[name] = _check_field(where, f"{meta_key}.attnsae.{name}", ours[name], _POSITIVE)
    try:
        return SAEConfig(**fields), topk_threshold
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
    cfg, topk_threshold = _config_from_saelens(_read_json(cfg_path), str(cfg_path))
    try:
        if _utf8(weights_path):
            tensors = safetensors.torch.load_file(str(weights_path), device="cpu")
        else:  # safetensors' file functions refuse a path that is not UTF-8
            tensors = safetensors.torch.load(weights_path.read_bytes())
    except Exception as e:
        raise AttnsaeError(
            f"could not read {weights_path} ({_one_line(e)}); the file is corrupt or truncated, "
            "re-save or re-download it"
        ) from e
    return _sae_from_tensors(cfg, tensors, str(weights_path), device, topk_threshold)


def _config_from_paper(raw: dict[str, Any], W_enc: torch.Tensor, where: str) -> SAEConfig:
    """Our config from the paper's ``{run}_cfg.json``; sizes come from the weights, checked against the cfg."""
    if W_enc.ndim != 2:
        raise AttnsaeError(f"{where}: W_enc must be [d_in, d_sae], got shape {list(W_enc.shape)}; not an SAE file")
    d_in, d_sae = W_enc.shape

    def field(name: str, kind: tuple, default: Any = None) -> Any:  # null: the default
        return default if raw.get(name) is None else _check_field(where, name, raw[name], kind)

    for name, size in (("act_size", d_in), ("d_in", d_in), ("dict_size", d_sae)):
        if field(name, _SIZE) not in (None, size):
            raise AttnsaeError(
                f"{where}: cfg {name}={raw[name]} but W_enc is {list(W_enc.shape)}; the files do not match"
            )
    layer = field("layer", _LAYER)
    site = field("site", _STR, "z")
    if act_name := field("act_name", _STR):
        hook_name = act_name
    elif layer is not None and site == "z":
        hook_name = f"blocks.{layer}.attn.hook_z"
    else:
        raise AttnsaeError(f"{where}: cannot tell the hook from layer={layer!r}, site={short(site)}; attnsae reads "
                           "site 'z'")
    if layer is None and (m := _LAYER_IN_HOOK.search(hook_name)):
        layer = int(m.group(1))
    fields: dict[str, Any] = dict(
        d_in=int(d_in),
        d_sae=int(d_sae),
        architecture="relu",
        dtype=field("enc_dtype", _STR) or "float32",  # "fp32" and the like: SAEConfig reads them
        hook_name=hook_name,
        model_name=field("model_name", _STR, ""),
        context_size=field("seq_len", _SIZE, 128),
        prepend_bos=True,
        layer=layer,
        extra={"paper_cfg": raw},
    )
    try:
        return SAEConfig(**fields)
    except AttnsaeError as e:
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
