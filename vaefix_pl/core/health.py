"""Numeric health of a tensor per item: non-finite counts, float64 statistics, range, constancy.

The original bug report's symptoms (``std=inf`` from float16 statistics, a constant ``[-4.000, -4.000]`` vocoder input)
are what these numbers catch. Pure tensor code; statistics in float64 over each item's valid part.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vaefix_pl.core.frontend import LOG_MEL_CEIL, LOG_MEL_FLOOR, TRAINED_LOG_MEL_RANGE, valid_mask

#: Spread below which an item counts as constant (the original bug report's ``[-4.000, -4.000]`` symptom).
CONSTANT_STD = 1e-6


def tensor_health(
    x: Tensor,
    mask: Tensor,
    value_range: tuple[float, float] | None = None,
    tolerance: float = 0.0,
) -> dict[str, Tensor]:
    """Per-item health of ``x`` over the positions where ``mask`` is True.

    Args:
        x: ``(B, ...)`` any float tensor.
        mask: boolean, broadcastable to ``x``, True at valid positions.
        value_range: ``(low, high)``; counts the fraction of finite values outside
            ``[low - tolerance, high + tolerance]``.
    Returns:
        dict of ``(B,)`` tensors: ``nan``, ``posinf``, ``neginf``, ``nonfinite`` (counts, int64),
        ``min``, ``max``, ``mean``, ``std`` (float64 over finite valid values; NaN when none),
        ``frac_out_of_range`` (float64) and ``constant`` (bool, std < 1e-6).
    """
    b = x.shape[0]
    mask = mask.expand_as(x).reshape(b, -1)
    flat = x.reshape(b, -1)
    nan = (torch.isnan(flat) & mask).sum(1)
    posinf = (torch.isposinf(flat) & mask).sum(1)
    neginf = (torch.isneginf(flat) & mask).sum(1)
    finite = torch.isfinite(flat) & mask
    v = torch.where(finite, flat.to(torch.float64), torch.zeros((), dtype=torch.float64, device=x.device))
    n = finite.sum(1).to(torch.float64)
    nz = n.clamp(min=1)
    mean = v.sum(1) / nz
    var = (((v - mean[:, None]) * finite) ** 2).sum(1) / nz
    # torch.full, not torch.tensor: a host-to-device copy of a Python scalar waits for the device
    big = torch.full((), math.inf, dtype=torch.float64, device=x.device)
    vmin = torch.where(finite, v, big).amin(1)
    vmax = torch.where(finite, v, -big).amax(1)
    none = n == 0
    nan64 = torch.full((), math.nan, dtype=torch.float64, device=x.device)
    out = {
        "nan": nan,
        "posinf": posinf,
        "neginf": neginf,
        "nonfinite": nan + posinf + neginf,
        "min": torch.where(none, nan64, vmin),
        "max": torch.where(none, nan64, vmax),
        "mean": torch.where(none, nan64, mean),
        "std": torch.where(none, nan64, var.sqrt()),
    }
    out["constant"] = (out["std"] < CONSTANT_STD) & ~none
    if value_range is not None:
        low, high = value_range[0] - tolerance, value_range[1] + tolerance
        outside = finite & ((v < low) | (v > high))
        out["frac_out_of_range"] = outside.sum(1).to(torch.float64) / nz
    return out


def mel_health(mel: Tensor, frames: Tensor, tolerance: float = 0.5) -> dict[str, Tensor]:
    """Health of a ``(B, 1, T, M)`` log-mel over each item's first ``frames`` frames.

    The range is AudioLDM2's trained log-mel range ``[log(1e-5), 2.81]``; ``tolerance`` (nats) lets
    the small over/undershoot a healthy decoder produces pass.
    """
    mask = valid_mask(frames, mel.shape[2])[:, None, :, None]
    return tensor_health(mel, mask, TRAINED_LOG_MEL_RANGE, tolerance)


def repair_mel(mel: Tensor) -> Tensor:
    """Non-finite repair of a log-mel: NaN -> ``log(1e-5)``, +inf -> ``2.81``, -inf -> ``log(1e-5)``."""
    return torch.nan_to_num(mel, nan=LOG_MEL_FLOOR, posinf=LOG_MEL_CEIL, neginf=LOG_MEL_FLOOR)


def repair_waveform(x: Tensor) -> Tensor:
    """Non-finite repair of a waveform: NaN -> 0, +/-inf -> +/-1 (the vocoder is tanh-bounded)."""
    return torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
