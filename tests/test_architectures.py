"""The architecture matrix: on a tiny random model of every family in ``tiny_archs.FAMILIES``, every stage matches
its direct computation or refuses with exactly the architecture's one-line reason (``attnsae.jobs.exactness``), and
the verdicts are the expected ones, so that a change which flips a cell fails here.

Each model is built and loaded once per session; the whole file takes well under two minutes on two cores.
"""

from __future__ import annotations

import pytest
import tiny_archs
from conftest import run_cli

# family -> stage -> a phrase its refusal must contain; every cell not listed must be exact
REFUSED: dict[str, dict[str, str]] = {
    "bert": {"eval_ce": "attends in both directions", "rdfa": "does not add its outputs to the residual stream",
             "logit_effect": "not a linear read-out of the final norm",
             "graph": "does not add its outputs to the residual stream"},
    "gemma2": {"logit_effect": "not a linear read-out of the final norm",  # final-logit soft-capping
               "graph": "not a linear read-out of the final norm"},
    "llama_headless": {"eval_ce": "not in its checkpoint", "logit_effect": "not in the checkpoint",
                       "graph": "not in the checkpoint"},
}

# family -> (KV heads, causal, sliding window per layer, positions, (pre-norm, post-norm) of attention as printed)
LAYOUTS: dict[str, tuple[int, bool, list[int | None], str, tuple[str, str]]] = {
    "gpt2": (4, True, [None] * 3, "learned absolute", ("LayerNorm", "none")),
    "llama": (2, True, [None] * 3, "rotary", ("RMSNorm", "none")),
    "qwen2": (2, True, [None, 8, 8], "rotary", ("RMSNorm", "none")),
    "mistral": (2, True, [8, 8, 8], "rotary", ("RMSNorm", "none")),
    "gemma3": (2, True, [8, None, 8], "rotary", ("RMSNorm (1 + w)", "RMSNorm (1 + w)")),
    "olmo2": (2, True, [None] * 3, "rotary", ("none", "RMSNorm")),
    "gpt_neox": (4, True, [None] * 3, "rotary (partial", ("LayerNorm", "none")),
    "gemma2": (2, True, [8, None, 8], "rotary", ("RMSNorm (1 + w)", "RMSNorm (1 + w)")),
    "llama_headless": (2, True, [None] * 3, "rotary", ("RMSNorm", "none")),
    "bert": (4, False, [None] * 3, "learned absolute", ("none", "?")),  # post-LN: attn_out is LN(x + attn)
}


def test_tables_cover_every_family():
    assert set(LAYOUTS) == set(tiny_archs.FAMILIES) and set(REFUSED) <= set(tiny_archs.FAMILIES)


@pytest.fixture(scope="session")
def arch_models(tmp_path_factory):
    """``get(family) -> (folder, model)``: each family's tiny model, built and loaded once."""
    from attnsae.models import load_model

    root = tmp_path_factory.mktemp("archs")
    loaded: dict[str, tuple[str, object]] = {}

    def get(family: str) -> tuple[str, object]:
        if family not in loaded:
            folder = tiny_archs.build(family, root)
            loaded[family] = (folder, load_model(folder))
        return loaded[family]

    return get


@pytest.fixture(scope="session")
def matrix(arch_models):
    """``get(family) -> list[StageCheck]``, computed once per family."""
    from attnsae.jobs.exactness import check_stages

    done: dict[str, list] = {}

    def get(family: str) -> list:
        if family not in done:
            done[family] = check_stages(arch_models(family)[1])
        return done[family]

    return get


@pytest.mark.parametrize("family", tiny_archs.FAMILIES)
def test_every_stage_is_exact_or_refused_with_its_reason(family, arch_models, matrix):
    from attnsae.models.architecture import STAGES, describe

    checks = matrix(family)
    arch = describe(arch_models(family)[1])
    assert [c.stage for c in checks] == list(STAGES)
    bad = [f"{c.stage}: {c.detail}" for c in checks if c.status not in ("exact", "refused")]
    assert not bad, "\n".join(bad)
    for c in checks:
        if c.status == "refused":
            assert c.detail and "\n" not in c.detail and c.detail == arch.refusal(c.stage, arch.n_layers - 1)
        else:
            assert c.error is not None and c.error <= 1e-4, c


@pytest.mark.parametrize("family", tiny_archs.FAMILIES)
def test_verdicts_are_the_expected_ones(family, matrix):
    expected = REFUSED.get(family, {})
    got = {c.stage: c for c in matrix(family)}
    refused = {s: c.detail for s, c in got.items() if c.status == "refused"}
    assert set(refused) == set(expected), refused
    for stage, phrase in expected.items():
        assert phrase in got[stage].detail, got[stage].detail


@pytest.mark.parametrize("family", tiny_archs.FAMILIES)
def test_describe_reads_each_familys_layout(family, arch_models):
    from attnsae.models.architecture import describe

    arch = describe(arch_models(family)[1])
    kv, causal, windows, positions, (pre, post) = LAYOUTS[family]
    assert (arch.n_kv_heads, arch.causal) == (kv, causal)
    assert [b.window for b in arch.blocks] == windows
    assert arch.positional.startswith(positions), arch.positional
    assert {(_shown(b.attn_in, b.attn_in_known), _shown(b.attn_out, b.attn_out_known)) for b in arch.blocks} == \
        {(pre, post)}


def _shown(norm, known: bool) -> str:
    """A block's norm as LAYOUTS writes it: its name, "none", or "?" when no layout fitted."""
    return "?" if not known else str(norm) if norm else "none"


@pytest.mark.integration
@pytest.mark.parametrize("family", ["gemma3", "bert"])
def test_info_prints_the_layout(family, arch_models):
    from attnsae.models.architecture import describe

    folder, model = arch_models(family)
    proc = run_cli("info", "--model", folder, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = [line.rstrip() for line in proc.stdout.splitlines()]
    for line in describe(model).lines():  # layout and stage verdicts, exactly as the library reports them
        assert line in out, (line, proc.stdout)
    for head in ("attention ", "positions ", "windows ", "norms ", "LM head "):
        assert any(line.startswith(head) for line in out), (head, proc.stdout)
    assert any("KV heads" in line for line in out), proc.stdout


def test_an_encoder_starts_contexts_with_its_real_cls_token(arch_models):
    """The bridge names a BOS for BERT that is not in its vocabulary (it maps to [UNK]): contexts start with [CLS]."""
    from attnsae.corpus import bos_token_id, eot_token_id

    tok = arch_models("bert")[1].tokenizer
    assert bos_token_id(tok) == tok.cls_token_id != tok.unk_token_id
    assert eot_token_id(tok) == tok.sep_token_id


def test_a_tokenizer_without_any_start_token_is_refused():
    from transformers import PreTrainedTokenizerFast

    from attnsae.corpus import bos_token_id
    from attnsae.errors import AttnsaeError
    from attnsae.models import REFERENCE_DIR

    tok = PreTrainedTokenizerFast.from_pretrained(REFERENCE_DIR)
    tok.bos_token = tok.eos_token = tok.unk_token = None
    with pytest.raises(AttnsaeError, match="no BOS or CLS token"):
        bos_token_id(tok)


@pytest.mark.integration
def test_attribute_on_an_encoder_shows_plain_dfa_and_says_why(arch_models, tmp_path):
    """RDFA cannot split BERT's post-LN residual stream and its MLM head is no linear read-out: `attribute` prints the
    DFA terms (a depth-0 tree that closes) and one note per refusal, and exits 0."""
    import json

    from attnsae.models.architecture import describe
    from attnsae.sae.formats import save_sae
    from conftest import random_sae

    folder, model = arch_models("bert")
    sae = random_sae(model, 2)
    sae.cfg.model_name = folder
    save_sae(sae, tmp_path / "sae")
    args = ("attribute", "--sae", str(tmp_path / "sae"), "--model", folder, "--prompt", "def foo(x): return x",
            "--feature", "3", "--position", "2")
    proc = run_cli(*args, timeout=120)
    assert proc.returncode == 0, proc.stderr
    arch = describe(model)
    assert f"note: {arch.refusal('rdfa', 2)}" in proc.stdout
    assert f"note: {arch.refusal('logit_effect', 2)}" in proc.stdout
    assert "DFA terms" in proc.stdout and "direct logit effect" not in proc.stdout
    report = json.loads(run_cli(*args, "--json", timeout=120).stdout)
    assert report["closes"] and report["rdfa"]["depth"] == 0 and report["logits"] is None
    by_src = report["rdfa"]["by_src"]
    assert any(abs(v) > 0 for v in by_src[3:]), "an encoder's DFA must reach sources after the destination"


def test_dashboards_run_on_an_encoder(arch_models, tmp_path):
    """The reading job on BERT: families count later sources, logit panels are empty with the refusal recorded."""
    import json

    import torch

    from attnsae.models.architecture import describe
    from attnsae.jobs.reading import read_features
    from conftest import random_sae

    folder, model = arch_models("bert")
    tok = model.tokenizer
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(100, len(tok), (16, 24), generator=g)
    tokens[:, 0] = tok.cls_token_id
    summary = read_features(model, [random_sae(model, 1)], tokens, tmp_path / "site", progress=False)
    assert summary["families_table"] and summary["logit_effects_refused"] == describe(model).refusal("logit_effect")
    assert json.loads((tmp_path / "site" / "summary.json").read_text())["logit_effects_refused"]


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "gemma3", "olmo2"])
def test_attribute_the_explorer_and_the_dashboards_show_one_logit_effect(family, arch_models):
    """The numbers a user reads for a feature's direct logit effect are one function's (``logit_effect_matrix``,
    through the frozen final norm), whichever command or view shows them: ``attribute``'s report, the explorer's Effect
    panel and its "logit" chips, and the dashboards; on sandwich norms (gemma3, olmo2), RMSNorm with 1 + w (gemma3),
    GQA (llama, qwen2) and value biases (qwen2). The exactness check tests that function against the model."""
    import torch

    from attnsae.attribution import attribute
    from attnsae.attribution.logits import logit_effect_matrix
    from attnsae.serve.session import PromptSession
    from attnsae.studies.examples import DashboardConfig, _logit_summaries
    from conftest import random_sae

    _, model = arch_models(family)
    sae = random_sae(model, 1, d_sae=48)
    prompt = "def foo(x):\n    return x + 1\n"
    session = PromptSession(model, [sae], prompt)
    position, feature = (int(i) for i in (session.acts(1) > 0).nonzero()[0])
    effect = logit_effect_matrix(model, sae, [feature])[0]
    top = effect.topk(10)
    panel = session.effect(1, feature, position, k=10)["logit_effect"]
    report = attribute(model, sae, prompt, feature, position, depth=0).logits
    dash = _logit_summaries(model, sae, DashboardConfig())[feature]["logits"]["pos"]
    for values in (panel["top_values"], report.top_values):
        torch.testing.assert_close(torch.tensor(values), top.values)
    assert panel["top_tokens"] == report.top_tokens == top.indices.tolist() == [t for t, _ in dash]
    torch.testing.assert_close(torch.tensor([v for _, v in dash]), top.values)  # raw: the page rounds
    chip = next(e for e in session.features(k=48)["rows"][position] if e["feature"] == feature)
    scale = session.tracer.final_scale[position]
    expected = session.acts(1)[position, feature] * logit_effect_matrix(
        model, sae, [feature], tokens=[int(session.logits[position].argmax())])[0, 0] / scale
    assert chip["logit"] == pytest.approx(float(expected), rel=1e-5, abs=1e-7)


@pytest.mark.integration
def test_an_encoder_saved_without_its_mlm_head_is_known_to_have_an_untrained_head(tmp_path, arch_models):
    """Tied embeddings do not prove a head: a BERT saved as a bare BertModel loads with a random MLM transform."""
    from attnsae.models.architecture import describe
    from attnsae.models import load_model

    folder = tiny_archs.build_bert_headless(tmp_path / "bert_headless")
    arch = describe(load_model(folder))
    assert not arch.lm_head_trained
    assert describe(arch_models("bert")[1]).lm_head_trained
    info = run_cli("info", "--model", folder, timeout=120)
    assert info.returncode == 0, info.stderr
    head = next(line for line in info.stdout.splitlines() if line.startswith("LM head"))
    assert "not in the checkpoint" in head.lower(), head


def test_the_explorer_reads_an_encoder_with_plain_dfa_as_attribute_does(arch_models):
    """No refusal of the whole model: features and DFA as usual, no RDFA expansion below the (source, head) terms,
    and the Effect panel says why it has no logit effect (the MLM head is no linear read-out)."""
    from attnsae.models.architecture import describe
    from attnsae.serve.session import PromptSession
    from conftest import random_sae

    _, model = arch_models("bert")
    sae = random_sae(model, 2)
    session = PromptSession(model, [sae], "def foo(x): return x")
    rows = session.features(k=4)["rows"]
    position = next(t for t, row in enumerate(rows) if row)
    entry = rows[position][0]
    assert entry["logit"] is None
    d = session.dfa(2, entry["feature"], position)
    assert d["identity_error"] < 1e-4
    tree = session.rdfa("feature", 2, position, entry["feature"])
    assert tree["children"] and not any(c["expandable"] for c in tree["children"])
    effect = session.effect(2, entry["feature"], position)
    assert effect["logit_effect"] is None
    assert effect["logit_effect_refused"] == describe(model).refusal("logit_effect", 2)


@pytest.mark.integration
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "mistral", "gemma3", "olmo2", "gpt_neox"])
def test_qk_split_is_exact_or_refused_where_a_qk_norm_bends_the_score(family, arch_models):
    """The key path is rebuilt from the weights and checked against the hooks: rotary (full, partial), GQA and QKV
    biases fit; a q/k norm (Gemma 3, OLMo 2) is refused in one line."""
    import torch

    from attnsae.errors import AttnsaeError
    from attnsae.graph.frozen import FrozenPrompt
    from attnsae.graph.qk import QKLayer

    model = arch_models(family)[1]
    tokens = torch.randint(100, 500, (1, 20), generator=torch.Generator().manual_seed(0))
    tokens[0, 0] = model.tokenizer.bos_token_id or 0
    fp = FrozenPrompt(model, {}, tokens)
    if family in ("gemma3", "olmo2"):
        with pytest.raises(AttnsaeError, match="QK split is refused") as e:
            QKLayer(model, fp, 1)
        assert "\n" not in str(e.value)
        return
    qk = QKLayer(model, fp, 1)
    emb = next(iter(fp.embeds.values()))
    for h, t, s in ((0, 19, 3), (1, 10, 10), (qk.W_Q.shape[0] - 1, 7, 0)):
        for side, p in (("key", s), ("query", t)):  # the stream at p as two parts: one embedding, the rest
            each, const, score = qk.split(h, t, s, side, torch.stack([emb[p], fp.resid[1][p] - emb[p]]))
            assert float(each.sum()) + const == pytest.approx(score, rel=1e-4, abs=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "mistral", "gemma3", "olmo2", "gpt_neox"])
def test_linear_mlp_graphs_are_exact_in_their_linear_model_or_refused(family, arch_models):
    """With --mlp linear the graph closes and removing a node moves the target by its effect (parallel blocks too:
    GPT-NeoX's MLP reads the stream before attention); a norm after the MLP (Gemma 3, OLMo 2) is refused."""
    import torch

    from attnsae.errors import AttnsaeError
    from attnsae.graph.build import build_from
    from attnsae.graph.frozen import FrozenPrompt, measured_removals
    from attnsae.graph.target import TargetSpec, resolve

    model = arch_models(family)[1]
    tokens = torch.randint(100, 500, (1, 16), generator=torch.Generator().manual_seed(1))
    tokens[0, 0] = model.tokenizer.bos_token_id or 0
    if family in ("gemma3", "olmo2"):
        with pytest.raises(AttnsaeError, match="--mlp linear is refused"):
            FrozenPrompt(model, {}, tokens, "linear")
        return
    fp = FrozenPrompt(model, {}, tokens, "linear")
    assert fp.mlp_reads_mid == [family != "gpt_neox"] * fp.n_layers
    tgt = resolve(TargetSpec(), fp, model.tokenizer)
    g = build_from(model, fp, tgt, progress=False)
    assert g.closure < 1e-4
    base = float(tgt.frozen_value(fp))
    for i, moved in measured_removals(fp, tgt, g, ("token", "head", "mlp", "mlp_rest")):
        assert moved == pytest.approx(float(g.effect[i]), rel=1e-3, abs=1e-5 * (abs(base) + 1))
