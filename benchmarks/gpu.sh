#!/usr/bin/env bash
# The H200 table in at most 8 minutes: mcjax full/learned/random (29,64,8 at batch 128) and
# resnext50_32x4d (224, batch 256) in bfloat16 and float32, next to the public PyTorch ResNeXt,
# achieved TFLOP/s against a measured bf16 matmul peak, each backend's branch formulation
# (grouped, merged, loop: mcjax.blocks.FORMULATIONS) picked by measurement per dtype
# (benchmarks/gpu_table.py says what each stage does).
#
#   benchmarks/gpu.sh [--dry-run] [OUT_DIR]
#
# OUT_DIR defaults to $OUT when set, else benchmarks/results/gpu-<date>. It receives
# rows.jsonl (every measurement, as it is made), table.md (the Markdown table) and log.txt.
# --dry-run: tiny networks and batches, a CPU run of every code path in a couple of minutes.
# Needs jax, flax, optax, orbax-checkpoint, absl-py, torch, torchvision; not ml_collections
# or tensorflow-datasets. BUDGET_S (default 480; 180 with --dry-run) is the whole budget.
set -uo pipefail

tiny=()
budget=${BUDGET_S:-480}
if [[ ${1:-} == --dry-run ]]; then
  tiny=(--tiny)
  budget=${BUDGET_S:-180}
  shift
fi
if [[ $# -gt 1 || ${1:-} == -* ]]; then
  echo "usage: benchmarks/gpu.sh [--dry-run] [OUT_DIR]" >&2
  exit 2
fi
cd "$(dirname "$0")/.." || exit 1
out=${1:-${OUT:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)

# Each stage may start work until its deadline (the share of the budget given here, counted
# from the start, so time one stage leaves unused goes to the next) and is killed at its hard
# limit; what it measured is in rows.jsonl already.
stage() {
  local name=$1 deadline_share=$2 hard_share=$3
  local deadline=$((start + budget * deadline_share / 100))
  local hard=$((start + budget * hard_share / 100 - $(date +%s)))
  if ((hard <= 0)); then
    echo "stage $name: no time left" | tee -a "$out/log.txt"
    return
  fi
  echo "== stage $name (until $((deadline - start)) s, killed at $((budget * hard_share / 100)) s)" \
    | tee -a "$out/log.txt"
  timeout --signal=KILL "$hard" python benchmarks/gpu_table.py "$name" --out "$out" \
    --deadline "$deadline" "${tiny[@]}" 2>&1 | tee -a "$out/log.txt"
}

stage torch 20 27     # bf16 peak through PyTorch; eager baselines, both layouts
stage jax 72 78       # bf16 peak through JAX; formulation picks; mcjax rows
stage compile 94 97   # torch.compile in the faster layout, while time is left
python benchmarks/gpu_table.py report --out "$out" | tee "$out/report.txt"
echo "total $(($(date +%s) - start)) s of a ${budget} s budget; rows in $out/rows.jsonl"
