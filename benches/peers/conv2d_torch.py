"""PyTorch's time for issue 6's conv2d benchmark, on the same machine as `mote bench conv2d`.

One conv2d layer, batch 64, 32 -> 64 channels, 3x3, padding 1, 32x32 images, no bias, f32:
forward, mean, backward (gradients of the input and of the weight). Prints the median and the
spread of the per-iteration time over 7 timed chunks after a warm-up: on the CPU for 2 threads
and 1, or on the GPU with `--device cuda` (what `mote bench --backend cuda conv2d` compares
with; `scripts/gpu-check.sh` runs it there).

With `--stride 2`, the downsampling layer of `cargo run --release -p mote-runtime --example
conv_kernels -- 3 2` instead (64 -> 128 channels, 3x3, stride 2, padding 1, 32x32 -> 16x16).

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch
    /tmp/torchenv/bin/python benches/peers/conv2d_torch.py [--device cuda] [--stride 2]
"""

import statistics
import sys
import time

import torch


def run(threads: int, device: str = "cpu", stride: int = 1) -> None:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    ci, co = (32, 64) if stride == 1 else (64, 128)
    x = (torch.rand(64, ci, 32, 32, generator=g) - 0.5).to(device).requires_grad_(True)
    w = (torch.rand(co, ci, 3, 3, generator=g) - 0.5).to(device).requires_grad_(True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    reps = 20 if device == "cuda" else 5

    def step() -> None:
        x.grad = None
        w.grad = None
        y = torch.nn.functional.conv2d(x, w, padding=1, stride=stride)
        y.mean().backward()

    for _ in range(reps):
        step()
    sync()
    chunks = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        sync()
        chunks.append((time.perf_counter() - t0) / reps)
    med = statistics.median(chunks)
    where = torch.cuda.get_device_name() if device == "cuda" else f"{threads} thread(s)"
    print(
        f"torch {torch.__version__} conv2d stride {stride} fwd+bwd, {where}: "
        f"{med * 1e3:.2f} ms (min {min(chunks) * 1e3:.2f}, max {max(chunks) * 1e3:.2f})"
    )


if __name__ == "__main__":
    stride = int(sys.argv[sys.argv.index("--stride") + 1]) if "--stride" in sys.argv else 1
    if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "cuda":
        run(1, "cuda", stride)
    else:
        for t in (2, 1):
            run(t, "cpu", stride)
