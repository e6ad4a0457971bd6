"""`attnsae graph` end to end: the file it writes closes from itself, its summary is what the file holds, a failed
run keeps the previous graph, and the viewer files satisfy circuit-tracer's own schema (its pydantic models, read
from the installed `circuit-tracer` 0.5.0 package: `.ci/run` installs it without its dependencies)."""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
from pathlib import Path

import pytest

from attnsae.graph.files import closure_of
from conftest import assert_one_line_error, random_sae, run_cli

pytestmark = pytest.mark.integration

PROMPT = "for i in range(3):\n    print(i)\nfor i in range(3):\n    print"


@pytest.fixture(scope="module")
def saes(ref_model, tmp_path_factory):
    from attnsae.sae.formats import save_sae

    root = tmp_path_factory.mktemp("graph_saes")
    return [str(save_sae(random_sae(ref_model, layer, d_sae=128, seed=layer, architecture="topk", k=8),
                         root / f"L{layer}")) for layer in (0, 1)]


def circuit_tracer_models():
    """circuit-tracer's ``frontend/graph_models.py`` (pydantic only), run from its installed file."""
    spec = importlib.util.find_spec("circuit_tracer")
    if spec is None or not spec.submodule_search_locations:
        if os.environ.get("ATTNSAE_REQUIRE_CIRCUIT_TRACER") == "1":
            pytest.fail("circuit-tracer is not installed: pip install --no-deps circuit-tracer==0.5.0")
        pytest.skip("circuit-tracer is not installed (pip install --no-deps circuit-tracer==0.5.0)")
    return runpy.run_path(str(Path(spec.submodule_search_locations[0]) / "frontend" / "graph_models.py"))


def test_graph_command_writes_an_exact_file_and_viewer_files(saes, tmp_path):
    out = tmp_path / "g.json"
    proc = run_cli("graph", "--sae", *saes, "--prompt", PROMPT, "--out", str(out), "--node-threshold", "1",
                   "--edge-threshold", "1", "--viewer", str(tmp_path / "viewer"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(out.read_text())
    assert out.stat().st_size > 1 << 16  # big enough that a rerun must recognise its own file from its start
    again = run_cli("graph", "--sae", *saes, "--prompt", PROMPT, "--out", str(out), "--no-faithfulness",
                    "--no-progress")
    assert again.returncode == 0, again.stderr
    worst, n = closure_of(d)
    assert n == sum(k in ("feature", "head", "target") for k in d["nodes"]["kind"]) > 10 and worst < 1e-5
    assert d["pruning"]["nodes"] == d["pruning"]["nodes_unpruned"]
    assert f"{d['pruning']['nodes_unpruned']:,} nodes" in proc.stdout and "exact" in proc.stdout
    assert d["faithfulness"]["clean"] == pytest.approx(d["target"]["value"], rel=1e-4)
    assert len(d["faithfulness"]["one_at_a_time"]) == 10
    parts = d["decomposition"]
    assert sum(v for k, v in parts.items() if k != "total") == pytest.approx(parts["total"], rel=1e-4)

    models = circuit_tracer_models()
    viewer = json.loads((tmp_path / "viewer" / "g.json").read_text())
    model = models["Model"](**viewer)
    assert {n.feature_type for n in model.nodes} == {"cross layer transcoder", "mlp reconstruction error",
                                                     "embedding", "logit"}
    assert sum(n.is_target_logit for n in model.nodes) == 1
    ids = {n.node_id for n in model.nodes}
    assert len(ids) == len(model.nodes) and all(e["source"] in ids and e["target"] in ids for e in model.links)
    index = json.loads((tmp_path / "viewer" / "graph-metadata.json").read_text())
    assert [models["Metadata"](**g).slug for g in index["graphs"]] == ["g"]


def test_a_pruned_graph_is_small_and_a_failed_run_keeps_the_old_file(saes, tmp_path):
    out = tmp_path / "g.json"
    for _ in range(2):  # the rerun replaces its own graph and picture
        proc = run_cli("graph", "--sae", saes[1], "--prompt", PROMPT, "--out", str(out), "--png",
                       str(tmp_path / "g.png"), "--no-faithfulness", "--no-progress")
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = json.loads(out.read_text())
    assert d["sae_layers"] == [1] and d["faithfulness"] is None
    assert 0 < d["pruning"]["nodes"] < d["pruning"]["nodes_unpruned"]
    assert out.stat().st_size < 5e6
    before = out.read_bytes()
    bad = run_cli("graph", "--sae", saes[1], "--prompt", PROMPT, "--out", str(out), "--target", "1/0@999")
    assert_one_line_error(bad, "out of range")
    assert out.read_bytes() == before
