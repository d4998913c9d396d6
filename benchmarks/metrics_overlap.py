"""Does scoring batch i-1 on a side CUDA stream while batch i reconstructs hide the metrics' GPU time?

Full-size architectures with random weights (seed 0), ``--batches`` distinct batches of 64 x 10.24 s
on the GPU. Three loops, each timed from the first launch to the last synchronisation:

- ``recon``: reconstruction only (the bare steady state);
- ``serial``: reconstruction then the default metrics, per batch, on one stream (what a run does);
- ``pipelined``: reconstruction of batch i on the main stream, then batch i-1's metrics on a side
  stream that waits only for batch i-1's reconstruction.

With ``--profile`` it also prints the metrics' 20 costliest CUDA kernels and their launch count.

    python benchmarks/metrics_overlap.py [--precision bf16] [--batches 8] [--profile]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", default="bf16")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    from timing import full_size_reconstructor

    from vaefix_pl.core.metric_names import DEFAULT_METRICS
    from vaefix_pl.metrics.registry import compute_metrics

    rec = full_size_reconstructor(a.precision, a.batch)
    n = 163840
    gen = torch.Generator(device="cuda").manual_seed(0)
    xs = [0.1 * torch.randn(a.batch, n, device="cuda", generator=gen) for _ in range(a.batches)]
    lengths = torch.full((a.batch,), n, device="cuda")
    names = list(DEFAULT_METRICS)
    side = torch.cuda.Stream()
    res: dict = {"card": torch.cuda.get_device_name(), "precision": a.precision, "batch": a.batch}

    def recon_only() -> None:
        for x in xs:
            rec(x, lengths)

    def serial() -> list:
        return [compute_metrics((o := rec(x, lengths)).reference, o.waveform, lengths, names) for x in xs]

    def pipelined() -> list:
        scores, prev = [], None
        for x in xs + [None]:
            out = None
            if x is not None:
                out = rec(x, lengths)
                done = torch.cuda.Event()
                done.record()
            if prev is not None:
                p_out, p_done = prev
                side.wait_event(p_done)
                with torch.cuda.stream(side):
                    s = compute_metrics(p_out.reference, p_out.waveform, lengths, names)
                    scores.append({k: v.cpu() for k, v in s.items()})
            prev = (out, done) if x is not None else None
        torch.cuda.synchronize()
        return scores

    with torch.inference_mode():
        for fn in (recon_only, serial, pipelined):  # warm-up (kernels, cuFFT plans, allocator)
            fn()
        torch.cuda.synchronize()
        for name, fn in (("recon", recon_only), ("serial", serial), ("pipelined", pipelined)) * 2:
            t = time.perf_counter()
            out = fn()
            torch.cuda.synchronize()
            res.setdefault(f"{name}_s_per_batch", []).append((time.perf_counter() - t) / a.batches)
            if name == "serial":
                ref_scores = [{k: v.cpu() for k, v in s.items()} for s in out]
            if name == "pipelined":  # same numbers on either stream
                res["pipelined_equal"] = all(
                    torch.equal(s[k], r[k]) or torch.allclose(s[k], r[k], equal_nan=True)
                    for s, r in zip(out, ref_scores)
                    for k in r
                )
        if a.profile:
            from torch.profiler import ProfilerActivity, profile

            o = rec(xs[0], lengths)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                compute_metrics(o.reference, o.waveform, lengths, names)
                torch.cuda.synchronize()
            events = prof.key_averages()
            try:
                print(events.table(sort_by="device_time_total", row_limit=25, max_name_column_width=60))
            except Exception as exc:  # noqa: BLE001 (a profiler column name differs)
                print("no table:", exc)
            kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
            res["metric_kernels"] = len(kernels)
            res["metric_kernel_time_s"] = sum(e.device_time for e in kernels) / 1e6
    for k in [k for k in res if k.endswith("_per_batch")]:
        res[k] = min(res[k])
    res["x_rt"] = {
        k.split("_")[0]: round(a.batch * n / 16000 / res[k], 1) for k in res if k.endswith("_per_batch")
    }
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
