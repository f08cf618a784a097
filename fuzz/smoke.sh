#!/usr/bin/env bash
# Bounded fuzz smoke run for CI: builds the fuzz crate, replays saved inputs through the
# harness with `cargo test`, then runs each libFuzzer target for a short, bounded time.
#
#   fuzz/smoke.sh                       # 30 s per target (at most FUZZ_RUNS executions)
#   FUZZ_TIME=120 fuzz/smoke.sh         # longer
#   FUZZ_TARGETS="ops" fuzz/smoke.sh    # one target
#
# cargo-fuzz is installed if missing (`cargo install cargo-fuzz --locked`: about 30 s to a few
# minutes, depending on the machine and on whether its crates are cached). cargo-fuzz passes
# nightly-only flags (`-Zsanitizer=address`); on a stable toolchain RUSTC_BOOTSTRAP=1 makes
# rustc accept them. Exits non-zero when a build fails or a target finds a crash (the input is
# saved under fuzz/artifacts/<target>/; `cargo test --manifest-path fuzz/Cargo.toml` replays
# it without libFuzzer).
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_TIME="${FUZZ_TIME:-30}"
FUZZ_RUNS="${FUZZ_RUNS:-1000000}"
FUZZ_TARGETS="${FUZZ_TARGETS:-ops blob inputs}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

t_start=$SECONDS
say() { echo "[fuzz smoke +$((SECONDS - t_start))s] $*"; }

# 1. The crate (library, targets, tests) builds and the harness's tests pass on the plain
#    toolchain, without libFuzzer: random cases, and every saved input replayed.
say "build and test the fuzz crate"
MOTE_FUZZ_CASES="${MOTE_FUZZ_CASES:-500}" cargo test --manifest-path fuzz/Cargo.toml --locked --release

# 2. cargo-fuzz.
if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  t0=$SECONDS
  cargo install cargo-fuzz --locked
  say "installed cargo-fuzz in $((SECONDS - t0))s"
fi
if ! rustc --version | grep -q nightly; then
  export RUSTC_BOOTSTRAP=1
fi

# 3. Each target, bounded by time and by executions; the committed seeds as a second corpus.
for target in $FUZZ_TARGETS; do
  mkdir -p "fuzz/corpus/$target"
  seeds=()
  if [ -d "fuzz/seeds/$target" ]; then
    seeds=("fuzz/seeds/$target")
  fi
  # -max_len: inputs of `inputs` hold whole checkpoints (its seeds are 2.1 to 2.6 KB; cut to
  # 1024 bytes, none got past the safetensors parser); the others' fit in 1024.
  max_len=1024
  if [ "$target" = inputs ]; then
    max_len=8192
  fi
  say "fuzzing $target for ${FUZZ_TIME}s (at most $FUZZ_RUNS runs, inputs of at most $max_len bytes)"
  t0=$SECONDS
  # -timeout: one input running a minute is a hang, reported as a failure with the input saved
  # (units normally take well under a millisecond; a 48 s one was a real defect once).
  cargo fuzz run "$target" "fuzz/corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$FUZZ_TIME" -runs="$FUZZ_RUNS" -max_len="$max_len" -print_final_stats=1 \
    -timeout=60
  say "$target done in $((SECONDS - t0))s"
done
say "all done"
