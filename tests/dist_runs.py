"""The runs tests/test_distributed.py trains on one process and on several (tests/dist_worker.py)."""

import torch

from attnsae.training.config import TrainConfig


class LayerSource:
    """Gaussian activations with a few strong directions, different per layer; batch i is a function of (i, layer).
    The activation source of the training tests (tests/test_training.py) and of the distributed ones."""

    D_IN = 16

    def __init__(self, layers=(0,), batch_size=64, crash_at=None, nan_at=None):
        self.layers, self.batch_size, self.d_in = list(layers), batch_size, self.D_IN
        self.crash_at = crash_at  # batch index at which reading fails, as if the run were killed there
        self.nan_at = nan_at  # batch index with a NaN in it

    def batches(self, start=0):
        i = start
        while True:
            if i == self.crash_at:
                raise KeyboardInterrupt
            out = {}
            for l in self.layers:
                g = torch.Generator().manual_seed(1000 * i + l)
                x = torch.randn(self.batch_size, self.d_in, generator=g)
                x[:, l % self.d_in] *= 5
                if i == self.nan_at:
                    x[3, 2] = float("nan")
                out[l] = x
            yield out
            i += 1


_LOOP = dict(layers=[0, 1, 2, 3], batch_size=64, total_tokens=64 * 30, log_every=5, ckpt_every=10, warmup_steps=5,
             progress=False, d_sae=[48])
RUNS = {
    # l1 and lr high enough that some features fire on under 1% of the window's tokens, and are resampled at step 20
    "relu": TrainConfig(architecture="relu", l1_coeffs=[20.0], lr=0.03, resample_every=10, resample_window=5,
                        resample_batches=3, dead_cutoff=0.01, **_LOOP),
    "topk": TrainConfig(architecture="topk", ks=[3], dead_window=4, resample_times=0, **_LOOP),  # AuxK from step 4
    "jumprelu": TrainConfig(architecture="jumprelu", l0_coeffs=[0.5], resample_times=0, **_LOOP),
}
