"""Every file attnsae reads is checked before use (issue 24): activation caches (manifest and shards), SAE
``cfg.json`` / the paper's ``_cfg.json`` and weights, YAML/JSON config files; and the settings' upper bounds
(``seed``, ``threads``). The CLI side of each is a case of ``tests/test_bad_inputs.py``; these pin the library
functions, the valid files that must still load, and what a CLI case cannot show (the length of an error line).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from attnsae.activations import CachedActivations, read_manifest, write_cache
from attnsae.errors import AttnsaeError
from attnsae.sae.formats import CFG_FILENAME, WEIGHTS_FILENAME, load_sae, save_sae
from attnsae.sae.model import SAE, SAEConfig
from attnsae.training.config import SEED_MAX, TrainConfig, read_config_file, short, usable_cores

REPO = Path(__file__).resolve().parents[1]


def one_line(excinfo: pytest.ExceptionInfo, limit: int = 400) -> str:
    """The error's message, checked to be one short line."""
    message = str(excinfo.value)
    assert "\n" not in message and len(message) < limit, message[:500]
    return message


# ----------------------------------------------------------------------------------------------- activation caches


def make_cache(root: Path, arrays: list[np.ndarray] | None = None, **manifest) -> Path:
    """A cache of one layer (0), d_in 8, with ``arrays`` as its shards and a manifest (``manifest`` overrides)."""
    arrays = [np.ones((40, 8), np.float32), np.ones((24, 8), np.float32)] if arrays is None else arrays
    (root / "layer0").mkdir(parents=True)
    for i, a in enumerate(arrays):
        np.save(root / "layer0" / f"shard{i:05d}.npy", a)
    sizes = [len(a) for a in arrays]
    (root / "manifest.json").write_text(json.dumps({
        "model_name": "tiny", "layers": [0], "d_in": 8, "context_size": 16, "prepend_bos": True, "drop_bos": True,
        "dtype": "float32", "corpus": "rand", "split": "train", "n_tokens": sum(sizes), "shards": sizes, "version": 1,
        **manifest}))
    return root


def test_a_cache_written_by_write_cache_passes_every_check(tiny_model, tmp_path):
    """Positive: what ``attnsae cache`` writes (float32 and bfloat16, several shards) reads back and serves batches."""
    tokens = np.random.default_rng(0).integers(1, 8192, size=(12, 16))
    tokens[:, 0] = 0
    for dtype in ("float32", "bfloat16"):
        write_cache(tiny_model, tokens, tmp_path / dtype, [0, 1], model_name="tiny", corpus="rand", split="train",
                    dtype=dtype, shard_tokens=50, model_batch_size=4, progress=False)
        man = read_manifest(tmp_path / dtype)
        assert (man.dtype, man.layers, man.n_tokens, len(man.shards) > 1) == (dtype, [0, 1], 12 * 15, True)
        batch = next(CachedActivations(tmp_path / dtype, [0, 1], batch_size=30).batches())
        assert batch[1].shape == (30, 32) and batch[1].dtype == torch.float32


def test_a_hand_made_valid_cache_loads(tmp_path):
    src = CachedActivations(make_cache(tmp_path / "c"), batch_size=16, seed=3)
    assert src.batches_per_epoch == 4 and torch.equal(next(src.batches())[0], torch.ones(16, 8))


@pytest.mark.parametrize("change, needle", [
    ({"dtype": "float16"}, "dtype must be one of float32, bfloat16, got 'float16'"),
    ({"dtype": 32}, "dtype must be a string, got 32"),
    ({"model_name": None}, "model_name must be a string, got None"),
    ({"corpus": ["a"]}, "corpus must be a string"),
    ({"split": 1}, "split must be a string"),
    ({"layers": [0, 0]}, "layers must be a list of distinct layer numbers"),
    ({"layers": [-1]}, "layers must be a list of distinct layer numbers"),
    ({"layers": []}, "layers must be a list"),
    ({"layers": 0}, "layers must be a list"),
    ({"layers": [True]}, "layers must be a list"),
    ({"d_in": "8"}, "d_in must be a positive integer, got '8'"),
    ({"d_in": 8.0}, "d_in must be a positive integer, got 8.0"),
    ({"context_size": 0}, "context_size must be a positive integer, got 0"),
    ({"prepend_bos": "false"}, "prepend_bos must be true or false, got 'false'"),
    ({"drop_bos": 1}, "drop_bos must be true or false, got 1"),
    ({"n_tokens": 65}, "n_tokens must be the sum of the shards' tokens (64), got 65"),
    ({"shards": [40, 0]}, "shards must be a list of positive token counts"),
    ({"shards": "40,24"}, "shards must be a list of positive token counts"),
    ({"version": 2}, "version must be a version this attnsae reads (1), got 2"),
    ({"version": "1"}, "version must be a version this attnsae reads"),
    ({"colour": "red"}, "unknown field 'colour'"),
    ({"model_name": "m" * 1_000_000}, None),  # a long name is a name: no error (a huge one is quoted shortly below)
])
def test_every_manifest_field_is_checked(tmp_path, change, needle):
    root = make_cache(tmp_path / "c", **change)
    if needle is None:
        assert read_manifest(root).model_name == change["model_name"]
        with pytest.raises(AttnsaeError, match="for model 'mmmm") as excinfo:
            CachedActivations(root, batch_size=16, model_name="tiny")
        one_line(excinfo)
        return
    with pytest.raises(AttnsaeError) as excinfo:
        read_manifest(root)
    message = one_line(excinfo)
    assert needle in message and str(root / "manifest.json") in message and "rebuild the cache" in message


def test_a_manifest_missing_a_field_or_not_an_object_is_refused(tmp_path):
    root = make_cache(tmp_path / "c")
    man = json.loads((root / "manifest.json").read_text())
    del man["shards"]
    (root / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(AttnsaeError, match="no shards; rebuild the cache"):
        read_manifest(root)
    for text in ("[1, 2]", "nul", "\xff\xfe"):
        (root / "manifest.json").write_text(text, encoding="latin-1")
        with pytest.raises(AttnsaeError, match="corrupt activation cache manifest") as excinfo:
            read_manifest(root)
        one_line(excinfo)


@pytest.mark.parametrize("arrays, change, needle", [
    ([np.ones((40, 8), np.int64), np.ones((24, 8), np.float32)], {}, "shard00000.npy holds int64 values"),
    ([np.ones((40, 8), np.float64), np.ones((24, 8), np.float32)], {}, "holds float64 values"),
    ([np.ones((40, 8), np.float32)] * 2, {"dtype": "bfloat16"}, "a cache of dtype bfloat16 stores uint16"),
    ([np.ones((40, 8), np.uint16)] * 2, {}, "holds uint16 values, but a cache of dtype float32 stores float32"),
    ([np.ones((40, 9), np.float32), np.ones((24, 8), np.float32)], {}, "has shape (40, 9), expected (40, 8)"),
    ([np.ones((40, 8), np.float32), np.ones((25, 8), np.float32)], {"shards": [40, 24], "n_tokens": 64},
     "shard00001.npy has shape (25, 8), expected (24, 8)"),
    ([np.ones((40, 8), np.float32)], {"shards": [40, 24], "n_tokens": 64}, "missing shard"),
    ([np.ones((40, 8), np.float32)] * 3, {"shards": [40, 40], "n_tokens": 80}, "shard00002.npy, which its manifest"),
    ([np.ones((64,), np.float32)], {}, "has shape (64,), expected (64, 8)"),
])
def test_every_shard_is_checked_against_the_manifest(tmp_path, arrays, change, needle):
    """Headers only, before any training: today's int64 shard trained 31 steps on integers before dying."""
    root = make_cache(tmp_path / "c", arrays, **change)
    for load in (lambda: read_manifest(root), lambda: CachedActivations(root, batch_size=8)):
        with pytest.raises(AttnsaeError) as excinfo:
            load()
        message = one_line(excinfo)
        assert needle in message and "rebuild the cache" in message


def test_a_shard_that_is_no_npy_array_is_refused(tmp_path):
    root = make_cache(tmp_path / "c")
    np.savez(root / "layer0" / "x.npz", a=np.ones(3))
    os.replace(root / "layer0" / "x.npz", root / "layer0" / "shard00001.npy")
    with pytest.raises(AttnsaeError, match="shard00001.npy is not a .npy array"):
        read_manifest(root)
    (root / "layer0" / "shard00001.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(AttnsaeError, match="corrupt or missing activation shard") as excinfo:
        read_manifest(root)
    one_line(excinfo)


# ----------------------------------------------------------------------------------------------- SAE files


def saved(tmp_path: Path, architecture: str = "relu") -> Path:
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=8, d_sae=16, architecture=architecture, k=3 if architecture == "topk" else None,
                    hook_name="blocks.1.attn.hook_z", model_name="m", layer=1, context_size=32)
    return save_sae(SAE(cfg), tmp_path / f"sae_{architecture}")


def edit_cfg(path: Path, edit) -> Path:
    cfg = json.loads((path / CFG_FILENAME).read_text())
    edit(cfg)
    (path / CFG_FILENAME).write_text(json.dumps(cfg))
    return path


def set_in(keys: str, value):
    """An edit setting ``cfg[k1][k2]... = value`` (``keys``: dotted)."""
    *parents, last = keys.split(".")

    def edit(cfg):
        for k in parents:
            cfg = cfg[k]
        cfg[last] = value

    return edit


@pytest.mark.parametrize("keys, value, needle", [
    ("apply_b_dec_to_input", "false", "apply_b_dec_to_input must be a JSON boolean (true or false), got 'false'"),
    ("apply_b_dec_to_input", 0, "apply_b_dec_to_input must be a JSON boolean"),
    ("metadata.prepend_bos", "true", "metadata.prepend_bos must be a JSON boolean (true or false), got 'true'"),
    ("metadata.context_size", "abc", "metadata.context_size must be a positive integer, got 'abc'"),
    ("metadata.context_size", 12.5, "metadata.context_size must be a positive integer, got 12.5"),
    ("metadata.context_size", True, "metadata.context_size must be a positive integer, got True"),
    ("metadata.context_size", 0, "metadata.context_size must be a positive integer, got 0"),
    ("metadata.attnsae.layer", "1", "metadata.attnsae.layer must be a layer number (an integer >= 0) or null"),
    ("metadata.attnsae.layer", -1, "metadata.attnsae.layer must be a layer number"),
    ("metadata.hook_layer", 1.0, None),  # ours.layer wins over hook_layer: not read, not checked
    ("metadata.hook_name", 5, "metadata.hook_name must be a string, got 5"),
    ("metadata.model_name", {"a": 1}, "metadata.model_name must be a string"),
    ("metadata", [1], "metadata must be a JSON object, got [1]"),
    ("metadata.attnsae", "relu", "metadata.attnsae must be a JSON object, got 'relu'"),
    ("metadata.attnsae.extra", [1], "metadata.attnsae.extra must be a JSON object"),
    ("metadata.attnsae.architecture", 1, "metadata.attnsae.architecture must be a string"),
    ("metadata.attnsae.jumprelu_bandwidth", "0.1", "metadata.attnsae.jumprelu_bandwidth must be a number > 0"),
    ("metadata.attnsae.matryoshka_widths", "4 16", "metadata.attnsae.matryoshka_widths must be a list of integers"),
    ("metadata.attnsae.matryoshka_widths", [4, 16], "matryoshka_widths is for architecture 'matryoshka'"),
    ("metadata.attnsae.topk_threshold", "0.5", "metadata.attnsae.topk_threshold must be a number, got '0.5'"),
    ("metadata.attnsae.topk_threshold_lr", 0, "metadata.attnsae.topk_threshold_lr must be a number > 0"),
    ("metadata.attnsae.k", 2.5, "metadata.attnsae.k must be a positive integer, got 2.5"),
    ("architecture", ["standard"], "architecture must be a string"),
    ("d_in", "8", "cfg.json: d_in must be a positive integer, got '8'"),
    ("d_sae", 16.0, "cfg.json: d_sae must be a positive integer, got 16.0"),
    ("d_sae", False, "cfg.json: d_sae must be a positive integer, got False"),
    ("k", "3", "k must be a positive integer, got '3'"),
    ("dtype", 32, "dtype must be a string, got 32"),
    ("dtype", "f" * 100_000, "unknown SAE dtype 'ffff"),
    ("normalize_activations", 1, "normalize_activations must be a string (or a JSON boolean), got 1"),
])
def test_every_saelens_cfg_field_is_checked_by_type(tmp_path, keys, value, needle):
    path = edit_cfg(saved(tmp_path), set_in(keys, value))
    if needle is None:
        assert load_sae(path).cfg.layer == 1
        return
    with pytest.raises(AttnsaeError) as excinfo:
        load_sae(path)
    message = one_line(excinfo)
    assert needle in message and message.count(str(path / CFG_FILENAME)) == 1


def test_a_megabyte_cfg_value_is_quoted_shortly(tmp_path):
    path = edit_cfg(saved(tmp_path), set_in("metadata.model_name", ["x" * 1_000_000] * 3))
    with pytest.raises(AttnsaeError, match="metadata.model_name must be a string") as excinfo:
        load_sae(path)
    one_line(excinfo, limit=300)


@pytest.mark.parametrize("name, cast", [("W_enc", torch.int64), ("b_enc", torch.int32), ("W_dec", torch.bool),
                                        ("b_dec", torch.uint8), ("threshold", torch.int64)])
def test_weights_that_are_not_floating_point_are_refused(tmp_path, name, cast):
    path = saved(tmp_path, "jumprelu")
    tensors = safetensors.torch.load_file(str(path / WEIGHTS_FILENAME))
    tensors[name] = tensors[name].to(cast)
    safetensors.torch.save_file(tensors, str(path / WEIGHTS_FILENAME))
    with pytest.raises(AttnsaeError, match=f"{name} is {str(cast).removeprefix('torch.')}, but SAE weights are "
                                           "floating point") as excinfo:
        load_sae(path)
    one_line(excinfo)


def test_valid_saelens_cfgs_of_every_vintage_still_load(tmp_path):
    """Positive: what save_sae writes (each architecture), and older SAELens files with nulls where values are
    missing (null apply_b_dec_to_input reads as false, as SAELens reads it)."""
    for arch in ("relu", "topk", "jumprelu"):
        sae = SAE(saved(tmp_path, arch) and load_sae(tmp_path / f"sae_{arch}").cfg)
        assert sae.cfg.architecture == arch and sae.cfg.context_size == 32 and sae.cfg.layer == 1
    path = saved(tmp_path)
    (path / CFG_FILENAME).write_text(json.dumps({  # SAELens 5.x, with the nulls such files hold
        "architecture": "standard", "d_in": 8, "d_sae": 16, "dtype": "torch.float32", "device": "cuda",
        "model_name": "gpt2-small", "hook_name": "blocks.1.attn.hook_z", "hook_layer": 1, "hook_head_index": None,
        "activation_fn_str": "relu", "activation_fn_kwargs": {}, "apply_b_dec_to_input": None,
        "finetuning_scaling_factor": False, "sae_lens_training_version": None, "prepend_bos": None,
        "dataset_path": "Skylion007/openwebtext", "context_size": None, "normalize_activations": None,
        "neuronpedia_id": None, "metadata": None}))
    cfg = load_sae(path).cfg
    assert (cfg.apply_b_dec_to_input, cfg.prepend_bos, cfg.context_size, cfg.layer, cfg.dtype) == (
        False, True, 128, 1, "float32")
    assert cfg.extra == {"dataset_path": "Skylion007/openwebtext"} and cfg.normalize_activations == "none"


def paper_files(tmp_path: Path, **cfg_changes) -> Path:
    sae = load_sae(saved(tmp_path))
    state = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "W_dec", "b_enc", "b_dec")}
    torch.save(state, tmp_path / "run.pt")
    cfg = {"seed": 49, "batch_size": 4096, "buffer_mult": 384, "lr": 0.0012, "num_tokens": 2_000_000_000,
           "l1_coeff": 1.1, "beta1": 0.9, "beta2": 0.99, "dict_mult": 2, "seq_len": 128, "enc_dtype": "fp32",
           "model_name": "gpt2-small", "site": "z", "layer": 1, "device": "cuda", "reinit": "reinit", "head": "cat",
           "concat_heads": True, "resample_scheme": "anthropic", "anthropic_neuron_resample_scale": 0.2,
           "dead_direction_cutoff": 1e-06, "re_init_every": 25000, "anthropic_resample_last": 12500,
           "model_batch_size": 512, "act_name": "blocks.1.attn.hook_z", "act_size": 8, "dict_size": 16,
           "name": "gpt2-small_1_16_z", **cfg_changes}
    (tmp_path / "run_cfg.json").write_text(json.dumps(cfg))
    return tmp_path / "run.pt"


def test_a_paper_cfg_with_every_release_field_loads(tmp_path):
    cfg = load_sae(paper_files(tmp_path)).cfg
    assert (cfg.d_in, cfg.d_sae, cfg.layer, cfg.context_size, cfg.hook_name) == (8, 16, 1, 128, "blocks.1.attn.hook_z")


@pytest.mark.parametrize("change, needle", [
    ({"seq_len": "128"}, "seq_len must be a positive integer, got '128'"),
    ({"seq_len": 12.5}, "seq_len must be a positive integer, got 12.5"),
    ({"layer": "1"}, "layer must be a layer number (an integer >= 0) or null, got '1'"),
    ({"act_size": "8"}, "act_size must be a positive integer, got '8'"),
    ({"dict_size": True}, "dict_size must be a positive integer, got True"),
    ({"model_name": 7}, "model_name must be a string, got 7"),
    ({"act_name": ["blocks.1.attn.hook_z"]}, "act_name must be a string"),
    ({"site": 3, "act_name": None}, "site must be a string, got 3"),
    ({"enc_dtype": 16}, "enc_dtype must be a string, got 16"),
])
def test_every_paper_cfg_field_is_checked_by_type(tmp_path, change, needle):
    with pytest.raises(AttnsaeError) as excinfo:
        load_sae(paper_files(tmp_path, **change))
    message = one_line(excinfo)
    assert needle in message and message.count("run_cfg.json") == 1


def test_paper_weights_that_are_not_floating_point_are_refused(tmp_path):
    pt = paper_files(tmp_path)
    state = torch.load(pt)
    state["b_enc"] = state["b_enc"].long()
    torch.save(state, pt)
    with pytest.raises(AttnsaeError, match="run.pt: b_enc is int64, but SAE weights are floating point"):
        load_sae(pt)


@pytest.mark.parametrize("field, value", [("apply_b_dec_to_input", "false"), ("prepend_bos", 1), ("context_size", "5"),
                                          ("layer", -2), ("hook_name", None), ("model_name", 3), ("extra", []),
                                          ("jumprelu_bandwidth", "0.1"), ("jumprelu_init_threshold", float("nan")),
                                          ("dtype", 5), ("normalize_activations", None)])
def test_sae_config_checks_every_field_by_type(field, value):
    with pytest.raises(AttnsaeError, match=f"SAE {field} must be"):
        SAEConfig(d_in=4, d_sae=8, **{field: value})


# ----------------------------------------------------------------------------------------------- config files


def test_short_quotes_the_start_of_any_value_quickly():
    assert short("lr") == "'lr'" and short(3) == "3" and short([0.9]) == "[0.9]" and short(None) == "None"
    assert short("x" * 5_000_000) == repr("x" * 60) + "... (5,000,000 characters)"
    nested: list = ["lol"] * 9
    for _ in range(12):  # 9**13 strings if expanded: a full repr would never end
        nested = [nested] * 9
    t0 = time.perf_counter()
    text = short(nested)
    assert len(text) <= 80 and text.startswith("[[")
    assert time.perf_counter() - t0 < 1  # generous: it takes microseconds (a full repr: years)
    assert short(10 ** 5000).startswith("<an integer of")  # str() of it would raise (Python's 4300-digit limit)


def test_config_files_of_the_repository_still_load():
    """Positive: the shipped configs, and a YAML that uses an anchor as meant (a few values shared)."""
    for path in sorted((REPO / "configs").glob("*.yaml")):
        TrainConfig.from_dict(read_config_file(str(path)))


def test_modest_yaml_aliases_are_fine(tmp_path):
    f = tmp_path / "cfg.yaml"
    f.write_text("l1_coeffs: &c [1, 2]\nl0_coeffs: *c\nlayers: &l [0]\nd_sae: [32, 64]\n")
    cfg = TrainConfig.from_dict(read_config_file(str(f)))
    assert cfg.l0_coeffs == cfg.l1_coeffs == [1.0, 2.0] and cfg.layers == [0]


def billion_laughs(levels: int) -> str:
    names = "abcdefghijklmnop"[:levels]
    parts = ["&a [" + ",".join(["lol"] * 9) + "]"]
    parts += [f"&{n} [" + ",".join([f"*{p}"] * 9) + "]" for p, n in zip(names, names[1:])]
    return f"module_parallel: [{', '.join(parts)}]\nlayers: *{names[-1]}\n"


@pytest.mark.parametrize("text, needle", [
    (billion_laughs(9), "holds more than 10,000 values once its aliases (*name) are expanded"),
    (billion_laughs(5), "holds more than 10,000 values"),  # 9**5 = 59,049 strings: still refused
    ("layers: &a [1, *a]\n", "holds a recursive alias"),
    ("a: &a {b: *a}\n", "holds a recursive alias"),
])
def test_yaml_aliases_are_bounded_before_anything_is_built(tmp_path, text, needle):
    f = tmp_path / "cfg.yaml"
    f.write_text(text)
    with pytest.raises(AttnsaeError, match="config file .*cfg.yaml") as excinfo:
        read_config_file(str(f))
    assert needle in one_line(excinfo)


def test_a_big_config_file_is_refused_by_its_size_and_never_read_whole(tmp_path):
    f = tmp_path / "cfg.yaml"
    f.write_text("lr: " + "x" * (5_800_000) + "\n")
    with pytest.raises(AttnsaeError, match=r"is 5\.5 MiB, more than the 1 MiB a config file may be") as excinfo:
        read_config_file(str(f))
    one_line(excinfo)
    if os.path.exists("/dev/zero"):  # a device, which never ends: refused without a read
        with pytest.raises(AttnsaeError, match="/dev/zero is not a regular file"):
            read_config_file("/dev/zero")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # a read would wait forever for a writer
    with pytest.raises(AttnsaeError, match="is not a regular file"):
        read_config_file(str(fifo))


@pytest.mark.parametrize("suffix, text", [(".yaml", "lr: {}\n"), (".json", '{{"lr": "{}"}}'),
                                          (".yaml", "layers: [0, {}]\n"), (".yaml", "betas: [{}]\n"),
                                          (".yaml", "architecture: {}\n"), (".json", '{{"{}": 1}}')])
def test_error_lines_quote_only_the_start_of_a_long_value(tmp_path, suffix, text):
    """Today a 5.8 MB one-line value made a 5.8 MB error line; it is at most ~60 characters of it now."""
    f = tmp_path / f"cfg{suffix}"
    f.write_text(text.format("x" * 900_000))
    with pytest.raises(AttnsaeError) as excinfo:
        TrainConfig.from_dict(read_config_file(str(f)))
    assert "xxxxxxxxxx" in one_line(excinfo, limit=250)


def test_setting_names_must_be_strings(tmp_path):
    f = tmp_path / "cfg.yaml"
    f.write_text("1: 2\nbogus: 3\n")
    with pytest.raises(AttnsaeError, match="setting names are words, got 1"):
        read_config_file(str(f))
    with pytest.raises(AttnsaeError, match="unknown setting"):  # from Python: mixed keys sort without a TypeError
        TrainConfig.from_dict({1: 2, "bogus": 3})


# ----------------------------------------------------------------------------------------------- settings bounds


def test_seed_bound_is_what_every_generator_takes():
    """SEED_MAX goes through each place a seed is used; one past it is refused in validate()."""
    torch.manual_seed(SEED_MAX)
    torch.Generator().manual_seed(SEED_MAX)
    np.random.default_rng([SEED_MAX, 7, 0])
    np.random.SeedSequence([SEED_MAX, 1, 2]).generate_state(1)
    torch.manual_seed(0)
    assert TrainConfig(seed=SEED_MAX).seed == SEED_MAX == 2**63 - 1
    assert TrainConfig(seed=str(2**53 + 1)).seed == 2**53 + 1  # exact: no round trip through a float
    for bad in (2**63, 2**64, str(2**64)):
        with pytest.raises(AttnsaeError, match=r"seed must be an integer in 0\.\.9223372036854775807 \(2\*\*63 - 1"):
            TrainConfig(seed=bad)
    with pytest.raises(AttnsaeError, match="seed must be >= 0"):
        TrainConfig(seed=-1)


def test_threads_bound_is_the_usable_cores():
    cores = usable_cores()
    assert cores >= 1 and TrainConfig(threads=cores).threads == cores
    with pytest.raises(AttnsaeError, match=f"threads must be <= {cores}, the CPU cores this process may use"):
        TrainConfig(threads=cores + 1)
    with pytest.raises(AttnsaeError, match="threads must be <="):
        TrainConfig(threads=10**12)


def test_an_integer_past_a_floats_range_is_refused_not_crashed(tmp_path):
    """YAML reads ``lr: 1000...0`` (400 digits) as an int; float() of it overflowed (an internal error)."""
    f = tmp_path / "cfg.yaml"
    f.write_text("lr: 1" + "0" * 400 + "\n")
    with pytest.raises(AttnsaeError, match="lr must be a number, got <an integer of 1329 bits>"):
        TrainConfig.from_dict(read_config_file(str(f)))
