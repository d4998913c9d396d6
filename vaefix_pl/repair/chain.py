"""The original bug report's repair chain as batched tensor ops (any device), plus :class:`PostProcessChain`.

The original bug report ran these in NumPy/SciPy on the CPU, one clip at a time.
Here every function takes a batch with per-item valid lengths and treats each item exactly as the bug report
treated a clip of that length: padding never enters a statistic, a fade or a filter's edge, and the
padded part of a waveform output is zero.

* :func:`normalize_mel` -- mel step before the vocoder: ``"guard"`` (non-finite repair + clamp to the
  trained range), ``"standardize"`` (the bug report's ``safe_normalize_mel``), ``"minmax"`` (the bug report's
  ``simple_safe_normalize``).
* :func:`repair_outliers` -- k-sigma outliers replaced by a median filter (``scipy.ndimage`` edges).
* :func:`fade` -- square-root fade in/out at each item's own ends.
* :func:`bandpass` -- elliptic band-pass, zero-phase, equal to ``scipy.signal.sosfiltfilt`` (odd
  extension, ``sosfilt_zi`` initial conditions) and run with ``torchaudio.functional.lfilter``.
* :func:`soft_compress` -- the bug report's soft knee above a threshold.

Waveforms are ``(B, N)`` with ``lengths (B,)`` valid sample counts; mels are ``(B, 1, T, M)`` with
``frames (B,)`` valid frame counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from vaefix_pl.core.errors import SettingsError
from vaefix_pl.core.frontend import LOG_MEL_FLOOR, TRAINED_LOG_MEL_RANGE, valid_mask
from vaefix_pl.core.lengths import full_lengths
from vaefix_pl.repair.config import (
    MEL_MODES,
    SEED_FINAL,
    MelMode,
    RepairConfig,
    describe,
)
from vaefix_pl.repair.dsp import bandpass, design_bandpass

# --------------------------------------------------------------------------------------------------
# 1. mel normalisation
# --------------------------------------------------------------------------------------------------


def normalize_mel(
    mel: Tensor,
    frames: Tensor | None = None,
    mode: MelMode = "guard",
    target_mean: float = -5.0,
    target_std: float = 5.0,
    target_range: Sequence[float] = (-10.0, 10.0),
    guard_range: Sequence[float] = TRAINED_LOG_MEL_RANGE,
) -> Tensor:
    """Normalise a decoded log-mel ``(B, 1, T, M)`` (time on dim -2) per item over its valid frames.

    Modes:

    * ``"guard"``: NaN -> ``log(1e-5)``, +inf -> ``guard_range[1]``, -inf -> ``guard_range[0]``, then
      clamp to ``guard_range``. Elementwise, so it is exactly a no-op on finite in-range input; it is
      applied to every frame, padded ones included, so nothing non-finite reaches the vocoder.
    * ``"standardize"``: the bug report's ``safe_normalize_mel``: ``nan_to_num(nan=target_mean, posinf=0,
      neginf=-50)`` (only if something is non-finite), float64 mean/std (population, like ``np.std``),
      ``(x - mean) / std * target_std + target_mean``; if std is not finite or <= 1e-6, min-max to
      ``[target_mean - target_std, target_mean + target_std]``; if flat, ``target_mean``.
    * ``"minmax"``: the bug report's ``simple_safe_normalize``: ``nan_to_num(nan=0, posinf=0, neginf=-50)``,
      min-max to ``target_range``; if flat, the middle of ``target_range``.
    * ``"none"``: returned unchanged.

    The bug report normalised one clip at a time, so the statistics here are per item over its ``frames``
    valid frames (all channels and mel bins). In the statistical modes padded frames of the output are 0.

    Args:
        mel: ``(B, C, T, M)`` log-mel (natural log), any float dtype.
        frames: ``(B,)`` valid frame counts (``None``: all ``T`` valid).
    Returns:
        Same shape and dtype as ``mel``.
    """
    if mode not in MEL_MODES:
        raise ValueError(f"mode must be one of {MEL_MODES}, got {mode!r}")
    if mel.ndim < 3:
        raise ValueError(f"mel must be (B, ..., T, M), got shape {tuple(mel.shape)}")
    if mode == "none":
        return mel
    if mode == "guard":
        lo, hi = float(guard_range[0]), float(guard_range[1])
        out = torch.nan_to_num(mel, nan=LOG_MEL_FLOOR, posinf=hi, neginf=lo)
        return out.clamp(lo, hi)

    b, t = mel.shape[0], mel.shape[-2]
    if frames is None:
        frames = torch.full((b,), t, dtype=torch.long, device=mel.device)
    frames = torch.as_tensor(frames, device=mel.device).long()
    if frames.shape != (b,):
        raise ValueError(f"frames must be ({b},), got shape {tuple(frames.shape)}")
    # (B, 1, ..., T, 1) mask of valid frames, broadcast over channels and mel bins.
    mask = valid_mask(frames, t).reshape((b,) + (1,) * (mel.ndim - 3) + (t, 1)).expand_as(mel)
    reduce_dims = tuple(range(1, mel.ndim))
    count = mask.sum(dim=reduce_dims).clamp(min=1).to(torch.float64)
    view = (b,) + (1,) * (mel.ndim - 1)
    x = mel.to(torch.float64)

    def _minmax(v: Tensor, lo: Tensor | float, span: Tensor | float, flat_value: float) -> Tensor:
        vmin = torch.where(mask, v, math.inf).amin(dim=reduce_dims).reshape(view)
        vmax = torch.where(mask, v, -math.inf).amax(dim=reduce_dims).reshape(view)
        ok = vmax > vmin
        scale = torch.where(ok, vmax - vmin, torch.ones_like(vmax))
        return torch.where(ok, (v - vmin) / scale * span + lo, torch.full_like(v, flat_value))

    if mode == "standardize":
        nonfinite = (~torch.isfinite(x) & mask).flatten(1).any(dim=1).reshape(view)
        repaired = torch.nan_to_num(x, nan=float(target_mean), posinf=0.0, neginf=-50.0)
        x = torch.where(nonfinite, repaired, x)
        xm = torch.where(mask, x, 0.0)
        mean = (xm.sum(dim=reduce_dims) / count).reshape(view)
        var = (torch.where(mask, x - mean, 0.0) ** 2).sum(dim=reduce_dims) / count
        std = var.sqrt().reshape(view)
        use_std = torch.isfinite(std) & (std > 1e-6)
        standardized = (x - mean) / torch.where(use_std, std, torch.ones_like(std))
        standardized = standardized * target_std + target_mean
        fallback = _minmax(x, target_mean - target_std, 2 * target_std, float(target_mean))
        out = torch.where(use_std, standardized, fallback)
    else:  # minmax
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=-50.0)
        lo, hi = float(target_range[0]), float(target_range[1])
        out = _minmax(x, lo, hi - lo, (lo + hi) / 2)
    return torch.where(mask, out, 0.0).to(mel.dtype)


# --------------------------------------------------------------------------------------------------
# 2. outlier repair
# --------------------------------------------------------------------------------------------------


def _reflect_index(j: Tensor, n: Tensor) -> Tensor:
    """Half-sample-symmetric reflection of index ``j`` into ``[0, n)`` (``scipy.ndimage`` 'reflect',
    i.e. ``d c b a | a b c d | d c b a``), repeated as needed so it also holds when ``n`` is tiny."""
    n = n.clamp(min=1)
    period = 2 * n
    m = torch.remainder(j, period)
    return torch.where(m < n, m, period - 1 - m)


def median_filter(x: Tensor, lengths: Tensor | None = None, size: int = 5) -> Tensor:
    """``scipy.ndimage.median_filter(x_b[:L_b], size)`` for every item, padded output 0.

    ``(B, N)`` -> ``(B, N)``. Edges reflect at each item's own ends ('reflect' = half-sample
    symmetric), never into padding. ``size`` must be odd (the bug report uses 5; for even sizes scipy's
    window placement and rank convention are not the plain centred median).
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer, got {size}")
    lengths = full_lengths(x, lengths)
    b, n = x.shape
    h = size // 2
    # Padded copy (B, N + 2h): the middle is x; the h samples before each item's start and after its
    # own end are filled with the reflected samples (the right ones overwrite that item's padding).
    xp = torch.nn.functional.pad(x, (h, h))
    if h > 0 and n > 0:
        offs = torch.arange(1, h + 1, device=x.device)
        ln = lengths[:, None]
        src_left = _reflect_index(-offs[None, :].expand(b, h), ln).clamp(max=n - 1)  # x[-1], x[-2], ...
        xp[:, :h] = x.gather(1, src_left).flip(1)
        src_right = _reflect_index(ln - 1 + offs[None, :], ln).clamp(max=n - 1)  # x[L], x[L+1], ...
        xp.scatter_(1, ln + h + offs[None, :] - 1, x.gather(1, src_right))
    med = xp.unfold(1, size, 1).median(dim=-1).values  # (B, N); odd size: the exact middle value
    return med * valid_mask(lengths, n)


def repair_outliers(x: Tensor, lengths: Tensor | None = None, k: float = 3.0, size: int = 5) -> Tensor:
    """The bug report's 3-sigma outlier repair, per item: samples with ``|x - mean| > k * std`` take the value of
    a size-``size`` median filter (``scipy.ndimage.median_filter`` of the item alone).

    Mean and population std (``np.std``) in float64 over the item's valid samples. The median is only
    evaluated at the outliers (a fraction of a percent of the samples), with the same per-item reflected
    windows as :func:`median_filter`. ``(B, N)`` -> ``(B, N)`` in the input's dtype; padded samples 0.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer, got {size}")
    lengths = full_lengths(x, lengths)
    mask = valid_mask(lengths, x.shape[1])
    count = lengths.clamp(min=1).to(torch.float64)[:, None]
    x64 = x.to(torch.float64)
    mean = torch.where(mask, x64, 0.0).sum(dim=1, keepdim=True) / count
    dev = (x64 - mean).abs()
    std = torch.where(mask, dev, 0.0).square().sum(dim=1, keepdim=True).div(count).sqrt()
    outliers = (dev > k * std) & mask
    out = x * mask
    rows, cols = torch.nonzero(outliers, as_tuple=True)
    if rows.numel():
        offsets = torch.arange(-(size // 2), size // 2 + 1, device=x.device)
        src = _reflect_index(cols[:, None] + offsets, lengths[rows][:, None])  # (K, size)
        out[rows, cols] = x[rows[:, None], src].median(dim=1).values
    return out


# --------------------------------------------------------------------------------------------------
# 3. fades
# --------------------------------------------------------------------------------------------------


def fade(x: Tensor, lengths: Tensor | None = None, fade_samples: int = 1024) -> Tensor:
    """The bug report's square-root fades at each item's own ends.

    ``f = min(fade_samples, L // 8)``; only if ``L > 2 f``: the first ``f`` samples times
    ``linspace(0, 1, f) ** 0.5`` and the item's last ``f`` valid samples times ``linspace(1, 0, f) ** 0.5``.
    Items with ``f == 0`` (``L < 8``) are left as they are (the bug report's NumPy code would fail on them:
    ``audio[-0:]`` is the whole clip). ``(B, N)`` -> ``(B, N)``, padded samples 0.
    """
    lengths = full_lengths(x, lengths)
    b, n = x.shape
    out = x * valid_mask(lengths, n)
    width = min(int(fade_samples), n // 8)  # no item's fade is longer (f <= L // 8 <= N // 8)
    if width <= 0:
        return out
    t = torch.arange(width, device=x.device)[None, :]  # (1, F)
    ln = lengths[:, None]
    f = torch.clamp(ln // 8, max=int(fade_samples))
    apply = (ln > 2 * f) & (f > 0)
    f64 = f.to(torch.float64)
    step = 1.0 / (f64 - 1).clamp(min=1)  # np.linspace(0, 1, f) = arange(f) * (1 / (f - 1)); f == 1 -> [0]
    # fade-in on the first F samples (gain 1 past each item's own f)
    ramp_in = torch.where(f > 1, t * step, 0.0).sqrt()
    head = torch.where(apply & (t < f), ramp_in, 1.0)
    out[:, :width] = (out[:, :width].to(torch.float64) * head).to(x.dtype)
    # fade-out on the F samples ending at each item's own end; u = position inside its fade-out
    u = t - (width - f)
    ramp_out = torch.where(f > 1, (1.0 - u * step).clamp(min=0.0), 1.0).sqrt()  # linspace(1, 0, f)
    tail = torch.where(apply & (u >= 0), ramp_out, 1.0)
    # Inactive entries may clamp to the same index; they all write back the value they read (gain 1),
    # and an active one never lands on 0 (it needs L > 2 f, so L - f + u > 0).
    pos = (ln - width + t).clamp(min=0)
    out.scatter_(1, pos, (out.gather(1, pos).to(torch.float64) * tail).to(x.dtype))
    return out


# --------------------------------------------------------------------------------------------------
# 5. soft compression
# --------------------------------------------------------------------------------------------------


def soft_compress(
    x: Tensor, threshold: float = 0.7, ratio: float = 0.3, lengths: Tensor | None = None
) -> Tensor:
    """The bug report's soft knee: ``|x| > t -> sign(x) (t + (|x| - t) ratio)``, else unchanged. ``(B, N)``; padded 0."""
    mag = x.abs()
    out = torch.where(mag > threshold, torch.sign(x) * (threshold + (mag - threshold) * ratio), x)
    if lengths is not None:
        out = out * valid_mask(full_lengths(x, lengths), x.shape[1])
    return out


# --------------------------------------------------------------------------------------------------
# 6. the chain
# --------------------------------------------------------------------------------------------------


class PostProcessChain(nn.Module):
    """The the bug report's repair chain, each stage switchable, built from plain values (LightningCLI/YAML).

    :meth:`process_mel` is the mel step (applied to the decoded mel before the vocoder);
    :meth:`forward` runs the waveform stages in the bug report's order: outliers, fades, band-pass,
    compression. No learnable parameters; runs on whatever device its input is on.

    The defaults are the project's safe chain (mel ``"guard"`` only, which never alters a healthy mel);
    :meth:`seed_final` gives the bug report's final run.
    """

    def __init__(self, config: RepairConfig | None = None, **settings: Any) -> None:
        """``config`` and/or any :class:`~vaefix_pl.repair.config.RepairConfig` field as a keyword
        (``PostProcessChain(**chain.describe())`` rebuilds a chain)."""
        super().__init__()
        config = config or RepairConfig()
        if settings:
            known = {f.name for f in fields(RepairConfig)}
            unknown = sorted(set(settings) - known)
            if unknown:
                raise SettingsError(
                    f"unknown repair setting {unknown[0]!r} (postprocess keys: {', '.join(sorted(known))})"
                )
            config = replace(config, **settings)
        self.config = config
        for f in fields(config):
            setattr(self, f.name, getattr(config, f.name))
        if self.bandpass:
            design_bandpass(
                self.sample_rate, self.low_hz, self.high_hz, self.order, self.ripple_db, self.stop_db
            )

    @classmethod
    def seed_final(cls, **overrides: Any) -> PostProcessChain:
        """The the bug report's final run (:data:`~vaefix_pl.repair.config.SEED_FINAL`): every stage on at the
        the bug report's values, and the mel min-max normalised to ``(-8, 2)``: the bug report's final report gives the
        HiFiGAN input range as ``[-8.000, 2.000]``, which is exactly what
        ``simple_safe_normalize(target_range=(-8, 2))`` yields.
        """
        return cls(SEED_FINAL, **overrides)

    def describe(self) -> dict[str, Any]:
        """Settings as a plain dict (for run summaries); ``PostProcessChain(**chain.describe())`` rebuilds it."""
        return describe(self)

    def extra_repr(self) -> str:
        stages = [f"mel={self.mel_mode}"]
        stages += [name for name, on in (("outliers", self.outliers), ("fade", self.fade)) if on]
        if self.bandpass:
            stages.append(f"bandpass({self.low_hz:g}-{self.high_hz:g} Hz)")
        if self.compress:
            stages.append(f"compress(t={self.threshold:g}, r={self.ratio:g})")
        return ", ".join(stages)

    def process_mel(self, mel: Tensor, frames: Tensor | None = None) -> Tensor:
        """``(B, 1, T, M)`` decoded log-mel -> same, per :func:`normalize_mel` with this chain's mode."""
        return normalize_mel(
            mel,
            frames,
            mode=self.mel_mode,  # type: ignore[arg-type]
            target_mean=self.target_mean,
            target_std=self.target_std,
            target_range=self.target_range,
            guard_range=self.guard_range,
        )

    def forward(self, waveform: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(B, N)`` waveform (and ``(B,)`` valid lengths) -> ``(B, N)``; padded samples 0."""
        lengths = full_lengths(waveform, lengths)
        x = waveform * valid_mask(lengths, waveform.shape[1])
        if self.outliers:
            x = repair_outliers(x, lengths, k=self.outlier_k, size=self.outlier_size)
        if self.fade:
            x = fade(x, lengths, fade_samples=self.fade_samples)
        if self.bandpass:
            x = bandpass(
                x,
                lengths,
                sample_rate=self.sample_rate,
                low_hz=self.low_hz,
                high_hz=self.high_hz,
                order=self.order,
                ripple_db=self.ripple_db,
                stop_db=self.stop_db,
                block_size=self.block_size,
            )
        if self.compress:
            x = soft_compress(x, self.threshold, self.ratio, lengths)
        return x
