"""AudioLDM2's log-mel front-end and level step, as pure tensor code (no I/O).

Facts matched (``docs/FRONTEND.md``; upstream ``audioldm2/utilities/audio/stft.py``):
16 kHz, n_fft = win_length = 1024, hop 160, periodic Hann window, magnitude (not power) STFT,
64 Slaney mel bands 0-8000 Hz with Slaney area norm (librosa's defaults), natural log of
``clamp(mel, 1e-5)``, no mean/std normalisation.

Two framings exist upstream; both are supported and they differ by half a hop (80 samples):

* ``"tacotron"`` (AudioLDM2 inference and its data code): reflect-pad 512 each side; frame ``k`` is
  centred on sample ``160 k``; ``N`` samples give ``N // 160 + 1`` frames.
* ``"hifigan"`` (the training recipe): reflect-pad 432 each side, ``center=False``; frame ``k`` covers
  samples around ``160 k + 80``; ``N`` samples give ``N // 160`` frames.
"""

from __future__ import annotations

import functools
import math

import torch
import torchaudio
from torch import Tensor, nn

from vaefix_pl.core.choices import FRAMINGS, Framing  # noqa: F401 (re-exported)
from vaefix_pl.core.geometry import AUDIOLDM_16K, Geometry

SAMPLE_RATE = 16000
N_FFT = 1024
HOP = 160
N_MELS = 64
F_MIN = 0.0
F_MAX = 8000.0
MEL_FLOOR = 1e-5
LOG_MEL_FLOOR = math.log(MEL_FLOOR)  # -11.5129...
PEAK = 0.5
#: Largest log-mel a peak-0.5 input can produce: |STFT| <= 0.5 * sum(hann) = 256 and no Slaney band's
#: weights sum to more than 0.0651 (about 1 / 15.625 Hz per bin), so mel <= 16.7 and log(mel) <= 2.814.
LOG_MEL_CEIL = 2.8139
#: The range a healthy AudioLDM2 log-mel lives in (the VAE and vocoder were trained on it).
TRAINED_LOG_MEL_RANGE = (LOG_MEL_FLOOR, LOG_MEL_CEIL)


def _check_framing(framing: str) -> None:
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")


def frame_padding(framing: Framing) -> int:
    """Reflect padding (samples, each side) before an uncentred STFT for ``framing``."""
    _check_framing(framing)
    return N_FFT // 2 if framing == "tacotron" else (N_FFT - HOP) // 2


def num_frames(num_samples: int | Tensor, framing: Framing = "tacotron") -> int | Tensor:
    """Frames the front-end makes from ``num_samples`` samples (int or integer tensor)."""
    _check_framing(framing)
    return num_samples // HOP + 1 if framing == "tacotron" else num_samples // HOP


def samples_for_frames(frames: int | Tensor, framing: Framing = "tacotron") -> int | Tensor:
    """The smallest sample count that gives exactly ``frames`` frames (inverse of :func:`num_frames`)."""
    _check_framing(framing)
    return (frames - 1) * HOP if framing == "tacotron" else frames * HOP


def min_samples(framing: Framing = "tacotron") -> int:
    """Shortest input the front-end accepts: reflect padding needs more samples than it pads."""
    return frame_padding(framing) + 1


def valid_mask(lengths: Tensor, size: int) -> Tensor:
    """``(B, size)`` boolean mask, True where index < each item's length."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


class LevelStats:
    """:func:`level_stats` accumulated over column blocks of :data:`_LEVEL_BLOCK` samples (every block
    but the last exactly that wide, so the float64 sums are those of one call over the whole item)."""

    def __init__(self, b: int = 1, device: torch.device | str | None = None) -> None:
        f64 = torch.float64
        self.total = torch.zeros(b, dtype=f64, device=device)
        self.hi = torch.full((b,), -math.inf, dtype=f64, device=device)
        self.lo = torch.full((b,), math.inf, dtype=f64, device=device)

    def add(self, xb: Tensor, mb: Tensor) -> None:
        """``xb`` ``(B, k)`` samples and ``mb`` their validity mask."""
        self.total += torch.where(mb, xb, 0.0).to(torch.float64).sum(dim=1)
        self.hi = torch.maximum(self.hi, torch.where(mb, xb, -math.inf).amax(dim=1).to(torch.float64))
        self.lo = torch.minimum(self.lo, torch.where(mb, xb, math.inf).amin(dim=1).to(torch.float64))

    def result(self, lengths: Tensor, peak: float = PEAK, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
        """``(mean, gain)`` ``(B,)`` float64 for items of ``lengths`` valid samples."""
        mean = self.total / lengths.clamp(min=1).to(torch.float64)
        spread = torch.maximum(self.hi - mean, mean - self.lo).clamp(min=0.0)  # 0 for empty items
        return mean, peak / (spread + eps)


def level_stats(
    waveform: Tensor, lengths: Tensor | None = None, peak: float = PEAK, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """``(mean, gain)`` ``(B,)`` float64 of :func:`normalize_level` for ``waveform`` ``(B, N)``, without
    making the normalised copy (a long item's segments get it from :func:`apply_level`)."""
    if waveform.ndim != 2:
        raise ValueError(f"waveform must be (B, N), got shape {tuple(waveform.shape)}")
    b, n = waveform.shape
    if lengths is None:
        lengths = torch.full((b,), n, dtype=torch.long, device=waveform.device)
    # float64 statistics, in column blocks: a 10-minute item would otherwise hold several float64
    # copies of itself. max|x - mean| = max(max x - mean, mean - min x), so only the extremes are kept.
    acc = LevelStats(b, waveform.device)
    for s in range(0, n, _LEVEL_BLOCK):
        xb = waveform[:, s : s + _LEVEL_BLOCK]
        acc.add(xb, valid_mask(lengths - s, xb.shape[1]))
    return acc.result(lengths, peak, eps)


def apply_level(x: Tensor, mean: Tensor, gain: Tensor) -> Tensor:
    """``(x - mean) * gain`` (float64 arithmetic, ``x``'s dtype) for ``x`` ``(B, n)`` of valid samples and
    ``mean``/``gain`` ``(B,)`` float64: :func:`normalize_level`'s values, for any span of the items."""
    return ((x.to(torch.float64) - mean[:, None]) * gain[:, None]).to(x.dtype)


def normalize_level(
    waveform: Tensor, lengths: Tensor | None = None, peak: float = PEAK, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """AudioLDM2's level step, per item over its valid samples only.

    ``y = (x - mean(x)) / (max|x - mean(x)| + eps) * peak``; padding stays exactly zero.

    Args:
        waveform: ``(B, N)`` float waveform.
        lengths: ``(B,)`` valid sample counts (``None``: all ``N`` valid).
    Returns:
        ``(y, gain)``: ``y`` ``(B, N)`` in the input's dtype, and ``gain`` ``(B,)`` float64 such that
        ``y = (x - mean) * gain``; divide a reconstruction by ``gain`` to return to the input level.
    """
    mean, gain = level_stats(waveform, lengths, peak, eps)
    b, n = waveform.shape
    if lengths is None:
        lengths = torch.full((b,), n, dtype=torch.long, device=waveform.device)
    out = torch.empty_like(waveform)
    for s in range(0, n, _LEVEL_BLOCK):
        xb = waveform[:, s : s + _LEVEL_BLOCK]
        mb = valid_mask(lengths - s, xb.shape[1])
        out[:, s : s + _LEVEL_BLOCK] = torch.where(mb, apply_level(xb, mean, gain), 0.0)
    return out, gain


#: column block (samples) of :func:`normalize_level`'s float64 passes
_LEVEL_BLOCK = 1 << 20


def slaney_mel_basis(dtype: torch.dtype = torch.float64, geometry: Geometry | None = None) -> Tensor:
    """``(64, 513)`` AudioLDM2 mel basis == ``librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmax=8000)``.

    With ``geometry``: that geometry's ``(n_mels, n_fft//2 + 1)`` basis (same construction).

    Built by torchaudio's ``melscale_fbanks`` (Slaney scale and norm). torchaudio builds its
    frequency grids with the default dtype, so it runs here with float64 as the default: a float32
    grid would cap the float64 front-end's agreement with librosa near 1e-7.
    """
    return _slaney_mel_basis64(geometry or AUDIOLDM_16K).to(dtype, copy=True)


@functools.lru_cache(maxsize=4)
def _slaney_mel_basis64(g: Geometry) -> Tensor:
    # built once per process: the pipeline's front-end and the metrics' front-end share it
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        # On the CPU whatever the default device: Lightning's configure_model runs under a CUDA
        # default device, where torchaudio mixed CUDA grids with CPU tensors and failed.
        with torch.device("cpu"):
            fb = torchaudio.functional.melscale_fbanks(
                g.n_fft // 2 + 1, g.fmin, g.fmax, g.n_mels, g.sample_rate, norm="slaney", mel_scale="slaney"
            )
    finally:
        torch.set_default_dtype(previous)
    return fb.T.contiguous()


class LogMelFrontend(nn.Module):
    """``(B, N)`` waveform at 16 kHz -> ``(B, 1, T, 64)`` natural-log mel (AudioLDM2's VAE/vocoder input).

    ``geometry`` (default ``audioldm_16k``) sets rate, n_fft, hop, mel bank and floor: at 48 kHz
    ``(B, N)`` -> ``(B, 1, T, 256)`` with hop 480 (same computation as :func:`vaefix_pl.core.melspec.log_mel`).

    Computes in the input's dtype (float64 in, float64 out; anything narrower runs in float32 and
    autocast is switched off: the STFT and the log of small mel values are not safe in bf16/fp16).
    No cropping: ``T = N // 160 + 1`` (``"tacotron"``) or ``N // 160`` (``"hifigan"``).
    """

    mel_basis: Tensor
    window: Tensor

    def __init__(self, framing: Framing = "tacotron", geometry: Geometry | None = None) -> None:
        super().__init__()
        _check_framing(framing)
        g = geometry or AUDIOLDM_16K
        self.geometry = g
        self.framing = framing
        self.n_fft, self.hop, self.n_mels = g.n_fft, g.hop, g.n_mels
        self.sample_rate, self.floor = g.sample_rate, g.log_floor
        self.pad = g.frame_padding(framing)
        # Kept in float64 and cast per call, so float64 inputs get a float64 basis even after .float().
        self.register_buffer("mel_basis", slaney_mel_basis(torch.float64, g), persistent=False)
        self.register_buffer(
            "window",
            torch.hann_window(g.win_length, periodic=True, dtype=torch.float64, device="cpu"),
            persistent=False,
        )

    def extra_repr(self) -> str:
        return f"framing={self.framing!r}, n_fft={self.n_fft}, hop={self.hop}, n_mels={self.n_mels}"

    def num_frames(self, num_samples: int | Tensor) -> int | Tensor:
        return num_samples // self.hop + 1 if self.framing == "tacotron" else num_samples // self.hop

    def magnitude(self, waveform: Tensor) -> Tensor:
        """``(B, N)`` -> ``(B, n_fft//2 + 1, T)`` STFT magnitude (``(B, 513, T)`` at 16 kHz)."""
        if waveform.ndim != 2:
            raise ValueError(f"waveform must be (B, N), got shape {tuple(waveform.shape)}")
        if waveform.shape[-1] <= self.pad:
            raise ValueError(
                f"waveform has {waveform.shape[-1]} samples; the {self.framing!r} framing needs more than "
                f"{self.pad} (reflect padding of {self.pad} samples)"
            )
        dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
        x = waveform.to(dtype)[:, None, :]
        x = torch.nn.functional.pad(x, (self.pad, self.pad), mode="reflect")[:, 0]
        spec = torch.stft(
            x,
            n_fft=self.n_fft,
            hop_length=self.hop,
            win_length=self.window.shape[0],
            window=self.window.to(dtype),
            center=False,
            return_complex=True,
        )
        return spec.abs()

    def mel(self, waveform: Tensor) -> Tensor:
        """``(B, N)`` -> ``(B, T, 64)`` linear (not log) mel magnitude."""
        with torch.autocast(waveform.device.type, enabled=False):
            mag = self.magnitude(waveform)
            return torch.matmul(self.mel_basis.to(mag.dtype), mag).transpose(1, 2)

    def forward(self, waveform: Tensor) -> Tensor:
        """``(B, N)`` -> ``(B, 1, T, 64)`` natural-log mel, floor ``log(1e-5)``."""
        with torch.autocast(waveform.device.type, enabled=False):
            return torch.log(torch.clamp(self.mel(waveform), min=self.floor))[:, None]
