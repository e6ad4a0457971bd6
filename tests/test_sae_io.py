"""SAE files: exact save/load round trip, SAELens layout, the paper's .pt format, hub paths, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from attnsae.errors import AttnsaeError
from attnsae.sae.model import SAE, SAEConfig
from attnsae.sae.formats import CFG_FILENAME, WEIGHTS_FILENAME, load_sae, parse_hub_name, save_sae

D_IN, D_SAE = 8, 16
HOOK = "blocks.3.attn.hook_z"
ARCHITECTURES = ["relu", "topk", "jumprelu", "batchtopk", "matryoshka"]


def make_sae(architecture: str = "relu", seed: int = 0) -> SAE:
    torch.manual_seed(seed)
    cfg = SAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        architecture=architecture,
        k=3 if architecture in ("topk", "batchtopk", "matryoshka") else None,
        matryoshka_widths=[4, 10, D_SAE] if architecture == "matryoshka" else None,
        hook_name=HOOK,
        model_name="gelu-2l",
        context_size=64,
        prepend_bos=False,
        layer=3,
        jumprelu_init_threshold=0.02,
        extra={"l1_coeff": 2.0, "dataset_path": "stdlib"},
    )
    sae = SAE(cfg)
    with torch.no_grad():  # non-trivial values everywhere
        sae.b_enc.normal_()
        sae.b_dec.normal_()
        if architecture == "jumprelu":
            sae.log_threshold.normal_(-3.0, 1.0)
        if architecture in ("batchtopk", "matryoshka"):
            sae.topk_threshold.fill_(0.1 + 1e-12)  # a float64 that no float32 holds
    return sae


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_save_load_roundtrip_is_exact(tmp_path: Path, architecture: str) -> None:
    sae = make_sae(architecture)
    loaded = load_sae(save_sae(sae, tmp_path / "sae"))
    assert loaded.cfg == sae.cfg
    state, loaded_state = sae.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for name in state:
        assert torch.equal(state[name], loaded_state[name]), name
    x = torch.randn(4, D_IN)
    for a, b in zip(sae(x), loaded(x)):
        assert torch.equal(a, b)


def test_saved_files_use_saelens_layout_and_names(tmp_path: Path) -> None:
    sae = make_sae("jumprelu")
    path = save_sae(sae, tmp_path / "sae")
    assert sorted(p.name for p in path.iterdir()) == [CFG_FILENAME, WEIGHTS_FILENAME]
    tensors = safetensors.torch.load_file(str(path / WEIGHTS_FILENAME))
    assert set(tensors) == {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}
    assert torch.equal(tensors["threshold"], sae.threshold.detach())  # the threshold, not its log
    cfg = json.loads((path / CFG_FILENAME).read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["reshape_activations"] == "hook_z"
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["normalize_activations"]) == (D_IN, D_SAE, "float32", "none")
    meta = cfg["metadata"]
    assert meta["hook_name"] == HOOK and meta["model_name"] == "gelu-2l" and meta["hook_head_index"] is None
    assert meta["context_size"] == 64 and meta["prepend_bos"] is False and meta["dataset_path"] == "stdlib"
    assert meta["attnsae"]["architecture"] == "jumprelu"

    relu_cfg = json.loads((save_sae(make_sae("relu"), tmp_path / "relu") / CFG_FILENAME).read_text())
    topk_cfg = json.loads((save_sae(make_sae("topk"), tmp_path / "topk") / CFG_FILENAME).read_text())
    assert relu_cfg["architecture"] == "standard" and relu_cfg["metadata"]["attnsae"]["architecture"] == "relu"
    assert topk_cfg["architecture"] == "topk" and topk_cfg["k"] == 3


def test_save_replaces_an_existing_sae(tmp_path: Path) -> None:
    path = tmp_path / "sae"
    save_sae(make_sae(seed=0), path)
    newer = make_sae(seed=1)
    save_sae(newer, path)
    assert torch.equal(load_sae(path).W_enc, newer.W_enc)
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]  # no temp or old directories left


def test_failed_save_leaves_no_partial_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sae"
    old = make_sae(seed=0)
    save_sae(old, path)

    def broken_save_file(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save_file)
    with pytest.raises(AttnsaeError, match="disk full") as excinfo:
        save_sae(make_sae(seed=1), tmp_path / "fresh")
    one_line_error(excinfo)
    with pytest.raises(AttnsaeError):
        save_sae(make_sae(seed=1), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # nothing half-written, the old SAE intact
    monkeypatch.undo()
    assert torch.equal(load_sae(path).W_enc, old.W_enc)


def test_save_refuses_to_overwrite_a_directory_that_is_not_an_sae(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(AttnsaeError, match="not an SAE directory"):
        save_sae(make_sae(), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------------------------ other formats


def test_older_saelens_cfg_with_top_level_hook_name_loads(tmp_path: Path) -> None:
    sae = make_sae("topk")
    path = save_sae(sae, tmp_path / "sae")
    old_cfg = {  # pre-6 SAELens: no metadata, hook fields at the top, TopK as a "standard" SAE + activation kwargs
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "model_name": "gpt2-small",
        "hook_point": "blocks.3.attn.hook_z",
        "hook_point_layer": 3,
        "context_size": 128,
        "normalize_activations": False,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 3},
    }
    (path / CFG_FILENAME).write_text(json.dumps(old_cfg))
    loaded = load_sae(path / CFG_FILENAME)  # a file inside the directory stands for the directory
    assert (loaded.cfg.architecture, loaded.cfg.k, loaded.cfg.layer) == ("topk", 3, 3)
    assert (loaded.cfg.hook_name, loaded.cfg.model_name, loaded.cfg.normalize_activations) == (
        HOOK,
        "gpt2-small",
        "none",
    )
    assert torch.equal(loaded.W_dec, sae.W_dec)


def write_paper_files(tmp_path: Path, sae: SAE, **cfg_changes) -> Path:
    run = "gpt2-small_L3_Hcat_z_lr1.20e-03_l11.10e+00_ds24576_bs4096_dc1.00e-06_rsanthropic_rie25000_nr4_v9"
    state = {name: getattr(sae, name).detach().clone() for name in ("W_enc", "W_dec", "b_enc", "b_dec")}
    torch.save(state, tmp_path / f"{run}.pt")
    cfg = {
        "seed": 49,
        "batch_size": 4096,
        "lr": 0.0012,
        "l1_coeff": 1.1,
        "dict_mult": 2,
        "seq_len": 128,
        "enc_dtype": "fp32",
        "model_name": "gpt2-small",
        "site": "z",
        "layer": 3,
        "act_size": D_IN,
        "dict_size": D_SAE,
        **cfg_changes,
    }
    (tmp_path / f"{run}_cfg.json").write_text(json.dumps(cfg))
    return tmp_path / f"{run}.pt"


def test_paper_pt_format_loads(tmp_path: Path) -> None:
    sae = make_sae()
    loaded = load_sae(write_paper_files(tmp_path, sae, act_size=None))  # d_in comes from the weights
    assert (loaded.cfg.d_in, loaded.cfg.d_sae, loaded.cfg.architecture) == (D_IN, D_SAE, "relu")
    assert (loaded.cfg.hook_name, loaded.cfg.layer, loaded.cfg.model_name) == (HOOK, 3, "gpt2-small")
    assert loaded.cfg.extra["paper_cfg"]["l1_coeff"] == 1.1
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(loaded, name), getattr(sae, name))


def test_paper_pt_without_cfg_json_gives_clear_error(tmp_path: Path) -> None:
    pt = write_paper_files(tmp_path, make_sae())
    pt.with_name(pt.name.removesuffix(".pt") + "_cfg.json").unlink()
    with pytest.raises(AttnsaeError, match="_cfg.json not found") as excinfo:
        load_sae(pt)
    one_line_error(excinfo)


def test_paper_pt_size_mismatch_gives_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AttnsaeError, match="dict_size") as excinfo:
        load_sae(write_paper_files(tmp_path, make_sae(), dict_size=D_SAE * 2))
    one_line_error(excinfo)


# ------------------------------------------------------------------------------------------------ bad files


def test_missing_directory_gives_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AttnsaeError, match="does not exist") as excinfo:
        load_sae(tmp_path / "nowhere")
    one_line_error(excinfo)


def test_missing_weights_file_gives_clear_error(tmp_path: Path) -> None:
    path = save_sae(make_sae(), tmp_path / "sae")
    (path / WEIGHTS_FILENAME).unlink()
    with pytest.raises(AttnsaeError, match=f"{WEIGHTS_FILENAME} is missing") as excinfo:
        load_sae(path)
    one_line_error(excinfo)


def test_truncated_safetensors_gives_clear_error(tmp_path: Path) -> None:
    path = save_sae(make_sae(), tmp_path / "sae")
    weights = path / WEIGHTS_FILENAME
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(AttnsaeError, match="corrupt or truncated") as excinfo:
        load_sae(path)
    one_line_error(excinfo)


def test_corrupt_cfg_json_gives_clear_error(tmp_path: Path) -> None:
    path = save_sae(make_sae(), tmp_path / "sae")
    (path / CFG_FILENAME).write_text('{"d_in": 8, ')
    with pytest.raises(AttnsaeError, match="missing or corrupt") as excinfo:
        load_sae(path)
    one_line_error(excinfo)


def test_missing_weight_key_gives_clear_error(tmp_path: Path) -> None:
    sae = make_sae("jumprelu")
    path = save_sae(sae, tmp_path / "sae")
    tensors = safetensors.torch.load_file(str(path / WEIGHTS_FILENAME))
    del tensors["threshold"]
    safetensors.torch.save_file(tensors, str(path / WEIGHTS_FILENAME))
    with pytest.raises(AttnsaeError, match="missing weights threshold") as excinfo:
        load_sae(path)
    one_line_error(excinfo)


def test_shape_mismatch_between_weights_and_cfg_gives_clear_error(tmp_path: Path) -> None:
    path = save_sae(make_sae(), tmp_path / "sae")
    cfg = json.loads((path / CFG_FILENAME).read_text())
    cfg["d_sae"] = D_SAE * 2
    (path / CFG_FILENAME).write_text(json.dumps(cfg))
    with pytest.raises(AttnsaeError, match="W_enc has shape") as excinfo:
        load_sae(path)
    one_line_error(excinfo)


def test_unknown_architecture_gives_clear_error(tmp_path: Path) -> None:
    path = save_sae(make_sae(), tmp_path / "sae")
    cfg = json.loads((path / CFG_FILENAME).read_text())
    cfg["architecture"] = "gated"
    del cfg["metadata"]["attnsae"]
    (path / CFG_FILENAME).write_text(json.dumps(cfg))
    with pytest.raises(AttnsaeError, match="unsupported SAE architecture 'gated'") as excinfo:
        load_sae(path)
    one_line_error(excinfo)


# ------------------------------------------------------------------------------------------------ hub


def test_hub_names_parse() -> None:
    assert parse_hub_name("hf://org/repo/blocks.3.attn.hook_z") == ("org/repo", "blocks.3.attn.hook_z")
    assert parse_hub_name("org/repo:a/b/run.pt") == ("org/repo", "a/b/run.pt")
    assert parse_hub_name("hf://org/repo") == ("org/repo", "")
    assert parse_hub_name("some/local/dir") is None


@pytest.mark.parametrize("name", ["hf://attnsae-test-org/no-such-repo/layer3", "attnsae-test-org/no-such-repo:run.pt"])
def test_hub_path_offline_fails_with_one_line(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)  # so the name cannot resolve to a local path
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True, raising=False)  # read once at import time
    with pytest.raises(AttnsaeError, match=r"could not download SAE .*offline\?") as excinfo:
        load_sae(name)
    one_line_error(excinfo)
