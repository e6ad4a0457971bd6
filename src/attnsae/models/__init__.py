"""The model stage: load a model (``loading``: the reference model, zoo names, local folders, hub names), the
models attnsae knows by name (``zoo``), the block layout read from a model (``architecture``), its hook points
(``hooks``) and the scoped fast attention path (``fast_attention``).

The loading functions are re-exported here: ``from attnsae.models import load_model``.
"""

from attnsae.models.loading import (DTYPE_ALIASES, DTYPES, EOT_TOKEN, REFERENCE_DIR, REFERENCE_NAME, check_device,
                                    check_tokens, dtype_name, load_model, model_name, n_ctx, parse_dtype,
                                    resolve_model_path)

__all__ = ["DTYPE_ALIASES", "DTYPES", "EOT_TOKEN", "REFERENCE_DIR", "REFERENCE_NAME", "check_device", "check_tokens",
           "dtype_name", "load_model", "model_name", "n_ctx", "parse_dtype", "resolve_model_path"]
