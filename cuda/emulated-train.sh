#!/usr/bin/env bash
# `mote train --device cuda` on the emulated CUDA device (no GPU needed; see cuda/README.md),
# against the same training on the CPU: the MLP for 5 epochs and the CNN for 1. The final
# validation accuracy must agree within 0.5 points and the loss within 1%.
set -euo pipefail
cd "$(dirname "$0")/.."
dev="$PWD/target/emulated-device"
cargo build --release -q -p mote-runtime
cargo run --release -q -p mote-cuda --example emulated_device -- "$dev"
mote=target/release/mote

final() { grep '^final' | sed -E 's/.*accuracy ([0-9.]+)%, validation loss ([0-9.]+).*/\1 \2/'; }

status=0
for args in "--epochs 5" "--model cnn --epochs 1"; do
  # shellcheck disable=SC2086
  cpu=$("$mote" train $args | final)
  # shellcheck disable=SC2086
  gpu=$(LD_LIBRARY_PATH="$dev" "$mote" train --device cuda $args | final)
  echo "mote train $args: cpu (accuracy %, loss) $cpu; emulated cuda $gpu"
  if ! awk -v c="$cpu" -v g="$gpu" 'BEGIN {
      split(c, a, " "); split(g, b, " ");
      if (a[1] == "" || b[1] == "") exit 1;
      da = a[1] - b[1]; if (da < 0) da = -da;
      dl = a[2] - b[2]; if (dl < 0) dl = -dl;
      exit !(da <= 0.5 && dl <= 0.01 * a[2]) }'; then
    echo "  differ (or a run failed)"
    status=1
  fi
done
exit $status
