"""Micro-benchmark of the vocoder's convolution shapes: where cuDNN is slow, and whether a rewrite helps.

For every HiFi-GAN resblock shape of the AudioLDM2 vocoder (channels C at length L for a 1024-frame
clip, kernels 3/7/11, dilations 1/3/5) it times, with cuDNN benchmark on (``--no-benchmark``: the
algorithm cuDNN's heuristic picks, what runs by default at batch 64) and CUDA events:

* ``w``: the 1-D conv as a channels-last ``(1, k)`` 2-D conv (what ``vaefix_pl.core.speed`` runs today);
* ``h``: the same as a ``(k, 1)`` conv on ``(B, C, L, 1)`` (same memory, other kernel choices);
* ``poly``: for dilation ``d > 1``, the undilated ``(k, 1)`` conv on the polyphase view
  ``(B, C, ceil(L/d), d)`` (``t = q d + r``; a zero-copy view of channels-last memory when ``d | L``).

and prints achieved TFLOP/s per shape and dtype, so a rewrite is kept only where it measures faster.

* ``foldF``: for dilation 1, :class:`vaefix_pl.core.speed.FoldedConv1d` (``F`` samples folded into channels);
* ``poutF``: for dilation 1, a stride-``F`` conv with kernel ``F + k - 1`` whose ``F C`` outputs are the
  ``F`` output phases (reads the input in place; fewer extra FLOPs than folding the input).

    python benchmarks/conv_shapes.py --batch 16
    python benchmarks/conv_shapes.py --batch 64 --channels 32,64,128,256 --dilations 1 --variants w,fold2,fold4
    python benchmarks/conv_shapes.py --batch 64 --variants w,poly --no-benchmark   # where the heuristic loses
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timing import time_device  # noqa: E402


def stages(frames: int = 1024) -> list[tuple[int, int]]:
    """(channels, length) after each upsampler: lengths 5T+1, then x4, x2, x2, x2."""
    n = 5 * frames + 1
    return [(512, n), (256, 4 * n), (128, 8 * n), (64, 16 * n), (32, 32 * n)]


def _variants(x, w, c, k, d, batch, length, names):
    """name -> callable for one shape (``x`` ``(B, C, 1, L)`` NHWC, ``w`` ``(C, C, 1, k)``)."""
    from torch import nn

    from vaefix_pl.core.speed import Conv1dAsConv2d, FoldedConv1d

    pad = d * (k - 1) // 2
    out = {"w": lambda: F.conv2d(x, w, padding=(0, pad), dilation=(1, d))}
    xh = x.permute(0, 1, 3, 2)  # (B, C, L, 1): the same NHWC memory
    wh = w.permute(0, 1, 3, 2).contiguous(memory_format=torch.channels_last)
    if "h" in names:
        out["h"] = lambda: F.conv2d(xh, wh, padding=(pad, 0), dilation=(d, 1))
    if d > 1 and "poly" in names:
        lp = -(-length // d) * d
        xp = F.pad(x, (0, lp - length)) if lp != length else x
        # (B, C, 1, Lp) channels-last -> (B, Lp, C) memory -> (B, Lp/d, d, C) = NHWC of (B, C, Lp/d, d)
        xq = xp.permute(0, 2, 3, 1).reshape(batch, lp // d, d, c).permute(0, 3, 1, 2)
        hp = (k - 1) // 2
        out["poly"] = lambda: F.conv2d(xq, wh, padding=(hp, 0))
    if d == 1:
        x1 = x.squeeze(2)  # (B, C, L) channels-last, what the rewritten vocoder passes
        base = nn.Conv1d(c, c, k, padding=pad, bias=False, device=x.device, dtype=x.dtype)
        with torch.no_grad():
            base.weight.copy_(w.squeeze(2))
        for f in (2, 4, 8):
            if f"fold{f}" in names:
                fc = FoldedConv1d(Conv1dAsConv2d(base), f)
                out[f"fold{f}"] = lambda fc=fc: fc(x1).unsqueeze(2)
        for f in (2, 4):
            if f"pout{f}" in names:
                # stride-F conv whose F x C' outputs are the F output phases (kernel F + k - 1): the input
                # is read in place, the output is the channels-last (B, C', L) memory
                wp = torch.zeros(f, c, c, 1, f + k - 1, device=x.device, dtype=x.dtype)
                for r in range(f):
                    wp[r, ..., r : r + k] = w
                wp = wp.reshape(f * c, c, 1, f + k - 1).contiguous(memory_format=torch.channels_last)
                out[f"pout{f}"] = lambda wp=wp, f=f: F.conv2d(x, wp, stride=(1, f), padding=(0, pad))
    return out


def _as_w_layout(name, y, length, batch, c):
    """A variant's output in the ``w`` layout ``(B, C, 1, L)`` (for the correctness check)."""
    if name == "poly":  # (B, C, Lp/d, d) -> (B, C, 1, Lp)
        return y.permute(0, 2, 3, 1).reshape(y.shape[0], 1, -1, c).permute(0, 3, 1, 2)[..., :length]
    if name == "h":
        return y.permute(0, 1, 3, 2)
    if name.startswith("pout"):  # (B, F C, 1, L/F): phase-major channels -> (B, C, 1, L)
        f = int(name[4:])
        b, _, _, q = y.shape
        return y.reshape(b, f, c, q).permute(0, 2, 3, 1).reshape(b, c, 1, q * f)[..., :length]
    return y


def bench(
    batch: int,
    dtype: torch.dtype,
    repeats: int,
    frames: int = 1024,
    device: str = "cuda",
    channels: tuple[int, ...] | None = None,
    kernels: tuple[int, ...] = (3, 7, 11),
    dilations: tuple[int, ...] = (1, 3, 5),
    names: tuple[str, ...] = ("w", "h", "poly"),
) -> list[dict]:
    rows = []
    dev = torch.device(device)
    for c, length in stages(frames):
        if channels and c not in channels:
            continue
        x = torch.randn(batch, c, 1, length, device=dev, dtype=dtype).contiguous(
            memory_format=torch.channels_last
        )
        for k in kernels:
            for d in dilations:
                w = (
                    torch.randn(c, c, 1, k, device=dev, dtype=dtype).contiguous(
                        memory_format=torch.channels_last
                    )
                    / (c * k) ** 0.5
                )
                flops = 2.0 * batch * c * c * k * length
                variants = _variants(x, w, c, k, d, batch, length, names)
                ref = variants["w"]()[:2].float()
                for name, fn in variants.items():
                    if name not in names:
                        continue
                    got = _as_w_layout(name, fn()[:2].float(), length, 2, c)  # first two items
                    err = float((got - ref).norm() / ref.norm())
                    t = sorted(time_device(fn, dev, 3, repeats))[repeats // 2]
                    rows.append(
                        {
                            "dtype": str(dtype).split(".")[-1],
                            "batch": batch,
                            "C": c,
                            "L": length,
                            "k": k,
                            "d": d,
                            "variant": name,
                            "ms": t * 1e3,
                            "tflops": flops / t / 1e12,
                            "rel_err_vs_w": err,
                        }
                    )
                del variants
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
    p.add_argument(
        "--no-benchmark", action="store_true", help="cuDNN's heuristic choice instead of autotuning"
    )
    p.add_argument("--channels", default="", help="only these stage widths, e.g. 32,64 (default: all)")
    p.add_argument("--kernels", default="3,7,11")
    p.add_argument("--dilations", default="1,3,5")
    p.add_argument("--variants", default="w,h,poly", help="w,h,poly,fold2,fold4,fold8,pout2,pout4")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    ints = lambda s: tuple(int(v) for v in s.split(",") if v)  # noqa: E731
    torch.backends.cudnn.benchmark = not args.no_benchmark
    if args.benchmark_limit is not None:
        torch.backends.cudnn.benchmark_limit = args.benchmark_limit
    rows = []
    torch.set_grad_enabled(False)
    for name in args.dtypes.split(","):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
        dtype = torch.bfloat16 if name == "bf16" else torch.float32
        rows += bench(
            args.batch, dtype, args.repeats, args.frames, args.device, ints(args.channels),
            ints(args.kernels), ints(args.dilations), tuple(args.variants.split(",")),
        )  # fmt: skip
    where = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    tuning = "heuristic" if args.no_benchmark else "autotuned"
    print(f"{where}, batch {args.batch}, {args.frames} frames, cuDNN {tuning}, torch {torch.__version__}")
    names = args.variants.split(",")
    print("| dtype | C | L | k | d | w ms | " + " | ".join(f"{n} TFLOP/s (err)" for n in names) + " | best |")
    print("|---" * (7 + len(names)) + "|")
    by: dict = {}
    for r in rows:
        by.setdefault((r["dtype"], r["C"], r["k"], r["d"]), {})[r["variant"]] = r
    totals: dict[tuple[str, str], float] = {}
    for (dt, c, k, d), v in by.items():
        best = min(v, key=lambda n: v[n]["ms"])
        totals[(dt, "w")] = totals.get((dt, "w"), 0.0) + v["w"]["ms"]
        totals[(dt, "best")] = totals.get((dt, "best"), 0.0) + v[best]["ms"]
        cells = [f"{v[n]['tflops']:.0f} ({v[n]['rel_err_vs_w']:.0e})" if n in v else "" for n in names]
        print(
            f"| {dt} | {c} | {v['w']['L']} | {k} | {d} | {v['w']['ms']:.3f} | "
            + " | ".join(cells)
            + f" | {best} |"
        )
    for dt in sorted({k[0] for k in totals}):
        print(
            f"{dt}: sum over shapes, w {totals[(dt, 'w')]:.2f} ms, best per shape {totals[(dt, 'best')]:.2f} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
