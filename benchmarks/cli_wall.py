"""Whole-run wall time of ``vaefix reconstruct`` as a user runs it, beside the hand-written loop.

Each row is one fresh process, timed from ``Popen`` to exit: imports, model loading, autotune or
compile, data loading, the WAVs, ``metrics.csv`` and ``summary.json`` all included. The parent polls
the output folder for the first ``*.recon.wav`` (time to first reconstruction on disk). The bare
steady state of the same model (in-memory batch of 64, after warm-up) is measured in this process at
the end, so that ``overhead = wall - N / bare_clips_per_s`` and the ratios come from one call.

    python benchmarks/cli_wall.py --counts 1,16,256,3072 --configs fp32,bf16,bf16-compile --json out.json
    python benchmarks/cli_wall.py --smoke     # CPU, tiny models, N = 1 and 3 (what CI runs)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIP_S = 10.24
SR = 16000
# name -> extra `vaefix reconstruct` flags; the bare steady state uses the same precision/speed
CONFIGS = {
    "fp32": [],
    "bf16": ["--precision", "bf16"],
    "bf16-none": ["--precision", "bf16", "--speed", "none"],
    "fp32-compile": ["--speed", "compile"],
    "bf16-compile": ["--precision", "bf16", "--speed", "compile"],
    "fp32-lightning": [],  # the same run through Lightning (VAEFIX_RUNNER=lightning), for the difference
}


def config_settings(name: str) -> tuple[str, str]:
    """``(precision, speed)`` of a config of :data:`CONFIGS` (the CLI's defaults where it names none)."""
    flags = CONFIGS[name]
    precision = flags[flags.index("--precision") + 1] if "--precision" in flags else "fp32"
    speed = flags[flags.index("--speed") + 1] if "--speed" in flags else "auto"
    return precision, speed


#: extra environment per config
CONFIG_ENV = {"fp32-lightning": {"VAEFIX_RUNNER": "lightning"}}
VAEFIX = [sys.executable, "-m", "vaefix_pl.cli"]  # what the `vaefix` console script runs


def write_models(folder: Path, tiny: bool) -> Path:
    """A diffusers folder with random weights (seed 0): the full-size AudioLDM2 architectures, or tiny."""
    from vaefix_pl.testing import full_size_configs, tiny_configs, write_audioldm2_folder

    if not (folder / "vocoder" / "config.json").exists():
        write_audioldm2_folder(folder, *(tiny_configs() if tiny else full_size_configs()), seed=0)
    return folder


def _write_clip(path: Path, i: int, seconds: float) -> None:
    rng = np.random.default_rng(i)  # per clip, so clips are the same however many processes write them
    t = np.arange(int(round(seconds * SR))) / SR
    f0 = rng.uniform(80, 800)
    x = 0.3 * np.sin(2 * np.pi * (f0 + 200 * t) * t) + 0.02 * rng.standard_normal(t.size)
    sf.write(path, (x * rng.uniform(0.3, 1.0)).astype(np.float32), SR, subtype="PCM_16")


def write_clips(folder: Path, n: int, seconds: float) -> list[Path]:
    """``n`` distinct mono 16 kHz WAV files (chirps plus noise at different levels); kept ones are reused."""
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"clip{i:05d}.wav" for i in range(n)]
    todo = [(p, i) for i, p in enumerate(paths) if not p.exists()]
    if len(todo) > 256:
        with ProcessPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
            list(pool.map(_write_clip, *zip(*todo), [seconds] * len(todo), chunksize=64))
    else:
        for p, i in todo:
            _write_clip(p, i, seconds)
    return paths


def timed(cmd: list[str], out: Path, env: dict[str, str]) -> dict:
    """Run ``cmd`` to exit; wall seconds, seconds to the first ``*.recon.wav`` under ``out``, rc, and the
    run's own phase marks (``VAEFIX_TIMELINE``, one-device runs) in seconds from the start."""
    shutil.rmtree(out, ignore_errors=True)
    timeline = out.parent / f".{out.name}.timeline"
    timeline.unlink(missing_ok=True)
    env = dict(env, VAEFIX_TIMELINE=str(timeline))
    first: list[float] = []
    done = threading.Event()
    t0_epoch = time.time()
    t0 = time.perf_counter()

    def poll() -> None:
        while not done.is_set():
            if out.is_dir() and any(p.name.endswith(".recon.wav") for p in out.iterdir()):
                first.append(time.perf_counter() - t0)
                return
            time.sleep(0.02)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    row = {"wall_s": wall, "first_recon_s": first[0] if first else None, "rc": proc.returncode}
    if proc.returncode != 0:
        row["stderr_tail"] = proc.stderr[-2000:]
    n_out = sum(1 for p in out.iterdir() if p.name.endswith(".recon.wav")) if out.is_dir() else 0
    row["recon_files"] = n_out
    if timeline.is_file():
        marks = (line.split() for line in timeline.read_text().splitlines() if line.strip())
        row["phases_s"] = {name: round(float(t) - t0_epoch, 3) for name, t in marks}
    return row


def bare_clips_per_s(
    model: Path, precision: str, speed: str, batch: int, repeats: int, overrides: dict | None = None
) -> float:
    """Steady-state clips/s of the bare pipeline on an in-memory batch (after warm-up); ``overrides``:
    optimize() settings changed from the preset's (for A/B runs, ``preset_ab.py``)."""
    import torch

    from vaefix_pl import Reconstructor
    from vaefix_pl.core.config import speed_settings

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rec = Reconstructor.from_pretrained(str(model), precision=precision, device=dev)
    if dev == "cuda":
        rec = rec.optimize(**{**speed_settings(speed, precision), **(overrides or {})})
    n = int(round(CLIP_S * SR))
    x = 0.1 * torch.randn(batch, n, device=dev)
    # on the host, as ReconstructionModule passes them: the forward never waits for the GPU
    lengths = torch.full((batch,), n)
    with torch.inference_mode():
        for _ in range(3):
            rec(x, lengths)
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            rec(x, lengths)
        if dev == "cuda":
            torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", default="1,16,256,3072")
    p.add_argument("--configs", default="fp32,bf16,bf16-compile")
    p.add_argument("--seed-style", default="1,16,256", help="N for the hand-written loop ('' = none)")
    p.add_argument("--bare-batch", type=int, default=64)
    p.add_argument("--work", default=None, help="folder for models, clips and outputs (default: temp)")
    p.add_argument("--json", default=None)
    p.add_argument("--extra", default="", help="extra flags for every vaefix run, e.g. '--batch-size 64'")
    p.add_argument("--no-bare", action="store_true", help="skip the bare steady state (no overhead column)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models, N = 1 and 3, checks every row")
    p.add_argument(
        "--pycache",
        metavar="DIR",
        help="fill this bytecode cache first and run every process with it (PYTHONPYCACHEPREFIX), where the "
        "installed packages have no usable .pyc files: what a pip install compiles at install time",
    )
    a = p.parse_args()
    if a.smoke:
        a.counts, a.configs, a.seed_style, a.bare_batch = "1,3", "fp32", "1,3", 2
    counts = [int(c) for c in a.counts.split(",") if c]
    seed_counts = [int(c) for c in a.seed_style.split(",") if c]
    work = Path(a.work or tempfile.mkdtemp(prefix="cli_wall_"))
    model = write_models(work / ("tiny_model" if a.smoke else "model"), tiny=a.smoke)
    seconds = 1.0 if a.smoke else CLIP_S
    clips = write_clips(work / "clips", max(counts + seed_counts), seconds)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("VAEFIX_CACHE_DIR", str(work / "cache"))  # the first compile run is cold, later ones warm
    from pyc_cache import fill_pycache, needs_source_compile

    if a.pycache:
        print(f"bytecode cache {a.pycache} filled in {fill_pycache(a.pycache):.0f} s", flush=True)
        env["PYTHONPYCACHEPREFIX"] = str(a.pycache)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    prefix = env.get("PYTHONPYCACHEPREFIX")
    bytecode = {"prefix": prefix, "torch_compiled_from_source": needs_source_compile("torch", prefix)}
    if bytecode["torch_compiled_from_source"]:
        print(
            "note: torch has no usable bytecode here: every timed process compiles its imports from source, "
            "which a pip install does not (see --pycache)",
            flush=True,
        )
    extra = a.extra.split() + (["--accelerator", "cpu"] if a.smoke else [])

    rows = []
    for n in seed_counts:
        files = [str(c) for c in clips[:n]]
        cmd = [
            sys.executable,
            str(ROOT / "benchmarks" / "seed_style.py"),
            str(model),
            str(work / "out_seed"),
            *files,
        ]
        rows.append({"config": "seed-style loop", "n": n, **timed(cmd, work / "out_seed", env)})
        print(json.dumps(rows[-1]), flush=True)
    for name in a.configs.split(","):
        for n in counts:
            manifest = work / f"manifest_{n}.txt"
            manifest.write_text("".join(f"{c}\n" for c in clips[:n]))
            out = work / f"out_{name}"
            cmd = [
                *VAEFIX,
                "reconstruct",
                str(manifest),
                "--model",
                str(model),
                "--out",
                str(out),
                *CONFIGS[name],
                *extra,
            ]
            rows.append({"config": name, "n": n, **timed(cmd, out, {**env, **CONFIG_ENV.get(name, {})})})
            print(json.dumps(rows[-1]), flush=True)
            if a.json:  # partial results survive a run cut short
                Path(a.json).write_text(json.dumps({"bytecode": bytecode, "rows": rows}, indent=1))

    bare = {}
    for name in dict.fromkeys(a.configs.split(",")):
        if name in CONFIG_ENV or a.no_bare:
            continue  # same model work as its base config
        precision, speed = config_settings(name)
        bare[name] = bare_clips_per_s(model, precision, speed, a.bare_batch, 2 if a.smoke else 10)
    audio_s = {r["n"]: r["n"] * seconds for r in rows}
    for r in rows:
        r["x_real_time"] = audio_s[r["n"]] / r["wall_s"]
        if r["config"] in bare:
            r["overhead_s"] = r["wall_s"] - r["n"] / bare[r["config"]]

    import torch

    card = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or 'x86_64'})"
    )
    print(
        f"\n{card}, {date.today()}, torch {torch.__version__}, clips of {seconds} s"
        f"{', tiny random models' if a.smoke else ', full-size random weights (seed 0)'}\n"
    )
    print("| run | N | wall s | first recon s | x real time | overhead s |\n|---|---|---|---|---|---|")
    for r in rows:
        first = f"{r['first_recon_s']:.1f}" if r["first_recon_s"] is not None else "-"
        over = f"{r['overhead_s']:.1f}" if "overhead_s" in r else "-"
        bad = (
            ""
            if r["rc"] == 0 and r["recon_files"] == r["n"]
            else f" FAILED rc={r['rc']} files={r['recon_files']}"
        )
        print(
            f"| {r['config']} | {r['n']} | {r['wall_s']:.1f} | {first} | {r['x_real_time']:.3g} | {over} |{bad}"
        )
    for name, cps in bare.items():
        print(f"| bare steady state {name} (batch {a.bare_batch}) | - | - | - | {cps * seconds:.4g} | - |")
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "card": card,
                    "date": str(date.today()),
                    "bytecode": bytecode,
                    "rows": rows,
                    "bare_clips_per_s": bare,
                },
                indent=1,
            )
        )
    failed = [r for r in rows if r["rc"] != 0 or r["recon_files"] != r["n"]]
    for r in failed:
        print(f"FAILED: {r['config']} N={r['n']}: {r.get('stderr_tail', '')[-600:]}", file=sys.stderr)
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
