"""The SAE stage: the module (``model``), its sparse training path (``kernels``), file formats and model-fit checks.

``ARCHITECTURES`` lives here, free of torch, so that configs can be validated before torch is imported.
"""

ARCHITECTURES: tuple[str, ...] = ("relu", "topk", "jumprelu")
