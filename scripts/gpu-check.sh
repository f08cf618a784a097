#!/usr/bin/env bash
# Run on the GPU machine (from the repository root), after scripts/gpu-prepare.sh filled .gpu/
# here and the call carried it: runs every mote-cuda test binary with MOTE_REQUIRE_GPU=1 (a
# skip is a failure there), then the benchmark, logging everything to $OUT/gpu-check.log.
# Every step's time limit is cut to what is left of GPU_BUDGET seconds (default 300, for a run
# call with timeout_s 340: with the machine's start, a rerun still fits the session's 15
# minutes), so that the log always comes back with a verdict per step. Only the log and the
# environment report are written under $OUT (a run returns at most 8 files).
set -u -o pipefail
out="${OUT:-$PWD/.gpu/out}"
mkdir -p "$out"
log="$out/gpu-check.log"
: > "$log"
say() { echo "$@" | tee -a "$log"; }
[ -d .gpu/tests ] || { say "gpu-check: .gpu/tests missing: run scripts/gpu-prepare.sh first and carry .gpu"; exit 2; }
# The binaries must be those of these sources (a prepare before the last edit tests old code).
if [ ! -f .gpu/SUMS ]; then
    say "gpu-check: .gpu/SUMS missing: .gpu is from an older gpu-prepare.sh; run it again"
    exit 2
fi
if ! sha1sum --quiet -c .gpu/SUMS >>"$log" 2>&1; then
    say "gpu-check: the sources changed since scripts/gpu-prepare.sh built .gpu (above): run it again"
    exit 2
fi
deadline=$(($(date +%s) + ${GPU_BUDGET:-300}))
# Seconds a step may take: `max`, or what is left of the budget.
limit() {
    local left=$((deadline - $(date +%s)))
    if [ "$left" -lt "$1" ]; then echo $((left > 1 ? left : 1)); else echo "$1"; fi
}
# shellcheck disable=SC1091
. .gpu/cuda-env.sh >"$out/cuda-env.txt" 2>&1
cat "$out/cuda-env.txt" >>"$log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$log"
export MOTE_REQUIRE_GPU=1 MOTE_REQUIRE_NVRTC=1 NCCL_DEBUG=WARN
export MOTE_CUDA_CACHE=/tmp/mote-ptx-cache
# The driver's JIT cache (PTX to SASS) somewhere writable, so that each backend a test creates
# does not JIT the kernels again.
export CUDA_CACHE_PATH=/tmp/mote-nv-cache CUDA_CACHE_MAXSIZE=1073741824
status=0
# A fault such as a misaligned address poisons the process's CUDA context: every later test of
# the same binary then fails too. A binary that fails is run again one test per process, so
# that the log names the tests that fail on their own.
one_by_one() {
    local t=$1 name
    for name in $("$t" --list --format terse 2>/dev/null | sed -n 's/: test$//p'); do
        if [ "$(limit 20)" -lt 5 ]; then say "   (no time left for the other tests one by one)"; return; fi
        if timeout "$(limit 60)" "$t" --exact "$name" --test-threads=1 --nocapture >>"$log" 2>&1; then
            say "   alone: ok     $name"
        else
            say "   alone: FAILED $name (exit $?)"
        fi
    done
}
# The tests of the newest code first; NCCL last: a hang in its set-up must not cost the others.
order() {
    local all first
    all=$(ls .gpu/tests/*)
    for first in fused training ops conv layers; do echo "$all" | grep -- "-$first\$"; done
    echo "$all" | grep -v -E -- "-(fused|training|ops|conv|layers|nccl)\$"
    echo "$all" | grep -- "-nccl\$"
}
for t in $(order); do
    say "== $t"
    start=$(date +%s%N)
    if timeout "$(limit 150)" "$t" --test-threads=1 --nocapture >>"$log" 2>&1; then
        say "   ok ($(( ($(date +%s%N) - start) / 1000000 )) ms)"
    else
        say "   FAILED (exit $?)"; status=1
        one_by_one "$t"
    fi
done
# The runtime on the GPU: `mote train --device cuda` (MLP and CNN on the digits, checkpoints
# evaluated on the CPU) and `mote bench --backend cuda`, through the real binary.
export MOTE_BIN="$PWD/.gpu/mote"
for t in cli:device_cuda bench:cuda_backend; do
    bin=".gpu/runtime/${t%%:*}"
    say "== $bin ${t#*:}"
    if [ -x "$bin" ] && timeout "$(limit 200)" "$bin" "${t#*:}" --test-threads=1 --nocapture >>"$log" 2>&1; then
        say "   ok"
    else
        say "   FAILED"; status=1
    fi
done
grep -E "^test |test result|panicked|skipped|on cuda:" "$log" | tail -60
# One process per workload, the targets' first: a fault in one (a poisoned context) or a time
# limit (the report prints at the end) then costs that workload alone.
for w in W-seed W-digits W-mnist W-large-fp32 W-large-tf32 W-large-bf16 W-large-tf32-in-place \
    W-large-fp32-unaligned conv2d; do
    say "== bench $w"
    if [ "$(limit 30)" -lt 10 ]; then say "   skipped: no time left"; status=1; continue; fi
    timeout "$(limit 90)" .gpu/bench "$w" 2>&1 | tee -a "$log" || { say "   bench $w FAILED"; status=1; }
done
say "== PyTorch's conv2d layer on this GPU (the peer of mote's conv2d row)"
found=""
for py in $(find /opt /usr/local /usr/bin -maxdepth 6 -name 'python3' -type f -o -name 'python3' -type l 2>/dev/null); do
    [ "$(limit 30)" -ge 30 ] || { say "   skipped: no time left"; found=skip; break; }
    if timeout 30 env -u LD_LIBRARY_PATH "$py" -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1; then
        found=$py
        # Without the toolkit's paths, which could shadow the wheel's own CUDA libraries.
        timeout "$(limit 90)" env -u LD_LIBRARY_PATH "$py" benches/peers/conv2d_torch.py \
            --device cuda 2>&1 | tee -a "$log"
        break
    fi
done
[ -n "$found" ] || say "   no python3 with PyTorch and CUDA found"
say "== done: status $status"
exit $status
