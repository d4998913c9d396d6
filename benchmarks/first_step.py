"""Where the first batch's extra seconds go on CUDA, in a fresh process (one mode per process).

Phase marks in seconds from process start (``VAEFIX_T0``, epoch seconds set by the caller, else the
script's own first line): ``torch`` imported, ``vaefix`` imported, models loaded, then the first and
second batch of 64 x 10.24 s reconstructed and scored (each synchronised). Modes:

- ``none``: as a run does it now;
- ``inline``: a tiny cuDNN conv, cuFFT transform and cuBLAS matmul first, each timed (library start-up);
- ``thread``: the same tiny calls in a thread started right after ``import torch``, while the main
  thread imports and loads the models.

    VAEFIX_T0=$(date +%s.%N) python benchmarks/first_step.py --mode none --precision fp32
"""

from __future__ import annotations

import os
import time

T0 = float(os.environ.get("VAEFIX_T0") or time.time())
MARKS: dict[str, float] = {}


def mark(name: str) -> None:
    MARKS[name] = round(time.time() - T0, 3)


import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

mark("torch")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def warm_libraries(dtype: torch.dtype, timed: bool) -> None:
    """One tiny call into cuDNN (conv1d, conv2d, conv_transpose1d), cuFFT and cuBLAS on cuda:0."""
    dev = torch.device("cuda", 0)
    steps = {
        "cuda_init": lambda: torch.empty(1, device=dev),
        "cudnn": lambda: (
            torch.nn.functional.conv2d(torch.ones(1, 4, 8, 8, device=dev, dtype=dtype),
                                       torch.ones(4, 4, 3, 3, device=dev, dtype=dtype), padding=1),
            torch.nn.functional.conv1d(torch.ones(1, 4, 32, device=dev, dtype=dtype),
                                       torch.ones(4, 4, 7, device=dev, dtype=dtype), padding=3),
            torch.nn.functional.conv_transpose1d(torch.ones(1, 4, 32, device=dev, dtype=dtype),
                                                 torch.ones(4, 4, 8, device=dev, dtype=dtype), stride=4),
        ),
        "cufft": lambda: torch.fft.irfft(torch.fft.rfft(torch.ones(2, 1024, device=dev)), 1024),
        "cublas": lambda: (torch.ones(16, 16, device=dev, dtype=dtype) @ torch.ones(16, 16, device=dev, dtype=dtype),
                           torch.ones(16, 16, device=dev) @ torch.ones(16, 16, device=dev)),
    }  # fmt: skip
    with torch.inference_mode():
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize(dev)
            if timed:
                MARKS[f"lib_{name}_s"] = round(time.perf_counter() - t, 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("none", "inline", "thread"), default="none")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--models", default=None, help="an AudioLDM2 folder (default: write full-size random)")
    a = p.parse_args()
    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
    thread = None
    if a.mode == "thread":
        thread = threading.Thread(target=warm_libraries, args=(dtype, False), daemon=True)
        thread.start()
    from vaefix_pl import Reconstructor
    from vaefix_pl.core.config import speed_settings
    from vaefix_pl.core.metric_names import DEFAULT_METRICS
    from vaefix_pl.metrics.registry import compute_metrics

    mark("vaefix")
    folder = Path(a.models) if a.models else Path(tempfile.mkdtemp()) / "m"
    if not (folder / "vocoder").exists():
        from vaefix_pl.testing import full_size_configs, write_audioldm2_folder

        write_audioldm2_folder(folder, *full_size_configs(), seed=0)
        mark("models_written")
    if a.mode == "inline":
        warm_libraries(dtype, True)
        mark("libraries")
    rec = Reconstructor.from_pretrained(str(folder), precision=a.precision, device="cuda")
    rec = rec.optimize(**speed_settings("auto", a.precision), batch_size=a.batch)
    mark("models_loaded")
    if thread is not None:
        thread.join()
        mark("thread_joined")
    n = 163840
    x = 0.1 * torch.randn(a.batch, n, device="cuda")
    lengths = torch.full((a.batch,), n, device="cuda")
    with torch.inference_mode():
        for i in (1, 2):
            t = time.perf_counter()
            out = rec(x, lengths)
            torch.cuda.synchronize()
            MARKS[f"recon{i}_s"] = round(time.perf_counter() - t, 3)
            t = time.perf_counter()
            compute_metrics(out.reference, out.waveform, lengths, list(DEFAULT_METRICS))
            torch.cuda.synchronize()
            MARKS[f"metrics{i}_s"] = round(time.perf_counter() - t, 3)
    mark("done")
    print(json.dumps({"mode": a.mode, "precision": a.precision, **MARKS}))


if __name__ == "__main__":
    main()
