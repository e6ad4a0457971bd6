#!/usr/bin/env bash
# The GPU checks (issues 16 and 25), for a lent GPU machine, as one call of the device tool (under 10 minutes on one
# H100): the GPU-marked tests (sparse kernels on CUDA with PyTorch's CSR invariant check, a training run on CUDA, the
# fused attention on CUDA), a NCCL torchrun on the reference model (2 processes when 2 GPUs are there, else 1), the
# training-step benchmarks on CUDA, and, when SmolLM2 is already fetched, its all-layer training rate. Prints one
# summary at the end.
# usage: bash scripts/gpu_checks.sh  (from the repository root)
set -uo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
log=$(mktemp -d)
summary() { printf '%-28s %s\n' "$1" "$2" >> "$log/summary"; }
gpu=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)
n_gpu=$(nvidia-smi --list-gpus | wc -l)
summary "GPU" "$gpu (x$n_gpu)"

if python -m pytest -q -m gpu tests/test_gpu.py > "$log/tests" 2>&1; then r=pass; else r=FAIL; fi
summary "GPU tests" "$r: $(tail -1 "$log/tests")"

procs=$(( n_gpu >= 2 ? 2 : 1 ))
out=$(mktemp -d)
if python -m torch.distributed.run --standalone --nproc-per-node "$procs" -m attnsae train --device cuda \
    --layers 0 1 --architecture topk --ks 16 --d-sae 2048 --batch-size 4096 --total-tokens 409600 \
    --context-size 128 --buffer-size 65536 --no-progress --out "$out/run" > "$log/nccl" 2>&1; then
  r="pass: $(python -c "import json; r=[json.loads(l) for l in open('$out/run/metrics.jsonl')]; print(f\"{r[-1]['tokens_per_s']:,} tokens/s, L0 {r[-1]['l0']:.1f}, EV {r[-1]['explained_variance']:.3f}\")")"
else r="FAIL: $(grep 'attnsae: error' "$log/nccl" | head -1)"; fi
summary "NCCL torchrun x$procs" "$r"

python benchmarks/train_throughput.py --device cuda --steps 10 > "$log/throughput" 2>&1 \
  && summary "train_throughput (cuda)" "see below" || summary "train_throughput (cuda)" "FAIL"

if [ -f "${ATTNSAE_HOME:-$HOME/.cache/attnsae}/models/smollm2-135m/model_card.json" ]; then
  out=$(mktemp -d)
  start=$(date +%s)
  attnsae train --device cuda --model smollm2-135m --source english --layers $(seq 0 29) --architecture topk \
      --ks 32 --total-tokens 2000000 --batch-size 4096 --log-every 20 --no-progress --out "$out" > /dev/null 2>&1
  tps=$(python -c "import json; r=[json.loads(l) for l in open('$out/metrics.jsonl')]; print(r[-1]['tokens_per_s'])")
  summary "SmolLM2 30 layers, 1 GPU" "$tps tokens/s ($(( $(date +%s) - start )) s for 2M tokens)"
else
  summary "SmolLM2 30 layers, 1 GPU" "skipped: not fetched on this machine"
fi

echo "== throughput"; cat "$log/throughput"
echo "== summary"; cat "$log/summary"
