"""End-to-end throughput: ``trainer.predict`` over a folder of WAV files vs the bare pipeline, same process.

For each ``--configs`` entry (``precision:speed``) one Reconstructor is built from the full-size
AudioLDM2 architectures (random weights, seed 0) and optimized once; the bare pipeline is timed on
an in-memory batch (CUDA events, median), then the *same* reconstructor runs
``trainer.predict(ReconstructionModule, AudioDataModule, return_predictions=False)`` with the
``ReconstructionWriter`` (original + reconstruction WAVs, metrics.csv, summary.json) and the spectral
metrics on, over ``--clips`` files of 10.24 s. Reports x real time of both and their ratio, and with
``--profile`` the top CUDA kernels of one bare batch grouped by kind.

    python benchmarks/e2e.py --clips 256 --configs bf16:compile,fp32:compile --profile fp32:compile
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import CLIP_N, CLIP_S, count_flops, cuda_time, make_inputs  # noqa: E402

from vaefix_pl.core.config import speed_settings  # noqa: E402
from vaefix_pl.core.probes import probe_signals  # noqa: E402
from vaefix_pl.core.reconstruct import Reconstructor  # noqa: E402
from vaefix_pl.testing import build_models, full_size_configs  # noqa: E402

SPECTRAL = ["mel_distance", "mrstft_distance", "lsd", "lag", "snr"]


def write_clips(folder: Path, n: int) -> Path:
    """``n`` distinct 10.24 s mono 16 kHz WAV files (probe signals with different noise and gain)."""
    folder.mkdir(parents=True, exist_ok=True)
    probes = [v for k, v in probe_signals(seconds=CLIP_S).items() if k != "near_silence"]
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"clip{i:04d}.wav"
        if not path.exists():
            x = probes[i % len(probes)] * rng.uniform(0.3, 1.0) + 0.01 * rng.standard_normal(CLIP_N)
            sf.write(path, x.astype(np.float32), 16000, subtype="PCM_16")
    return folder


def optimize(rec: Reconstructor, speed: str) -> Reconstructor:
    """What ``ReconstructionModule(speed=speed)`` applies (``speed_settings``), plus ``compile_v1``:
    the first compiled preset (before narrow-conv padding, matmul attention and polyphase convs)."""
    if speed == "compile_v1":
        return rec.optimize(channels_last=True, vocoder_channels_last=True, compile=True, freeze=True)
    return rec.optimize(**speed_settings(speed, rec.precision))


def profile_batch(rec: Reconstructor, x: torch.Tensor, lengths: torch.Tensor, top: int = 20) -> dict:
    from torch.profiler import ProfilerActivity, profile

    rec(x, lengths)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        rec(x, lengths)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    cats: dict[str, float] = {}
    for e in events:
        k = e.key.lower()
        if "fmha" in k or "flash" in k or "attention" in k:
            c = "attention"
        elif any(w in k for w in ("xmma", "cutlass", "conv", "gemm", "implicit", "cudnn")):
            c = "convolution/GEMM (cuDNN/cuBLAS)"
        elif k.startswith("triton"):
            c = "Triton (fused element-wise, norms)"
        elif "fft" in k:
            c = "FFT (front-end)"
        elif "copy" in k:
            c = "copies/casts"
        else:
            c = "other eager kernels"
        cats[c] = cats.get(c, 0.0) + e.self_device_time_total / total
    return {
        "total_ms": total / 1e3,
        "categories": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
        "top": [
            {"kernel": e.key[:100], "calls": e.count, "ms": e.self_device_time_total / 1e3,
             "share": e.self_device_time_total / total}
            for e in events[:top]
        ],
    }  # fmt: skip


def run_config(precision: str, speed: str, args, clips: Path, base_models, flops_total: float) -> dict:
    import lightning as L

    from vaefix_pl import AudioDataModule, ReconstructionModule, ReconstructionWriter

    vae, vocoder = (copy.deepcopy(m) for m in base_models)
    rec = optimize(Reconstructor(vae, vocoder, precision=precision).cuda(), speed)
    x = make_inputs(args.batch).cuda()
    lengths = torch.full((args.batch,), CLIP_N, device="cuda")
    t0 = time.perf_counter()
    rec(x, lengths)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    times = cuda_time(lambda: rec(x, lengths), 2, args.repeats)
    t = statistics.median(times)
    row = {
        "config": f"{precision}:{speed}",
        "batch": args.batch,
        "first_call_s": first,
        "bare_x_realtime": args.batch * CLIP_S / t,
        "bare_clips_per_s": args.batch / t,
        "bare_tflops": args.batch / t * flops_total / 1e3,
        "peak_mem_per_clip_gb": torch.cuda.max_memory_allocated() / args.batch / 1e9,
    }
    print(json.dumps(row), flush=True)
    if f"{precision}:{speed}" in args.profile.split(","):
        row["profile"] = profile_batch(rec, x, lengths)
        p = row["profile"]
        print(f"profile {precision}:{speed} batch {args.batch}: {p['total_ms']:.0f} ms GPU; "
              + ", ".join(f"{k} {100 * v:.1f}%" for k, v in p["categories"].items()), flush=True)  # fmt: skip
        for k in p["top"]:
            print(
                f"  {100 * k['share']:5.1f}%  {k['ms']:8.2f} ms  {k['calls']:5d}  {k['kernel']}", flush=True
            )

    out = Path(args.out) / f"{precision}_{speed}"
    shutil.rmtree(out, ignore_errors=True)
    metrics = [] if args.metrics == "none" else args.metrics.split(",")
    module = ReconstructionModule.from_reconstructor(rec, metrics=metrics, perceptual=[])
    data = AudioDataModule(str(clips), batch_size=args.batch, num_workers=args.workers)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ReconstructionWriter(str(out))],
    )
    t0 = time.perf_counter()
    trainer.predict(module, datamodule=data, return_predictions=False)
    wall = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    row.update(
        {
            "e2e_clips": summary["n_ok"],
            "e2e_failed": summary["n_failed"],
            "e2e_wall_s": wall,
            "e2e_x_realtime": summary["timing"]["audio_s"] / wall,
            "e2e_clips_per_s": summary["n_ok"] / wall,
            "e2e_ratio_to_bare": summary["timing"]["audio_s"] / wall / row["bare_x_realtime"],
            "e2e_metrics": metrics,
            "e2e_mel_distance_mean": summary["metrics"].get("mel_distance", {}).get("mean"),
            # the writer's clock: predict loop (first batch to last) and what came after it
            "e2e_predict_loop_s": summary["timing"].get("predict_s"),
            "e2e_loop_waited_on_writer_s": summary["timing"].get("loop_waited_on_writer_s"),
            "e2e_write_tail_s": summary["timing"].get("write_and_score_tail_s"),
            "e2e_setup_and_merge_s": wall - (summary["timing"].get("predict_s") or 0.0),
        }
    )
    print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
    torch.cuda.empty_cache()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--configs", default="bf16:compile,fp32:compile")
    p.add_argument("--profile", default="", help="configs to profile, comma separated")
    p.add_argument("--metrics", default=",".join(SPECTRAL), help="on-device metrics ('none': none)")
    p.add_argument("--data", default="/tmp/vaefix_e2e_clips")
    p.add_argument("--out", default="/tmp/vaefix_e2e_out")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    clips = write_clips(Path(args.data), args.clips)
    base = build_models(*full_size_configs(), seed=0)
    base = tuple(m.cuda().requires_grad_(False) for m in base)
    flops = count_flops(Reconstructor(*base).cuda(), make_inputs(1).cuda())["total"]
    result = {
        "device": torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "gflop_per_clip": flops,
        "rows": [],
    }
    for cfg in args.configs.split(","):
        precision, speed = cfg.split(":")
        result["rows"].append(run_config(precision, speed, args, clips, base, flops))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"\n{result['device']}  {result['date']}  {args.clips} clips x {CLIP_S} s, batch {args.batch}")
    print(
        "| config | bare x RT | e2e x RT | e2e / bare | e2e clips/s | GB/clip | first call s "
        "| loop s | loop waited on writer s | setup+merge s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['config']} | {r['bare_x_realtime']:.0f} | {r['e2e_x_realtime']:.0f} | "
            f"{100 * r['e2e_ratio_to_bare']:.0f}% | {r['e2e_clips_per_s']:.1f} | {r['peak_mem_per_clip_gb']:.2f} | "
            f"{r['first_call_s']:.0f} | {r['e2e_predict_loop_s']:.1f} | {r['e2e_loop_waited_on_writer_s']:.2f} "
            f"| {r['e2e_setup_and_merge_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
