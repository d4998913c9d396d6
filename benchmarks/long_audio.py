"""Peak memory and speed of long-file reconstruction with overlapping windows (issue 9, item 2).

Runs :class:`vaefix_pl.Reconstructor` with ``window_seconds=10.24`` on one synthetic file of each
length (default 1, 2, 5 and 10 minutes) and reports the peak memory of the call:

* CPU: each length runs in a fresh child process; peak = the process's high-water RSS during the call
  (``VmHWM``, reset through ``/proc/self/clear_refs`` right before it; ``ru_maxrss`` where that is not
  available) minus its RSS before the call (models and input already loaded).
* CUDA: ``torch.cuda.max_memory_allocated`` during the call minus the memory allocated before it.

Memory is flat when it does not grow with the length beyond a fixed number of waveform-sized buffers
(input, level-normalised copy, vocoder output, the returned waveform and reference, float64 temporaries
of the level step; the returned mels and latent are 0.4 and 0.2 of a float32 waveform each). The
table fits ``peak = a + b * samples``: ``b`` in bytes per sample (4 = one float32 waveform) is that
per-sample part, ``a`` the windowed model part, which must stay that of a single 10.24 s window
sub-batch. ``--whole`` also runs the old path (``window_seconds=None``: the file as one VAE input) for
comparison, on the lengths up to ``--whole-max-minutes``.

    python benchmarks/long_audio.py                                   # CPU, tiny models
    python benchmarks/long_audio.py --device cuda                     # H100: full-size random models
    python benchmarks/long_audio.py --device cuda --whole --whole-max-minutes 2 --json long.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vaefix_pl.core.reconstruct import Reconstructor  # noqa: E402
from vaefix_pl.testing import build_models, full_size_configs, tiny_configs  # noqa: E402

SR = 16000


def synthetic(n: int, seed: int = 0) -> torch.Tensor:
    """``(1, n)`` float32: a slow harmonic glide plus noise bursts every 0.3 s (cost does not depend on it)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = 150 + 50 * np.sin(2 * np.pi * 0.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    bursts = (np.mod(t, 0.3) < 0.03) * rng.standard_normal(n) * 0.1
    return torch.from_numpy((x + bursts).astype(np.float32))[None]


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def build(args: argparse.Namespace, window: bool) -> Reconstructor:
    configs = full_size_configs() if args.models == "full" else tiny_configs()
    vae, voc = build_models(*configs, seed=0)
    rec = Reconstructor(
        vae, voc, precision=args.precision, max_windows=args.max_windows,
        window_seconds=10.24 if window else None, window_overlap_seconds=args.overlap,
    )  # fmt: skip
    return rec.to(args.device)


def measure(args: argparse.Namespace, minutes: float, window: bool) -> dict:
    """Peak memory (bytes) and seconds of one call on a ``minutes`` long file, in this process."""
    n = int(round(minutes * 60 * SR))
    rec = build(args, window)
    x = synthetic(n).to(args.device)
    row: dict = {"minutes": minutes, "samples": n, "windowed": window}
    if window:
        lengths = torch.tensor([n])
        row["windows"] = len(rec._plan(lengths)) if bool(rec.windowed(lengths)) else 1
    try:
        if args.device == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            out = rec(x)
            torch.cuda.synchronize()
            row["seconds"] = time.perf_counter() - t0
            row["peak_bytes"] = torch.cuda.max_memory_allocated() - before
            row["method"] = "cuda.max_memory_allocated"
        else:
            exact = _reset_peak()
            before = _rss_kib("VmRSS")
            usage0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            out = rec(x)
            row["seconds"] = time.perf_counter() - t0
            peak = _rss_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            row["peak_bytes"] = (peak - (before if exact else usage0)) * 1024
            row["method"] = "VmHWM-VmRSS" if exact else "ru_maxrss delta"
        row["finite"] = bool(torch.isfinite(out.waveform).all())
    except torch.cuda.OutOfMemoryError as exc:
        row["error"] = f"CUDA out of memory: {str(exc).splitlines()[0]}"
    return row


def run_child(args: argparse.Namespace, minutes: float, window: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(minutes), "--device", args.device, "--models", args.models,
           "--precision", args.precision, "--overlap", str(args.overlap)]  # fmt: skip
    if args.max_windows is not None:
        cmd += ["--max-windows", str(args.max_windows)]
    if not window:
        cmd += ["--child-whole"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        return {"minutes": minutes, "windowed": window, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--models", choices=["tiny", "full"], default=None, help="default: tiny on cpu, full on cuda"
    )
    p.add_argument("--minutes", default="1,2,5,10")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--overlap", type=float, default=1.0, help="window overlap in seconds")
    p.add_argument("--max-windows", type=int, default=None, help="windows per sub-batch (default: 1 here)")
    p.add_argument("--whole", action="store_true", help="also run without windows (old path)")
    p.add_argument("--whole-max-minutes", type=float, default=1.0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-whole", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = args.models or ("full" if args.device == "cuda" else "tiny")
    torch.set_grad_enabled(False)
    if args.child is not None:
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
        print(json.dumps(measure(args, args.child, not args.child_whole)))
        return

    rows = []
    for m in [float(v) for v in args.minutes.split(",")]:
        runs = [True] + ([False] if args.whole and m <= args.whole_max_minutes else [])
        for window in runs:
            # CPU: a fresh process per run (RSS peaks cannot be reset across freed heap pages);
            # CUDA: the caching allocator's peak counter resets exactly, one process is enough.
            row = measure(args, m, window) if args.device == "cuda" else run_child(args, m, window)
            rows.append(row)
            if args.device == "cuda":
                torch.cuda.empty_cache()
            print(json.dumps(row), file=sys.stderr, flush=True)

    ok = [r for r in rows if r.get("windowed") and "peak_bytes" in r]
    fit = None
    if len(ok) >= 2:
        b, a = np.polyfit([r["samples"] for r in ok], [r["peak_bytes"] for r in ok], 1)
        fit = {"bytes_per_sample": float(b), "fixed_mib": float(a) / 2**20}
    dev = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"\nlong_audio: {args.models} models, {args.precision}, {dev}, window 10.24 s, overlap {args.overlap} s, "
          f"max_windows {args.max_windows}")  # fmt: skip
    print(
        "| minutes | windowed | windows | peak MiB | one float32 waveform MiB | peak / waveform | s | x real time |"
    )
    print("| ---: | :---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "peak_bytes" not in r:
            print(
                f"| {r['minutes']:g} | {'yes' if r.get('windowed') else 'no'} | | {r.get('error')} | | | | |"
            )
            continue
        wav = r["samples"] * 4 / 2**20
        peak = r["peak_bytes"] / 2**20
        rt = r["minutes"] * 60 / r["seconds"]
        print(f"| {r['minutes']:g} | {'yes' if r['windowed'] else 'no'} | {r.get('windows', 1)} | {peak:.0f} | "
              f"{wav:.1f} | {peak / wav:.1f} | {r['seconds']:.1f} | {rt:.1f} |")  # fmt: skip
    if fit:
        print(f"\nfit over the windowed runs: peak = {fit['fixed_mib']:.0f} MiB + {fit['bytes_per_sample']:.1f} B/sample "
              f"({fit['bytes_per_sample'] / 4:.1f} float32 waveforms)")  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "fit": fit, "device": dev, "models": args.models}, indent=2)
        )


if __name__ == "__main__":
    main()
