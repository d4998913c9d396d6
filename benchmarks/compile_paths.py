"""``speed: compile`` through AOTInductor packages against plain ``torch.compile``: first call and steady state.

One process, full-size AudioLDM2 architectures with random weights (seed 0), 10.24 s clips, one
batch. For each path a fresh ``Reconstructor`` gets the ``compile`` preset; ``aoti`` runs with a
compile cache active (packages in ``--work``/cache: the first call of the first run builds them, a
second run of this script loads them), ``torch.compile`` without one (as before packages existed).
Prints one JSON row per path: seconds to the end of the first batch, steady-state clips/s and
x real time, max |difference| to the ``torch.compile`` output.

    python benchmarks/compile_paths.py --precision bf16 --batch 64 --work /tmp/compile_paths   # cold
    python benchmarks/compile_paths.py --precision bf16 --batch 64 --work /tmp/compile_paths   # warm
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vaefix_pl.core import aoti  # noqa: E402
from vaefix_pl.core.compile_cache import compile_cache_for  # noqa: E402
from vaefix_pl.core.config import SPEED_PRESETS  # noqa: E402
from vaefix_pl.core.reconstruct import Reconstructor  # noqa: E402
from vaefix_pl.testing import full_size_configs, tiny_configs, write_audioldm2_folder  # noqa: E402

CLIP_S, SR = 10.24, 16000


def _sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def run(path: str, model: Path, a: argparse.Namespace, dev: str, x, lengths) -> tuple[dict, torch.Tensor]:
    rec = Reconstructor.from_pretrained(str(model), precision=a.precision, device=dev)
    cache = None
    if path in ("aoti", "precompile"):  # packages, or torch.compile's precompiled artefacts
        os.environ[aoti.AOTI_ENV] = "1" if path == "aoti" else "0"
        settings = {"speed": "compile", "batch_size": a.batch, "bench": "compile_paths", "path": path}
        cache = compile_cache_for(model, dev, rec.precision, settings, root=Path(a.work) / "cache")
        cache.activate(seal_at_exit=False)
    before = aoti.STATS.copy()
    with torch.inference_mode():
        t0 = time.perf_counter()
        rec.optimize(**SPEED_PRESETS["compile"], batch_size=a.batch)
        out = rec(x, lengths).waveform
        _sync(dev)
        first = time.perf_counter() - t0
        for _ in range(2):
            rec(x, lengths)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(a.repeats):
            rec(x, lengths)
        _sync(dev)
        steady = time.perf_counter() - t0
    if cache is not None:
        cache.seal()
        cache.deactivate()
    clips_per_s = a.batch * a.repeats / steady
    row = {
        "path": path,
        "precision": a.precision,
        "batch": a.batch,
        "first_batch_s": round(first, 2),
        "clips_per_s": round(clips_per_s, 1),
        "x_real_time": round(clips_per_s * CLIP_S, 1),
        "aoti": {k: v - before.get(k, 0) for k, v in aoti.STATS.items() if v - before.get(k, 0)},
    }
    return row, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--work", required=True, help="folder for the model and the package cache (reused)")
    p.add_argument("--paths", default="aoti,torch.compile", help="of aoti, precompile, torch.compile")
    p.add_argument("--tiny", action="store_true", help="tiny models (a CPU check that it runs)")
    a = p.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = Path(a.work) / ("tiny_model" if a.tiny else "model")
    if not (model / "vocoder" / "config.json").exists():
        write_audioldm2_folder(model, *(tiny_configs() if a.tiny else full_size_configs()), seed=0)
    n = int(round(CLIP_S * SR))
    gen = torch.Generator().manual_seed(0)
    x = (0.1 * torch.randn(a.batch, n, generator=gen)).to(dev)
    lengths = torch.full((a.batch,), n)
    outs = {}
    for path in a.paths.split(","):
        row, outs[path] = run(path, model, a, dev, x, lengths)
        if len(outs) > 1:
            ref = next(iter(outs.values()))
            row["max_abs_diff_to_first"] = float((outs[path] - ref).abs().max())
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
