"""Dropouts for :func:`vaefix_pl.metrics.clicks.added_clicks`: the estimate falls silent, the reference does not.

A dropout (a run of zeroed or near-zero samples, a common vocoder and streaming artefact) adds no
energy, so the transient tests of ``added_clicks`` see at most its edges. Here it is found as what
it is: a short stretch where the estimate's peak is far under the reference's local level while the
reference, at the same (lag-aligned) place, is not itself silent.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaefix_pl.metrics.functional import _masked

__all__ = ["dropout_flags"]


def _block_stats(x: Tensor, mask: Tensor, block: int, step: int, ctx: int) -> tuple[Tensor, Tensor, Tensor]:
    """Peak ``|x|`` of each ``block`` samples every ``step``, block-inside-item mask, and the RMS of the
    valid samples in the block widened by ``ctx`` on both sides: ``(B, J)`` each.
    """
    xm = _masked(x, mask, torch.float32)[:, None]
    valid = mask.to(torch.float32)[:, None]
    peak = torch.nn.functional.max_pool1d(xm.abs(), block, step)[:, 0]
    inside = torch.nn.functional.avg_pool1d(valid, block, step)[:, 0] >= 1.0
    pad = torch.nn.functional.pad
    power = torch.nn.functional.avg_pool1d(pad(xm.square(), (ctx, ctx)), block + 2 * ctx, step)[:, 0]
    count = torch.nn.functional.avg_pool1d(pad(valid, (ctx, ctx)), block + 2 * ctx, step)[:, 0]
    rms = (power / count.clamp(min=1e-6)).sqrt()[:, : peak.shape[-1]]
    return peak, inside, rms


def _shifted(values: Tensor, shift: Tensor, fill: float) -> Tensor:
    """``out[b, j] = values[b, j - shift[b]]`` ``(B, J)``, ``fill`` where that index is outside."""
    j = values.shape[-1]
    src = torch.arange(j, device=values.device)[None, :] - shift[:, None]
    moved = torch.gather(values, 1, src.clamp(0, max(j - 1, 0)))
    return torch.where((src >= 0) & (src < j), moved, torch.full_like(moved, fill))


def _window_sums(values: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Sums of ``values`` ``(B, N)`` over ``[lo, hi)`` (clipped to ``[0, N]``) for each column of ``lo``,
    ``hi`` ``(1, J)``: ``(B, J)`` float64 (cumulative sums: one pass however wide the windows)."""
    n = values.shape[-1]
    cs = torch.nn.functional.pad(values.double().cumsum(-1), (1, 0))
    lo, hi = lo.clamp(0, n).expand(cs.shape[0], -1), hi.clamp(0, n).expand(cs.shape[0], -1)
    return torch.gather(cs, 1, hi) - torch.gather(cs, 1, lo)


def _waveform_kept(
    reference: Tensor, estimate: Tensor, mask: Tensor, lag: Tensor, starts: Tensor, spans: tuple[int, ...]
) -> Tensor:
    """Blocks ``(B, J)`` (first samples ``starts`` ``(1, J)``) where the estimate reproduces the waveform.

    ``d = estimate - g reference[n - lag]`` (least-squares gain). ``spans`` = ``(block, gap, width, snr)``:
    the block is kept when, in the ``width`` samples ending ``gap`` before it or starting ``gap`` after
    it, the reference is ``snr`` (power ratio) over ``d`` (either side: a pause on the other side
    has no waveform to reproduce; the gap keeps a dropout's own samples out of both).
    """
    block, gap, width, snr = spans
    n = reference.shape[-1]
    rm, em = _masked(reference, mask, torch.float32), _masked(estimate, mask, torch.float32)
    src = torch.arange(n, device=mask.device)[None, :] - lag[:, None]
    moved = torch.where((src >= 0) & mask, torch.gather(rm, 1, src.clamp(0, n - 1)), torch.zeros_like(rm))
    g = (moved.double() * em).sum(1) / moved.double().square().sum(1).clamp(min=1e-30)
    d2 = (em.double() - g[:, None] * moved).square()
    m2 = moved.double().square()
    kept = torch.zeros(mask.shape[0], starts.shape[-1], dtype=torch.bool, device=mask.device)
    for lo in (starts - gap - width, starts + block + gap):
        pm, pd = _window_sums(m2, lo, lo + width), _window_sums(d2, lo, lo + width)
        kept |= (pm > 0) & (pm >= snr * pd)
    return kept


def dropout_flags(
    reference: Tensor,
    estimate: Tensor,
    mask: Tensor,
    lag: Tensor,
    sample_rate: int,
    tolerance_s: float = 0.007,
    near_s: float = 0.001,
    gap_db: float = -30.0,
    floor_db: float = -90.0,
    edge: int = 0,
    waveform_lag: Tensor | None = None,
    waveform_snr_db: float = 10.0,
) -> Tensor:
    """Dropout onsets ``(B, N)`` bool: the estimate falls silent for 0.75 ms where the reference does not.

    ``reference``/``estimate`` ``(B, N)``, ``mask`` ``(B, N)`` valid samples, ``lag`` ``(B,)`` in
    samples (the envelope lag: the estimate's sample ``n`` is the reference's ``n - lag``). On a grid
    of 0.25 ms the largest ``|x|`` in the next 0.75 ms is compared with the reference's RMS in the
    surrounding 20 ms at the aligned place, times the item's RMS ratio (the estimate's own RMS would
    include a click next to the silent stretch). The estimate's block is a gap ``gap_db`` under it,
    where that RMS is over ``floor_db`` (silence in a pause is no dropout). A gap is a dropout unless
    the aligned reference has a near-gap (``gap_db`` + 10 dB: a pause, a stop closure) close by:

    * within ``near_s`` (1 ms) where the estimate shows where its silence belongs: it reproduces the
      reference's waveform (at ``waveform_lag``, ``waveform_snr_db`` over the difference in the 10 ms
      before or after, 6 ms away), or the gap is a hole (``gap_db`` under the estimate's own loudest
      block within 6 ms on each side: a smeared decay into a pause dips, a zeroed run falls);
    * within ``tolerance_s`` (7 ms) elsewhere: a resynthesis that keeps neither the waveform nor the
      pause's own silence may start a word a few milliseconds late (a zeroed word start looks the
      same there, and is missed).

    Any run of at least 1 ms of zeroed samples holds one whole block. Blocks within ``edge`` samples
    of an item's ends are skipped (a delayed estimate starts with silence).
    """
    block = max(2, int(round(0.00075 * sample_rate)))
    step = max(1, block // 3)
    ctx = int(round(0.01 * sample_rate))
    span = int(round(0.006 * sample_rate))
    thr = 10.0 ** (gap_db / 20.0)
    peak_e, inside, _ = _block_stats(estimate, mask, block, step, ctx)
    peak_r, _, rms_r = _block_stats(reference, mask, block, step, ctx)
    shift = torch.round(lag.double() / step).long()
    rms_r = _shifted(rms_r, shift, 0.0)
    peak_r = _shifted(peak_r, shift, 0.0)
    p_ref = _masked(reference, mask, torch.float64).square().sum(1)
    p_est = _masked(estimate, mask, torch.float64).square().sum(1)
    gain = torch.where(p_ref > 0, (p_est / p_ref.clamp(min=1e-30)).sqrt(), torch.ones_like(p_ref))
    active_r = rms_r > 10.0 ** (floor_db / 20.0)
    quiet = peak_e < rms_r * gain.clamp(0.1, 10.0).to(rms_r.dtype)[:, None] * thr
    gap_e = quiet & active_r & inside
    gap_r = (peak_r < rms_r * thr * 10.0 ** (10.0 / 20.0)) & active_r  # 10 dB looser: near-gaps explain gaps

    def pooled(flags: Tensor, half: int) -> Tensor:
        """Any of ``flags`` ``(B, J)`` within ``+-half``."""
        f = flags.to(torch.float32)[:, None]
        return torch.nn.functional.max_pool1d(f, 2 * half + 1, 1, padding=half)[:, 0] > 0

    tight, loose, h = (max(1, int(round(t * sample_rate / step))) for t in (near_s, tolerance_s, 0.006))
    # a hole: gap_db under the estimate's own loudest block on each side within 6 ms
    side = torch.nn.functional.max_pool1d(torch.nn.functional.pad(peak_e[:, None], (h, h)), h, 1)[:, 0]
    hole = peak_e < torch.minimum(side[:, : peak_e.shape[-1]], side[:, h + 1 :]) * thr
    starts = torch.arange(gap_e.shape[-1], device=mask.device)[None, :] * step
    if waveform_lag is not None:
        spans = (block, span, ctx, 10.0 ** (waveform_snr_db / 10.0))
        hole |= _waveform_kept(reference, estimate, mask, waveform_lag, starts, spans)
    explained = torch.where(hole, pooled(gap_r, tight), pooled(gap_r, loose))
    away = (starts >= edge) & (starts + block + edge <= mask.sum(1, keepdim=True))
    flagged = gap_e & ~explained & away
    onsets = torch.zeros_like(mask)
    fi = torch.nonzero(flagged, as_tuple=True)
    onsets[fi[0], (fi[1] * step).clamp(max=mask.shape[-1] - 1)] = True
    return onsets & mask
