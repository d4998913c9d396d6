"""Each convolution of the whole pipeline, timed where it runs and alone: is it slower in the pipeline?

``conv_shapes.py`` times vocoder shapes on fresh tensors. This records what the pipeline really passes
to every ``Conv2d``/``ConvTranspose2d`` (shape, strides, dtype, data alignment; forward pre-hooks on the
eager model), profiles one pipeline batch (device time and cuDNN kernel names per input shape), then
replays each recorded call alone on tensors of the same shape, strides and alignment, under the same
autocast, and profiles that. Full-size AudioLDM2 architectures, random weights (seed 0), rewritten as
the ``--speed`` preset rewrites them; ``--compiled`` profiles the compiled pipeline instead (no hooks:
its rows carry no strides).

    python benchmarks/conv_in_pipeline.py --config bf16-compile --batch 64 --json pipe.json
    python benchmarks/conv_in_pipeline.py --smoke        # CPU, tiny models
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
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from timing import time_device  # noqa: E402

#: the ops whose kernels are the convolution's (on the CPU, where kernels are not traced: ``aten::_convolution``)
CONV_OPS = ("aten::cudnn_convolution", "aten::cudnn_convolution_transpose")


def _key(x_shape, w_shape) -> str:
    return f"x{list(x_shape)} w{list(w_shape)}"


def _profile(fn, cuda: bool, every_kernel: dict | None = None) -> dict[str, dict]:
    """Per input-shape key: input shape, calls, device ms (its kernels), host ms, kernel name -> ms, of one
    call of ``fn``.
    ``every_kernel``: filled with ``name -> [calls, ms]`` of every device kernel of the call."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts, record_shapes=True) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    if every_kernel is not None:
        for e in prof.key_averages():
            if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0:
                every_kernel[e.key] = [e.count, e.self_device_time_total / 1e3]
    rows: dict[str, dict] = {}
    for e in prof.events():
        if e.name not in (CONV_OPS if cuda else ("aten::_convolution",)) or len(e.input_shapes) < 2:
            continue
        r = rows.setdefault(
            _key(e.input_shapes[0], e.input_shapes[1]),
            {"x_shape": list(e.input_shapes[0]), "calls": 0, "ms": 0.0, "host_ms": 0.0, "kernels": {}},
        )
        r["calls"] += 1
        r["host_ms"] += e.cpu_time_total / 1e3
        ks = list(getattr(e, "kernels", []) or [])
        if cuda:
            for k in ks:
                r["kernels"][k.name[:90]] = r["kernels"].get(k.name[:90], 0.0) + k.duration / 1e3
            r["ms"] += sum(k.duration for k in ks) / 1e3
        else:
            r["ms"] += e.cpu_time_total / 1e3
    return rows


def _record_calls(model) -> tuple[list, dict]:
    """Forward pre-hooks on every conv: ``key -> the first call's input description``."""
    seen: dict[str, dict] = {}

    def hook(m, args):
        x = args[0]
        w = m.weight
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        key = _key(x.shape, w.shape)
        if key not in seen:
            seen[key] = {
                "module": type(m).__name__,
                "x_stride": list(x.stride()),
                "x_dtype": str(x.dtype),
                "compute_dtype": str(dtype),
                "x_align": x.data_ptr() % 1024,
                "x_channels_last": x.is_contiguous(memory_format=torch.channels_last),
                "w_channels_last": w.is_contiguous(memory_format=torch.channels_last),
                "bias": m.bias is not None,
                "stride": list(m.stride), "padding": list(m.padding), "dilation": list(m.dilation),
                "output_padding": list(getattr(m, "output_padding", (0, 0))),
                "_m": m, "_x": (tuple(x.shape), tuple(x.stride()), x.dtype, x.data_ptr() % 1024),
            }  # fmt: skip

    handles = [
        m.register_forward_pre_hook(hook)
        for m in model.modules()
        if type(m) in (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    ]
    return handles, seen


def _replay(call: dict, device: str, fresh: bool):
    """A closure running the recorded conv alone: same shape/strides/alignment (``fresh``: contiguous
    channels-last, 1024-byte aligned, as conv_shapes.py makes them)."""
    shape, stride, dtype, align = call["_x"]
    m = call["_m"]
    if fresh:
        x = torch.randn(shape, device=device, dtype=dtype)
        if len(shape) == 4:
            x = x.contiguous(memory_format=torch.channels_last)
    else:
        span = 1 + sum((s - 1) * st for s, st in zip(shape, stride))
        esize = torch.empty((), dtype=dtype).element_size()
        buf = torch.randn(span + 1024 // esize, device=device, dtype=dtype)
        off = ((align - buf.data_ptr() % 1024) % 1024) // esize
        x = buf.as_strided(shape, stride, off)
    cdt = getattr(torch, call["compute_dtype"].split(".")[-1])
    w = m.weight.to(cdt)
    b = None if m.bias is None else m.bias.to(cdt)
    x = x.to(cdt) if x.dtype != cdt else x
    if call["module"] == "ConvTranspose2d":
        return lambda: F.conv_transpose2d(x, w, b, m.stride, m.padding, m.output_padding, 1, m.dilation)
    return lambda: F.conv2d(x, w, b, m.stride, m.padding, m.dilation)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="bf16-compile", help="a cli_wall.py config name")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--compiled", action="store_true", help="profile the compiled pipeline (no replay)")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models, batch 2")
    a = p.parse_args()
    from cli_wall import CLIP_S, SR, config_settings, write_models

    from vaefix_pl import Reconstructor
    from vaefix_pl.core.config import speed_settings

    device = "cpu" if a.smoke or not torch.cuda.is_available() else "cuda"
    cuda = device == "cuda"
    batch = 2 if a.smoke else a.batch
    precision, speed = config_settings(a.config)
    model = write_models(Path(tempfile.mkdtemp()) / "m", tiny=not cuda)
    rec = Reconstructor.from_pretrained(str(model), precision=precision, device=device)
    if cuda:
        preset = {**speed_settings(speed, precision), "cudnn_benchmark": False}
        rec = rec.optimize(**(preset if a.compiled else {**preset, "compile": False}))
    n = int(round(CLIP_S * SR)) if cuda else 16000
    x = 0.1 * torch.randn(batch, n, device=device)
    lengths = torch.full((batch,), n)

    def step():
        rec(x, lengths)

    result = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "config": a.config,
        "compiled": a.compiled,
        "batch": batch,
    }
    with torch.inference_mode():
        handles, calls = ([], {}) if a.compiled else _record_calls(rec)
        step()
        for h in handles:
            h.remove()
        result["batch_ms"] = 1e3 * statistics.median(time_device(step, device, 2, 3))
        every: dict[str, list] = {}
        piped = _profile(step, cuda, every)
        result["gpu_ms"] = sum(ms for _, ms in every.values())
        result["kernels"] = dict(sorted(every.items(), key=lambda kv: -kv[1][1]))
        rows = []
        for key, r in piped.items():
            row = {"shape": key, "calls": r["calls"], "pipeline_ms_per_call": r["ms"] / r["calls"]}
            row["pipeline_kernels"] = r["kernels"]
            call = calls.get(key)
            if call is not None:
                row.update({k: v for k, v in call.items() if not k.startswith("_")})
                for name, fresh in (("alone", False), ("fresh", True)):
                    fn = _replay(call, device, fresh)
                    alone = _profile(lambda fn=fn: (fn(), fn(), fn()), cuda).get(key)
                    if alone:
                        row[f"{name}_ms_per_call"] = alone["ms"] / alone["calls"]
                        row[f"{name}_kernels"] = alone["kernels"]
            rows.append(row)
    rows.sort(
        key=lambda r: (
            -(r["pipeline_ms_per_call"] - r.get("fresh_ms_per_call", r["pipeline_ms_per_call"])) * r["calls"]
        )
    )
    result["rows"] = rows
    total = sum(r["pipeline_ms_per_call"] * r["calls"] for r in rows)
    lost = sum(
        (r["pipeline_ms_per_call"] - r.get("fresh_ms_per_call", r["pipeline_ms_per_call"])) * r["calls"]
        for r in rows
    )
    print(
        f"{result['device']} {a.config} compiled={a.compiled} batch {batch}: {result['batch_ms']:.1f} ms/batch, "
        f"convs {total:.1f} ms in the pipeline, {lost:.1f} ms more than alone on fresh tensors; "
        f"all kernels {result['gpu_ms']:.1f} ms"
    )
    print("\n| kernel (all kinds, top by time) | calls | ms per batch |\n|---|---|---|")
    for name, (calls, ms) in list(result["kernels"].items())[: a.top]:
        print(f"| {name[:100]} | {calls} | {ms:.2f} |")
    print()
    print(
        "| shape | calls | pipeline ms | same strides alone ms | fresh ms | x strides | align | kernels (pipeline / fresh) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows[: a.top]:
        pk = max(r["pipeline_kernels"], key=r["pipeline_kernels"].get) if r["pipeline_kernels"] else ""
        fk = max(r.get("fresh_kernels") or {"": 0}, key=(r.get("fresh_kernels") or {"": 0}).get)
        print(
            f"| {r['shape']} | {r['calls']} | {r['pipeline_ms_per_call']:.3f} | {r.get('alone_ms_per_call', float('nan')):.3f} | "
            f"{r.get('fresh_ms_per_call', float('nan')):.3f} | {r.get('x_stride', '')} | {r.get('x_align', '')} | {pk[:60]} / {fk[:60]} |"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
