"""PyTorch's time for issue 6's conv2d benchmark, on the same machine as `mote bench conv2d`.

One conv2d layer, batch 64, 32 -> 64 channels, 3x3, padding 1, 32x32 images, no bias, f32:
forward, mean, backward (gradients of the input and of the weight). Prints the median and the
spread of the per-iteration time over 7 timed chunks after a warm-up, for 2 threads and 1.

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch
    /tmp/torchenv/bin/python benches/peers/conv2d_torch.py
"""

import statistics
import time

import torch


def run(threads: int) -> None:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 32, 32, 32, generator=g) - 0.5).requires_grad_(True)
    w = (torch.rand(64, 32, 3, 3, generator=g) - 0.5).requires_grad_(True)

    def step() -> None:
        x.grad = None
        w.grad = None
        y = torch.nn.functional.conv2d(x, w, padding=1)
        y.mean().backward()

    for _ in range(5):
        step()
    chunks = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(5):
            step()
        chunks.append((time.perf_counter() - t0) / 5)
    med = statistics.median(chunks)
    print(
        f"torch {torch.__version__} conv2d fwd+bwd, {threads} thread(s): "
        f"{med * 1e3:.2f} ms (min {min(chunks) * 1e3:.2f}, max {max(chunks) * 1e3:.2f})"
    )


if __name__ == "__main__":
    for t in (2, 1):
        run(t)
