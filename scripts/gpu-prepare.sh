#!/usr/bin/env bash
# Run HERE (the development machine, no GPU): builds the mote-cuda test binaries and the GPU
# benchmark in release mode and copies them, with ../shared/tools/cuda-env.sh, into the
# git-ignored .gpu/ folder that a GPU session carries to the GPU machine
# (run tool: carry [".gpu"], command "scripts/gpu-check.sh", timeout_s 340).
# `scripts/gpu-prepare.sh --check` says whether .gpu matches the sources as they are now.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# The source files the binaries are built from (tracked, or untracked and not ignored).
sources() { git ls-files -co --exclude-standard -- Cargo.toml Cargo.lock core cuda std-runtime benches; }
if [ "${1:-}" = "--check" ]; then
    # Whether .gpu was built from the sources as they are now (and the same file list).
    [ -f .gpu/SUMS ] || { echo "gpu-prepare: no .gpu/SUMS: run scripts/gpu-prepare.sh"; exit 1; }
    now=$(sources)
    if [ "$now" != "$(cut -c43- .gpu/SUMS)" ] || ! sha1sum --quiet -c .gpu/SUMS; then
        echo "gpu-prepare: .gpu is stale: run scripts/gpu-prepare.sh"; exit 1
    fi
    echo "gpu-prepare: .gpu matches the sources"; exit 0
fi
rm -rf .gpu && mkdir -p .gpu/tests
cargo build --release -p mote-cuda --example gpu_bench
cp target/release/examples/gpu_bench .gpu/bench
cargo test --release -p mote-cuda --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys, shutil, os
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        name = m["target"]["name"]
        if name == "emulated":
            continue  # a CPU-only test (already run here): no need to spend GPU time on it
        kind = m["target"]["kind"][0]
        dst = ".gpu/tests/%s-%s" % (kind, name)
        shutil.copy(m["executable"], dst)
        print("gpu-prepare:", dst)
'
# The `mote` binary and the runtime's end-to-end tests that use the GPU (`mote train --device
# cuda` for the MLP and the CNN, `mote bench --backend cuda`).
cargo build --release -p mote-runtime --bin mote
cp target/release/mote .gpu/mote
mkdir -p .gpu/runtime
cargo test --release -p mote-runtime --test cli --test bench --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys, shutil
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        dst = ".gpu/runtime/%s" % m["target"]["name"]
        shutil.copy(m["executable"], dst)
        print("gpu-prepare:", dst)
'
cp "${MOTE_SHARED:-$root/../shared}/tools/cuda-env.sh" .gpu/cuda-env.sh
# What the binaries were built from, which gpu-check.sh verifies on the GPU machine (no git
# there): every source file that travels (tracked, or untracked and not ignored), with its
# checksum as it is now. `scripts/gpu-prepare.sh --check` verifies here, before a device call.
sources | xargs -d '\n' sha1sum >.gpu/SUMS
du -sh .gpu
echo "gpu-prepare: ready; on the GPU machine run scripts/gpu-check.sh with carry [\".gpu\"], timeout_s 340"
