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


import torch
from torch import nn

from steps import time_steps


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

    time_steps(step, f"torch {torch.__version__} digits CNN step, {threads} thread(s)")

if __name__ == "__main__":
    run(2)
    run(1)
