"""The SAE stage: the module (``model``), its sparse training path (``kernels``), file formats and model-fit checks.

``ARCHITECTURES`` lives here, free of torch, so that configs can be validated before torch is imported.
"""

ARCHITECTURES: tuple[str, ...] = ("relu", "topk", "jumprelu", "batchtopk", "matryoshka")
# a batch's top k x batch entries in training, one threshold at inference (Bussmann et al. 2024; matryoshka: 2025)
BATCH_TOPK: tuple[str, ...] = ("batchtopk", "matryoshka")
K_ARCHITECTURES: tuple[str, ...] = ("topk", *BATCH_TOPK)  # those that need k, and train with AuxK
