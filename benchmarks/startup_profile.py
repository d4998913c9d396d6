"""Where the start-up of one ``vaefix reconstruct`` goes: imports by package, and a cProfile of the run.

Three fresh processes on one 10.24 s clip: a plain timed run, one under ``python -X importtime``
(summed per top-level package, self time), and one under cProfile (top functions by cumulative time).

    python benchmarks/startup_profile.py --work /tmp/sp --out results_dir [--tiny] [-- extra vaefix flags]
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cli_wall import write_clips, write_models  # noqa: E402


def importtime_by_package(stderr: str) -> dict[str, float]:
    """Self import time (s) per top-level package from ``-X importtime`` output."""
    per: dict[str, float] = collections.defaultdict(float)
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        try:
            self_us, _cum, name = (s.strip() for s in line[len("import time:") :].split("|"))
            per[name.strip().split(".")[0]] += int(self_us) / 1e6
        except ValueError:
            continue
    return dict(sorted(per.items(), key=lambda kv: -kv[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("extra", nargs="*")
    a = p.parse_args()
    work, out = Path(a.work), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = write_models(work / ("tiny" if a.tiny else "full"), a.tiny)
    clip = write_clips(work / "clips", 1, 10.24)[0]
    args = ["reconstruct", str(clip), "--model", str(model), "--out", str(work / "o"), *a.extra]
    call = f"from vaefix_pl.cli import main; main({args!r})"
    res: dict = {"args": args}

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", call], capture_output=True, text=True)
    res["plain_wall_s"] = time.perf_counter() - t0
    res["plain_rc"] = r.returncode
    (out / "plain_stdout.txt").write_text(r.stdout + "\n---\n" + r.stderr)

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", call], capture_output=True, text=True)
    res["importtime_wall_s"] = time.perf_counter() - t0
    per = importtime_by_package(r.stderr)
    res["import_s_total"] = sum(per.values())
    res["import_s_by_package"] = {k: round(v, 3) for k, v in list(per.items())[:25]}

    prof = out / "run.prof"
    pcall = f"import cProfile; cProfile.run({call!r}, {str(prof)!r})"
    subprocess.run([sys.executable, "-c", pcall], capture_output=True, text=True)
    import pstats

    with open(out / "cprofile_top.txt", "w") as fh:
        pstats.Stats(str(prof), stream=fh).sort_stats("cumulative").print_stats(90)
    prof.unlink(missing_ok=True)
    (out / "startup_profile.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
