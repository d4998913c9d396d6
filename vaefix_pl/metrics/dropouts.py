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


def _cells(x: Tensor, step: int) -> Tensor:
    """``(B, N) -> (B, C, step)``: ``x`` cut into cells of ``step`` samples (zero-padded to ``C step``)."""
    c = -(-x.shape[-1] // step)
    return torch.nn.functional.pad(x, (0, c * step - x.shape[-1])).reshape(x.shape[0], c, step)


def _window(cs: Tensor, lo: int, hi: int) -> Tensor:
    """Sums over the cells ``[j + lo, j + hi)`` (clipped to the cells) for every cell ``j``: ``(B, C)``.

    ``cs`` ``(B, C + 1)``: cumulative sums of the cells with a leading zero (one pass however wide).
    """
    c = cs.shape[-1] - 1
    j = torch.arange(c, device=cs.device)[None, :]
    idx = torch.stack([(j + hi).clamp(0, c), (j + lo).clamp(0, c)]).expand(2, cs.shape[0], -1)
    return torch.gather(cs, 1, idx[0]) - torch.gather(cs, 1, idx[1])


def _cumsum(cells: Tensor) -> Tensor:
    """``(B, C)`` -> float64 cumulative sums ``(B, C + 1)`` with a leading zero."""
    return torch.nn.functional.pad(cells.double().cumsum(-1), (1, 0))


def _shifted(values: Tensor, shift: Tensor, fill: float | bool) -> Tensor:
    """``out[b, j] = values[b, j - shift[b]]`` ``(B, J)``, ``fill`` where that index is outside."""
    j = values.shape[-1]
    src = torch.arange(j, device=values.device)[None, :] - shift[:, None]
    moved = torch.gather(values, 1, src.clamp(0, max(j - 1, 0)))
    return torch.where((src >= 0) & (src < j), moved, torch.full_like(moved, fill))


def _waveform_kept(
    reference: Tensor, estimate: Tensor, mask: Tensor, lag: Tensor, step: int, spans: tuple[int, ...]
) -> Tensor:
    """Blocks ``(B, C)`` (one per ``step``-sample cell) where the estimate reproduces the waveform.

    ``d = estimate - g reference[n - lag]`` (least-squares gain). ``spans`` = ``(block, gap, width,
    snr)`` in cells but ``snr`` (a power ratio): the block of ``block`` cells from cell ``j`` is kept
    when, in the ``width`` cells ending ``gap`` before it or starting ``gap`` after it, the reference
    is ``snr`` over ``d`` (either side: a pause on the other side has no waveform to reproduce; the
    gap keeps a dropout's own samples out of both).
    """
    block, gap, width, snr = spans
    n = reference.shape[-1]
    rm, em = _masked(reference, mask, torch.float32), _masked(estimate, mask, torch.float32)
    src = torch.arange(n, device=mask.device)[None, :] - lag[:, None]
    moved = torch.where((src >= 0) & mask, torch.gather(rm, 1, src.clamp(0, n - 1)), torch.zeros_like(rm))
    g = ((moved.double() * em).sum(1) / moved.double().square().sum(1).clamp(min=1e-30)).float()
    cm = _cumsum(_cells(moved.square(), step).sum(-1))
    cd = _cumsum(_cells((em - g[:, None] * moved).square(), step).sum(-1))
    kept = torch.zeros(cm.shape[0], cm.shape[1] - 1, dtype=torch.bool, device=mask.device)
    for lo in (-gap - width, block + gap):
        pm, pd = _window(cm, lo, lo + width), _window(cd, lo, lo + width)
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
    step = max(1, int(round(0.00025 * sample_rate)))
    block, ctx, span, width = (
        max(1, int(round(t * sample_rate / step))) for t in (0.00075, 0.01, 0.006, 0.01)
    )
    thr = 10.0 ** (gap_db / 20.0)
    lengths = mask.sum(1, keepdim=True)
    cell = torch.arange(-(-mask.shape[-1] // step), device=mask.device)[None, :]
    inside = (cell + block) * step <= lengths  # (B, C): the block of cells j .. j + block - 1

    def peaks(x: Tensor) -> Tensor:
        """Largest ``|x|`` of each block ``(B, C)``."""
        top = _cells(_masked(x, mask, torch.float32).abs(), step).amax(-1)
        return torch.nn.functional.max_pool1d(
            torch.nn.functional.pad(top, (0, block - 1))[:, None], block, 1
        )[:, 0]

    # the reference's RMS over the block and ctx cells either side (valid samples only)
    power = _window(
        _cumsum(_cells(_masked(reference, mask, torch.float32).square(), step).sum(-1)), -ctx, block + ctx
    )
    count = ((cell + block + ctx) * step).clamp(max=lengths) - ((cell - ctx) * step).clamp(min=0)
    rms_r = (power / count.clamp(min=1)).sqrt().float()
    peak_e = peaks(estimate)
    shift = torch.round(lag.double() / step).long()
    inside_r = _shifted(inside, shift, False)
    rms_r = _shifted(rms_r, shift, 0.0)
    peak_r = _shifted(peaks(reference), shift, 0.0)
    p_ref = _masked(reference, mask, torch.float64).square().sum(1)
    p_est = _masked(estimate, mask, torch.float64).square().sum(1)
    gain = torch.where(p_ref > 0, (p_est / p_ref.clamp(min=1e-30)).sqrt(), torch.ones_like(p_ref))
    active_r = (rms_r > 10.0 ** (floor_db / 20.0)) & inside_r
    quiet = peak_e < rms_r * gain.clamp(0.1, 10.0).to(rms_r.dtype)[:, None] * thr
    gap_e = quiet & active_r & inside
    gap_r = (peak_r < rms_r * thr * 10.0 ** (10.0 / 20.0)) & active_r  # 10 dB looser: near-gaps explain gaps

    def pooled(flags: Tensor, half: int) -> Tensor:
        """Any of ``flags`` ``(B, J)`` within ``+-half``."""
        f = flags.to(torch.float32)[:, None]
        return torch.nn.functional.max_pool1d(f, 2 * half + 1, 1, padding=half)[:, 0] > 0

    tight, loose = (max(1, int(round(t * sample_rate / step))) for t in (near_s, tolerance_s))
    # a hole: gap_db under the estimate's own loudest block on each side within 6 ms
    side = torch.nn.functional.max_pool1d(torch.nn.functional.pad(peak_e[:, None], (span, span)), span, 1)[
        :, 0
    ]
    hole = peak_e < torch.minimum(side[:, : peak_e.shape[-1]], side[:, span + 1 :]) * thr
    if waveform_lag is not None:
        spans = (block, span, width, 10.0 ** (waveform_snr_db / 10.0))
        hole |= _waveform_kept(reference, estimate, mask, waveform_lag, step, spans)
    explained = torch.where(hole, pooled(gap_r, tight), pooled(gap_r, loose))
    starts = cell * step
    away = (starts >= edge) & (starts + block * step + edge <= lengths)
    flagged = gap_e & ~explained & away
    onsets = torch.zeros_like(mask)
    fi = torch.nonzero(flagged, as_tuple=True)
    onsets[fi[0], (fi[1] * step).clamp(max=mask.shape[-1] - 1)] = True
    return onsets & mask
