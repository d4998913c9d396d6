"""Geometry-driven log-mel front-end, as a pure function: ``(B, N)`` waveform -> ``(B, 1, T, n_mels)``.

Same conventions as the 16 kHz ``LogMelFrontend`` (periodic Hann, magnitude STFT, librosa-Slaney mel
basis, natural log of ``clamp(mel, 1e-5)``, reflect padding then ``center=False``), for any
:class:`~vaefix_pl.core.geometry.Geometry`:

* ``"tacotron"``: pad ``n_fft/2`` each side; ``T = N // hop + 1``.
* ``"hifigan"``: pad ``(n_fft - hop)/2`` each side; ``T = N // hop``.

Computes in float64 for float64 input, float32 otherwise, with autocast off.
"""

from __future__ import annotations

import functools

import torch
import torchaudio
from torch import Tensor

from vaefix_pl.core.geometry import Framing, Geometry


@functools.lru_cache(maxsize=8)
def _basis_f64(n_fft: int, fmin: float, fmax: float, n_mels: int, sample_rate: int) -> Tensor:
    # torchaudio builds its frequency grids in the default dtype: float64 here, so the float64
    # front-end agrees with librosa to ~1e-12 rather than ~1e-7.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.device("cpu"):
            fb = torchaudio.functional.melscale_fbanks(
                n_fft // 2 + 1, fmin, fmax, n_mels, sample_rate, norm="slaney", mel_scale="slaney"
            )
    finally:
        torch.set_default_dtype(previous)
    return fb.T.contiguous()


def mel_basis(geometry: Geometry, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(n_mels, n_fft//2 + 1)`` Slaney mel basis == ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)``."""
    g = geometry
    return _basis_f64(g.n_fft, float(g.fmin), float(g.fmax), g.n_mels, g.sample_rate).to(dtype)


def magnitude(waveform: Tensor, geometry: Geometry, framing: Framing | None = None) -> Tensor:
    """``(B, N)`` -> ``(B, n_fft//2 + 1, T)`` STFT magnitude."""
    g = geometry
    if waveform.ndim != 2:
        raise ValueError(f"waveform must be (B, N), got shape {tuple(waveform.shape)}")
    f = framing or g.framing
    pad = g.frame_padding(f)
    if waveform.shape[-1] <= pad:
        raise ValueError(
            f"waveform has {waveform.shape[-1]} samples; the {f!r} framing at {g.sample_rate} Hz needs "
            f"more than {pad} (reflect padding of {pad} samples)"
        )
    dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
    x = torch.nn.functional.pad(waveform.to(dtype)[:, None, :], (pad, pad), mode="reflect")[:, 0]
    window = torch.hann_window(g.win_length, periodic=True, dtype=dtype, device=waveform.device)
    spec = torch.stft(
        x,
        n_fft=g.n_fft,
        hop_length=g.hop,
        win_length=g.win_length,
        window=window,
        center=False,
        return_complex=True,
    )
    return spec.abs()


def mel(waveform: Tensor, geometry: Geometry, framing: Framing | None = None) -> Tensor:
    """``(B, N)`` -> ``(B, T, n_mels)`` linear (not log) mel magnitude."""
    with torch.autocast(waveform.device.type, enabled=False):
        mag = magnitude(waveform, geometry, framing)
        basis = mel_basis(geometry, mag.dtype).to(mag.device)
        return torch.matmul(basis, mag).transpose(1, 2)


def log_mel(waveform: Tensor, geometry: Geometry, framing: Framing | None = None) -> Tensor:
    """``(B, N)`` at ``geometry.sample_rate`` -> ``(B, 1, T, n_mels)`` natural-log mel, floor ``ln(1e-5)``."""
    with torch.autocast(waveform.device.type, enabled=False):
        return torch.log(torch.clamp(mel(waveform, geometry, framing), min=geometry.log_floor))[:, None]
