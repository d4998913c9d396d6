"""Cost of the on-device metrics for one batch: each metric alone, all of them together, and the top kernels.

The e2e run (``benchmarks/e2e.py``) scores every batch with the spectral metrics inside
``predict_step``; this times them on a batch of reconstruction-like signals (a harmonic tone plus
formant pulses, and a perturbed copy) of 10.24 s at 16 kHz, CUDA events after warm-up.

    python benchmarks/metrics_bench.py --batch 64
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from timing import time_device  # noqa: E402

from vaefix_pl.metrics import compute_metrics  # noqa: E402

SPECTRAL = ["mel_distance", "mrstft_distance", "lsd", "lag", "snr"]


def signals(batch: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(n) / 16000.0
    f0 = 110 + 220 * torch.rand(batch, 1, generator=g)
    ref = sum(torch.sin(2 * torch.pi * h * f0 * t) / h for h in range(1, 6)) * 0.2
    ref = ref + 0.05 * torch.randn(batch, n, generator=g)
    est = 0.9 * ref + 0.02 * torch.randn(batch, n, generator=g)
    lengths = torch.full((batch,), n, dtype=torch.long)
    lengths[::3] = n - 7777  # some items shorter than the batch
    return ref.float().to(device), est.float().to(device), lengths.to(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--samples", type=int, default=163840)
    p.add_argument("--metrics", default=",".join(SPECTRAL))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cuda")
    p.add_argument("--profile", action="store_true", help="top kernels of all metrics together")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    dev = torch.device(args.device)
    names = args.metrics.split(",")
    ref, est, lengths = signals(args.batch, args.samples, dev)
    rows = []
    for group in [[n] for n in names] + [names]:
        t = sorted(time_device(lambda g=group: compute_metrics(ref, est, lengths, g), dev, 2, args.repeats))
        ms = t[len(t) // 2] * 1e3
        rows.append({"metrics": ",".join(group), "ms": ms})
        print(f"{','.join(group):50s} {ms:8.2f} ms per batch of {args.batch}")
    out = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "batch": args.batch,
           "samples": args.samples, "rows": rows}  # fmt: skip
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            compute_metrics(ref, est, lengths, names)
            if dev.type == "cuda":
                torch.cuda.synchronize()
        key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=25)
        print(table)
        out["profile"] = table
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
