"""Bare steady state of a preset against variants of it, one process each, alternating.

Each variant is a JSON object of :meth:`~vaefix_pl.core.reconstruct.Reconstructor.optimize`
settings that replace the preset's (``cli_wall.bare_clips_per_s``: full-size AudioLDM2 architectures,
random weights, batch 64 x 10.24 s). Compiled variants compile in their own process (cold), as every
process of the comparison does.

    python benchmarks/preset_ab.py --config fp32-compile --variant 'preset={}' \\
        --variant 'nhwc-off={"channels_last": false}' --rounds 1 --json ab.json
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="fp32-compile", help="a cli_wall.py config name")
    p.add_argument("--variant", action="append", required=True, help="NAME=JSON settings (repeatable)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--work", default=None, help="folder for the model")
    p.add_argument("--json", default=None)
    p.add_argument("--one", nargs=2, metavar=("MODEL", "SETTINGS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    from cli_wall import CLIP_S, bare_clips_per_s, config_settings, write_models

    precision, speed = config_settings(a.config)
    if a.one:
        print(bare_clips_per_s(Path(a.one[0]), precision, speed, a.batch, a.repeats, json.loads(a.one[1])))
        return
    variants = dict(v.split("=", 1) for v in a.variant)
    for settings in variants.values():
        json.loads(settings)  # fail before any process starts
    model = write_models(Path(a.work or tempfile.mkdtemp(prefix="preset_ab_")) / "model", tiny=False)
    env = dict(os.environ)
    env.setdefault("VAEFIX_CACHE_DIR", tempfile.mkdtemp(prefix="preset_ab_cache_"))
    rows = []
    names = list(variants)
    for r in range(a.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            cmd = [sys.executable, __file__, "--config", a.config, "--variant", "x={}", "--one", str(model)]
            cmd += [variants[name], "--batch", str(a.batch), "--repeats", str(a.repeats)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            cps = float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
            rows.append({"config": a.config, "variant": name, "settings": variants[name], "clips_per_s": cps})
            print(json.dumps(rows[-1]) if cps else out.stderr[-2000:], flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps({"rows": rows}, indent=1))
    print(f"\n| {a.config} variant | settings | x real time (each process) |\n|---|---|---|")
    for name in names:
        got = [x["clips_per_s"] * CLIP_S for x in rows if x["variant"] == name and x["clips_per_s"]]
        med = f" (median {statistics.median(got):.0f})" if got else ""
        print(f"| {name} | `{variants[name]}` | {', '.join(f'{g:.0f}' for g in got)}{med} |")


if __name__ == "__main__":
    main()
