"""When does cuDNN autotuning pay? First-call cost and steady state per batch size, tuning on vs off.

One process per (precision, benchmark flag), since cuDNN keeps its choices per process and shape.
Each batch size's first call includes the tuning for its shapes; the steady state is the median of
``--repeats`` calls after it. Full-size AudioLDM2 architectures, random weights (seed 0), 10.24 s clips,
``speed: auto`` otherwise.

    python benchmarks/autotune_sweep.py --batches 1,4,8,16,32 --precisions bf16,fp32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_process(precision: str, benchmark: bool, batches: list[int], repeats: int) -> list[dict]:
    import torch

    from vaefix_pl.core.config import speed_settings
    from vaefix_pl.core.reconstruct import Reconstructor
    from vaefix_pl.testing import build_models, full_size_configs, tiny_configs

    dev = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: tiny models, a smoke test of the script
    vae, vocoder = build_models(*(full_size_configs() if dev == "cuda" else tiny_configs()), seed=0)
    rec = Reconstructor(vae, vocoder, precision=precision).to(dev)
    rec = rec.optimize(**{**speed_settings("auto", precision), "cudnn_benchmark": benchmark})
    torch.backends.cudnn.benchmark = benchmark
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    n = 163840
    rows = []
    with torch.inference_mode():
        for b in batches:
            x = 0.1 * torch.randn(b, n, device=dev)
            lengths = torch.full((b,), n, device=dev)
            sync()
            t0 = time.perf_counter()
            rec(x, lengths)
            sync()
            first = time.perf_counter() - t0
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                rec(x, lengths)
                sync()
                times.append(time.perf_counter() - t0)
            steady = statistics.median(times)
            rows.append(
                dict(
                    precision=precision,
                    benchmark=benchmark,
                    batch=b,
                    first_s=first,
                    steady_s=steady,
                    x_real_time=b * 10.24 / steady,
                )
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", default="1,4,8,16,32")
    p.add_argument("--precisions", default="bf16,fp32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    if a.child:
        precision, flag = a.child.split(":")
        print("ROWS " + json.dumps(one_process(precision, flag == "on", batches, a.repeats)), flush=True)
        return
    rows = []
    for precision in a.precisions.split(","):
        for flag in ("off", "on"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    f"{precision}:{flag}",
                    "--batches",
                    a.batches,
                    "--repeats",
                    str(a.repeats),
                ],
                capture_output=True,
                text=True,
            )
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("ROWS ")]
            if not line:
                print(out.stderr[-3000:], file=sys.stderr)
                continue
            rows += json.loads(line[0][5:])
            print(json.dumps(rows[-len(batches) :]), flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps(rows, indent=1))
    print("| precision | batch | first call off / on (s) | steady x real time off / on |\n|---|---|---|---|")
    for precision in a.precisions.split(","):
        for b in batches:
            r = {x["benchmark"]: x for x in rows if x["precision"] == precision and x["batch"] == b}
            if len(r) == 2:
                print(
                    f"| {precision} | {b} | {r[False]['first_s']:.1f} / {r[True]['first_s']:.1f} | "
                    f"{r[False]['x_real_time']:.0f} / {r[True]['x_real_time']:.0f} |"
                )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
