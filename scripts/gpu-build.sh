#!/usr/bin/env bash
# Builds, on a machine with Rust (no GPU or CUDA toolkit needed), everything scripts/gpu-check.sh
# runs on the GPU machine: the CUDA release builds of `ember` and `ember-loadtest` (the
# Dockerfile's command) and the CUDA test binary, stripped into target/gpu-bundle/bin and
# packed as target/gpu-bundle.tar.xz (~30 MB: the device tool carries 64 MiB at most; carry
# that file; gpu-check.sh unpacks it). About 25 minutes on 2 cores from nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=target/cuda
cargo build --release --locked --features cuda --bin ember
cargo build --release --locked --features cuda -p ember-loadtest
tests=$(cargo test --release --locked --features cuda --test cuda --no-run --message-format=json \
  | python3 -c 'import json,sys; messages = [json.loads(line) for line in sys.stdin]; print(next(m["executable"] for m in messages if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable")))')
rm -rf target/gpu-bundle && mkdir -p target/gpu-bundle/bin
install -s -m 0755 target/cuda/release/ember target/cuda/release/ember-loadtest target/gpu-bundle/bin/
install -s -m 0755 "$tests" target/gpu-bundle/bin/cuda-tests
tar -C target -cJf target/gpu-bundle.tar.xz gpu-bundle
du -sh target/gpu-bundle target/gpu-bundle.tar.xz
