"""Which exact module rewrites speed up the eager (``speed: auto``) pipeline, per precision.

The ``compile`` preset applies every rewrite of :mod:`vaefix_pl.core.speed`; ``auto`` (the default,
eager) applies only the channels-last vocoder. This times the bare eager pipeline at batch 64 for
``auto`` plus each rewrite alone and in combinations, cuDNN autotuning off (as at batch 64 by
default), in one process per precision: one model load, a copy per variant, ``--rounds`` passes in
alternating order. Full-size AudioLDM2 architectures, random weights (seed 0), 10.24 s clips.

    python benchmarks/eager_rewrites.py --precisions fp32,bf16 --rounds 2 --json out.json
    python benchmarks/eager_rewrites.py --smoke      # CPU, tiny models: checks every variant runs
"""

from __future__ import annotations

import argparse
import copy
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

#: variant -> optimize() settings added to SPEED_PRESETS["auto"] (the preset before per-precision
#: additions); ``"compile"``: the compile preset; ``(settings, "h100")``: with the H100 narrow table
VARIANTS: dict[str, dict] = {
    "auto": {},
    "+poly": {"polyphase_dilated": True},
    "+narrow": {"narrow_convs": True},
    "+pad": {"pad_narrow_convs": True},
    "+vae_cl": {"channels_last": True},
    "+attn": {"attention_math": True},
    "+poly+narrow+pad": {"polyphase_dilated": True, "narrow_convs": True, "pad_narrow_convs": True},
    "all": "compile",  # the compile preset run eagerly
    "all-h100table": ("compile", "h100"),  # ... with the narrow-conv table measured on an H100 (2026-11-25)
    "auto-now": "now",  # speed_settings("auto", precision): what `speed: auto` applies today
    "+attn+poly+narrow-h100table": ({"attention_math": True, "polyphase_dilated": True}, "h100"),
}

#: The narrow-conv table of 2026-11-25 (H100, an older cuDNN), for comparison with today's.
H100_TABLE = {
    "bf16": {},
    "fp32": {
        (256, 11): "phase2", (64, 3): "phase2", (64, 7): "phase2", (64, 11): "phase2",
        (32, 3): "fold2", (32, 7): "phase4", (32, 11): "phase4",
    },
}  # fmt: skip


def settings_of(variant: str, precision: str) -> dict:
    """optimize() settings of a :data:`VARIANTS` name (cuDNN autotuning off, never compiled)."""
    from vaefix_pl.core.config import SPEED_PRESETS, speed_settings

    extra, table = VARIANTS[variant], None
    if isinstance(extra, tuple):
        extra, table = extra
    if extra == "compile":
        settings = {**SPEED_PRESETS["compile"], "compile": False}
    elif extra == "now":
        settings = speed_settings("auto", precision)
    else:
        settings = {**SPEED_PRESETS["auto"], **extra}
    if table == "h100":
        settings["narrow_convs"] = H100_TABLE["bf16" if precision == "bf16" else "fp32"]
    return {**settings, "cudnn_benchmark": False}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models, batch 2, one round")
    a = p.parse_args()
    from cli_wall import CLIP_S, SR, write_models

    from vaefix_pl import Reconstructor

    device = "cpu" if a.smoke or not torch.cuda.is_available() else "cuda"
    if a.smoke:
        a.batch, a.repeats, a.rounds = 2, 1, 1
    model = write_models(Path(tempfile.mkdtemp()) / "m", tiny=device == "cpu")
    n = int(round(CLIP_S * SR)) if device == "cuda" else 16000
    names = a.variants.split(",")
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "batch": a.batch,
        "rows": [],
    }
    torch.backends.cudnn.benchmark = False
    x = 0.1 * torch.randn(a.batch, n, device=device)
    lengths = torch.full((a.batch,), n)
    for precision in a.precisions.split(","):
        base = Reconstructor.from_pretrained(str(model), precision=precision, device=device)
        ms: dict[str, list[float]] = {v: [] for v in names}
        for r in range(a.rounds):
            for v in names if r % 2 == 0 else names[::-1]:
                rec = copy.deepcopy(base)
                rec.optimize(**settings_of(v, precision))
                with torch.inference_mode():
                    t = time_device(lambda rec=rec: rec(x, lengths), device, 2, a.repeats)
                ms[v].append(1e3 * statistics.median(t))
                del rec
                if device == "cuda":
                    torch.cuda.empty_cache()
        auto = statistics.median(ms["auto"]) if "auto" in ms else None
        print(f"\n{result['device']}, {precision}, batch {a.batch}, eager, cuDNN autotuning off")
        print("| variant | ms per batch (each round) | x real time | vs auto |")
        print("|---|---|---|---|")
        for v in names:
            m = statistics.median(ms[v])
            xrt = a.batch * CLIP_S / (m / 1e3)
            rel = f"{auto / m - 1:+.1%}" if auto else ""
            print(f"| {v} | {m:.1f} ({', '.join(f'{t:.1f}' for t in ms[v])}) | {xrt:.0f} | {rel} |")
            result["rows"].append({"precision": precision, "variant": v, "ms": ms[v], "x_real_time": xrt})
        if a.json:
            Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
