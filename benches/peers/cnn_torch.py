"""PyTorch's time per training step for the digits CNN of `cargo run --release -p mote-runtime
--example cnn`, on the same machine: conv 3x3 (1 -> 16, padding 1, bias) -> ReLU -> max-pool 2
-> conv 3x3 (16 -> 32, padding 1, bias) -> ReLU -> max-pool 2 -> flatten -> linear (128 -> 10),
softmax cross-entropy, Adam (lr 1e-3, fused), batch 32 of [1, 8, 8] images, f32. Inputs are
fixed random images and labels (the time of a step does not depend on the values). Prints the
median and the spread of the per-step time over 7 timed chunks after a warm-up, with 2 threads
and 1.

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch
    /tmp/torchenv/bin/python benches/peers/cnn_torch.py
"""

import statistics
import time

import torch
from torch import nn


def run(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x = torch.rand(32, 1, 8, 8)
    y = torch.randint(0, 10, (32,))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    reps = 200
    for _ in range(reps):
        step()
    chunks = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        chunks.append((time.perf_counter() - t0) / reps)
    med = statistics.median(chunks)
    print(
        f"torch {torch.__version__} digits CNN step, {threads} thread(s): {med * 1e6:.0f} us "
        f"(min {min(chunks) * 1e6:.0f}, max {max(chunks) * 1e6:.0f})"
    )


if __name__ == "__main__":
    run(2)
    run(1)
