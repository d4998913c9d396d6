"""Micro-benchmark of the vocoder's convolution shapes: where cuDNN is slow, and whether a rewrite helps.

For every HiFi-GAN resblock shape of the AudioLDM2 vocoder (channels C at length L for a 1024-frame
clip, kernels 3/7/11, dilations 1/3/5) it times, with cuDNN benchmark on and CUDA events:

* ``w``: the 1-D conv as a channels-last ``(1, k)`` 2-D conv (what ``vaefix_pl.speed`` runs today);
* ``h``: the same as a ``(k, 1)`` conv on ``(B, C, L, 1)`` (same memory, other kernel choices);
* ``poly``: for dilation ``d > 1``, the undilated ``(k, 1)`` conv on the polyphase view
  ``(B, C, ceil(L/d), d)`` (``t = q d + r``; a zero-copy view of channels-last memory when ``d | L``).

and prints achieved TFLOP/s per shape and dtype, so a rewrite is kept only where it measures faster.

    python benchmarks/conv_shapes.py --batch 16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import time_device  # noqa: E402


def stages(frames: int = 1024) -> list[tuple[int, int]]:
    """(channels, length) after each upsampler: lengths 5T+1, then x4, x2, x2, x2."""
    n = 5 * frames + 1
    return [(512, n), (256, 4 * n), (128, 8 * n), (64, 16 * n), (32, 32 * n)]


def bench(
    batch: int, dtype: torch.dtype, repeats: int, frames: int = 1024, device: str = "cuda"
) -> list[dict]:
    rows = []
    dev = torch.device(device)
    for c, length in stages(frames):
        x = torch.randn(batch, c, 1, length, device=dev, dtype=dtype).contiguous(
            memory_format=torch.channels_last
        )
        for k in (3, 7, 11):
            for d in (1, 3, 5):
                w = torch.randn(c, c, 1, k, device=dev, dtype=dtype).contiguous(
                    memory_format=torch.channels_last
                )
                pad = d * (k - 1) // 2
                flops = 2.0 * batch * c * c * k * length
                variants = {
                    "w": lambda x=x, w=w, pad=pad, d=d: F.conv2d(x, w, padding=(0, pad), dilation=(1, d)),
                }
                xh = x.permute(0, 1, 3, 2)  # (B, C, L, 1): the same NHWC memory
                wh = w.permute(0, 1, 3, 2).contiguous(memory_format=torch.channels_last)
                variants["h"] = lambda xh=xh, wh=wh, pad=pad, d=d: F.conv2d(
                    xh, wh, padding=(pad, 0), dilation=(d, 1)
                )
                if d > 1:
                    lp = -(-length // d) * d
                    xp = F.pad(x, (0, lp - length)) if lp != length else x
                    # (B, C, 1, Lp) channels-last -> (B, Lp, C) memory -> (B, Lp/d, d, C) = NHWC of (B, C, Lp/d, d)
                    xq = xp.permute(0, 2, 3, 1).reshape(batch, lp // d, d, c).permute(0, 3, 1, 2)
                    hp = (k - 1) // 2
                    variants["poly"] = lambda xq=xq, wh=wh, hp=hp: F.conv2d(xq, wh, padding=(hp, 0))
                    # correctness of the rewrite on this shape (first item)
                    ref = variants["w"]()[:1].float()
                    got = variants["poly"]()[:1].float()  # (1, C, Lp/d, d) -> (1, C, 1, Lp)
                    got = got.permute(0, 2, 3, 1).reshape(1, 1, lp, c).permute(0, 3, 1, 2)[..., :length]
                    err = float((got - ref).abs().max() / ref.abs().max())
                else:
                    err = 0.0
                for name, fn in variants.items():
                    t = sorted(time_device(fn, dev, 3, repeats))[repeats // 2]
                    rows.append(
                        {
                            "dtype": str(dtype).split(".")[-1],
                            "C": c,
                            "L": length,
                            "k": k,
                            "d": d,
                            "variant": name,
                            "ms": t * 1e3,
                            "tflops": flops / t / 1e12,
                            "poly_rel_err": err if name == "poly" else None,
                        }
                    )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--dtypes", default="bf16,tf32")
    p.add_argument("--frames", type=int, default=1024, help="mel frames per clip (sets the lengths)")
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--benchmark-limit", type=int, default=None, help="torch.backends.cudnn.benchmark_limit (0: try all)"
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    if args.benchmark_limit is not None:
        torch.backends.cudnn.benchmark_limit = args.benchmark_limit
    rows = []
    for name in args.dtypes.split(","):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
        dtype = torch.bfloat16 if name == "bf16" else torch.float32
        rows += bench(args.batch, dtype, args.repeats, args.frames, args.device)
    where = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"{where}, batch {args.batch}, {args.frames} frames, torch {torch.__version__}")
    print("| dtype | C | L | k | d | w ms | w TFLOP/s | h TFLOP/s | poly TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    by = {}
    for r in rows:
        by.setdefault((r["dtype"], r["C"], r["k"], r["d"]), {})[r["variant"]] = r
    totals: dict[tuple[str, str], float] = {}
    for (dt, c, k, d), v in by.items():
        best_alt = min(v[n]["ms"] for n in v)
        totals[(dt, "w")] = totals.get((dt, "w"), 0.0) + v["w"]["ms"]
        totals[(dt, "best")] = totals.get((dt, "best"), 0.0) + best_alt
        poly = f"{v['poly']['tflops']:.0f}" if "poly" in v else ""
        err = f" (err {v['poly']['poly_rel_err']:.1e})" if "poly" in v else ""
        print(
            f"| {dt} | {c} | {v['w']['L']} | {k} | {d} | {v['w']['ms']:.2f} | {v['w']['tflops']:.0f} "
            f"| {v['h']['tflops']:.0f} | {poly}{err} |"
        )
    for dt in args.dtypes.split(","):
        dt = "bfloat16" if dt == "bf16" else "float32"
        print(
            f"{dt}: sum over shapes, current (w) {totals[(dt, 'w')]:.1f} ms, best per shape {totals[(dt, 'best')]:.1f} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
