"""The attribute job: one feature on one prompt explained exactly (DFA, the RDFA tree, the logit effect)."""

from __future__ import annotations

from attnsae.attribution import AttributionReport, attribute
from attnsae.attribution.inputs import check_features
from attnsae.jobs.inputs import check_saes_fit, model_for_sae
from attnsae.models import check_device
from attnsae.sae.checks import sae_layer
from attnsae.sae.formats import load_sae


def attribute_feature(sae_path: str, prompt: str, feature: int, position: int | None = None,
                      model: str | None = None, device: str = "cpu", upstream_paths: list[str] = (),
                      depth: int = 2, top_k: int = 5) -> AttributionReport:
    """``attnsae attribute``: feature ``feature`` of the SAE at ``sae_path`` on ``prompt`` (BOS prepended) at
    ``position`` (default: where it is largest), with RDFA ``depth`` / ``top_k`` through the ``upstream_paths`` SAEs
    of earlier layers. The SAE and the feature are checked before the model loads."""
    from attnsae.models import load_model  # looked up when called (tests stand a loaded model in for it)

    check_device(device)
    sae = load_sae(sae_path, device=device)
    sae_layer(sae)  # refuse an SAE on another hook, or a bad feature, before loading the model
    check_features(sae, feature)
    upstream = [load_sae(p, device=device) for p in upstream_paths]
    lm = load_model(model_for_sae(sae, model), device=device)
    check_saes_fit(lm, [sae_path, *upstream_paths], [sae, *upstream])
    return attribute(lm, sae, prompt, feature, position, depth=depth, top_k=top_k, upstream_saes=upstream)
