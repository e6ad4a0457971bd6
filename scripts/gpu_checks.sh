#!/usr/bin/env bash
# The GPU checks of issue 16, for a lent GPU machine (one call of the device tool): the GPU-marked tests, the
# sparse-kernel training steps against SAELens if it is installed, and the SmolLM2 all-layer training rate on one GPU.
# usage: bash scripts/gpu_checks.sh  (from the repository root; SmolLM2 must be fetched already: it is in
#        ~/.cache/attnsae, or pass ATTNSAE_HOME)
set -uo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -m pytest -q -m gpu tests/test_gpu.py
python benchmarks/train_throughput.py --device cuda --steps 10
# SmolLM2, all 30 layers, TopK k 32, 8x expansion, 4096-token batches, 2M tokens on one GPU; tokens/s from metrics
out=$(mktemp -d)
time attnsae train --device cuda --model smollm2-135m --source english --layers $(seq 0 29) --architecture topk \
    --ks 32 --total-tokens 2000000 --batch-size 4096 --log-every 20 --no-progress --out "$out" >/dev/null
python - "$out" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
tps = recs[-1]["tokens_per_s"]
print(f"SmolLM2 all 30 layers on one GPU: {tps:,.0f} training tokens/s (each SAE sees every token); "
      f"1e8 tokens would take {1e8 / tps / 3600:.2f} h")
PY
