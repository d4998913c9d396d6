"""Per convolution shape of the whole pipeline: what cuDNN autotuning gains over its heuristic, and costs.

At batch 64 the pipeline runs with ``torch.backends.cudnn.benchmark`` off (autotuning every shape costs
about a minute per process). This finds the shapes where that loses steady-state time, in one process:

1. heuristic: warm-up, ``--repeats`` timed batches, one profiled batch (``record_shapes``);
2. ``cudnn.benchmark`` on: the first batch profiled (its per-shape host time is what autotuning costs),
   then warm-up, timed batches and one profiled batch.

The model is the full-size AudioLDM2 architecture with random weights (seed 0), rewritten as the
``--speed`` preset rewrites it but run eagerly: compiled code calls the same cuDNN convolutions, and
eager runs skip a minute of compiling per configuration. Rows are keyed by the convolution's input and
weight shapes; ``gain_ms`` is device time per batch saved by autotuning, ``tune_s`` the host time of
that shape in the first autotuned batch.

    python benchmarks/autotune_gap.py --configs bf16-compile,fp32-compile --batch 64 --json gap.json
    python benchmarks/autotune_gap.py --smoke          # CPU, tiny models: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from timing import time_device  # noqa: E402


def _conv_rows(fn, cuda: bool) -> dict[str, dict]:
    """``shape key -> {calls, device_ms, host_ms, part}`` of the convolutions of one call of ``fn``:
    device time is the sum of their kernels (``conv_in_pipeline._profile``), host time the ops' own."""
    from conv_in_pipeline import _profile

    rows = {}
    for key, r in _profile(fn, cuda).items():
        x_shape = r["x_shape"]
        rows[key] = {
            "calls": r["calls"],
            "device_ms": r["ms"],
            "host_ms": r["host_ms"],
            "part": "vocoder" if len(x_shape) == 3 or x_shape[2] == 1 else "vae (or polyphase vocoder)",
        }
    return rows


def one_config(model: Path, config: str, batch: int, repeats: int, device: str) -> dict:
    """Heuristic against autotuned, per convolution shape, for one :data:`cli_wall.CONFIGS` name."""
    from cli_wall import CLIP_S, SR, config_settings

    from vaefix_pl import Reconstructor
    from vaefix_pl.core.config import speed_settings

    precision, speed = config_settings(config)
    cuda = device == "cuda"
    rec = Reconstructor.from_pretrained(str(model), precision=precision, device=device)
    if cuda:
        rec = rec.optimize(**{**speed_settings(speed, precision), "compile": False, "cudnn_benchmark": False})
    n = int(round(CLIP_S * SR)) if cuda else 16000
    x = 0.1 * torch.randn(batch, n, device=device)
    lengths = torch.full((batch,), n)  # host-side, as the predict loop passes them

    def step():
        rec(x, lengths)

    out: dict = {"config": config, "precision": precision, "speed": speed, "batch": batch}
    with torch.inference_mode():
        torch.backends.cudnn.benchmark = False
        out["heuristic_ms"] = 1e3 * statistics.median(time_device(step, device, 2, repeats))
        heur = _conv_rows(step, cuda)
        torch.backends.cudnn.benchmark = True
        t0 = time.perf_counter()
        first = _conv_rows(step, cuda)
        out["first_autotuned_batch_s"] = time.perf_counter() - t0
        out["autotuned_ms"] = 1e3 * statistics.median(time_device(step, device, 1, repeats))
        tuned = _conv_rows(step, cuda)
        torch.backends.cudnn.benchmark = False
    shapes = []
    for key, h in heur.items():
        t = tuned.get(key, {"device_ms": float("nan")})
        shapes.append(
            {
                "shape": key,
                "part": h["part"],
                "calls": h["calls"],
                "heuristic_ms": h["device_ms"],
                "autotuned_ms": t["device_ms"],
                "gain_ms": h["device_ms"] - t["device_ms"],
                "tune_s": first.get(key, {"host_ms": float("nan")})["host_ms"] / 1e3,
            }
        )
    shapes.sort(key=lambda r: -r["gain_ms"])
    out["shapes"] = shapes
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="bf16-compile,fp32-compile", help="cli_wall.py config names")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--top", type=int, default=25, help="rows printed per config")
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models, batch 2")
    a = p.parse_args()
    from cli_wall import write_models

    device = "cpu" if a.smoke or not torch.cuda.is_available() else "cuda"
    if a.smoke:
        a.batch, a.repeats = 2, 1
    model = write_models(Path(tempfile.mkdtemp()) / "m", tiny=device == "cpu")
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "configs": [],
    }
    for config in a.configs.split(","):
        r = one_config(model, config, a.batch, a.repeats, device)
        result["configs"].append(r)
        print(
            f"\n{config}, batch {r['batch']}: heuristic {r['heuristic_ms']:.1f} ms/batch, autotuned "
            f"{r['autotuned_ms']:.1f} ms/batch, first autotuned batch {r['first_autotuned_batch_s']:.1f} s"
        )
        print("| part | shape | calls | heuristic ms | autotuned ms | gain ms | tune s |")
        print("|---|---|---|---|---|---|---|")
        for s in r["shapes"][: a.top]:
            print(
                f"| {s['part']} | {s['shape']} | {s['calls']} | {s['heuristic_ms']:.2f} | "
                f"{s['autotuned_ms']:.2f} | {s['gain_ms']:.2f} | {s['tune_s']:.2f} |"
            )
        gains = [s["gain_ms"] for s in r["shapes"] if s["gain_ms"] == s["gain_ms"]]
        print(
            f"sum of per-shape gains {sum(gains):.1f} ms/batch; positive only {sum(g for g in gains if g > 0):.1f}"
        )
        if a.json:
            Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
