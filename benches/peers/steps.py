"""The timing the peer scripts share: a warm-up, then 7 timed chunks of about 0.3 s of steps;
prints the median per-step time and the spread."""

import statistics
import time
from typing import Callable


def time_steps(step: Callable[[], None], label: str) -> None:
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    per = (time.perf_counter() - t0) / 3
    reps = max(3, int(0.3 / max(per, 1e-7)))
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
        f"{label}: {med * 1e6:.1f} us per step "
        f"(min {min(chunks) * 1e6:.1f}, max {max(chunks) * 1e6:.1f})"
    )
