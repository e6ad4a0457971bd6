"""The SmolLM2 pipeline of tests/test_smollm2.py (train -> eval -> dashboard -> attribute, each a real ``attnsae``
command), run as one background process that tests/conftest.py starts when collection ends, so that its minute and a
half overlaps the rest of the suite; one thread, as the quickstart's.

usage: python tests/smollm2_pipeline.py ROOT   (writes ROOT/run, ROOT/eval, ROOT/dash and ROOT/steps.json)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

NAME = "smollm2-135m"


def main(root: Path) -> None:
    run = root / "run"
    sae = str(run / "layer1_topk_1152_k16")
    steps = {
        "train": ["train", "--model", NAME, "--source", "english", "--layers", "1", "--architecture", "topk", "--ks",
                  "16", "--d-sae", "1152", "--total-tokens", "163840", "--batch-size", "2048", "--lr", "2e-3",
                  "--warmup-steps", "5", "--lr-schedule", "cosine", "--resample-times", "0", "--dead-window", "20",
                  "--buffer-size", "40960", "--threads", "1", "--no-progress", "--out", str(run)],
        "eval": ["eval", "--sae", sae, "--n-tokens", "2048", "--out", str(root / "eval"), "--no-progress"],
        "dashboard": ["dashboard", "--sae", sae, "--n-tokens", "2048", "--n-top", "4", "--out", str(root / "dash"),
                      "--no-progress"],
        "attribute": ["attribute", "--sae", sae, "--prompt", "Elizabeth smiled at Darcy, and Darcy smiled at",
                      "--feature", None, "--json"],
    }
    results = {}
    for name, args in steps.items():
        if name == "attribute":  # the feature that fired most in training
            freq = json.loads((run / "layer1_topk_1152_k16" / "feature_frequency.json").read_text())
            args[args.index(None)] = str(max(range(len(freq)), key=freq.__getitem__))
        proc = subprocess.run([sys.executable, "-m", "attnsae", *args], capture_output=True, text=True, timeout=900,
                              env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
        results[name] = {"args": args, "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
        if proc.returncode:
            break
    (root / "steps.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
