"""Activations: harvest ``z_cat`` (``blocks.{L}.attn.hook_z`` with heads concatenated) and serve shuffled batches.

* :func:`harvest_z` runs one forward pass that stops after the last layer needed and returns
  ``{layer: z_cat [tokens, n_heads*d_head]}`` (attention through SDPA where the bridge allows it:
  :mod:`attnsae.models.fast_attention`).
* :class:`ModelActivations` streams batches ``{layer: [batch, d_in]}`` straight from a model. Its shuffle buffer is a
  *chunk shuffle*: ``buffer_size`` activations (from consecutive, randomly ordered contexts) are harvested, permuted
  and served, then the next chunk. Batch ``i`` is a pure function of ``(seed, i)``, so a resumed run sees exactly
  the batches an uninterrupted one would (it recomputes only the current chunk).
* :class:`CachedActivations` serves the same kind of batches from an on-disk cache (sharded ``.npy`` files read
  with memory mapping, plus ``manifest.json``) written by :func:`write_cache`, so a sweep runs the model once.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from attnsae.errors import AttnsaeError, short
from attnsae.models.fast_attention import fused_attention
from attnsae.io import atomic_dir, atomic_write_json, read_json

ACT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def hook_z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def check_layers(model, layers: list[int]) -> list[int]:
    n = model.cfg.n_layers
    bad = [l for l in layers if not 0 <= l < n]
    if bad or not layers:
        raise AttnsaeError(f"unknown layer {bad[0] if bad else '(none given)'}: the model has layers 0..{n - 1}")
    return sorted(set(layers))


def d_in_of(model) -> int:
    """SAE input width for hook_z: ``n_heads * d_head``."""
    return int(model.cfg.n_heads * model.cfg.d_head)


@torch.no_grad()
def harvest_z(model, tokens: torch.Tensor, layers: list[int], drop_bos: bool = False) -> dict[int, torch.Tensor]:
    """z_cat of several layers from one forward pass that stops at ``max(layers)``'s hook_z.

    tokens: ``int64 [batch, pos]``. Returns ``{layer: float [batch * pos', n_heads * d_head]}`` with
    ``pos' = pos - 1`` when ``drop_bos`` (position 0 removed), else ``pos``; rows are in (batch, pos) order.
    """
    out: dict[int, torch.Tensor] = {}
    d_in = d_in_of(model)
    last = max(layers)

    def saver(layer: int):
        def save(z: torch.Tensor, hook) -> torch.Tensor:
            zz = z[:, 1:] if drop_bos else z  # [batch, pos', head, d_head] (or already [batch, pos', d_in])
            out[layer] = zz.reshape(-1, d_in).detach()
            if layer == last:
                raise StopForward  # nothing after the last hook_z is needed: skip W_O, MLPs and the unembedding
            return z

        return save

    fwd_hooks = [(hook_z_name(l), saver(l)) for l in layers]
    try:
        with fused_attention(model):  # only hook_z is read: SDPA wherever nothing else reads the attention
            model.run_with_hooks(tokens.to(_model_device(model)), fwd_hooks=fwd_hooks)
    except StopForward:
        pass
    return out


class StopForward(Exception):
    """Raised inside the last needed hook to end a forward pass early (caught by whoever ran the forward)."""


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@dataclass
class StreamConfig:
    """How activations are served. ``buffer_size`` is in activations (tokens), per layer."""

    layers: list[int]
    batch_size: int = 4096
    buffer_size: int = 262_144
    drop_bos: bool = True
    act_dtype: str = "float32"
    model_batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.act_dtype not in ACT_DTYPES:
            raise AttnsaeError(f"unknown activation dtype {self.act_dtype!r}: use one of {', '.join(ACT_DTYPES)}")
        if self.batch_size < 1 or self.buffer_size < self.batch_size:
            raise AttnsaeError(
                f"buffer_size ({self.buffer_size}) must be at least batch_size ({self.batch_size}) and both >= 1"
            )


class ActivationSource(Protocol):
    """Anything that gives shuffled batches ``{layer: [batch, d_in]}`` by global batch index."""

    layers: list[int]
    d_in: int

    def batches(self, start: int = 0) -> Iterator[dict[int, torch.Tensor]]: ...


def context_order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The order contexts are read in during ``epoch``: a permutation of ``range(n_rows)``."""
    return np.random.default_rng([seed, 7, epoch]).permutation(n_rows)


class ModelActivations:
    """Shuffled z_cat batches streamed from a model over token contexts ``[n_rows, context_size]``.

    Chunk ``c`` holds the contexts ``order[c*K:(c+1)*K]`` of its epoch (``K = buffer_size // tokens per
    context``); its activations are permuted with ``rng(seed, c)`` and cut into ``batch_size`` batches (a remainder
    smaller than a batch is dropped). Contexts cycle through epochs, each in a new order.

    With ``comm`` (data-parallel training, :class:`attnsae.training.distributed.Comm`), replica ``d`` of ``D``
    harvests only the model batches ``j`` of a chunk with ``j % D == d``, and ``comm.gather_rows`` brings the others'
    back: every replica then holds the chunk one process would have harvested, so the batches do not depend on ``D``.
    """

    def __init__(self, model, tokens: np.ndarray, cfg: StreamConfig, progress: bool = False, comm=None) -> None:
        self.model, self.cfg, self.comm = model, cfg, comm
        self.layers = check_layers(model, cfg.layers)
        self.d_in = d_in_of(model)
        self.tokens = tokens
        per_ctx = tokens.shape[1] - int(cfg.drop_bos)
        if per_ctx < 1:
            raise AttnsaeError("contexts of length 1 with drop_bos leave no activations; use a longer context")
        self.ctx_per_chunk = max(1, min(len(tokens), cfg.buffer_size // per_ctx))
        self.batches_per_chunk = self.ctx_per_chunk * per_ctx // cfg.batch_size
        if self.batches_per_chunk < 1:
            raise AttnsaeError(
                f"a buffer of {self.ctx_per_chunk} contexts holds fewer than batch_size={cfg.batch_size} "
                "activations; raise buffer_size or lower batch_size"
            )
        self.chunks_per_epoch = max(1, len(tokens) // self.ctx_per_chunk)
        self.progress = progress

    def _chunk(self, c: int) -> dict[int, torch.Tensor]:
        epoch, i = divmod(c, self.chunks_per_epoch)
        rows = context_order(len(self.tokens), self.cfg.seed, epoch)[i * self.ctx_per_chunk:(i + 1) * self.ctx_per_chunk]
        parts: dict[int, list[torch.Tensor]] = {l: [] for l in self.layers}
        mb = self.cfg.model_batch_size
        dtype = ACT_DTYPES[self.cfg.act_dtype]
        starts = range(0, len(rows), mb)  # model batch j holds rows[starts[j]:starts[j] + mb]
        d, D = (self.comm.data_rank, self.comm.data_world) if self.comm else (0, 1)
        for j in range(d, len(starts), D):
            batch = torch.from_numpy(self.tokens[np.sort(rows[starts[j]:starts[j] + mb])])
            for l, z in harvest_z(self.model, batch, self.layers, self.cfg.drop_bos).items():
                parts[l].append(z.to("cpu", dtype))
        if D == 1:
            acts = {l: torch.cat(p) for l, p in parts.items()}
        else:  # put every replica's model batches back in the order one process harvests them
            n_act = [len(rows[s:s + mb]) * (self.tokens.shape[1] - int(self.cfg.drop_bos)) for s in starts]
            mine = [n_act[r::D] for r in range(D)]
            acts = {}
            for l, p in parts.items():
                local = torch.cat(p) if p else torch.empty(0, self.d_in, dtype=dtype)
                shares = [share.split(sizes) for share, sizes in
                          zip(self.comm.gather_rows(local, [sum(m) for m in mine]), mine)]
                acts[l] = torch.cat([shares[j % D][j // D] for j in range(len(starts))])
        perm = torch.from_numpy(np.random.default_rng([self.cfg.seed, 13, c]).permutation(len(acts[self.layers[0]])))
        return {l: a[perm] for l, a in acts.items()}

    def batches(self, start: int = 0) -> Iterator[dict[int, torch.Tensor]]:
        """Batches ``{layer: float32 [batch_size, d_in]}`` from global batch index ``start`` on (endless)."""
        B = self.cfg.batch_size
        c, offset = divmod(start, self.batches_per_chunk)
        while True:
            chunk = self._chunk(c)
            for b in range(offset, self.batches_per_chunk):
                yield {l: a[b * B:(b + 1) * B].float() for l, a in chunk.items()}
            c, offset = c + 1, 0


# ----------------------------------------------------------------------------------------------- on-disk cache


@dataclass
class CacheManifest:
    """What an activation cache holds: enough to refuse a cache that does not fit a request."""

    model_name: str
    layers: list[int]
    d_in: int
    context_size: int
    prepend_bos: bool
    drop_bos: bool
    dtype: str
    corpus: str
    split: str
    n_tokens: int = 0
    shards: list[int] = field(default_factory=list)  # tokens per shard
    version: int = 1

    def check(self, model_name: str | None = None, layers: list[int] | None = None, d_in: int | None = None) -> None:
        if model_name is not None and model_name != self.model_name:
            raise AttnsaeError(f"activation cache is for model {short(self.model_name)}, not {short(model_name)}; "
                               "rebuild it for this model")
        if layers is not None and not set(layers) <= set(self.layers):
            missing = sorted(set(layers) - set(self.layers))
            raise AttnsaeError(f"activation cache has layers {short(self.layers)}, not {short(missing)}; rebuild it "
                               "with them")
        if d_in is not None and d_in != self.d_in:
            raise AttnsaeError(f"activation cache has d_in {self.d_in}, but the SAE expects d_in {d_in}")


def _shard_path(root: Path, layer: int, i: int) -> Path:
    return root / f"layer{layer}" / f"shard{i:05d}.npy"


def write_cache(
    model,
    tokens: np.ndarray,
    out_dir: str | os.PathLike,
    layers: list[int],
    *,
    model_name: str,
    corpus: str,
    split: str,
    prepend_bos: bool = True,
    drop_bos: bool = True,
    dtype: str = "float32",
    shard_tokens: int = 1 << 20,
    model_batch_size: int = 32,
    progress: bool = True,
) -> CacheManifest:
    """Harvest z_cat for every context of ``tokens [n_rows, context_size]`` into a sharded on-disk cache.

    The cache is written into a temporary sibling folder and renamed into place when complete (an interrupted run
    leaves nothing that blocks the rerun); ``out_dir`` must be new or empty. Activations are stored in corpus order
    (shuffling happens when reading). bf16 is stored as the upper half of float32 (``uint16``).
    """
    layers = check_layers(model, layers)
    if dtype not in ACT_DTYPES:
        raise AttnsaeError(f"unknown activation dtype {dtype!r}: use one of {', '.join(ACT_DTYPES)}")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise AttnsaeError(f"{root} is a file; give a new folder for the cache")
    if root.is_dir() and any(root.iterdir()):
        raise AttnsaeError(f"{root} exists and is not empty; remove it or choose another cache folder")
    man = CacheManifest(model_name, layers, d_in_of(model), tokens.shape[1], prepend_bos, drop_bos, dtype, corpus,
                        split)
    with atomic_dir(root, owner="cache") as tmp:
        for l in layers:
            (tmp / f"layer{l}").mkdir()
        pending: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
        n_pending = 0

        def flush() -> None:
            nonlocal n_pending
            i = len(man.shards)
            for l in layers:
                np.save(_shard_path(tmp, l, i), _to_storage(torch.cat(pending[l]), dtype))
                pending[l].clear()
            man.shards.append(n_pending)
            man.n_tokens += n_pending
            n_pending = 0

        for j in tqdm(range(0, len(tokens), model_batch_size), desc="caching activations", disable=not progress):
            batch = torch.from_numpy(tokens[j:j + model_batch_size])
            for l, z in harvest_z(model, batch, layers, drop_bos).items():
                pending[l].append(z.cpu())
            n_pending += len(z)
            if n_pending >= shard_tokens:
                flush()
        if n_pending:
            flush()
        atomic_write_json(asdict(man), tmp / "manifest.json")
    return man


def _to_storage(a: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return a.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return a.float().numpy()


def _from_storage(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype == "bfloat16":
        return t.view(torch.int16).view(torch.bfloat16).float()
    return t


MANIFEST_VERSIONS = (1,)  # the manifest layouts this reader knows
MANIFEST_MAX_BYTES = 16 << 20  # a manifest lists a few numbers per shard: far below this
STORAGE_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(np.uint16)}  # manifest dtype -> .npy dtype


def _check_manifest(raw, mp: Path) -> CacheManifest:
    """``raw`` (the parsed ``manifest.json`` at ``mp``) as a :class:`CacheManifest`, every field checked by type and
    value; one AttnsaeError naming the file and the field otherwise."""

    def bad(what: str) -> AttnsaeError:
        return AttnsaeError(f"corrupt activation cache manifest {mp}: {what}; rebuild the cache")

    if not isinstance(raw, dict):
        raise bad(f"expected a JSON object, got {type(raw).__name__}")
    names = [f.name for f in fields(CacheManifest)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise bad(f"unknown field {short(unknown[0])}")
    missing = [n for n in names if n not in raw]  # write_cache writes every field
    if missing:
        raise bad(f"no {missing[0]}")

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def want(name: str, ok: bool, expected: str) -> None:
        if not ok:
            raise bad(f"{name} must be {expected}, got {short(raw[name])}")

    for name in ("model_name", "corpus", "split", "dtype"):
        want(name, isinstance(raw[name], str), "a string")
    want("dtype", raw["dtype"] in ACT_DTYPES, f"one of {', '.join(ACT_DTYPES)}")
    for name in ("prepend_bos", "drop_bos"):
        want(name, isinstance(raw[name], bool), "true or false")
    for name in ("d_in", "context_size"):
        want(name, is_int(raw[name]) and raw[name] >= 1, "a positive integer")
    layers = raw["layers"]
    want("layers", isinstance(layers, list) and len(layers) > 0 and all(is_int(l) and l >= 0 for l in layers)
         and len(set(layers)) == len(layers), "a list of distinct layer numbers (integers >= 0)")
    shards = raw["shards"]
    want("shards", isinstance(shards, list) and all(is_int(n) and n >= 1 for n in shards),
         "a list of positive token counts")
    want("n_tokens", is_int(raw["n_tokens"]) and raw["n_tokens"] == sum(shards),
         f"the sum of the shards' tokens ({sum(shards)})")
    want("version", is_int(raw["version"]) and raw["version"] in MANIFEST_VERSIONS,
         f"a version this attnsae reads ({', '.join(map(str, MANIFEST_VERSIONS))})")
    return CacheManifest(**raw)


def _open_shard(root: Path, man: CacheManifest, layer: int, i: int) -> np.ndarray:
    """Shard ``i`` of ``layer`` memory-mapped (nothing read but its header), checked against the manifest: shape
    ``(tokens of shard i, d_in)`` and the storage dtype of the cache's dtype."""
    p = _shard_path(root, layer, i)
    if not p.is_file():
        raise AttnsaeError(f"activation cache {root} is missing shard {p} (its manifest lists {_n_shards(man)} per "
                           "layer); rebuild the cache")
    try:
        m = np.load(p, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise AttnsaeError(f"corrupt or missing activation shard {p}: {' '.join(str(e).split())[:200]}; "
                           "rebuild the cache") from None
    if not isinstance(m, np.ndarray):  # an .npz archive under a .npy name
        getattr(m, "close", lambda: None)()
        raise AttnsaeError(f"activation shard {p} is not a .npy array; rebuild the cache")
    expected = (man.shards[i], man.d_in)
    if m.shape != expected:
        raise AttnsaeError(f"activation shard {p} has shape {m.shape}, expected {expected} (the manifest's tokens of "
                           "that shard, d_in); rebuild the cache")
    want = STORAGE_DTYPES[man.dtype]
    if m.dtype != want:
        raise AttnsaeError(f"activation shard {p} holds {m.dtype} values, but a cache of dtype {man.dtype} stores "
                           f"{want}; rebuild the cache")
    return m


def _n_shards(man: CacheManifest) -> str:
    return f"{len(man.shards)} shard{'' if len(man.shards) == 1 else 's'}"


def check_cache(root: Path, man: CacheManifest) -> None:
    """Every shard of every layer of the cache at ``root`` against its manifest: none missing, none extra, each of
    the right shape and dtype (headers only: quick however large the cache)."""
    for l in man.layers:
        folder = root / f"layer{l}"
        for i in range(len(man.shards)):
            _open_shard(root, man, l, i)
        listed = {_shard_path(root, l, i).name for i in range(len(man.shards))}
        try:
            extra = sorted(f.name for f in (folder.iterdir() if folder.is_dir() else ()) if f.name not in listed)
        except OSError as e:
            raise AttnsaeError(f"cannot list activation cache folder {folder}: {e.strerror}; check its permissions") \
                from None
        if extra:
            raise AttnsaeError(f"activation cache {root} has {folder / extra[0]}, which its manifest does not list "
                               f"(it lists {_n_shards(man)} per layer); rebuild the cache")


def read_manifest(path: str | os.PathLike) -> CacheManifest:
    """The manifest of the activation cache at ``path``, checked field by field, and every shard checked against
    it (:func:`check_cache`): a cache that does not hold what its manifest says fails here, before any training."""
    root = Path(path)
    mp = root / "manifest.json"
    if not mp.exists():
        raise AttnsaeError(f"{root} is not a complete activation cache (no manifest.json); rebuild it")
    try:
        raw = read_json(mp, MANIFEST_MAX_BYTES)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise AttnsaeError(f"corrupt activation cache manifest {mp}: {' '.join(str(e).split())[:200]}; rebuild the "
                           "cache") from None
    man = _check_manifest(raw, mp)
    check_cache(root, man)
    return man


class CachedActivations:
    """Shuffled batches ``{layer: [batch, d_in]}`` from an on-disk cache; batch ``i`` is a function of (seed, i).

    Each epoch reads every cached token once in the order ``rng(seed, epoch).permutation(n_tokens)``; a remainder
    smaller than a batch is dropped. Shards are memory-mapped, so memory stays bounded by the page cache.
    """

    def __init__(self, path: str | os.PathLike, layers: list[int] | None = None, batch_size: int = 4096,
                 seed: int = 0, model_name: str | None = None, d_in: int | None = None) -> None:
        self.root = Path(path)
        self.manifest = read_manifest(self.root)
        self.manifest.check(model_name, layers, d_in)
        self.layers = sorted(layers) if layers else list(self.manifest.layers)
        self.d_in = self.manifest.d_in
        self.batch_size, self.seed = batch_size, seed
        if self.manifest.n_tokens < batch_size:
            raise AttnsaeError(f"activation cache holds {self.manifest.n_tokens} tokens, fewer than one batch "
                               f"({batch_size})")
        self.bounds = np.cumsum([0] + self.manifest.shards)
        self.maps = {l: [_open_shard(self.root, self.manifest, l, i) for i in range(len(self.manifest.shards))]
                     for l in self.layers}
        self.batches_per_epoch = self.manifest.n_tokens // batch_size

    def gather(self, layer: int, idx: np.ndarray) -> torch.Tensor:
        """Rows ``idx`` (global token indices) of one layer: float32 ``[len(idx), d_in]``."""
        order = np.argsort(idx, kind="stable")
        sidx = idx[order]
        shard = np.searchsorted(self.bounds, sidx, side="right") - 1
        out = np.empty((len(idx), self.d_in), dtype=self.maps[layer][0].dtype)
        for s in np.unique(shard):
            sel = shard == s
            out[order[sel]] = self.maps[layer][s][sidx[sel] - self.bounds[s]]
        return _from_storage(out, self.manifest.dtype)

    def batches(self, start: int = 0) -> Iterator[dict[int, torch.Tensor]]:
        B = self.batch_size
        epoch, b = divmod(start, self.batches_per_epoch)
        while True:
            perm = np.random.default_rng([self.seed, 11, epoch]).permutation(self.manifest.n_tokens)
            for i in range(b, self.batches_per_epoch):
                idx = perm[i * B:(i + 1) * B]
                yield {l: self.gather(l, idx) for l in self.layers}
            epoch, b = epoch + 1, 0

