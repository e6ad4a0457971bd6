"""One flat, validated config for a training run: model, data, SAEs and loop, every setting named once.

``TrainConfig`` is what ``attnsae train`` flags, a YAML/JSON ``--config`` file and Python callers fill; each setting
travels from there straight to the function that uses it. :meth:`TrainConfig.validate` checks every field once at
the boundary: types (YAML numbers such as ``1e-3``, which YAML 1.1 reads as strings, are coerced; a scalar where a
list belongs becomes a one-element list), ranges and choices, and the relations between fields.

SAEs: the product of ``layers`` and the architecture's sparsity list (``l1_coeffs`` for relu, ``ks`` for topk,
batchtopk and matryoshka, ``l0_coeffs`` for jumprelu) and ``d_sae``; with ``per_layer`` the lists pair up with
``layers`` instead (each has one value, or one per layer), so the paper's table — its own L1 coefficient and
dictionary size per layer — is one run (``configs/paper_gpt2_small.yaml``). The read of a ``--config`` file:
:mod:`attnsae.training.config_file`.
"""

from __future__ import annotations

import math
import os
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from attnsae.errors import AttnsaeError, short
from attnsae.sae import ARCHITECTURES, K_ARCHITECTURES
from attnsae.training.config_file import read_config_file  # noqa: F401  (the settings of a --config file)

if typing.TYPE_CHECKING:
    from attnsae.sae.model import SAEConfig

SPARSITY_FIELD = {"relu": "l1_coeffs", "jumprelu": "l0_coeffs", **{a: "ks" for a in K_ARCHITECTURES}}  # its list
SPEC_KEY = {"relu": "l1_coeff", "jumprelu": "l0_coeff", **{a: "k" for a in K_ARCHITECTURES}}
# settings that steer the process, not the result: they may change between a run and its --resume (a run folder
# may also move: `out` is where, not what)
RUN_CONTROL = ("resume", "overwrite", "progress", "threads", "device", "wandb_project", "out", "module_parallel")
# the settings `attnsae cache` uses: which activations of which text (a run that reads the cache takes these from it)
CACHE_FIELDS = ("model", "device", "source", "split", "text_field", "context_size", "prepend_bos", "drop_bos",
                "act_dtype", "model_batch_size", "max_corpus_tokens", "layers", "threads", "progress")
# settings added since runs were first saved: a checkpoint that lacks one was made with its default
ADDED_SETTINGS = {"aux_k": None, "jumprelu_bandwidth": 1e-3, "jumprelu_init_threshold": 1e-3,
                  "apply_b_dec_to_input": True, "matryoshka_widths": None, "topk_threshold_lr": 0.01}
# seeds reach torch.manual_seed, torch.Generator().manual_seed (both < 2**64) and numpy's SeedSequence (any int >= 0);
# 0..2**63 - 1 is what all of them accept and what fits an int64 wherever a seed is stored
SEED_MAX = 2**63 - 1


def _rule(help: str, **kw: Any) -> dict[str, Any]:
    """A field's metadata: ``help``, its one line in ``attnsae train --help`` (the one place a setting is described),
    and its validation rule: ``ge``/``gt``/``le``/``lt`` bounds (each list item too), ``choices``, ``n`` items."""
    return {"help": help, "rule": kw}


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one): the most ``threads`` useful."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_seed(value: int, name: str = "seed") -> int:
    """``value`` if it is a seed every generator attnsae seeds accepts (0..:data:`SEED_MAX`); else one clear error."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise AttnsaeError(f"{name} must be an integer in 0..{SEED_MAX} (2**63 - 1, the largest seed torch and numpy "
                           f"both take), got {short(value)}")
    return value


@dataclass
class SAESpec:
    """One SAE of a run: the layer it reads and its own hyper-parameters (:meth:`sae_config` makes its SAE)."""

    layer: int
    architecture: str = "relu"
    d_sae: int = 2048
    l1_coeff: float = 2.0  # relu
    k: int | None = None  # topk, batchtopk, matryoshka
    l0_coeff: float = 1.0  # jumprelu
    aux_coeff: float = 1 / 32  # topk, batchtopk, matryoshka: AuxK loss weight
    aux_k: int | None = None  # topk, batchtopk, matryoshka: latents used by AuxK (default d_in // 2)
    apply_b_dec_to_input: bool = True
    jumprelu_bandwidth: float = 1e-3
    jumprelu_init_threshold: float = 1e-3
    matryoshka_widths: list[int] | None = None  # matryoshka: the nested prefixes, the last d_sae
    topk_threshold_lr: float = 0.01  # batchtopk, matryoshka

    @property
    def name(self) -> str:
        hp = {"relu": f"l1_{self.l1_coeff:g}", "jumprelu": f"l0_{self.l0_coeff:g}"}.get(self.architecture, f"k{self.k}")
        return f"layer{self.layer}_{self.architecture}_{self.d_sae}_{hp}"

    def sae_config(self, d_in: int, **meta: Any) -> SAEConfig:
        """The :class:`SAEConfig` of this SAE on ``blocks.{layer}.attn.hook_z``; ``meta``: provenance (model_name,
        context_size, ...)."""
        from attnsae.sae.model import SAEConfig  # torch: imported when SAEs are made, not when settings are read

        return SAEConfig(d_in=d_in, d_sae=self.d_sae, architecture=self.architecture, k=self.k, layer=self.layer,
                         hook_name=f"blocks.{self.layer}.attn.hook_z", apply_b_dec_to_input=self.apply_b_dec_to_input,
                         jumprelu_bandwidth=self.jumprelu_bandwidth,
                         jumprelu_init_threshold=self.jumprelu_init_threshold,
                         matryoshka_widths=self.matryoshka_widths, topk_threshold_lr=self.topk_threshold_lr, **meta)


@dataclass
class TrainConfig:
    """A whole training run (defaults: the paper's recipe, PAPER_NOTES §2, on the reference model). Each field's
    ``help`` is its line in ``attnsae train --help``."""

    # model and data
    model: str | None = field(default=None, metadata=_rule(
        "model: a name `attnsae models` lists, a local HF folder, a .gguf file or a hub name (default: the shipped "
        "reference model)"))
    device: str = field(default="cpu", metadata=_rule("torch device of the model and the SAEs: cpu, cuda, cuda:1"))
    source: str = field(default="stdlib", metadata=_rule(
        "training text: stdlib, english, a .txt/.jsonl/.parquet file, a folder of them, or a hub dataset"))
    split: str = field(default="train", metadata=_rule("split of the source: train or validation"))
    text_field: str = field(default="text", metadata=_rule(
        "the text column of a .jsonl or .parquet file or a hub dataset"))
    context_size: int = field(default=128, metadata=_rule("tokens per context, BOS included", ge=2))
    prepend_bos: bool = field(default=True, metadata=_rule("start each context with the BOS token"))
    drop_bos: bool = field(default=True, metadata=_rule("leave position 0 (BOS) out of the training activations"))
    buffer_size: int = field(default=262_144, metadata=_rule(
        "activations held and shuffled per layer (rows; at least --batch-size)", ge=1))
    act_dtype: str = field(default="float32", metadata=_rule(
        "dtype the activations are held in (the shuffle buffer, the cache)", choices=("float32", "bfloat16")))
    model_batch_size: int = field(default=32, metadata=_rule("contexts per model forward pass when harvesting", ge=1))
    cache: str | None = field(default=None, metadata=_rule(
        "read the activations from this `attnsae cache` folder instead of running the model"))
    max_corpus_tokens: int | None = field(default=None, metadata=_rule(
        "read at most this many tokens of the source (default: all of it)", ge=1))
    # SAEs
    layers: list[int] = field(default_factory=lambda: [0], metadata=_rule(
        "the layers whose attention output is read (blocks.L.attn.hook_z, heads concatenated)", ge=0))
    architecture: str = field(default="relu", metadata=_rule(
        "SAE activation: relu (L1 penalty), topk (k latents), jumprelu (L0 penalty), batchtopk (k latents per token "
        "on average over a batch; one threshold at inference) or matryoshka (batchtopk with nested prefix losses)",
        choices=ARCHITECTURES))
    d_sae: list[int] | None = field(default=None, metadata=_rule(
        "dictionary sizes, one SAE each (default: --expansion-factor x d_in)", ge=1))
    expansion_factor: int = field(default=8, metadata=_rule("d_sae = this x d_in when --d-sae is not given", ge=1))
    l1_coeffs: list[float] = field(default_factory=lambda: [2.0], metadata=_rule(
        "relu: L1 coefficients, one SAE each (the penalty: coeff x sum_i f_i; decoder rows are kept at unit norm)",
        ge=0))
    ks: list[int] = field(default_factory=lambda: [32], metadata=_rule(
        "topk, batchtopk, matryoshka: latents kept per token (batchtopk, matryoshka: on average over a batch), one "
        "SAE each", ge=1))
    l0_coeffs: list[float] = field(default_factory=lambda: [1.0], metadata=_rule(
        "jumprelu: L0 coefficients, one SAE each", ge=0))
    per_layer: bool = field(default=False, metadata=_rule(
        "pair the sparsity values and --d-sae with --layers (one each, or one for all) instead of every combination"))
    aux_coeff: float = field(default=1 / 32, metadata=_rule(
        "topk, batchtopk, matryoshka: weight of the AuxK loss on dead latents", ge=0))
    aux_k: int | None = field(default=None, metadata=_rule(
        "topk, batchtopk, matryoshka: dead latents AuxK reconstructs the residual from (default: d_in / 2)", ge=1))
    matryoshka_widths: list[int] | None = field(default=None, metadata=_rule(
        "matryoshka: the nested prefixes of the latents whose reconstruction losses add up, increasing (d_sae, the "
        "last, is added when not given), e.g. 128 512 2048", ge=1))
    topk_threshold_lr: float = field(default=0.01, metadata=_rule(
        "batchtopk, matryoshka: rate of the moving average of each batch's smallest kept activation, the inference "
        "threshold", gt=0, le=1))
    jumprelu_bandwidth: float = field(default=1e-3, metadata=_rule(
        "jumprelu: width of the straight-through estimator's window around the threshold", gt=0))
    jumprelu_init_threshold: float = field(default=1e-3, metadata=_rule("jumprelu: every threshold's starting value",
                                                                        gt=0))
    apply_b_dec_to_input: bool = field(default=True, metadata=_rule(
        "subtract the decoder bias from the input before encoding"))
    # the loop
    total_tokens: int = field(default=2_000_000, metadata=_rule("training tokens (activations) per SAE", ge=1))
    batch_size: int = field(default=4096, metadata=_rule(
        "activations per step (the global batch: under torchrun it splits over each module group's processes)", ge=1))
    lr: float = field(default=1e-3, metadata=_rule("Adam's learning rate", gt=0))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99], metadata=_rule("Adam's two betas", ge=0, lt=1,
                                                                                   n=2))
    warmup_steps: int = field(default=1000, metadata=_rule(
        "steps of linear learning-rate warm-up (restarted after each resample)", ge=0))
    warmup_from: float = field(default=0.1, metadata=_rule("the warm-up starts at this fraction of --lr", ge=0, le=1))
    lr_schedule: str = field(default="constant", metadata=_rule(
        "learning rate after the warm-up", choices=("constant", "cosine", "linear")))
    lr_end_frac: float = field(default=0.0, metadata=_rule(
        "cosine and linear end at this fraction of --lr", ge=0, le=1))
    l1_warmup_steps: int = field(default=0, metadata=_rule(
        "steps over which the sparsity penalty ramps up from 0", ge=0))
    resample_every: int = field(default=25_000, metadata=_rule("steps between dead-latent resamplings", ge=1))
    resample_times: int = field(default=4, metadata=_rule("resamplings at most (0: never resample)", ge=0))
    resample_window: int = field(default=12_500, metadata=_rule(
        "steps before each resampling over which --dead-cutoff is measured", ge=1))
    resample_batches: int = field(default=100, metadata=_rule(
        "batches whose losses choose the resampled directions", ge=1))
    dead_cutoff: float = field(default=1e-6, metadata=_rule(
        "a latent that fired on at most this share of the resample window's tokens is resampled", ge=0, le=1))
    dead_window: int = field(default=1000, metadata=_rule(
        "steps without firing after which a latent counts as dead (the logged dead fraction, AuxK)", ge=1))
    seed: int = field(default=0, metadata=_rule("seed of the SAEs' initialisation and the data order (0 .. 2**63-1)",
                                                ge=0))
    log_every: int = field(default=50, metadata=_rule("steps between metrics lines (metrics.jsonl)", ge=1))
    ckpt_every: int = field(default=500, metadata=_rule("steps between checkpoints", ge=1))
    sparse_kernel: bool = field(default=True, metadata=_rule(
        "sparse forward/backward over the active latents (TopK; ReLU and JumpReLU batches sparse enough)"))
    wandb_project: str | None = field(default=None, metadata=_rule("also log the metrics to this W&B project"))
    # where, and how to treat an existing run there
    out: str = field(default="attnsae-out/train", metadata=_rule(
        "run folder: checkpoints, metrics and one SAE folder per SAE"))
    resume: bool = field(default=False, metadata=_rule(
        "continue the run in --out from its last checkpoint (same settings and data)"))
    overwrite: bool = field(default=False, metadata=_rule(
        "start the run in --out over (the previous run is kept until the new one's first checkpoint)"))
    threads: int | None = field(default=None, metadata=_rule(
        "CPU threads (default: torch's choice; at most the cores this process may use)", ge=1))
    progress: bool = field(default=True, metadata=_rule("show progress bars"))
    # under torchrun: the processes form module_parallel groups, each owning a block of the layers (the processes of
    # a group share its SAEs, data parallel); see attnsae.training.distributed
    module_parallel: int = field(default=1, metadata=_rule(
        "under torchrun: groups of processes, each training a block of the layers", ge=1))

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ----------------------------------------------------------------------------------------------

    def validate(self) -> None:
        """Coerce every field to its declared type and check ranges, choices and relations; one clear error."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = _coerce(getattr(self, f.name), hints[f.name], f.name)
            rule = f.metadata.get("rule", {})
            _check_rule(f.name, value, rule)
            setattr(self, f.name, value)
        check_seed(self.seed)
        if self.threads is not None and self.threads > (cores := usable_cores()):
            raise AttnsaeError(f"threads must be <= {cores}, the CPU cores this process may use, got {self.threads}")
        if not self.layers:
            raise AttnsaeError("layers is empty: give at least one layer")
        if len(set(self.layers)) != len(self.layers):
            raise AttnsaeError(f"layers {short(self.layers)} repeats a layer; give each layer once")
        if self.buffer_size < self.batch_size:
            raise AttnsaeError(f"buffer_size ({self.buffer_size}) must be at least batch_size ({self.batch_size})")
        if self.resample_times and self.resample_window > self.resample_every:
            raise AttnsaeError(f"resample_window ({self.resample_window}) must not exceed resample_every "
                               f"({self.resample_every}): the window is the steps before each resample")
        if self.resume and self.overwrite:
            raise AttnsaeError("--resume and --overwrite contradict each other; give one")
        widths = self.matryoshka_widths
        if (self.architecture == "matryoshka") != (widths is not None):
            raise AttnsaeError("architecture matryoshka needs matryoshka_widths (e.g. --matryoshka-widths 128 512)"
                               if widths is None else "matryoshka_widths is for --architecture matryoshka; leave it "
                               "out or use that architecture")
        if widths is not None and any(b <= a for a, b in zip(widths, widths[1:])):
            raise AttnsaeError(f"matryoshka_widths must be strictly increasing, got {short(widths)}")
        if self.per_layer:
            for name in (SPARSITY_FIELD[self.architecture], "d_sae"):
                vals = getattr(self, name)
                if vals is not None and len(vals) not in (1, len(self.layers)):
                    raise AttnsaeError(f"with per_layer, {name} needs 1 or {len(self.layers)} values (one per "
                                       f"layer), got {len(vals)}")
        self.specs(d_in=1, check_sizes=False)  # refuses duplicate SAEs (sizes are checked once d_in is known)

    # -- what the run trains -------------------------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        return max(1, self.total_tokens // self.batch_size)

    def specs(self, d_in: int, check_sizes: bool = True) -> list[SAESpec]:
        """The SAEs of the run (d_sae defaults to ``expansion_factor * d_in``); ``check_sizes``: refuse k > d_sae."""
        sparsity = getattr(self, SPARSITY_FIELD[self.architecture])
        d_saes = self.d_sae or [self.expansion_factor * d_in]
        key = SPEC_KEY[self.architecture]
        if self.per_layer:  # one value for every layer, or one per layer (validate() checks the lengths)
            rows = [(l, sparsity[i % len(sparsity)], d_saes[i % len(d_saes)]) for i, l in enumerate(self.layers)]
        else:
            rows = [(l, v, d) for l in self.layers for d in d_saes for v in sparsity]
        common = dict(architecture=self.architecture, aux_coeff=self.aux_coeff, aux_k=self.aux_k,
                      apply_b_dec_to_input=self.apply_b_dec_to_input, jumprelu_bandwidth=self.jumprelu_bandwidth,
                      jumprelu_init_threshold=self.jumprelu_init_threshold, topk_threshold_lr=self.topk_threshold_lr)
        specs = [SAESpec(layer=l, d_sae=d, **common, **{key: v}, matryoshka_widths=self._widths(d, check_sizes))
                 for l, v, d in rows]
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise AttnsaeError(f"two SAEs with the same settings ({sorted(n for n in names if names.count(n) > 1)[0]});"
                               " give each sparsity value and d_sae once")
        if self.architecture in K_ARCHITECTURES and (check_sizes or self.d_sae):  # d_sae given: check now
            for s in specs:
                if s.k > s.d_sae:
                    raise AttnsaeError(f"k ({s.k}) must not exceed d_sae ({s.d_sae})")
        return specs

    def _widths(self, d_sae: int, check_sizes: bool) -> list[int] | None:
        """Matryoshka's widths for an SAE of ``d_sae`` latents: ``matryoshka_widths`` ending at ``d_sae`` (added when
        the last is smaller, as SAELens does; refused when larger)."""
        widths = self.matryoshka_widths
        if widths is None or not (check_sizes or self.d_sae) or widths[-1] == d_sae:
            return widths
        if widths[-1] > d_sae:
            raise AttnsaeError(f"matryoshka_widths ends at {widths[-1]}, past d_sae ({d_sae}): the widths are prefixes "
                               "of the latents; give widths up to d_sae")
        return [*widths, d_sae]

    def resample_steps(self) -> list[int]:
        return [self.resample_every * (i + 1) for i in range(self.resample_times)
                if self.resample_every * (i + 1) < self.total_steps]

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at ``step``: warm-up (restarted after each resample), then the schedule."""
        last = max([0] + [s for s in self.resample_steps() if s <= step])
        since = step - last
        f = self.warmup_from + (1 - self.warmup_from) * since / self.warmup_steps if since < self.warmup_steps else 1.0
        if self.lr_schedule == "constant" or step < self.warmup_steps:
            return f
        t = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if self.lr_schedule == "cosine":
            d = self.lr_end_frac + (1 - self.lr_end_frac) * 0.5 * (1 + math.cos(math.pi * t))
        else:
            d = 1 - (1 - self.lr_end_frac) * t
        return f * d

    def l1_factor(self, step: int) -> float:
        return min(1.0, (step + 1) / self.l1_warmup_steps) if self.l1_warmup_steps else 1.0

    # -- (de)serialisation ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def result_settings(self) -> dict[str, Any]:
        """Every setting that shapes the trained SAEs (all but :data:`RUN_CONTROL`): what ``--resume`` compares."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_CONTROL}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From a flat dict of settings; an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known, key=str)
        if unknown:
            raise AttnsaeError(f"unknown setting {short(unknown[0])}; see `attnsae train --help` for the settings")
        return cls(**d)


def defaults() -> dict[str, Any]:
    """Each field's default value."""
    return {f.name: (f.default if f.default is not MISSING else f.default_factory())  # type: ignore[misc]
            for f in fields(TrainConfig)}


# ----------------------------------------------------------------------------------------------- coercion


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """``value`` as type ``hint`` (int, float, str, bool, list[...], X | None); an AttnsaeError otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, name)
    if origin is list:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return [_coerce(v, args[0], name) for v in items]
    return _scalar(value, hint, name)


def _scalar(value: Any, t: type, name: str) -> Any:
    bad = AttnsaeError(f"{name} must be {_type_word(t)}, got {short(value)}")
    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise bad
    if t is str:
        if isinstance(value, str):
            return value
        raise bad
    if isinstance(value, bool) or value is None or isinstance(value, (list, tuple, dict)):
        raise bad
    if t is int:
        if isinstance(value, int):  # exact, however large (a float would round past 2**53)
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass  # "1e3", "2.0": through float below
        try:
            f = float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int past a float's range
            raise bad from None
        if not math.isfinite(f) or f != int(f):
            raise bad
        return int(f)
    if t is float:
        try:
            f = float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int past a float's range
            raise bad from None
        if not math.isfinite(f):
            raise bad
        return f
    raise bad


def _type_word(t: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(t, t.__name__)


def _check_rule(name: str, value: Any, rule: dict[str, Any]) -> None:
    if value is None or not rule:
        return
    items = value if isinstance(value, list) else [value]
    if "n" in rule and len(items) != rule["n"]:
        raise AttnsaeError(f"{name} needs {rule['n']} values, got {len(items)}: {short(value)}")
    if isinstance(value, list) and not items:
        raise AttnsaeError(f"{name} is empty; give at least one value")
    for v in items:
        if "choices" in rule and v not in rule["choices"]:
            raise AttnsaeError(f"{name} must be one of {', '.join(rule['choices'])}, got {short(v)}")
        for op, ok, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                             ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
            if op in rule and not ok(v, rule[op]):
                raise AttnsaeError(f"{name} must be {word} {rule[op]:g}, got {short(v)}")
