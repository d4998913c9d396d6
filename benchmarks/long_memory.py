"""Peak host memory (RSS) of a whole ``vaefix reconstruct`` run on one long 16 kHz file (issue 22, item 3).

For each length (default 1, 10 and 60 minutes) a synthetic file is written, then ``python -m
vaefix_pl.cli reconstruct FILE --model TINY --out OUT --accelerator cpu`` runs in a child process and
its peak RSS is read with ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` (each length in its own
measuring child, so the counter is that run's alone). Flat memory means the 10- and 60-minute peaks
stay near the 1-minute one.

    python benchmarks/long_memory.py                       # 1, 10, 60 minutes, tiny models, CPU
    python benchmarks/long_memory.py --minutes 1 10 --json mem.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _measure(cmd: list[str], env: dict[str, str]) -> tuple[int, float, int]:
    """``(peak RSS bytes, wall seconds, return code)`` of ``cmd`` run as a child of a fresh child."""
    code = (
        "import resource, subprocess, sys, json, time\n"
        "t = time.perf_counter()\n"
        "rc = subprocess.run(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode\n"
        "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, time.perf_counter() - t, rc]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cmd)], env=env, capture_output=True, text=True)
    peak, wall, rc = json.loads(out.stdout.strip().splitlines()[-1])
    return int(peak), float(wall), int(rc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import numpy as np
    import soundfile as sf

    sys.path.insert(0, str(ROOT))
    from vaefix_pl.testing import write_tiny_audioldm2

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = write_tiny_audioldm2(tmp / "tiny", seed=0)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
        for minutes in args.minutes:
            n = int(minutes * 60 * 16000)
            rng = np.random.default_rng(0)
            t = np.arange(n) / 16000.0
            x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
            wav = tmp / f"long_{minutes:g}min.wav"
            sf.write(wav, x, 16000, subtype="PCM_16")
            del x, t
            cmd = [sys.executable, "-m", "vaefix_pl.cli", "reconstruct", str(wav), "--model", str(model),
                   "--out", str(tmp / f"out_{minutes:g}"), "--accelerator", "cpu", "--num-workers", "0"]  # fmt: skip
            peak, wall, rc = _measure(cmd, env)
            ok = rc == 0 and (tmp / f"out_{minutes:g}" / "metrics.csv").is_file()
            rows.append({"minutes": minutes, "peak_rss_mib": peak / 2**20, "wall_s": wall, "rc": rc, "ok": ok})
            print(f"{minutes:6g} min  peak RSS {peak / 2**20:9.0f} MiB  wall {wall:7.1f} s  rc {rc}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
