"""Throughput of the tensor repair chain vs the seed's NumPy/SciPy chain, as "x real time".

Times ``PostProcessChain.seed_final()`` (and each of its stages) on a batch of ``--batch`` clips of
``--samples`` samples (default 64 x 163840 = 64 x 10.24 s at 16 kHz) on ``--device`` (CUDA when present),
with CUDA events after warm-up, median of ``--repeats``; and the seed's CPU chain (``tests/seed_oracle.py``,
one clip at a time, float64 like the seed's filtfilt) on the same machine. Prints a markdown table;
``--json PATH`` also writes the numbers.

    python benchmarks/postprocess_bench.py                      # H100: the docs/PERFORMANCE.md row
    python benchmarks/postprocess_bench.py --batch 4 --samples 32000 --repeats 3 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import seed_oracle  # noqa: E402
from timing import time_device  # noqa: E402

from vaefix_pl.repair.chain import PostProcessChain, fade, normalize_mel, repair_outliers, soft_compress  # noqa: E402
from vaefix_pl.repair.dsp import bandpass  # noqa: E402

SR = 16000


def parse_block(text: str) -> int | str | None:
    text = text.strip().lower()
    return None if text == "none" else "auto" if text == "auto" else int(text)


def make_batch(batch: int, samples: int, seed: int = 0) -> np.ndarray:
    """Speech-like test clips at peak 0.9 (so compression acts) with a few clicks (so outlier repair acts)."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / SR
    clips = np.empty((batch, samples))
    for i in range(batch):
        f0 = rng.uniform(90, 220)
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 12))
        x = x + 0.05 * rng.standard_normal(samples)
        x = 0.9 * x / np.abs(x).max()
        idx = rng.choice(samples, size=min(20, samples), replace=False)
        x[idx] += rng.choice([-1.0, 1.0], size=len(idx)) * rng.uniform(1.0, 2.0, size=len(idx))
        clips[i] = x
    return clips


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=163840, help="samples per clip (163840 = 10.24 s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed-repeats", type=int, default=3, help="repeats of the seed's CPU chain")
    parser.add_argument(
        "--block-sizes",
        default="auto,64,256,512,1024,none",
        help="band-pass block sizes to time, the first also for the chain ('none': one block per row, "
        "torchaudio's plain sequential lfilter per section; an integer: the matmul form over blocks of "
        "that many samples; 'auto': vaefix_pl.repair.chain.DEFAULT_BLOCK_SIZE)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    block_sizes = [parse_block(b) for b in args.block_sizes.split(",")]
    clips = make_batch(args.batch, args.samples)
    x = torch.from_numpy(clips).to(device=device, dtype=torch.float32)
    lengths = torch.full((args.batch,), args.samples, dtype=torch.long, device=device)
    audio_s = args.batch * args.samples / SR
    frames = args.samples // 160 + 1
    mel = torch.randn(args.batch, 1, frames, 64, device=device) * 2.5 - 5.0

    rows: list[dict] = []

    def add(name: str, where: str, times: list[float], clips_timed: int = args.batch) -> None:
        med = statistics.median(times)
        secs = clips_timed * args.samples / SR
        rows.append(
            {
                "what": name,
                "device": where,
                "median_s": med,
                "ms_per_batch": med * 1000 * args.batch / clips_timed,
                "x_real_time": secs / med,
                "repeats": len(times),
            }
        )

    dev_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    )
    w, r = args.warmup, args.repeats
    chain = PostProcessChain.seed_final(block_size=block_sizes[0])
    with torch.inference_mode():
        add(
            f"chain seed_final, float32 (block {block_sizes[0]})",
            dev_name,
            time_device(lambda: chain(x, lengths), device, w, r),
        )
        add(
            f"mel minmax (B,1,{frames},64)",
            dev_name,
            time_device(lambda: chain.process_mel(mel), device, w, r),
        )
        add(f"mel guard (B,1,{frames},64)", dev_name, time_device(lambda: normalize_mel(mel), device, w, r))
        add("outliers", dev_name, time_device(lambda: repair_outliers(x, lengths), device, w, r))
        add("fades", dev_name, time_device(lambda: fade(x, lengths), device, w, r))
        for bs in block_sizes:
            add(
                f"band-pass (block {bs})",
                dev_name,
                time_device(lambda bs=bs: bandpass(x, lengths, block_size=bs), device, w, r),
            )
        add("compression", dev_name, time_device(lambda: soft_compress(x, lengths=lengths), device, w, r))

    # The seed's chain: NumPy/SciPy on the CPU, one clip at a time (float32 clips, as from the vocoder).
    cpu_name = f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    clips32 = clips.astype(np.float32)

    def seed_chain() -> None:
        for clip in clips32:
            seed_oracle.advanced_audio_denoising(clip)

    add(
        "seed chain (NumPy/SciPy, per clip)",
        cpu_name,
        time_device(seed_chain, torch.device("cpu"), 1, args.seed_repeats),
    )

    print(
        f"batch {args.batch} x {args.samples} samples ({audio_s:.1f} s of audio), torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch CPU threads"
    )
    print()
    print("| stage | device | ms per batch | x real time |")
    print("| --- | --- | ---: | ---: |")
    for row in rows:
        print(f"| {row['what']} | {row['device']} | {row['ms_per_batch']:.2f} | {row['x_real_time']:.0f} |")
    result = {
        "batch": args.batch,
        "samples": args.samples,
        "sample_rate": SR,
        "audio_seconds": audio_s,
        "device": dev_name,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
