"""What dropping torchaudio would cost: each function the project uses from it against a replacement.

The project uses exactly four things from torchaudio: ``functional.melscale_fbanks`` (the Slaney mel
basis), ``functional.resample`` (input resampling, as upstream AudioLDM2), ``functional.lfilter`` (the
band-pass's ``block_size=None`` path) and ``InverseMelScale`` + ``griffinlim`` (the Griffin-Lim
vocoder). For each, this script runs torchaudio and one or more replacements on the same inputs and
reports the largest absolute difference from torchaudio's result, the time of both, and the lines of
code the replacement needs (non-blank, non-comment, without docstrings; the ports are in this file).

Inputs are speech from ``espeak-ng`` brought to each rate by ``sox`` (when both are installed, else a
harmonic "voice"), plus a log chirp up to 0.45 x the rate and white noise, so that every band up to
Nyquist carries energy (where resamplers differ).

    python benchmarks/torchaudio_cost.py                    # CUDA when present, else CPU
    python benchmarks/torchaudio_cost.py --device cpu --repeats 3
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata as md
import inspect
import math
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import wave
from pathlib import Path

import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F
import torchaudio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from timing import time_device  # noqa: E402

from vaefix_pl.core.frontend import HOP, N_FFT, N_MELS, SAMPLE_RATE, LogMelFrontend, slaney_mel_basis  # noqa: E402
from vaefix_pl.repair.dsp import default_padlen, design_bandpass, sosfiltfilt  # noqa: E402
from vaefix_pl.vocoders.griffinlim import GriffinLimVocoder  # noqa: E402

TEXT = (
    "The frozen decoder turns a log mel spectrogram back into audio. We measure how far the "
    "reconstruction drifts from the input, one clip at a time, at sixteen kilohertz. "
    "Seven quick brown foxes jumped over the lazy dog while the bells rang at noon. "
)


# ================================================================================= replacements (ported)
# resample_sinc_hann and griffin_lim_port follow torchaudio's code (BSD 2-Clause License, Copyright (c)
# 2017 Facebook Inc. (Soumith Chintala)); a copy in the package must carry that notice.
def mel_fbanks_numpy(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular mel basis ``(n_freqs, n_mels)``, float64."""
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        return np.where(
            f >= min_log_hz, min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep, f / f_sp
        )

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    all_freqs = np.linspace(0, sample_rate // 2, n_freqs)
    f_pts = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - all_freqs[:, None]
    fb = np.maximum(0.0, np.minimum(-slopes[:, :-2] / f_diff[:-1], slopes[:, 2:] / f_diff[1:]))
    return fb * (2.0 / (f_pts[2 : n_mels + 2] - f_pts[:n_mels]))[None, :]


def resample_sinc_hann(
    x: torch.Tensor, orig_sr: int, new_sr: int, width_zeros: int = 6, rolloff: float = 0.99
) -> torch.Tensor:
    """torchaudio's default ``resample`` (windowed-sinc, Hann, polyphase conv1d) along the last axis."""
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    base = min(orig, new) * rolloff
    width = math.ceil(width_zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=x.dtype, device=x.device)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=x.dtype, device=x.device)[:, None, None] / new + idx
    t = (t * base).clamp(-width_zeros, width_zeros)
    window = torch.cos(t * math.pi / width_zeros / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), t.sin() / t) * window * (base / orig)
    shape, n = x.shape, x.shape[-1]
    x = x.reshape(-1, n)
    y = F.conv1d(F.pad(x, (width, width + orig))[:, None], kernel, stride=orig)
    # torchaudio rounds the length up in float32: one sample short of ceil() for some long inputs
    n_out = int(torch.ceil(torch.tensor(new * n / orig, dtype=torch.float32)))
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, :n_out]
    return y.reshape(*shape[:-1], y.shape[-1])


def resample_scipy(x: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """``scipy.signal.resample_poly`` (Kaiser-windowed FIR, beta 5) along the last axis, on the host."""
    g = math.gcd(orig_sr, new_sr)
    y = scipy.signal.resample_poly(x.detach().cpu().numpy(), new_sr // g, orig_sr // g, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(y)).to(x)


def sosfiltfilt_scipy(x: torch.Tensor, sos: np.ndarray) -> torch.Tensor:
    """``scipy.signal.sosfiltfilt`` (odd extension, SciPy's padlen) on the host, float64."""
    y = scipy.signal.sosfiltfilt(sos, x.detach().cpu().double().numpy(), axis=-1)
    return torch.from_numpy(np.ascontiguousarray(y)).to(x)


def sosfilt_torch_loop(u: torch.Tensor, sos: np.ndarray) -> torch.Tensor:
    """Zero-state cascade of second-order sections (direct form II transposed), one sample at a time."""
    z = torch.zeros(len(sos), u.shape[0], 2, dtype=u.dtype, device=u.device)
    y = torch.empty_like(u)
    for t in range(u.shape[1]):
        v = u[:, t]
        for j, (b0, b1, b2, _, a1, a2) in enumerate(sos.tolist()):
            out = b0 * v + z[j, :, 0]
            z[j, :, 0] = b1 * v - a1 * out + z[j, :, 1]
            z[j, :, 1] = b2 * v - a2 * out
            v = out
        y[:, t] = v
    return y


def griffin_lim_port(
    mel: torch.Tensor, basis: torch.Tensor, window: torch.Tensor, n_iter: int = 32, momentum: float = 0.99
) -> torch.Tensor:
    """``(B, T, 64)`` log-mel ("tacotron" framing) -> ``(B, T*160)``: least-squares mel inverse + fast Griffin-Lim."""
    t = mel.shape[1]
    padded = torch.cat([mel, mel[:, -1:]], dim=1).float()
    mag = torch.relu(
        torch.linalg.lstsq(basis[None], torch.exp(padded).transpose(1, 2), driver="gels").solution
    )
    length, alpha = t * HOP, momentum / (1 + momentum)
    stft = dict(n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, window=window)
    angles = torch.ones_like(mag, dtype=torch.complex64)
    prev = torch.zeros((), dtype=mag.dtype, device=mag.device)
    for _ in range(n_iter):
        rebuilt = torch.stft(
            torch.istft(mag * angles, length=length, **stft), return_complex=True, pad_mode="reflect", **stft
        )
        angles = rebuilt - prev * alpha
        angles = angles / (angles.abs() + 1e-16)
        prev = rebuilt
    return torch.istft(mag * angles, length=length, **stft)


def code_lines(*fns: object) -> int:
    """Non-blank, non-comment lines of the functions' source, docstrings excluded."""
    total = 0
    for fn in fns:
        src = textwrap.dedent(inspect.getsource(fn))
        doc_lines: set[int] = set()
        for node in ast.walk(ast.parse(src)):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                if isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(
                    body[0].value.value, str
                ):
                    doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
        for i, line in enumerate(src.splitlines(), start=1):
            if line.strip() and not line.strip().startswith("#") and i not in doc_lines:
                total += 1
    return total


# ========================================================================================== inputs
def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2, "espeak-ng/sox write 16-bit PCM"
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
        return data.reshape(-1, w.getnchannels()).mean(axis=1), w.getframerate()


def speech_at(rates: list[int], seconds: float) -> tuple[dict[int, np.ndarray], str]:
    """Speech at each rate (espeak-ng at 22.05 kHz, sox ``rate -v`` to the others), tiled to ``seconds``."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        out = {}
        for sr in rates:
            t = np.arange(int(seconds * sr)) / sr
            f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
            phase = 2 * np.pi * np.cumsum(f0) / sr
            env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
            out[sr] = env * sum(np.sin(k * phase) / k for k in range(1, 30) if k * 170 < sr / 2) * 0.3
        return out, "synthetic harmonic voice (espeak-ng/sox not installed)"
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "165", "-w", str(src), TEXT], check=True)
        for sr in rates:
            dst = Path(tmp) / f"speech_{sr}.wav"
            subprocess.run(["sox", str(src), "-r", str(sr), str(dst), "rate", "-v"], check=True)
            x, got = _read_wav(dst)
            assert got == sr
            n = int(seconds * sr)
            out[sr] = np.tile(x, -(-n // len(x)))[:n]
    return out, "espeak-ng speech (sox `rate -v` to each rate)"


def wideband(speech: np.ndarray, sr: int, seed: int) -> np.ndarray:
    """Speech at peak 0.5 + a log chirp 50 Hz -> 0.45 sr at 0.1 + white noise at 0.01 rms."""
    rng = np.random.default_rng(seed)
    t = np.arange(len(speech)) / sr
    chirp = scipy.signal.chirp(t, 50.0, t[-1], 0.45 * sr, method="logarithmic")
    return 0.5 * speech / np.abs(speech).max() + 0.1 * chirp + 0.01 * rng.standard_normal(len(speech))


# ========================================================================================== helpers
def interleaved_ms(fns, device: torch.device, repeats: int) -> list[float]:
    """Median ms of each function, timed in turn ``repeats`` times after one warm-up call each (so load
    from other processes on a shared machine hits every candidate alike)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times):
            acc += time_device(fn, device, 0, 1)
    return [1000.0 * statistics.median(t) for t in times]


def maxabs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return float((a.double().cpu() - b.double().cpu()).abs().max())


def rel_db(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Energy of the difference relative to the reference, dB."""
    d = (a.double().cpu() - ref.double().cpu()).pow(2).sum()
    return float(10 * torch.log10(d / ref.double().cpu().pow(2).sum()).clamp(min=-400))


def spectral_convergence(y: torch.Tensor, target_mag: torch.Tensor, window: torch.Tensor) -> float:
    """``||target - |STFT(y)|||_F / ||target||_F`` over the batch (the quantity Griffin-Lim lowers)."""
    s = torch.stft(y, N_FFT, HOP, N_FFT, window, return_complex=True, pad_mode="reflect").abs()
    n = min(s.shape[-1], target_mag.shape[-1])
    return float((target_mag[..., :n] - s[..., :n]).norm() / target_mag[..., :n].norm())


def dist_closure(names: list[str]) -> dict[str, int]:
    """Installed distributions reachable from ``names`` (required extras ignored) -> bytes on disk."""
    seen: dict[str, int] = {}
    stack = list(names)
    while stack:
        name = re.split(r"[\s;<>=!~\[(]", stack.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if not name or name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = sum((f.size or 0) for f in (dist.files or []))
        for req in dist.requires or []:
            if "extra ==" not in req:
                stack.append(req)
    return seen


# ============================================================================================ bench
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--resample-seconds", type=float, default=60.0)
    ap.add_argument("--filter-batch", type=int, default=8)
    ap.add_argument("--filter-seconds", type=float, default=10.24)
    ap.add_argument("--loop-samples", type=int, default=2000, help="torch-loop lfilter: samples actually run")
    ap.add_argument("--gl-batch", type=int, default=4)
    ap.add_argument("--gl-iters", type=int, default=32)
    args = ap.parse_args()
    dev = torch.device(args.device)
    rep, gl_rep, cpu = args.repeats, max(1, min(args.repeats, 3)), torch.device("cpu")
    rows: list[tuple[str, ...]] = []

    def add(*cells: str) -> None:
        rows.append(cells)

    print(
        f"# torch {torch.__version__}, torchaudio {torchaudio.__version__}, scipy {scipy.__version__}, "
        f"numpy {np.__version__}, python {platform.python_version()}, device {dev}"
        + (
            f" ({torch.cuda.get_device_name(dev)})"
            if dev.type == "cuda"
            else f" ({torch.get_num_threads()} threads)"
        )
    )

    rates = [44100, 48000, 22050, 8000]
    speech, source = speech_at(rates + [SAMPLE_RATE], args.resample_seconds)
    print(f"# input: {source}")

    # ---- mel filter bank ------------------------------------------------------------------------
    ref = slaney_mel_basis(torch.float64)  # torchaudio.functional.melscale_fbanks, float64 grid (64, 513)
    port = torch.from_numpy(mel_fbanks_numpy(N_FFT // 2 + 1, 0.0, 8000.0, N_MELS, SAMPLE_RATE).T)
    np_ms, ta_ms = interleaved_ms(
        [
            lambda: mel_fbanks_numpy(N_FFT // 2 + 1, 0.0, 8000.0, N_MELS, SAMPLE_RATE),
            lambda: slaney_mel_basis(torch.float64),
        ],
        cpu,
        rep,
    )
    add(
        "melscale_fbanks (Slaney, 64 x 513)",
        "NumPy port",
        f"{maxabs(port, ref):.1e}",
        f"{np_ms:.2f} vs {ta_ms:.2f} ms (once per process)",
        str(code_lines(mel_fbanks_numpy)),
        "—",
    )
    try:
        import librosa

        lib = torch.from_numpy(
            librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmax=8000.0, dtype=np.float64)
        )
        (lib_ms,) = interleaved_ms(
            [lambda: librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmax=8000.0)], cpu, rep
        )
        runtime = (
            [r for r in (md.requires("vaefix-pl") or []) if "extra ==" not in r]
            if _installed("vaefix-pl")
            else []
        )
        if not runtime:  # the project is not installed: its runtime list from pyproject.toml
            import tomllib

            runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        have = dist_closure(runtime)
        extra = {k: v for k, v in dist_closure(["librosa"]).items() if k not in have}
        mb = sum(extra.values()) / 2**20
        big = ", ".join(
            f"{k} {v / 2**20:.0f} MB" for k, v in sorted(extra.items(), key=lambda kv: -kv[1]) if v > 2**20
        )
        add(
            "melscale_fbanks (Slaney, 64 x 513)",
            f"`librosa.filters.mel` {librosa.__version__}",
            f"{maxabs(lib, ref):.1e}",
            f"{lib_ms:.2f} vs {ta_ms:.2f} ms",
            "1 (+ dependency)",
            f"adds {len(extra)} packages, {mb:.0f} MB installed ({big})",
        )
    except ImportError:
        add("melscale_fbanks", "librosa", "not installed", "—", "—", "—")

    # ---- resample -------------------------------------------------------------------------------
    for sr in rates:
        x = torch.from_numpy(wideband(speech[sr], sr, seed=sr)).float().to(dev)[None]  # (1, 60 s)
        ref = torchaudio.functional.resample(x, sr, SAMPLE_RATE)
        port = resample_sinc_hann(x, sr, SAMPLE_RATE)
        sp = resample_scipy(x, sr, SAMPLE_RATE)
        ta_ms, port_ms, sp_ms = interleaved_ms(
            [
                lambda x=x, sr=sr: torchaudio.functional.resample(x, sr, SAMPLE_RATE),
                lambda x=x, sr=sr: resample_sinc_hann(x, sr, SAMPLE_RATE),
                lambda x=x, sr=sr: resample_scipy(x, sr, SAMPLE_RATE),
            ],
            dev,
            rep,
        )
        # Output lengths, also where new * n / orig is just above an integer (torchaudio's float32
        # rounding of the length drops a sample there on long inputs).
        o, w = sr // math.gcd(sr, SAMPLE_RATE), SAMPLE_RATE // math.gcd(sr, SAMPLE_RATE)
        r = pow(w, -1, o) if o > 1 else 0
        lens = [
            m for m in (x.shape[-1] // 2 + 1, r + o, r + o * ((x.shape[-1] - r) // o)) if 0 < m <= x.shape[-1]
        ]
        same = sum(
            torchaudio.functional.resample(x[:, :m], sr, SAMPLE_RATE).shape[-1]
            == resample_sinc_hann(x[:, :m], sr, SAMPLE_RATE).shape[-1]
            for m in lens
        )
        name = f"resample {sr / 1000:g}k -> 16k ({args.resample_seconds:g} s, float32)"
        add(
            name,
            "torch port of sinc_interp_hann",
            f"{maxabs(port, ref):.1e}",
            f"{port_ms:.1f} vs {ta_ms:.1f} ms",
            str(code_lines(resample_sinc_hann)),
            f"same output length on {same}/{len(lens)} input lengths",
        )
        add(
            name,
            "`scipy.signal.resample_poly`",
            f"{maxabs(sp, ref):.1e} (difference {rel_db(sp, ref):.0f} dB re signal)",
            f"{sp_ms:.1f} vs {ta_ms:.1f} ms",
            str(code_lines(resample_scipy)),
            "different filter: not upstream's resampler",
        )

    # ---- band-pass (lfilter) --------------------------------------------------------------------
    sos = design_bandpass()
    n = int(round(args.filter_seconds * SAMPLE_RATE))
    clip = wideband(speech[SAMPLE_RATE], SAMPLE_RATE, seed=1)
    starts = (
        np.linspace(0, len(clip) - n, args.filter_batch).astype(int)
        if len(clip) > n
        else [0] * args.filter_batch
    )
    xb = torch.from_numpy(np.stack([np.resize(clip[s:], n) for s in starts])).to(dev)  # (B, n) float64
    name = f"lfilter: band-pass `sosfiltfilt`, {args.filter_batch} x {args.filter_seconds:g} s, float64"
    ref = sosfiltfilt(xb, sos, block_size=None)  # torchaudio lfilter per section
    mm = sosfiltfilt(xb, sos, block_size="auto")
    sp = sosfiltfilt_scipy(xb, sos)
    ta_ms, mm_ms, sp_ms = interleaved_ms(
        [
            lambda: sosfiltfilt(xb, sos, block_size=None),
            lambda: sosfiltfilt(xb, sos, block_size="auto"),
            lambda: sosfiltfilt_scipy(xb, sos),
        ],
        dev,
        rep,
    )  # fmt: skip
    add(
        name,
        "matmul form (`block_size='auto'`, the default; no torchaudio)",
        f"{maxabs(mm, ref):.1e}",
        f"{mm_ms:.0f} vs {ta_ms:.0f} ms",
        "0 (exists)",
        "—",
    )
    add(
        name,
        "`scipy.signal.sosfiltfilt` (host)",
        f"{maxabs(sp, ref):.1e}",
        f"{sp_ms:.0f} vs {ta_ms:.0f} ms",
        str(code_lines(sosfiltfilt_scipy)),
        "host only (a device round trip on GPU, included in its time)",
    )
    m = min(args.loop_samples, n)
    u = xb[:, :m].double()
    ta_casc = u
    for s in sos:
        a, b = torch.tensor(s[3:], dtype=u.dtype, device=dev), torch.tensor(s[:3], dtype=u.dtype, device=dev)
        ta_casc = torchaudio.functional.lfilter(ta_casc, a, b, clamp=False)
    loop = sosfilt_torch_loop(u, sos)
    loop_ms = 1000.0 * min(time_device(lambda: sosfilt_torch_loop(u, sos), dev, 0, 1))
    full_ms = loop_ms * 2 * (n + 2 * default_padlen(sos)) / m  # two passes over the extended rows
    add(
        name,
        f"plain torch loop over samples (timed on {m} samples, scaled)",
        f"{maxabs(loop, ta_casc):.1e} (one pass)",
        f"{full_ms / 1000:.0f} s vs {ta_ms:.0f} ms",
        str(code_lines(sosfilt_torch_loop)),
        "far too slow",
    )

    # ---- Griffin-Lim ----------------------------------------------------------------------------
    wav = torch.from_numpy(np.stack([np.resize(clip[s:], n) for s in starts[: args.gl_batch]])).float()
    mel = LogMelFrontend("tacotron")(wav)[:, 0].to(dev)  # (B, T, 64)
    voc = GriffinLimVocoder("tacotron", n_iter=args.gl_iters).to(dev)
    basis64 = torch.from_numpy(
        mel_fbanks_numpy(N_FFT // 2 + 1, 0.0, 8000.0, N_MELS, SAMPLE_RATE).T
    )  # (64, 513)
    basis = basis64.float().to(dev)
    pinv = torch.linalg.pinv(basis64).float().to(dev)  # (513, 64): the same minimum-norm inverse, precomputed
    window = torch.hann_window(N_FFT, device=dev)
    with torch.no_grad():
        ref = voc(mel)
        port = griffin_lim_port(mel, basis, window, args.gl_iters)
        port_ms, ta_ms = interleaved_ms(
            [lambda: griffin_lim_port(mel, basis, window, args.gl_iters), lambda: voc(mel)], dev, gl_rep
        )
        padded = torch.cat([mel, mel[:, -1:]], dim=1)
        target = voc.magnitude(padded)
        mag_pinv = torch.relu(pinv @ torch.exp(padded.float()).transpose(1, 2))
        sc_ta, sc_port = spectral_convergence(ref, target, window), spectral_convergence(port, target, window)
        lst_ms, pinv_ms = interleaved_ms(
            [
                lambda: voc.magnitude(padded),
                lambda: torch.relu(pinv @ torch.exp(padded.float()).transpose(1, 2)),
            ],
            dev,
            rep,
        )
    peak = float(target.abs().max())
    add(
        f"InverseMelScale + griffinlim ({args.gl_batch} x {args.filter_seconds:g} s, {args.gl_iters} iter)",
        "torch port: `lstsq` mel inverse + fast GL loop",
        f"waveform {maxabs(port, ref):.1e}; spectral convergence {sc_port:.4f} vs {sc_ta:.4f}",
        f"{port_ms:.0f} vs {ta_ms:.0f} ms",
        str(code_lines(griffin_lim_port)),
        "—",
    )
    add(
        "InverseMelScale alone",
        "precomputed `torch.linalg.pinv` + matmul",
        f"{maxabs(mag_pinv, target):.1e} (magnitude peak {peak:.2g})",
        f"{pinv_ms:.1f} vs {lst_ms:.1f} ms",
        "2",
        "—",
    )

    print()
    print(
        "| function | replacement | max abs diff vs torchaudio | time: replacement vs torchaudio | lines | note |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def _installed(name: str) -> bool:
    try:
        md.distribution(name)
        return True
    except md.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
