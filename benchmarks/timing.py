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


def full_size_reconstructor(precision: str, batch: int, speed: str = "auto"):
    """A :class:`~vaefix_pl.Reconstructor` on CUDA over freshly written full-size AudioLDM2
    architectures with random weights (seed 0), optimized with the ``speed`` preset for ``batch``."""
    import tempfile
    from pathlib import Path

    from vaefix_pl import Reconstructor
    from vaefix_pl.core.config import speed_settings
    from vaefix_pl.testing import full_size_configs, write_audioldm2_folder

    folder = Path(tempfile.mkdtemp()) / "m"
    write_audioldm2_folder(folder, *full_size_configs(), seed=0)
    rec = Reconstructor.from_pretrained(str(folder), precision=precision, device="cuda")
    return rec.optimize(**speed_settings(speed, precision), batch_size=batch)
