"""Bare steady state with cuDNN's default heuristic against its heuristic mode B, no autotuning.

Without ``cudnn.benchmark`` cuDNN runs the first algorithm its heuristic ranks best. torch reads
``TORCH_CUDNN_USE_HEURISTIC_MODE_B`` once per process, so each run is its own process, alternating
the two modes (``--rounds`` of each). Full-size AudioLDM2 architectures, random weights (seed 0),
batch 64 x 10.24 s, through ``cli_wall.bare_clips_per_s`` (the bare steady state of the whole-run table).

    python benchmarks/cudnn_heuristics.py --configs bf16-compile,fp32,bf16 --rounds 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODE_B = "TORCH_CUDNN_USE_HEURISTIC_MODE_B"


def one(model: str, config: str, batch: int, repeats: int) -> float:
    """Clips/s of one bare steady state in this process."""
    from cli_wall import bare_clips_per_s, config_settings

    precision, speed = config_settings(config)
    return bare_clips_per_s(Path(model), precision, speed, batch, repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="bf16-compile,fp32,bf16")
    p.add_argument("--rounds", type=int, default=2, help="processes per mode and config (alternating)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--work", default=None, help="folder for the model (and the compile cache)")
    p.add_argument("--json", default=None)
    p.add_argument("--one", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], a.batch, a.repeats)))
        return
    from cli_wall import CLIP_S, write_models

    work = Path(a.work or tempfile.mkdtemp(prefix="cudnn_heur_"))
    model = write_models(work / "model", tiny=False)
    env = dict(os.environ)
    env.setdefault("VAEFIX_CACHE_DIR", str(work / "cache"))
    rows = []
    for config in a.configs.split(","):
        for r in range(a.rounds):
            for mode_b in (False, True) if r % 2 == 0 else (True, False):
                e = {k: v for k, v in env.items() if k != MODE_B}
                if mode_b:
                    e[MODE_B] = "1"
                cmd = [sys.executable, __file__, "--one", str(model), config]
                cmd += ["--batch", str(a.batch), "--repeats", str(a.repeats)]
                out = subprocess.run(cmd, env=e, capture_output=True, text=True, check=False)
                cps = float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
                rows.append({"config": config, "mode_b": mode_b, "clips_per_s": cps})
                print(json.dumps(rows[-1]) if cps else out.stderr[-2000:], flush=True)
    print("\n| config | default heuristic x RT | mode B x RT |\n|---|---|---|")
    for config in a.configs.split(","):
        cell = []
        for mode_b in (False, True):
            got = [
                r["clips_per_s"] * CLIP_S
                for r in rows
                if r["config"] == config and r["mode_b"] == mode_b and r["clips_per_s"]
            ]
            cell.append(
                ", ".join(f"{g:.0f}" for g in got)
                + (f" (median {statistics.median(got):.0f})" if got else "")
            )
        print(f"| {config} | {cell[0]} | {cell[1]} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
