"""Throughput of the reconstruction pipeline on one GPU: x real time, clips/s, memory, TFLOP/s, accuracy.

Builds the full-size AudioLDM2 architectures (``vaefix_pl.testing.full_size_configs``, exactly the
reference configs) with random weights from a fixed seed (cost does not depend on the values), or
loads real weights with ``--model PATH``. Times the real :class:`vaefix_pl.Reconstructor` with CUDA
events after warm-up (median of repeats) on 10.24 s clips, measures the bf16/TF32 matmul ceiling in
the same run, counts FLOPs with ``torch.utils.flop_counter``, and compares each fast variant with an
fp32 (no TF32) reference on the same inputs (relative L2 of waveform and decoded mel).

    python benchmarks/throughput.py --variants all --batches 16,64 --json out.json
    python benchmarks/throughput.py --geometry audioldm_48k --variants tf32,bf16,bf16_compile

``--geometry audioldm_48k`` builds the full-size 48 kHz architecture instead (4-level VAE, z 16,
256-mel HiFiRes vocoder: ``vaefix_pl.testing.geometry_configs("audioldm_48k", "full")``), with 10.24 s
clips at 48 kHz (1024 frames of hop 480, 491520 samples).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the seed's NumPy chain lives in tests/seed_oracle.py

sys.path.insert(0, str(ROOT / "benchmarks"))
from timing import time_device  # noqa: E402

from vaefix_pl.core.config import SPEED_PRESETS  # noqa: E402
from vaefix_pl.core.geometry import GEOMETRIES  # noqa: E402
from vaefix_pl.core.probes import probe_signals  # noqa: E402
from vaefix_pl.core.reconstruct import Reconstructor  # noqa: E402
from vaefix_pl.testing import build_geometry_models, geometry_configs  # noqa: E402

DEVICE = "cuda"
CLIP_S = 10.24
#: the geometry benchmarked (--geometry); CLIP_N = CLIP_S at its rate (163840 at 16 kHz, 491520 at 48 kHz)
GEOMETRY = GEOMETRIES["audioldm_16k"]
CLIP_N = 163840

# ReconstructionModule(speed="compile"): NHWC VAE, channels-last vocoder, static torch.compile with
# frozen weights, zero-padded 1-channel convs, matmul attention.
_COMPILE = dict(
    channels_last=True, vocoder_cl=True, cudnn_benchmark=True, compile=True, freeze=True,
    pad_narrow=True, attention_math=True,
)  # fmt: skip

# name -> settings. "tf32" = fp32 weights/activations with TF32 tensor cores (the fp32 default).
VARIANTS: dict[str, dict] = {
    "seed_loop": dict(precision="fp32", tf32=False, batch=1, seed_chain=True),
    "fp32_b1": dict(precision="fp32", tf32=False, batch=1),
    "fp32": dict(precision="fp32", tf32=False),
    "tf32": dict(precision="fp32", tf32=True),
    "bf16": dict(precision="bf16", tf32=True),
    # VAE activations NHWC
    "tf32_cl": dict(precision="fp32", tf32=True, channels_last=True, cudnn_benchmark=True),
    "bf16_cl": dict(precision="bf16", tf32=True, channels_last=True, cudnn_benchmark=True),
    # vocoder convolutions as channels-last (1, k) Conv2d (vaefix_pl.core.speed)
    "tf32_vcl": dict(precision="fp32", tf32=True, vocoder_cl=True, cudnn_benchmark=True),
    "bf16_vcl": dict(precision="bf16", tf32=True, vocoder_cl=True, cudnn_benchmark=True),
    # + torch.compile (static shapes), VAE layout as named
    "tf32_vcl_compiled": dict(
        precision="fp32", tf32=True, vocoder_cl=True, cudnn_benchmark=True, compile=True
    ),
    "bf16_vcl_compiled": dict(
        precision="bf16", tf32=True, vocoder_cl=True, cudnn_benchmark=True, compile=True
    ),
    "tf32_cl_vcl_compiled": dict(
        precision="fp32", tf32=True, channels_last=True, vocoder_cl=True, cudnn_benchmark=True, compile=True
    ),
    "bf16_cl_vcl_compiled": dict(
        precision="bf16", tf32=True, channels_last=True, vocoder_cl=True, cudnn_benchmark=True, compile=True
    ),
    # + Inductor freezing (weights as constants: casts and layouts folded)
    "tf32_vcl_frozen": dict(
        precision="fp32", tf32=True, vocoder_cl=True, cudnn_benchmark=True, compile=True, freeze=True
    ),
    "bf16_vcl_frozen": dict(
        precision="bf16", tf32=True, vocoder_cl=True, cudnn_benchmark=True, compile=True, freeze=True
    ),
    "bf16_cl_vcl_frozen": dict(
        precision="bf16",
        tf32=True,
        channels_last=True,
        vocoder_cl=True,
        cudnn_benchmark=True,
        compile=True,
        freeze=True,
    ),  # fmt: skip
    # ReconstructionModule(speed="compile"): + NHWC VAE, zero-padded 1-channel convs, matmul attention
    "tf32_compile": dict(precision="fp32", tf32=True, **_COMPILE),
    "bf16_compile": dict(precision="bf16", tf32=True, **_COMPILE),
    # + the vocoder's dilated convs as undilated convs on the polyphase view (vaefix_pl.core.speed)
    "tf32_vcl_poly": dict(precision="fp32", tf32=True, vocoder_cl=True, cudnn_benchmark=True, polyphase=True),
    "bf16_vcl_poly": dict(precision="bf16", tf32=True, vocoder_cl=True, cudnn_benchmark=True, polyphase=True),
    # ReconstructionModule(speed="compile") as it is now: SPEED_PRESETS["compile"]
    "tf32_compile_poly": dict(precision="fp32", tf32=True, preset="compile"),
    "bf16_compile_poly": dict(precision="bf16", tf32=True, preset="compile"),
    # + cuDNN's benchmark tries every algorithm per shape (torch's default: the first 10)
    # the preset without the narrow undilated resblock convs in folded or phase form (the preset uses
    # vaefix_pl.core.speed.NARROW_CONV_FORMS, or the rule --narrow-from derives from a conv_shapes.py JSON)
    "tf32_compile_plain": dict(precision="fp32", tf32=True, preset="compile", narrow=False),
    "bf16_compile_plain": dict(precision="bf16", tf32=True, preset="compile", narrow=False),
    "tf32_compile_poly_bl0": dict(precision="fp32", tf32=True, preset="compile", benchmark_limit=0),
    "bf16_compile_poly_bl0": dict(precision="bf16", tf32=True, preset="compile", benchmark_limit=0),
    "bf16_max_autotune": dict(
        precision="bf16",
        tf32=True,
        vocoder_cl=True,
        cudnn_benchmark=True,
        compile="max-autotune-no-cudagraphs",
    ),
}


def _rewrites_models(cfg: dict) -> bool:
    """Whether the variant's ``optimize`` changes the modules in place (then it gets its own copies)."""
    return any(cfg.get(k) for k in ("vocoder_cl", "compile", "polyphase", "preset", "narrow"))


def _optimize(rec: Reconstructor, cfg: dict) -> Reconstructor:
    """Apply a variant's settings through the real ``Reconstructor.optimize``."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = False
    torch.backends.cudnn.benchmark_limit = cfg.get("benchmark_limit", 10)  # torch's default is 10
    if "preset" in cfg:
        settings = dict(SPEED_PRESETS[cfg["preset"]])
        if "narrow" in cfg:
            settings["narrow_convs"] = cfg["narrow"]
        return rec.optimize(**settings)
    return rec.optimize(
        channels_last=cfg.get("channels_last", False),
        vocoder_channels_last=cfg.get("vocoder_cl", False),
        cudnn_benchmark=cfg.get("cudnn_benchmark", False),
        pad_narrow_convs=cfg.get("pad_narrow", False),
        attention_math=cfg.get("attention_math", False),
        polyphase_dilated=cfg.get("polyphase", False),
        compile=cfg.get("compile", False),
        freeze=cfg.get("freeze", False),
    )


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def cuda_time(fn, warmup: int, repeats: int) -> list[float]:
    """Seconds per call on this benchmark's device (see ``timing.time_device``)."""
    return time_device(fn, DEVICE, warmup, repeats)


def matmul_ceiling(dtype: torch.dtype, n: int = 8192) -> float:
    """Dense matmul TFLOP/s on random data (median of 20 after warm-up)."""
    a = torch.randn(n, n, device=DEVICE, dtype=dtype)
    b = torch.randn(n, n, device=DEVICE, dtype=dtype)
    t = statistics.median(cuda_time(lambda: a @ b, 5, 20))
    return 2 * n**3 / t / 1e12


def count_flops(rec: Reconstructor, x: torch.Tensor) -> dict[str, float]:
    """GFLOP per clip for the encoder, decoder and vocoder (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    mel = rec.frontend(x)[:, :, :1024]
    out = {}
    with FlopCounterMode(display=False) as fc:
        z = rec.encode(mel)
    out["encoder"] = fc.get_total_flops() / 1e9
    with FlopCounterMode(display=False) as fc:
        mh = rec.decode(z)
    out["decoder"] = fc.get_total_flops() / 1e9
    with FlopCounterMode(display=False) as fc:
        rec._vocoder(mh)
    out["vocoder"] = fc.get_total_flops() / 1e9
    out["total"] = sum(out.values())
    return out


def make_inputs(batch: int) -> torch.Tensor:
    probes = probe_signals(seconds=CLIP_S, sample_rate=GEOMETRY.sample_rate)
    sigs = [probes[k] for k in probes if k != "near_silence"]
    x = np.stack([sigs[i % len(sigs)] for i in range(batch)])
    return torch.from_numpy(x).float()


def seed_chain_cpu(wav: np.ndarray) -> np.ndarray:
    from seed_oracle import advanced_audio_denoising

    return advanced_audio_denoising(wav.astype(np.float64).copy(), sr=GEOMETRY.sample_rate)


def run_variant(name: str, cfg: dict, vae, vocoder, batch: int, args, reference: dict | None) -> dict:
    set_tf32(cfg.get("tf32", True))
    torch.backends.cudnn.benchmark = bool(cfg.get("cudnn_benchmark", False))
    vae.to(memory_format=torch.contiguous_format)
    if _rewrites_models(cfg):
        vae, vocoder = copy.deepcopy(vae), copy.deepcopy(vocoder)  # optimize() rewrites them in place
    rec = _optimize(
        Reconstructor(vae, vocoder, precision=cfg["precision"], geometry=GEOMETRY).to(DEVICE), cfg
    )
    x = make_inputs(batch).to(DEVICE)
    # host-side lengths, as ReconstructionModule passes them: the forward then never waits for the GPU
    lengths = torch.full((batch,), CLIP_N)
    t0 = time.perf_counter()
    rec(x, lengths)  # first call: compilation / autotuning happens here
    sync()
    first_call_s = time.perf_counter() - t0

    if cfg.get("seed_chain"):

        def fn():
            out = rec(x, lengths)
            wav = out.waveform.cpu().numpy()  # the seed moved every clip to NumPy
            for w in wav:
                seed_chain_cpu(w)

        # wall clock: the seed chain is CPU work
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.repeats):
            sync()
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    else:
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = cuda_time(lambda: rec(x, lengths), args.warmup, args.repeats)
    peak = torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0
    t = statistics.median(times)
    row = {
        "variant": name,
        "batch": batch,
        "x_realtime": batch * CLIP_S / t,
        "clips_per_s": batch / t,
        "median_s": t,
        "spread_s": max(times) - min(times),
        "peak_mem_per_clip_gb": peak / batch / 1e9,
        "first_call_s": first_call_s,
    }
    if reference is not None:
        xa = reference["x"].to(DEVICE)
        la = torch.full((xa.shape[0],), CLIP_N)
        out = rec(xa, la)
        row["rel_l2_wave"] = float(
            (out.waveform.cpu().double() - reference["wave"]).norm() / reference["wave"].norm()
        )
        row["rel_l2_mel"] = float(
            (out.mel_hat.cpu().double() - reference["mel"]).norm() / reference["mel"].norm()
        )
    if cfg.get("compile"):
        torch._dynamo.reset()
    vae.to(memory_format=torch.contiguous_format)
    torch.cuda.empty_cache()
    return row


@torch.inference_mode()
def part_times(rec: Reconstructor, x: torch.Tensor, repeats: int = 5) -> dict[str, float]:
    """Median ms per batch of the front-end, VAE encoder, VAE decoder and vocoder, each timed alone."""
    mel = rec.frontend(x)[:, :, :1024]
    z = rec.encode(mel)
    mh = rec.decode(z)
    parts = {
        "frontend": lambda: rec.frontend(x),
        "encoder": lambda: rec.encode(mel),
        "decoder": lambda: rec.decode(z),
        "vocoder": lambda: rec._vocoder(mh),
    }
    return {k: 1e3 * statistics.median(cuda_time(fn, 2, repeats)) for k, fn in parts.items()}


def profile_variant(cfg: dict, vae, vocoder, batch: int, top: int = 25) -> list[dict]:
    """Top CUDA kernels of one batch and their share of GPU time."""
    from torch.profiler import ProfilerActivity, profile

    set_tf32(cfg.get("tf32", True))
    vae.to(memory_format=torch.contiguous_format)
    if _rewrites_models(cfg):
        vae, vocoder = copy.deepcopy(vae), copy.deepcopy(vocoder)
    rec = _optimize(
        Reconstructor(vae, vocoder, precision=cfg["precision"], geometry=GEOMETRY).to(DEVICE), cfg
    )
    x = make_inputs(batch).to(DEVICE)
    # host-side lengths, as ReconstructionModule passes them: the forward then never waits for the GPU
    lengths = torch.full((batch,), CLIP_N)
    for _ in range(2):
        rec(x, lengths)
    sync()
    cuda = DEVICE == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        rec(x, lengths)
        sync()

    def own(e) -> float:  # self time on the device (CPU time in --smoke)
        return e.self_device_time_total if cuda else e.self_cpu_time_total

    events = [e for e in prof.key_averages() if own(e) > 0]
    total = sum(own(e) for e in events)
    events.sort(key=own, reverse=True)
    rows = [
        {"kernel": e.key[:110], "calls": e.count, "ms": own(e) / 1e3, "share": own(e) / total}
        for e in events[:top]
    ]  # fmt: skip
    categories: dict[str, float] = {}
    for e in events:
        k = e.key.lower()
        if k.startswith(
            "triton"
        ):  # first: Inductor names fused kernels after their ops ("fused_convolution_...")
            cat = "triton (fused element-wise/norm)"
        elif (
            any(w in k for w in ("xmma", "cutlass", "conv", "gemm", "wgrad", "dgrad", "implicit"))
            and "fmha" not in k
        ):
            cat = "convolution/GEMM"
        elif "fmha" in k or "attention" in k or "flash" in k:
            cat = "attention"
        elif "nchwtonhwc" in k or "nhwctonchw" in k:
            cat = "layout transposes"
        elif "copy" in k:
            cat = "copies/casts"
        elif "elementwise" in k or "reduce" in k or "moments" in k or "norm" in k:
            cat = "eager element-wise/norm"
        else:
            cat = "other"
        categories[cat] = categories.get(cat, 0.0) + own(e) / total
    rows.append({"categories": categories, "total_ms": total / 1e3, "parts_ms": part_times(rec, x)})
    vae.to(memory_format=torch.contiguous_format)
    torch._dynamo.reset()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="real AudioLDM2 folder (default: random full-size weights)")
    p.add_argument("--variants", default="seed_loop,fp32_b1,tf32,bf16,tf32_compile,bf16_compile")
    p.add_argument("--batches", default="16,64")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", default="", help="variant to profile (top kernels)")
    p.add_argument("--profile-batch", type=int, default=16)
    p.add_argument(
        "--narrow-from", default=None,
        help="conv_shapes.py JSON: set vaefix_pl.core.speed.NARROW_CONV_FORMS from its fold/pout rows",
    )  # fmt: skip
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script runs")
    p.add_argument(
        "--geometry", default="audioldm_16k", choices=sorted(GEOMETRIES), help="architecture family"
    )
    args = p.parse_args()
    global DEVICE, GEOMETRY, CLIP_N
    GEOMETRY = GEOMETRIES[args.geometry]
    CLIP_N = round(CLIP_S * GEOMETRY.sample_rate)
    if args.narrow_from:
        from narrow_rule import narrow_rule_from_rows

        from vaefix_pl.core import speed

        conv_rows = json.loads(Path(args.narrow_from).read_text())
        for key, dt in (("bf16", "bfloat16"), ("fp32", "float32")):
            speed.NARROW_CONV_FORMS[key] = narrow_rule_from_rows(conv_rows, dt)
        print("narrow conv forms from", args.narrow_from, speed.NARROW_CONV_FORMS, flush=True)
    if args.smoke:
        DEVICE = "cpu"
    else:
        assert torch.cuda.is_available(), "needs a CUDA GPU (or --smoke)"

    if args.model:
        from vaefix_pl.core.models import load_audioldm2

        m = load_audioldm2(args.model)
        vae, vocoder = m.vae.to(DEVICE), m.vocoder.to(DEVICE)
        GEOMETRY = m.geometry
        CLIP_N = round(CLIP_S * GEOMETRY.sample_rate)
        weights = f"real weights from {args.model}"
    elif args.smoke:
        vae, vocoder = build_geometry_models(*geometry_configs(args.geometry, "tiny"), seed=0)
        weights = f"tiny {args.geometry} models (smoke test)"
    else:
        vae, vocoder = build_geometry_models(*geometry_configs(args.geometry, "full"), seed=0)
        vae, vocoder = vae.to(DEVICE).requires_grad_(False), vocoder.to(DEVICE).requires_grad_(False)
        weights = f"random weights (seed 0), full-size {args.geometry} configs"

    result = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "weights": weights,
        "geometry": GEOMETRY.name,
        "clip_samples": CLIP_N,
        "command": " ".join(sys.argv),
        "params_m": {
            "vae": sum(p.numel() for p in vae.parameters()) / 1e6,
            "vocoder": sum(p.numel() for p in vocoder.parameters()) / 1e6,
        },
    }
    set_tf32(False)
    n = 1024 if args.smoke else 8192
    result["ceiling_tflops"] = {"bf16": matmul_ceiling(torch.bfloat16, n), "tf32": None}
    set_tf32(True)
    result["ceiling_tflops"]["tf32"] = matmul_ceiling(torch.float32, n)
    set_tf32(False)
    rec = Reconstructor(vae, vocoder, geometry=GEOMETRY).to(DEVICE)
    flops = count_flops(rec, make_inputs(1).to(DEVICE))
    result["gflop_per_clip"] = flops
    # fp32 reference (no TF32) on 4 clips
    xr = make_inputs(4)
    out = rec(xr.to(DEVICE), torch.full((4,), CLIP_N, device=DEVICE))
    reference = {"x": xr, "wave": out.waveform.cpu().double(), "mel": out.mel_hat.cpu().double()}
    del rec, out
    torch.cuda.empty_cache()

    rows = []
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    for name in names:
        cfg = VARIANTS[name]
        batches = [cfg["batch"]] if "batch" in cfg else [int(b) for b in args.batches.split(",")]
        for b in batches:
            try:
                row = run_variant(name, cfg, vae, vocoder, b, args, reference)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                row = {"variant": name, "batch": b, "error": "out of memory"}
            ceiling = result["ceiling_tflops"]["bf16" if cfg["precision"] == "bf16" else "tf32"]
            if "x_realtime" in row:
                row["tflops"] = row["clips_per_s"] * flops["total"] / 1e3
                row["share_of_ceiling"] = row["tflops"] / ceiling
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({**result, "rows": rows}, indent=2))
    result["rows"] = rows
    if args.profile:
        result["profile"] = {
            "variant": args.profile,
            "batch": args.profile_batch,
            "top": profile_variant(VARIANTS[args.profile], vae, vocoder, args.profile_batch),
        }

    print(f"\n{result['device']}  {result['date']}  torch {result['torch']}  {weights}")
    print(
        f"ceiling: bf16 {result['ceiling_tflops']['bf16']:.0f} TFLOP/s, tf32 {result['ceiling_tflops']['tf32']:.0f}; "
        f"GFLOP/clip: " + ", ".join(f"{k} {v:.0f}" for k, v in flops.items())
    )
    hdr = "| variant | batch | x real time | clips/s | GB/clip | TFLOP/s | % ceiling | rel L2 wave | rel L2 mel | first call s |"
    print(hdr)
    print("|---" * (hdr.count("|") - 1) + "|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | {r['batch']} | {r['error']} |")
            continue
        print(
            f"| {r['variant']} | {r['batch']} | {r['x_realtime']:.0f} | {r['clips_per_s']:.1f} | "
            f"{r['peak_mem_per_clip_gb']:.2f} | {r['tflops']:.0f} | {100 * r['share_of_ceiling']:.0f} | "
            f"{r.get('rel_l2_wave', math.nan):.1e} | {r.get('rel_l2_mel', math.nan):.1e} | {r['first_call_s']:.0f} |"
        )
    if "profile" in result:
        print(f"\nprofile of {args.profile} (batch {args.profile_batch}): top kernels")
        for k in result["profile"]["top"]:
            if "categories" in k:
                print(
                    "parts (ms per batch, timed alone): "
                    + ", ".join(f"{p} {v:.1f}" for p, v in k["parts_ms"].items())
                )
                print(
                    f"GPU time {k['total_ms']:.1f} ms by category: "
                    + ", ".join(
                        f"{c} {100 * v:.1f}%"
                        for c, v in sorted(k["categories"].items(), key=lambda kv: -kv[1])
                    )
                )
            else:
                print(f"{100 * k['share']:5.1f}%  {k['ms']:8.2f} ms  {k['calls']:5d}  {k['kernel']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
