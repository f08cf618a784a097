#!/usr/bin/env bash
# Run on the GPU machine (from the repository root), after scripts/gpu-prepare.sh filled .gpu/
# here and the call carried it: runs every mote-cuda test binary with MOTE_REQUIRE_GPU=1 (a
# skip is a failure there), then the benchmark, logging everything to $OUT/gpu-check.log.
set -u
out="${OUT:-$PWD/.gpu/out}"
mkdir -p "$out"
log="$out/gpu-check.log"
: > "$log"
say() { echo "$@" | tee -a "$log"; }
[ -d .gpu/tests ] || { say "gpu-check: .gpu/tests missing: run scripts/gpu-prepare.sh first and carry .gpu"; exit 2; }
# shellcheck disable=SC1091
. .gpu/cuda-env.sh >"$out/cuda-env.txt" 2>&1
cat "$out/cuda-env.txt" >>"$log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$log"
export MOTE_REQUIRE_GPU=1 MOTE_REQUIRE_NVRTC=1
export MOTE_CUDA_CACHE="$out/ptx-cache"
status=0
for t in .gpu/tests/*; do
    say "== $t"
    start=$(date +%s.%N)
    if timeout 240 "$t" --test-threads=1 --nocapture >>"$log" 2>&1; then
        say "   ok ($(echo "$(date +%s.%N) - $start" | bc) s)"
    else
        say "   FAILED (exit $?)"; status=1
    fi
done
# The runtime on the GPU: `mote train --device cuda` (MLP and CNN on the digits, checkpoints
# evaluated on the CPU) and `mote bench --backend cuda`, through the real binary.
export MOTE_BIN="$PWD/.gpu/mote"
for t in cli:device_cuda bench:cuda_backend; do
    bin=".gpu/runtime/${t%%:*}"
    say "== $bin ${t#*:}"
    if [ -x "$bin" ] && timeout 300 "$bin" "${t#*:}" --test-threads=1 --nocapture >>"$log" 2>&1; then
        say "   ok"
    else
        say "   FAILED"; status=1
    fi
done
grep -E "^test |test result|panicked|skipped|on cuda:" "$log" | tail -60
say "== PyTorch's conv2d layer on this GPU (the peer of mote's conv2d row)"
for py in $(find /opt /usr/local /usr/bin -maxdepth 6 -name 'python3' -type f -o -name 'python3' -type l 2>/dev/null); do
    if "$py" -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1; then
        timeout 120 "$py" benches/peers/conv2d_torch.py --device cuda 2>&1 | tee -a "$log"
        break
    fi
done
say "== bench"
timeout 300 .gpu/bench 2>&1 | tee -a "$log" || { say "   bench FAILED"; status=1; }
say "== done: status $status"
exit $status
