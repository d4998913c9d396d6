"""What a reconstruction returns (:class:`ReconstructionOutput`), its out-of-memory error, and the small numeric helpers of :mod:`vaefix_pl.core.reconstruct` (autocast regions, float64 row scaling)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor


class ItemOutOfMemoryError(RuntimeError):
    """CUDA ran out of memory on a single item (or a single window of a long item).

    ``rows``: the batch rows involved. :class:`~vaefix_pl.lightning.module.ReconstructionModule` re-raises it with
    the items' ids.
    """

    def __init__(self, message: str, rows: list[int]) -> None:
        super().__init__(message)
        self.rows = rows


@dataclass
class ReconstructionOutput:
    """What :class:`Reconstructor` returns for a batch (all tensors on the input's device).

    Attributes:
        waveform: ``(B, N)`` float32 reconstruction at the input's level, zero beyond ``lengths``.
        reference: ``(B, N)`` float32 input as the model saw it (DC removed), at the input's level.
        mel: ``(B, 1, T, 64)`` log-mel of the level-normalised input (the VAE's input).
        mel_hat: ``(B, 1, T, 64)`` decoded log-mel after non-finite repair (the vocoder's input).
        latent: ``(B, C, T/4, 16)`` scaled latent (``scaling_factor`` applied).
        lengths: ``(B,)`` valid samples; ``frames``: ``(B,)`` frames that cover them, ``ceil(N/160)``.
        canonical_frames: ``(B,)`` frames each item was padded to; beyond them ``mel``/``mel_hat`` hold
            the floor and ``latent`` zeros. For a windowed item (longer than the window), the frames its
            windows span, ``(K - 1) * hop + window``; its ``mel`` is the whole item's log-mel, its
            ``mel_hat``/``latent`` the windows' decoded mels/latents blended linearly over each overlap
            (latent frame ``j`` sits at mel frame ``4 j`` as for short items).
        gain: ``(B,)`` float64 level gain (``normalised = (x - mean) * gain``).
        health: ``(B,)`` tensors: ``mel_*``, ``mel_hat_*`` (before repair), ``latent_nonfinite``,
            ``output_nonfinite`` (before repair), ``output_peak``.
    """

    waveform: Tensor
    reference: Tensor
    mel: Tensor
    mel_hat: Tensor
    latent: Tensor
    lengths: Tensor
    frames: Tensor
    canonical_frames: Tensor
    gain: Tensor
    health: dict[str, Tensor] = field(default_factory=dict)


def _autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """An autocast region that overrides any outer one (e.g. a Trainer's ``16-mixed``)."""
    if dtype is None:
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=dtype)


def _scale_rows(x: Tensor, scale: Tensor, block: int = 1 << 20) -> Tensor:
    """``(x.double() * scale).float()`` for ``x`` ``(B, N)``, ``scale`` ``(B, 1)`` float64, in blocks of
    ``block`` samples so a long item costs no float64 copy of its whole waveform."""
    out = torch.empty_like(x, dtype=torch.float32)
    for s in range(0, x.shape[-1], block):
        out[:, s : s + block] = (x[:, s : s + block].double() * scale).float()
    return out
