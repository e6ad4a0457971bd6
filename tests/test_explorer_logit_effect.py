"""One direct logit effect (issue 28 §2): the explorer's Effect card, its feature chips and the dashboards give the
same numbers for the same feature, through the final norm, from attnsae.attribution.logits alone."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from attnsae.attribution.logits import DEFINITION, logit_effect_matrix
from attnsae.serve.app import create_app
from attnsae.studies.examples import DashboardConfig, _logit_summaries
from conftest import random_sae

pytestmark = pytest.mark.unit
PROMPT = "import os\nimport sys\n\ndef main(argv):\n    return os.path.join(argv[0], 'x')\n"


def test_the_card_the_chips_and_the_dashboards_share_one_logit_effect(ref_model):
    saes = [random_sae(ref_model, 0, d_sae=96, seed=2), random_sae(ref_model, 1, d_sae=96, seed=3)]
    client = TestClient(create_app(ref_model, saes), base_url="http://127.0.0.1")
    feats = client.post("/api/features", json={"prompt": PROMPT, "order": "logit", "k": 3}).json()
    t = len(feats["tokens"]) - 1
    chip = next(e for e in feats["rows"][t] if e["layer"] == 1)
    card = client.post("/api/effect", json={"prompt": PROMPT, "layer": 1, "feature": chip["feature"],
                                            "position": t, "k": 5}).json()
    le = card["logit_effect"]
    assert le["definition"] == DEFINITION and "final norm" in le["definition"]
    dash = _logit_summaries(ref_model, saes[1], DashboardConfig(n_logits=5))[chip["feature"]]["logits"]
    assert [tok for tok, _ in dash["pos"]] == le["top_tokens"]
    torch.testing.assert_close(torch.tensor([v for _, v in dash["pos"]]), torch.tensor(le["top_values"]))
    torch.testing.assert_close(torch.tensor([v for _, v in dash["neg"]]), torch.tensor(le["bottom_values"]))
    # the chip: the same effect on the position's top prediction, times the activation, over the final norm's scale
    top = feats["predictions"][t][0]["token"]
    effect = logit_effect_matrix(ref_model, saes[1], [chip["feature"]])[0]  # [d_vocab]: what the card ranks
    assert effect.topk(5).indices.tolist() == le["top_tokens"]
    with torch.no_grad():
        _, cache = ref_model.run_with_cache(torch.tensor([feats["tokens"]]), names_filter="ln_final.hook_scale")
    sigma = float(cache["ln_final.hook_scale"][0, t])
    assert chip["logit"] == pytest.approx(chip["act"] * float(effect[top]) / sigma, rel=1e-4, abs=1e-6)
