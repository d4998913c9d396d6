"""GPU time of the on-device metrics against the reconstruction itself, batch 64 x 10.24 s.

Full-size architectures with random weights (seed 0); medians of CUDA-timed repeats after warm-up.

    python benchmarks/metrics_gpu_share.py [--precision bf16] [--batch 64] [--repeats 5]
    python benchmarks/metrics_gpu_share.py --per-metric --profile 40   # + each metric, top 40 kernels
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _time(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` on the GPU (synchronised), after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", default="bf16")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--per-metric", action="store_true", help="also time each default metric alone")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="K",
        help="print the K ops of most GPU time in the default metrics",
    )
    a = p.parse_args()
    from timing import full_size_reconstructor

    from vaefix_pl.core.metric_names import DEFAULT_METRICS
    from vaefix_pl.metrics.registry import compute_metrics

    rec = full_size_reconstructor(a.precision, a.batch)
    n = 163840
    x = 0.1 * torch.randn(a.batch, n, device="cuda")
    lengths = torch.full((a.batch,), n, device="cuda")
    res = {"card": torch.cuda.get_device_name(), "precision": a.precision, "batch": a.batch}
    with torch.inference_mode():
        out = rec(x, lengths)
        res["reconstruct_s"] = _time(lambda: rec(x, lengths), a.repeats)
        ref, est = out.reference, out.waveform
        res["metrics_default_s"] = _time(
            lambda: compute_metrics(ref, est, lengths, list(DEFAULT_METRICS)), a.repeats
        )
        res["clicks_added_s"] = _time(
            lambda: compute_metrics(ref, est, lengths, ["clicks_added_per_s"]), a.repeats
        )
        if a.per_metric:  # each alone, shared intermediates (lag, detections) included in its cost
            res["per_metric_s"] = {
                name: _time(lambda name=name: compute_metrics(ref, est, lengths, [name]), a.repeats)
                for name in DEFAULT_METRICS
            }
        if a.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                compute_metrics(ref, est, lengths, list(DEFAULT_METRICS))
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=a.profile)
            print(table, file=sys.stderr)
    res["clicks_share"] = res["clicks_added_s"] / res["reconstruct_s"]
    res["metrics_share"] = res["metrics_default_s"] / res["reconstruct_s"]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
