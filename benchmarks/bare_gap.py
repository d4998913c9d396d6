"""Where the bare steady state loses time against the GPU's own work: host waits, idle gaps, clocks.

One process, one setting: full-size AudioLDM2 architectures with random weights (seed 0), batch 64 x
10.24 s, the ``--config`` preset (``cli_wall.py`` names) plus ``--overrides`` (``optimize()`` settings,
e.g. ``'{"compile": "reduce-overhead"}'`` for CUDA graphs, ``'{"narrow_convs": {"64x3": "phase2"}}'``
for a narrow-conv table by ``channels x kernel``). It reports:

- clips/s in alternating rounds with the lengths on the device (what ``cli_wall.bare_clips_per_s``
  passed until 2026-12-01: the forward copies them to the host, which waits for the GPU) and on the
  host (what ``ReconstructionModule`` passes);
- the synchronisations of one call (``torch.cuda.set_sync_debug_mode``), with where they come from;
- one profiled run of ``--profile-batches`` calls: the kernel sum, the busy time (union of kernel
  intervals), the idle time, the largest idle gaps and the kernels by category and by name;
- SM clock, power and clock-event reasons sampled by ``nvidia-smi`` during the timed rounds.

    python benchmarks/bare_gap.py --config bf16-compile --json gap.json
    python benchmarks/bare_gap.py --smoke          # CPU, tiny models, checks the plumbing
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

SMI_FIELDS = "clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active"


def category(name: str) -> str:
    """A kernel name's kind (Triton first: Inductor names fused kernels after their ops)."""
    k = name.lower()
    if k.startswith("triton"):
        return "triton"
    if "fmha" in k or "flash" in k or "attention" in k:
        return "attention"
    if any(w in k for w in ("xmma", "cutlass", "conv", "implicit", "wgrad", "dgrad")):
        return "convolution"
    if any(w in k for w in ("gemm", "nvjet", "cublas")):
        return "gemm"
    if "fft" in k:
        return "fft"
    if "copy" in k or "nchwtonhwc" in k or "nhwctonchw" in k:
        return "copies/layout"
    return "other (eager element-wise, reductions)"


def busy_profile(step, n: int, top: int) -> dict:
    """Profile ``n`` calls of ``step``: kernel sum, busy time (union of kernel intervals), span, the
    largest idle gaps (with the kernels around them) and the kernels by category and name (ms per call)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    kernels = sorted(
        (e.time_range.start, e.time_range.end, e.name)
        for e in prof.events()
        if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start
    )
    if not kernels:
        return {}
    busy, gaps, end, prev = 0.0, [], kernels[0][0], ""
    for s, e, name in kernels:
        if s > end:
            gaps.append((s - end, prev, name))
        busy += max(0.0, e - max(s, end))
        end, prev = max(end, e), name
    span = end - kernels[0][0]
    by_name: dict[str, list] = {}
    for s, e, name in kernels:
        c = by_name.setdefault(name, [0, 0.0])
        c[0] += 1
        c[1] += (e - s) / 1e3 / n
    cats: dict[str, float] = {}
    for name, (_, ms) in by_name.items():
        cats[category(name)] = cats.get(category(name), 0.0) + ms
    gaps.sort(reverse=True)
    return {
        "calls": n,
        "kernel_sum_ms": sum(e - s for s, e, _ in kernels) / 1e3 / n,
        "busy_ms": busy / 1e3 / n,
        "span_ms": span / 1e3 / n,
        "idle_ms": (span - busy) / 1e3 / n,
        "gaps_over_50us": sum(1 for g in gaps if g[0] > 50) / n,
        "largest_gaps": [{"us": g, "after": a[:80], "before": b[:80]} for g, a, b in gaps[:top]],
        "categories_ms": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
        "kernels": {k[:120]: v for k, v in sorted(by_name.items(), key=lambda kv: -kv[1][1])[: 4 * top]},
    }


def sync_sites(step) -> list[str]:
    """``file:line`` of every synchronising CUDA operation in one call of ``step``."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
            torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]


class Smi:
    """``nvidia-smi`` sampling every 100 ms in the background (nothing on a machine without it)."""

    def __init__(self) -> None:
        fields = SMI_FIELDS
        try:
            probe = ["nvidia-smi", "--query-gpu=clocks_event_reasons.active", "--format=csv"]
            if subprocess.run(probe, capture_output=True, check=False).returncode != 0:  # older drivers' name
                fields = fields.replace("clocks_event_reasons", "clocks_throttle_reasons")
        except OSError:
            pass
        cmd = ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-lms", "100"]
        try:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.proc = None

    def stop(self) -> dict:
        if self.proc is None:
            return {}
        self.proc.terminate()
        out = self.proc.communicate(timeout=10)[0]
        rows = [r.split(", ") for r in out.strip().splitlines() if r.count(",") == 4]
        vals = [r for r in rows if all(v.strip() not in ("", "[N/A]") for v in r[:4])]
        if not vals:
            return {"raw": out[-500:]}
        col = lambda i: [float(r[i]) for r in vals]  # noqa: E731
        return {
            "samples": len(vals),
            "sm_mhz_median": statistics.median(col(0)),
            "sm_mhz_min": min(col(0)),
            "mem_mhz_median": statistics.median(col(1)),
            "power_w_median": statistics.median(col(2)),
            "power_w_max": max(col(2)),
            "temp_c_max": max(col(3)),
            "reasons": sorted({r[4].strip() for r in vals}),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="bf16-compile", help="a cli_wall.py config name")
    p.add_argument("--overrides", default="{}", help="JSON optimize() settings replacing the preset's")
    p.add_argument(
        "--inductor", default="{}", help="JSON torch._inductor.config settings, set before compiling"
    )
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10, help="calls per timed round")
    p.add_argument("--rounds", type=int, default=2, help="rounds per lengths placement, alternating")
    p.add_argument("--profile-batches", type=int, default=3)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models, batch 2")
    a = p.parse_args()
    from cli_wall import CLIP_S, SR, config_settings, write_models

    from vaefix_pl import Reconstructor
    from vaefix_pl.core.config import speed_settings

    cuda = torch.cuda.is_available() and not a.smoke
    device = "cuda" if cuda else "cpu"
    batch, repeats = (2, 2) if not cuda else (a.batch, a.repeats)
    precision, speed = config_settings(a.config)
    overrides = json.loads(a.overrides)
    if isinstance(overrides.get("narrow_convs"), dict):  # JSON keys "CxK" -> (channels, kernel)
        overrides["narrow_convs"] = {
            tuple(int(v) for v in key.split("x")): form for key, form in overrides["narrow_convs"].items()
        }
    model = write_models(Path(tempfile.mkdtemp(prefix="bare_gap_")) / "m", tiny=not cuda)
    inductor = json.loads(a.inductor)
    if inductor:
        import torch._inductor.config as inductor_config

        for k, v in inductor.items():
            setattr(inductor_config, k, v)
    t0 = time.perf_counter()
    rec = Reconstructor.from_pretrained(str(model), precision=precision, device=device)
    if cuda:
        rec = rec.optimize(**{**speed_settings(speed, precision), **overrides})
    n = int(round(CLIP_S * SR)) if cuda else 16000
    x = 0.1 * torch.randn(batch, n, device=device)
    placements = {"device": torch.full((batch,), n, device=device), "host": torch.full((batch,), n)}
    result: dict = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "config": a.config,
        "overrides": json.loads(a.overrides),
        "inductor": inductor,
        "batch": batch,
        "clip_s": CLIP_S,
    }
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.inference_mode():
        for _ in range(3):
            rec(x, placements["host"])
        sync()
        result["build_and_warmup_s"] = time.perf_counter() - t0
        smi = Smi() if cuda else None
        rates: dict[str, list[float]] = {k: [] for k in placements}
        order = list(placements)
        for r in range(a.rounds):
            for where in order if r % 2 == 0 else order[::-1]:
                sync()
                t = time.perf_counter()
                for _ in range(repeats):
                    rec(x, placements[where])
                sync()
                rates[where].append(batch * repeats / (time.perf_counter() - t))
        result["smi"] = smi.stop() if smi else {}
        result["x_real_time"] = {k: [round(v * CLIP_S, 1) for v in vs] for k, vs in rates.items()}
        if cuda:
            result["sync_sites_host_lengths"] = sync_sites(lambda: rec(x, placements["host"]))
            result["sync_sites_device_lengths"] = sync_sites(lambda: rec(x, placements["device"]))
            result["profile"] = busy_profile(lambda: rec(x, placements["host"]), a.profile_batches, a.top)
    prof = result.get("profile", {})
    print(json.dumps({k: v for k, v in result.items() if k != "profile"}))
    if prof:
        print(
            f"per batch: kernels {prof['kernel_sum_ms']:.1f} ms, busy {prof['busy_ms']:.1f} ms, span "
            f"{prof['span_ms']:.1f} ms, idle {prof['idle_ms']:.1f} ms ({prof['gaps_over_50us']:.0f} gaps > 50 us)"
        )
        print("categories (ms per batch):", {k: round(v, 1) for k, v in prof["categories_ms"].items()})
        for g in prof["largest_gaps"]:
            print(f"  gap {g['us']:.0f} us after {g['after'][:60]} before {g['before'][:60]}")
        print("\n| kernel | calls per batch | ms per batch |\n|---|---|---|")
        for name, (calls, ms) in list(prof["kernels"].items())[: 3 * a.top]:
            print(f"| {name[:100]} | {calls / prof['calls']:.0f} | {ms:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
