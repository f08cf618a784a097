#!/usr/bin/env bash
# `mote train --device cuda` on the emulated CUDA device (no GPU needed; see cuda/README.md),
# against the same training on the CPU: the MLP for 5 epochs and the CNN for 1. The final
# validation accuracy must agree within 0.5 points and the loss within 1%. Then a checkpoint
# saved on the device resumes on it and on the CPU.
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

# A checkpoint written from the GPU's arena (aligned allocations: each parameter's optimizer
# buffers apart, not side by side) resumes on the GPU and on the CPU as a straight CPU run goes
# on (within 0.5 points of accuracy): 2 epochs on cuda, then 2 more on each, against 4 on the
# CPU.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
best() { grep '^best epoch' | tail -1 | sed -E 's/.*accuracy ([0-9.]+)%.*/\1/'; }
LD_LIBRARY_PATH="$dev" "$mote" train --device cuda --epochs 2 --save "$tmp/a.st" >/dev/null
on_gpu=$(LD_LIBRARY_PATH="$dev" "$mote" train --device cuda --epochs 2 --resume "$tmp/a.st" --save "$tmp/b.st" | best)
on_cpu=$("$mote" train --epochs 2 --resume "$tmp/a.st" --save "$tmp/c.st" | best)
straight=$("$mote" train --epochs 4 | best)
echo "resumed from an emulated-cuda checkpoint (best validation accuracy %): on cuda $on_gpu, on the cpu $on_cpu; 4 cpu epochs $straight"
near() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && b != "" && d <= 0.5) }'; }
if ! near "$on_gpu" "$straight" || ! near "$on_cpu" "$straight"; then
  echo "  differ (or a run failed)"
  status=1
fi
exit $status
