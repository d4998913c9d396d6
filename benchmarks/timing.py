"""Timing shared by the benchmarks: CUDA events after warm-up on a GPU, wall clock on the CPU."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def time_device(
    fn: Callable[[], object], device: torch.device | str, warmup: int, repeats: int
) -> list[float]:
    """Seconds per call of ``fn`` (take the median): CUDA events on a GPU, ``perf_counter`` on the CPU."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times
