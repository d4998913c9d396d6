"""Peak host memory (RSS) of a whole ``vaefix reconstruct`` run on one long file (issue 22, item 3).

For each rate and length (default 16 kHz, 1, 10 and 60 minutes) a synthetic file (a 220 Hz tone
with a slow tremolo plus noise, written in blocks) is made, then ``python -m vaefix_pl.cli
reconstruct FILE --model TINY --out OUT --accelerator cpu`` runs in a child process with the tiny
model of that rate (``vaefix_pl.testing``: 16 kHz AudioLDM2-shaped, 48 kHz audioldm_48k-shaped) and
every default metric, and its peak RSS is read with ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``
(each run in its own measuring child, so the counter is that run's alone). Flat memory means the
10- and 60-minute peaks stay near the 1-minute one.

    python benchmarks/long_memory.py                              # 16 kHz: 1, 10, 60 minutes
    python benchmarks/long_memory.py --rates 48000 --minutes 1 10
    python benchmarks/long_memory.py --minutes 1 10 --json mem.json
    python benchmarks/long_memory.py --minutes 60 --threads 16          # a bigger CPU box
    python benchmarks/long_memory.py --minutes 1 10 60 --accelerator gpu  # models on the GPU (host RSS)
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


def _measure(cmd: list[str], env: dict[str, str]) -> tuple[int, float, int, str]:
    """``(peak RSS bytes, wall seconds, return code, stderr tail)`` of ``cmd`` run as a child of a fresh child."""
    code = (
        "import resource, subprocess, sys, json, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
        "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,"
        " time.perf_counter() - t, p.returncode, p.stderr[-2000:]]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cmd)], env=env, capture_output=True, text=True
    )
    peak, wall, rc, err = json.loads(out.stdout.strip().splitlines()[-1])
    return int(peak), float(wall), int(rc), err


def write_long_file(path: Path, minutes: float, rate: int, block_s: float = 60.0) -> None:
    """The benchmark's signal, written block by block (the parent never holds the whole file)."""
    import numpy as np
    import soundfile as sf

    n = int(minutes * 60 * rate)
    rng = np.random.default_rng(0)
    step = int(block_s * rate)
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as fh:
        for a in range(0, n, step):
            t = np.arange(a, min(n, a + step)) / rate
            x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
            fh.write((x + 0.05 * rng.standard_normal(t.shape[0])).astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    ap.add_argument("--rates", type=int, nargs="+", default=[16000], choices=[16000, 48000])
    ap.add_argument("--json", default=None)
    ap.add_argument("--accelerator", default="cpu", help="the run's --accelerator (cpu, gpu)")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the run")
    ap.add_argument("--keep", default=None, help="folder for the files and outputs (default: a temp folder)")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from vaefix_pl.testing import write_tiny_audioldm2, write_tiny_audioldm_48k

    rows = []
    with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
        tmp = Path(tmp)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": str(args.threads),
        }
        for rate in args.rates:
            writer = write_tiny_audioldm2 if rate == 16000 else write_tiny_audioldm_48k
            model = writer(tmp / f"tiny{rate}", seed=0)
            for minutes in args.minutes:
                wav = tmp / f"long_{rate}_{minutes:g}min.wav"
                write_long_file(wav, minutes, rate)
                out = tmp / f"out_{rate}_{minutes:g}"
                cmd = [sys.executable, "-m", "vaefix_pl.cli", "reconstruct", str(wav), "--model", str(model),
                       "--out", str(out), "--accelerator", args.accelerator, "--num-workers", "0"]  # fmt: skip
                peak, wall, rc, err = _measure(cmd, env)
                ok = rc == 0 and (out / "metrics.csv").is_file()
                rows.append(
                    {
                        "rate": rate,
                        "minutes": minutes,
                        "peak_rss_mib": peak / 2**20,
                        "wall_s": wall,
                        "rc": rc,
                        "ok": ok,
                    }
                )
                print(
                    f"{rate:6d} Hz {minutes:6g} min  peak RSS {peak / 2**20:7.0f} MiB  wall {wall:7.1f} s  rc {rc}",
                    flush=True,
                )
                if not ok:
                    print(err, file=sys.stderr)
                wav.unlink()
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
