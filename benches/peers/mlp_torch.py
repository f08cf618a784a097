"""PyTorch's time for the MLP workloads of WORKLOADS.md, on the same machine as `mote bench`.

A whole training step as WORKLOADS.md defines it (gradients cleared, forward, loss, backward,
Adam with lr 1e-3, betas 0.9/0.999, eps 1e-8, fused), f32, inputs and targets drawn once.
Prints the median and the spread of the per-step time over 7 timed chunks after a warm-up, for
2 threads and 1, eager mode (the WORKLOADS.md column).

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch
    /tmp/torchenv/bin/python benches/peers/mlp_torch.py [W-seed W-digits W-mnist W-large]
"""

import sys

import torch

from steps import time_steps

# name: (layer sizes, loss, batch)
WORKLOADS = {
    "W-seed": ([8, 10, 1], "mse", 64),
    "W-digits": ([64, 32, 10], "xent", 32),
    "W-mnist": ([784, 256, 128, 10], "xent", 128),
    "W-large": ([1024, 4096, 4096, 1024], "mse", 256),
}


def run(name: str, threads: int) -> None:
    torch.set_num_threads(threads)
    sizes, loss_kind, batch = WORKLOADS[name]
    g = torch.Generator().manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i + 2 < len(sizes):
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, fused=True)
    x = torch.rand(batch, sizes[0], generator=g) * 2 - 1
    if loss_kind == "mse":
        y = torch.rand(batch, sizes[-1], generator=g) * 2 - 1
        loss_fn = torch.nn.functional.mse_loss
    else:
        y = torch.randint(0, sizes[-1], (batch,), generator=g)
        loss_fn = torch.nn.functional.cross_entropy

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    # About 2 s of timed steps in all.
    time_steps(step, f"torch {torch.__version__} {name}, {threads} thread(s)")

if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if a in WORKLOADS] or list(WORKLOADS)
    for n in names:
        for t in (2, 1):
            run(n, t)
