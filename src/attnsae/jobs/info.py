"""``attnsae info``: what a model is to attnsae — its layout, its SAE input, and each stage's verdict."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelInfo:
    """``header``: lines about the model; ``stages``: each stage's line as the layout states it (exact or refused);
    ``checks``: with ``check``, each stage measured against a direct computation (:mod:`attnsae.jobs.exactness`)."""

    header: list[str]
    stages: list[str]
    checks: list = field(default_factory=list)

    @property
    def mismatched(self) -> list[str]:
        """The stages that disagree with their direct computation (a bug)."""
        return [c.stage for c in self.checks if c.status == "mismatch"]


def model_info(model_path: str, device: str = "cpu", check: bool = False) -> ModelInfo:
    """Load ``model_path`` and describe it; with ``check`` also run every stage on a few random contexts."""
    from attnsae.corpus import bos_token_id
    from attnsae.models import load_model, model_name
    from attnsae.models.architecture import describe

    model = load_model(model_path, device=device)
    c = model.cfg
    lines = describe(model).lines()
    bos = bos_token_id(model.tokenizer)
    header = [f"model      {model_name(model)}", *(line for line in lines if not line.startswith("  ")),
              f"vocab      {c.d_vocab}   n_ctx {c.n_ctx}   BOS {model.tokenizer.convert_ids_to_tokens(bos)!r} "
              f"(id {bos})",
              f"SAE input  blocks.{{L}}.attn.hook_z  (d_in = n_heads * d_head = {c.n_heads * c.d_head})"]
    info = ModelInfo(header, [line for line in lines if line.startswith("  ")])
    if check:
        from attnsae.jobs.exactness import check_stages

        info.checks = check_stages(model)
    return info
