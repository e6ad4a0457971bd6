"""attnsae: sparse autoencoders on transformer attention outputs (``blocks.{L}.attn.hook_z``)."""

from attnsae.errors import AttnsaeError

__version__ = "0.1.0"


def load_model(name_or_path=None, device="cpu", dtype="float32"):
    """Load a TransformerLens ``TransformerBridge``; no argument gives the shipped reference model.

    See :func:`attnsae.models.load_model`.
    """
    from attnsae.models import load_model as _load

    return _load(name_or_path, device=device, dtype=dtype)


__all__ = ["AttnsaeError", "load_model", "__version__"]
