"""What the benchmarks share: the median wall time of repeated calls (run as scripts, they import it from here)."""
from __future__ import annotations

import statistics
import time


def median_time(fn, repeats: int) -> float:
    """The median over `repeats` calls of fn()'s wall seconds."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
