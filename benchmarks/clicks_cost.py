"""Cost of ``added_clicks``: peak RSS on one long item and CPU time per batch.

Each measurement runs in a fresh subprocess (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), so the
peak is the metric's own plus the interpreter and torch. Run from the repository root::

    python benchmarks/clicks_cost.py [--minutes 1 10] [--batch 8] [--seconds 10.24]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_RSS = """
import resource, sys, time, torch
sys.path.insert(0, {root!r})
from vaefix_pl.metrics.registry import compute_metrics
torch.manual_seed(0)
n = int({minutes} * 60 * 16000)
ref = torch.randn(1, n) * 0.1
est = ref + 0.001 * torch.randn(1, n)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
out = compute_metrics(ref, est, torch.tensor([n]), names=["clicks_added_per_s"])
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print({{"minutes": {minutes}, "peak_rss_mb": peak / 1024, "rss_before_mb": base / 1024, "seconds": dt}})
"""

_TIME = """
import sys, time, torch
sys.path.insert(0, {root!r})
from vaefix_pl.metrics import added_clicks
torch.manual_seed(0)
n = int({seconds} * 16000)
ref = torch.randn({batch}, n) * 0.1
est = ref + 0.001 * torch.randn({batch}, n)
added_clicks(ref, est)
times = []
for _ in range(3):
    t0 = time.perf_counter(); added_clicks(ref, est); times.append(time.perf_counter() - t0)
print({{"batch": {batch}, "seconds": {seconds}, "ms_per_batch": 1000 * min(times), "threads": torch.get_num_threads()}})
"""


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return eval(out.stdout.strip().splitlines()[-1])  # a dict literal printed by the child


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, nargs="*", default=[1.0, 10.0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.24)
    args = p.parse_args(argv)
    rows = [_run(_RSS.format(root=str(ROOT), minutes=m)) for m in args.minutes]
    rows.append(_run(_TIME.format(root=str(ROOT), batch=args.batch, seconds=args.seconds)))
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
