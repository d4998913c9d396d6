"""Click detectors in torch: a reference-free AR-residual detector and a reference-aware "added clicks" one.

``detect_clicks`` (no reference) follows the audio-restoration recipe of FFmpeg's ``adeclick`` and
Essentia's ``ClickDetector`` (Vaseghi & Rayner 1990; Godsill & Rayner 1998): fit a short-time
autoregressive (linear-prediction) model per block, inverse-filter the signal to its prediction error
(which whitens tones, harmonics and slowly varying spectra), and flag samples whose error exceeds a
robust multiple of the local error scale. Departures from those tools, and why:

* Blocks of 55 ms hopped by 25 % (adeclick's), float64, but order 64 (adeclick: 17): a harmonic tone
  with 20 partials needs 40 poles. Near an item's edges the block narrows symmetrically.
* adeclick flags ``|e| > 2 sigma_e`` (5 % of any Gaussian-like error: fine for a repair tool). A
  metric counts events, so here 6.5 robust standard deviations (``1.4826 * MAD`` over 55 ms), and at
  least -70 dBFS and 40 dB under the local RMS (an error that far under the signal is masked by it).
* Flags closer than ``merge_s`` (2 ms) plus the AR order (the filter's ringing) form one event.

Like every AR-residual detector it fires on glottal pulses of voiced speech and on sharp musical onsets:
it reports a rate for each signal alone and is not the headline. The headline is :func:`added_clicks`:
short transients and dropouts in the estimate that the reference does not explain (see its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from vaefix_pl.core.frontend import SAMPLE_RATE, valid_mask
from vaefix_pl.metrics.dropouts import dropout_flags
from vaefix_pl.metrics.functional import _check_pair, _fast_len, _lengths, _masked, estimate_lag

__all__ = [
    "added_clicks",
    "click_events",
    "count_per_second",
    "detect_clicks",
    "detection_mask",
    "envelope_lag",
    "lp_residual",
]


_CHUNK = 1 << 14  # analysis blocks / filter segments per batch of FFTs (bounded memory)


# ------------------------------------------------------------------------------------------- AR residual
def _toeplitz_solve(r: Tensor, order: int, loading: float) -> Tensor:
    """Solve the Yule-Walker normal equations for each row of ``r`` ``(M, order + 1)``.

    Returns ``a`` ``(M, order + 1)`` with ``a[0] = 1`` (the inverse filter). Written by hand as the
    Levinson-Durbin recursion, vectorised over the rows, because torch has no batched Toeplitz solver:
    O(order^2) per row and no ``(M, order, order)`` matrices (docs/METRICS.md, Cost). The diagonal
    loading (``r[0] * (1 + loading)``) keeps pure tones (a singular Toeplitz matrix) well posed.
    """
    err = r[:, 0] * (1 + loading) + torch.finfo(r.dtype).tiny ** 0.5  # (M,) prediction error power
    r_rev = r[:, 1:].flip(1)  # (M, order): r_order .. r_1
    a = torch.zeros_like(r)
    a[:, 0] = 1
    for k in range(1, order + 1):
        refl = -(a[:, :k] * r_rev[:, order - k :]).sum(1) / err  # (M,) reflection coefficient
        a[:, 1 : k + 1] += refl[:, None] * a[:, :k].flip(1)
        err = err * (1 - refl * refl)
    return a


def _lpc_fit(x: Tensor, lengths: Tensor, win: int, hop: int, order: int, loading: float) -> Tensor:
    """Inverse filters ``(B, F, order + 1)`` of the ``win``-sample Hann blocks centred on each ``hop``.

    Autocorrelation in x's dtype, solved in float64, ``_CHUNK`` blocks at a time. Near an item's
    edges the block narrows, symmetric about the hop and inside the valid samples (padding or
    reflecting would put a step or a kink in it; sliding it would model another part of a sweep).
    """
    b, n = x.shape
    n_hops = max(1, math.ceil(n / hop))
    half = win // 2
    h_min = min(half, max(hop, 2 * order))
    offs = torch.arange(-half, half + 1, device=x.device)  # (win + 1,)
    big_l = lengths[:, None]
    nfft = _fast_len(win + 1 + order)  # biased autocorrelation via the FFT: no wrap into lags <= order
    hw = torch.arange(1, half + 1, device=x.device)[:, None]  # every half-width (half, 1)
    hann = torch.where(offs.abs() < hw, 0.5 * (1 + torch.cos(math.pi * offs.double() / hw)), 0.0)
    rs, step = [], max(1, _CHUNK // max(b, 1))
    for f0 in range(0, n_hops, step):
        centre = (torch.arange(f0, min(n_hops, f0 + step), device=x.device) * hop + hop // 2).expand(b, -1)
        centre = torch.minimum(centre, big_l - h_min).clamp(min=h_min)  # (B, F')
        h = torch.minimum(torch.minimum(centre, big_l - centre), torch.full_like(centre, half)).clamp(min=1)
        pos = centre[:, :, None] + offs  # (B, F', win + 1)
        w = hann[h - 1]  # (B, F', win + 1): the Hann window of half-width h
        vals = torch.gather(x, 1, pos.clamp(0, n - 1).reshape(b, -1)).reshape(pos.shape)
        bw = vals * w.to(x.dtype) * ((pos >= 0) & (pos < big_l[:, :, None]))
        spec = torch.fft.rfft(bw, nfft)
        rs.append(torch.fft.irfft(spec.real.square() + spec.imag.square(), nfft)[..., : order + 1].double())
    r = torch.cat(rs, 1)  # (B, F, order + 1): one recursion for every block
    return _toeplitz_solve(r.reshape(-1, order + 1), order, loading).reshape(b, -1, order + 1)


def _lpc_filter(x: Tensor, a: Tensor, hop: int, crossfade: bool = False) -> Tensor:
    """``e[n] = sum_k a_k x[n - k]``: ``x`` ``(B, N)`` through the inverse filters ``a`` ``(B, F, p + 1)``.

    Filter ``f`` belongs to the hop ``[f hop, (f + 1) hop)``. With ``crossfade`` the outputs of
    neighbouring filters are cross-faded linearly between their hops' centres instead (switching
    filters at a hop boundary puts a step into the output wherever the signal is not the one the
    filters whiten). Segments are filtered through FFTs in a's dtype, ``_CHUNK`` at a time; ``x`` is
    zero before its start (callers mask the first ``p`` samples).
    """
    b, n = x.shape
    order = a.shape[2] - 1
    span = 2 * hop if crossfade else hop
    if crossfade:  # segment k: outputs [c0 + (k - 2) hop, c0 + k hop) with filter k - 1 (edges repeated)
        a = torch.cat([a[:, :1], a, a[:, -1:]], 1)
        front = order + 2 * hop - hop // 2
    else:  # segment f: outputs [f hop, (f + 1) hop)
        front = order
    count = a.shape[1]
    xs = torch.nn.functional.pad(x, (front, max(0, (count - 1) * hop + span + order - front - n)))
    segs = xs.unfold(-1, span + order, hop)[:, :count]  # (B, count, span + p), a view
    lfft = _fast_len(span + 2 * order)
    parts = []
    for k in range(0, count, max(1, _CHUNK // max(b, 1))):
        sk, ak = segs[:, k : k + _CHUNK // max(b, 1)].to(a.dtype), a[:, k : k + _CHUNK // max(b, 1)]
        conv = torch.fft.irfft(torch.fft.rfft(sk, lfft) * torch.fft.rfft(ak, lfft), lfft)
        parts.append(conv[..., order : order + span])
    out = torch.cat(parts, 1)
    if crossfade:
        ramp = torch.arange(hop, device=x.device, dtype=out.dtype) / hop
        out = out[:, 1:, :hop] * ramp + out[:, :-1, hop:] * (1 - ramp)  # (B, F + 1, hop) from c0 - hop
        return out.reshape(b, -1)[:, hop - hop // 2 : hop - hop // 2 + n]
    return out.reshape(b, -1)[:, :n]


def lp_residual(
    x: Tensor,
    lengths: Tensor | None = None,
    sample_rate: int = SAMPLE_RATE,
    window_s: float = 0.055,
    hop_s: float | None = None,
    order: int = 64,
    loading: float = 1e-7,
) -> tuple[Tensor, Tensor]:
    """Block-wise linear-prediction error of ``x`` ``(B, N)`` and the mask of samples where it is defined.

    Each hop of ``hop_s`` (default a quarter of ``window_s`` = 55 ms, adeclick's 75 % overlap) is
    inverse-filtered with the order-``order`` AR model fitted (autocorrelation method, Hann window,
    float64) on the ``window_s`` block centred on that hop. The error at sample ``n`` uses samples
    ``n - order .. n`` only, so it is defined from ``n = order`` to the item's end; padding never enters.
    Returns ``(residual (B, N) float32/64, defined (B, N) bool)``.
    """
    lengths = _lengths(x, lengths)
    n = x.shape[-1]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    win = int(round(window_s * sample_rate))
    hop = int(round(hop_s * sample_rate)) if hop_s else max(1, win // 4)
    win = max(win, hop)
    if order >= win // 2:
        raise ValueError(f"AR order {order} is too high for a {win}-sample window")
    mask = valid_mask(lengths, n)
    xm = _masked(x, mask, dtype)
    e = _lpc_filter(xm, _lpc_fit(xm.double(), lengths, win, hop, order, loading), hop).to(dtype)
    defined = mask & (torch.arange(n, device=x.device)[None, :] >= order)
    return e * defined, defined


# ------------------------------------------------------------------------------------- events from flags
def _any_within(
    flags: Tensor, windows: Sequence[tuple[int, int]], prefix_sums: bool | None = None
) -> list[Tensor]:
    """For each ``(before, after)`` of ``windows``: whether any of ``flags[i - before .. i + after]`` is
    set, ``(B, N)`` bool (the window clipped to the row). Both ways are exact: integer prefix sums, one
    for every window (default on CUDA, where a ``max_pool1d`` of width ``before + after + 1`` costs that
    many comparisons per sample), or a max-pool per window (default on the CPU, where it is the faster
    one; docs/METRICS.md, Cost)."""
    b, n = flags.shape
    if not (flags.is_cuda if prefix_sums is None else prefix_sums):
        f = flags.to(torch.float32)[:, None]
        pool = torch.nn.functional.max_pool1d
        return [pool(torch.nn.functional.pad(f, (lo, hi)), lo + hi + 1, 1)[:, 0] > 0 for lo, hi in windows]
    dtype = torch.int32 if n < 2**31 - 1 else torch.int64
    s = torch.nn.functional.pad(flags.to(dtype).cumsum(1), (1, 0))  # s[j] = flags set before j, (B, N + 1)
    front, back = max(lo for lo, _ in windows), max(hi for _, hi in windows)
    p = torch.cat([s.new_zeros(b, front), s, s[:, -1:].expand(b, back)], 1)  # p[front + j] = s[j]
    return [
        (p[:, front + hi + 1 : front + hi + 1 + n] - p[:, front - lo : front - lo + n]) > 0
        for lo, hi in windows
    ]


def click_events(flags: Tensor, merge: int) -> Tensor:
    """Boolean ``(B, N)`` onsets of click events: flagged samples closer than ``merge`` samples join.

    Gaps of at most ``merge`` samples between flagged samples are filled (a flag within ``merge``
    samples before and one within ``merge`` after), then each run's first sample is its event onset.
    """
    filled = flags
    if merge > 0:
        before, after = _any_within(flags, [(merge, 0), (0, merge)])
        filled = flags | (before & after)
    prev = torch.nn.functional.pad(filled[:, :-1], (1, 0))
    return filled & ~prev


def _indices(onsets: Tensor) -> list[Tensor]:
    """Ragged per-item onset indices (the loop is over items, not samples)."""
    return [torch.nonzero(row, as_tuple=False)[:, 0] for row in onsets]


def count_per_second(
    onsets: list[Tensor] | Tensor, lengths: Tensor, sample_rate: int = SAMPLE_RATE
) -> Tensor:
    """Events per second of valid audio, float64 ``(B,)`` (``nan`` for empty items)."""
    if isinstance(onsets, Tensor):
        counts = onsets.sum(1).double()
    else:
        counts = torch.tensor([len(o) for o in onsets], dtype=torch.float64, device=lengths.device)
    dur = lengths.double() / sample_rate
    return torch.where(dur > 0, counts / dur.clamp(min=1e-12), torch.full_like(dur, float("nan")))


# ------------------------------------------------------------------------------------ reference-free
def _hop_blocks(values: Tensor, win: int, hop: int, fill: float) -> Tensor:
    """``(B, N) -> (B, F, win)``: the ``win`` samples centred on each hop (``fill`` outside)."""
    b, n = values.shape
    n_hops = max(1, math.ceil(n / hop))
    front = (win - hop) // 2
    total = (n_hops - 1) * hop + win
    vp = torch.nn.functional.pad(values, (front, max(0, total - front - n)), value=fill)
    return vp.unfold(-1, win, hop)[:, :n_hops]


def _robust_scale(values: Tensor, valid: Tensor, win: int, hop: int) -> Tensor:
    """``1.4826 * median(|v|)`` over the valid samples of the ``win`` samples centred on each hop ``(B, F)``."""
    v = torch.where(valid, values.abs(), torch.full_like(values, float("nan")))
    return 1.4826 * torch.nanmedian(_hop_blocks(v, win, hop, float("nan")), dim=-1).values


def _local_rms(x: Tensor, valid: Tensor, win: int, hop: int) -> Tensor:
    """RMS of the valid samples of the ``win`` samples centred on each hop ``(B, F)``."""
    sq = _hop_blocks(_masked(x, valid).square(), win, hop, 0.0).sum(-1)
    count = _hop_blocks(valid.to(x.dtype), win, hop, 0.0).sum(-1)
    return (sq / count.clamp(min=1)).sqrt()


def detection_mask(
    x: Tensor,
    lengths: Tensor | None = None,
    sample_rate: int = SAMPLE_RATE,
    threshold: float = 6.5,
    floor_db: float = -70.0,
    relative_floor_db: float = -40.0,
    order: int = 64,
    window_s: float = 0.055,
    residual: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample click flags of :func:`detect_clicks` ``(B, N)`` and the statistic ``|e| / threshold``.

    ``residual``: the ``(e, defined)`` pair of :func:`lp_residual` for ``x`` with the same ``order``
    and ``window_s``, when already computed.
    """
    lengths = _lengths(x, lengths)
    n = x.shape[-1]
    if residual is None:
        residual = lp_residual(x, lengths, sample_rate, window_s=window_s, order=order)
    e, defined = residual
    win = int(round(window_s * sample_rate))
    hop = max(1, win // 4)
    sigma = _robust_scale(e, defined, win, hop)  # (B, F)
    level = _local_rms(x.to(e.dtype), valid_mask(lengths, n), win, hop)
    thr = torch.maximum(
        torch.nan_to_num(sigma, nan=float("inf")) * threshold, level * 10.0 ** (relative_floor_db / 20.0)
    ).clamp(min=10.0 ** (floor_db / 20.0))
    thr = torch.repeat_interleave(thr, hop, dim=1)[:, :n]
    stat = e.abs() / thr
    return (stat > 1) & defined, stat


def detect_clicks(
    x: Tensor,
    lengths: Tensor | None = None,
    sample_rate: int = SAMPLE_RATE,
    merge_s: float = 0.002,
    as_mask: bool = False,
    **settings,
) -> list[Tensor] | Tensor:
    """Reference-free click detection: onset sample indices of click events per item.

    ``x`` ``(B, N)`` with ``lengths`` ``(B,)``; returns a list of ``B`` int64 tensors of sample indices
    (on ``x``'s device), or the ``(B, N)`` boolean onset mask with ``as_mask``. A sample is a click
    candidate when its AR prediction error (:func:`lp_residual`) exceeds ``threshold`` robust standard
    deviations of the error around it, ``relative_floor_db`` under the local RMS and ``floor_db`` dBFS
    (``settings``: those of :func:`detection_mask`); candidates closer than ``merge_s`` plus ``order``
    samples form one event. Fires on voiced speech and sharp onsets, as every method of this family:
    use :func:`added_clicks` to score a reconstruction.
    """
    flags, _ = detection_mask(x, _lengths(x, lengths), sample_rate, **settings)
    onsets = click_events(flags, int(round(merge_s * sample_rate)) + settings.get("order", 64))
    return onsets if as_mask else _indices(onsets)


# ------------------------------------------------------------------------------------ reference-aware
def envelope_lag(
    reference: Tensor,
    estimate: Tensor,
    lengths: Tensor,
    sample_rate: int = SAMPLE_RATE,
    max_lag_s: float = 0.02,
) -> tuple[Tensor, int]:
    """Lag of the RMS envelopes (1 ms frames every 0.5 ms), in envelope frames ``(B,)``, and the frame hop.

    Robust where the waveform cross-correlation is not: resynthesis that does not keep the phase
    (Griffin-Lim, vocoders) makes :func:`estimate_lag` peak at random lags; energy envelopes still align.
    """
    hop = max(1, int(round(0.0005 * sample_rate)))
    mask = valid_mask(lengths, reference.shape[-1])

    def envelope(x: Tensor) -> Tensor:
        power = _masked(x, mask, torch.float64).square()[:, None]
        if power.shape[-1] < 2 * hop:  # narrower than one envelope frame: zeros past every item's end
            power = torch.nn.functional.pad(power, (0, 2 * hop - power.shape[-1]))
        return torch.nn.functional.avg_pool1d(power, 2 * hop, hop)[:, 0].sqrt()

    env_r, env_e = envelope(reference), envelope(estimate)
    env_len = torch.div(lengths - hop, hop, rounding_mode="floor").clamp(min=0)
    env_mask = valid_mask(env_len, env_r.shape[-1])
    count = env_mask.sum(1, keepdim=True).clamp(min=1)
    env_r = (env_r - (env_r * env_mask).sum(1, keepdim=True) / count) * env_mask
    env_e = (env_e - (env_e * env_mask).sum(1, keepdim=True) / count) * env_mask
    lag = estimate_lag(env_r, env_e, env_len, max_lag=max(1, int(round(max_lag_s * sample_rate / hop))))
    return lag, hop


def _band_log_power(
    x: Tensor, lengths: Tensor, win: int, hop: int, bands: int, floor: float, chunk: int = 1 << 18
) -> tuple[Tensor, Tensor]:
    """dB power of ``bands`` equal-width bands (DC excluded) of Hann frames: ``(B, T, bands)``, mask ``(B, T)``.

    Frame ``t`` covers samples ``[t hop, t hop + win)``; it is valid when it lies inside the item. The
    window has unit energy, so an impulse of amplitude ``a`` at the frame's centre adds about
    ``a^2 / (0.375 win)`` to every bin. Frames are made ``chunk`` frames at a time (bounded memory).
    """
    b, n = x.shape
    w = torch.hann_window(win, periodic=False, dtype=torch.float32, device=x.device)
    w = w / w.square().sum().sqrt()
    t = max(0, (n - win) // hop + 1)
    per = (win // 2) // bands
    parts = []
    for s in range(0, t, chunk):
        e = min(t, s + chunk)
        frames = x[:, s * hop : (e - 1) * hop + win].to(torch.float32).unfold(-1, win, hop) * w
        p = torch.fft.rfft(frames, dim=-1).abs().square()[..., 1 : 1 + bands * per]
        parts.append(10.0 * torch.log10(p.reshape(b, e - s, bands, per).mean(-1) + floor))
    lp = torch.cat(parts, 1) if parts else x.new_zeros(b, 0, bands, dtype=torch.float32)
    valid = (torch.arange(t, device=x.device)[None, :] * hop + win) <= lengths[:, None]
    return lp, valid


def _side_mean(values: Tensor, valid: Tensor, gap: int, width: int) -> Tensor:
    """Smaller of the means of the valid frames of ``values`` ``(B, T, K)`` in ``[t-gap-width, t-gap)``
    and in ``(t+gap, t+gap+width]`` (one side alone where the other has none; 0 where neither has).

    The smaller side: a click's own tail (a relaxing step) raises one side only. Cumulative sums in
    float64 (exact enough for hours of frames).
    """
    t = values.shape[1]
    v = valid.to(torch.float64)[:, None, :]
    z = values.to(torch.float64).transpose(1, 2) * v
    sums = torch.nn.functional.pad(z.cumsum(-1), (1, 0))
    counts = torch.nn.functional.pad(v.cumsum(-1), (1, 0))
    idx = torch.arange(t, device=values.device)

    def window(cs: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        return cs[..., hi.clamp(0, t)] - cs[..., lo.clamp(0, t)]

    big = torch.finfo(torch.float64).max
    means = []
    for lo, hi in ((idx - gap - width, idx - gap), (idx + gap + 1, idx + gap + 1 + width)):
        c = window(counts, lo, hi)
        means.append(torch.where(c > 0, window(sums, lo, hi) / c.clamp(min=1), torch.full_like(c, big)))
    m = torch.minimum(*means)
    return torch.where(m < big, m, torch.zeros_like(m)).to(values.dtype).transpose(1, 2)


def _side_max(values: Tensor, valid: Tensor, gap: int, width: int) -> Tensor:
    """Largest valid value of ``values`` ``(B, T, K)`` in ``[t-gap-width, t-gap) U (t+gap, t+gap+width]``."""
    t = values.shape[1]
    low = -1e4
    v = torch.where(valid[:, :, None], values, torch.full_like(values, low)).transpose(1, 2)
    m = torch.nn.functional.max_pool1d(
        torch.nn.functional.pad(v, (gap + width, gap + width), value=low), width, 1
    )  # m[j] = max v[j - gap - width .. j - gap - 1]
    left, right = m[..., :t], m[..., 2 * gap + width + 1 : 2 * gap + width + 1 + t]
    return torch.maximum(left, right).transpose(1, 2)


def _shifted_max(values: Tensor, half: int, shift: Tensor) -> Tensor:
    """Max of ``values`` ``(B, T, K)`` within ``+-half`` frames, at lag 0 and at lag ``shift`` ``(B,)``."""
    pooled = torch.nn.functional.max_pool1d(values.transpose(1, 2), 2 * half + 1, 1, padding=half)
    t = pooled.shape[-1]
    src = (torch.arange(t, device=values.device)[None, :] - shift[:, None]).clamp(0, t - 1)
    moved = torch.gather(pooled, 2, src[:, None, :].expand_as(pooled))
    return torch.maximum(pooled, moved).transpose(1, 2)


def _transient_score(
    reference: Tensor, estimate: Tensor, lengths: Tensor, frames: tuple[int, ...], tol: int, shift: Tensor
) -> tuple[Tensor, Tensor]:
    """Broadband-transient score ``(B, T)`` in dB of :func:`added_clicks` and the frame mask ``(B, T)``.

    ``frames`` = ``(win, hop, bands, floor, gap, width)``: frame geometry and side windows (in frames).
    """
    win, hop, bands, floor, gap, width = frames
    lr, valid = _band_log_power(reference, lengths, win, hop, bands, floor)
    le, _ = _band_log_power(estimate, lengths, win, hop, bands, floor)
    explained = _shifted_max(torch.where(valid[:, :, None], lr, torch.full_like(lr, -1e4)), tol, shift)
    offset = _side_mean(le - lr, valid, gap, width).clamp(min=0)
    own = _side_max(le, valid, gap, width)
    return torch.minimum(le - explained - offset, le - own).clamp(0.0, 30.0).mean(-1), valid


def _whitened(
    reference: Tensor, estimate: Tensor, lengths: Tensor, lag: Tensor, order: int, sample_rate: int
):
    """Both signals through the reference's short-term LPC inverse filters: ``(B, N)`` float32 each.

    Order-``order`` fits on 32 ms Hann blocks every 8 ms (diagonal loading 3e-3: a -25 dB white floor,
    so bands where the reference is weak are not amplified without bound), cross-faded between hops.
    The estimate's sample ``n`` goes through the filter of the reference's ``n - lag``. Zero before ``order``.
    """
    n = reference.shape[-1]
    win = int(round(0.032 * sample_rate))
    hop = max(1, win // 4)
    mask = valid_mask(lengths, n)
    rm, em = _masked(reference, mask, torch.float32), _masked(estimate, mask, torch.float32)
    a = _lpc_fit(rm, lengths, win, hop, order, 3e-3).float()
    idx = torch.arange(n, device=mask.device)[None, :]
    keep = mask & (idx >= order)
    ahead = torch.gather(em, 1, (idx + lag[:, None]).clamp(0, n - 1))
    we = torch.gather(_lpc_filter(ahead, a, hop, crossfade=True), 1, (idx - lag[:, None]).clamp(0, n - 1))
    return _lpc_filter(rm, a, hop, crossfade=True) * keep, we * keep


def _difference_score(
    reference: Tensor, estimate: Tensor, lengths: Tensor, frames: tuple[int, ...], lag: Tensor, snr_db: float
) -> Tensor:
    """Transient score ``(B, T)`` of the waveform difference, where the estimate reproduces the waveform.

    ``d = estimate - g reference[n - lag]`` (``lag`` ``(B,)``: the cross-correlation's, least-squares gain).
    A frame counts where the reference is on average ``snr_db`` over ``d`` in the side windows (the
    waveform is reproduced there; a phase-free resynthesis never is) and scores the mean over bands of
    ``d``'s excess over its own largest side frame.
    """
    win, hop, bands, floor, gap, width = frames
    n = reference.shape[-1]
    mask = valid_mask(lengths, n)
    rm, em = _masked(reference, mask, torch.float32), _masked(estimate, mask, torch.float32)
    src = torch.arange(n, device=mask.device)[None, :] - lag[:, None]
    moved = torch.where((src >= 0) & mask, torch.gather(rm, 1, src.clamp(0, n - 1)), torch.zeros_like(rm))
    gain = ((moved.double() * em).sum(1) / moved.double().square().sum(1).clamp(min=1e-30)).float()
    lr, valid = _band_log_power(moved, lengths, win, hop, bands, floor)
    ld, _ = _band_log_power(em - gain[:, None] * moved, lengths, win, hop, bands, floor)
    reproduced = _side_mean(lr - ld, valid, gap, width) >= snr_db  # (B, T, bands)
    return ((ld - _side_max(ld, valid, gap, width)).clamp(0.0, 30.0) * reproduced).mean(-1)


def added_clicks(
    reference: Tensor,
    estimate: Tensor,
    lengths: Tensor | None = None,
    sample_rate: int = SAMPLE_RATE,
    tolerance_s: float = 0.007,
    max_lag_s: float | None = 0.02,
    threshold_db: float = 1.5,
    frame_s: float = 0.004,
    hop_s: float = 0.001,
    bands: int = 8,
    gap_s: float = 0.004,
    context_s: float = 0.01,
    floor_db: float = -70.0,
    lpc_order: int = 16,
    waveform_snr_db: float | None = 10.0,
    waveform_threshold_db: float = 6.0,
    gap_db: float = -30.0,
    gap_floor_db: float = -90.0,
    gap_tolerance_s: float = 0.001,
    merge_s: float = 0.005,
    as_mask: bool = False,
) -> list[Tensor] | Tensor:
    """Clicks in ``estimate`` that ``reference`` does not explain: onset sample indices per item.

    ``reference``/``estimate`` ``(B, N)`` with ``lengths`` ``(B,)``; returns a list of ``B`` int64
    tensors (or the ``(B, N)`` onset mask with ``as_mask``). A click is flagged by any of:

    * broadband transients: per ``frame_s`` (4 ms) Hann frame every ``hop_s`` (1 ms), the dB power
      ``P`` of ``bands`` equal-width bands (0.25-8 kHz at 16 kHz). In every band, the estimate's frame
      is compared with (a) what the reference explains: the reference's largest frame power within
      ``+-tolerance_s`` (at lag 0 and at the RMS-envelope lag, :func:`envelope_lag`), raised by the
      local excess of the estimate over the reference (the smaller of the mean dB differences of the
      frames ``gap_s``..``gap_s + context_s`` (4-14 ms) before and after, counted only when positive:
      a louder or noisier estimate is not a click, a duller one is no licence to flag), and (b) the
      estimate's own largest frame in those two side windows (a click is short: it stands out of its
      own neighbourhood; a natural onset does not stand out of what follows it). The frame's score is
      the mean over bands of ``min(excess a, excess b)`` clipped to 0-30 dB; frames over
      ``threshold_db`` are clicks. Power below ``floor_db`` per bin is floored. Phase-insensitive.
    * the same test on both signals whitened by the reference's short-term LPC inverse filters
      (order ``lpc_order``, :func:`_whitened`): voiced speech and tones become a flat, weak residual
      out of which impulses and steps stand (Godsill & Rayner's click restoration works on this
      residual); fitted on the reference, so the estimate's clicks are not modelled away.
    * where the estimate reproduces the reference's waveform (local SNR over ``waveform_snr_db``):
      a transient ``waveform_threshold_db`` over its neighbours in the waveform difference
      (:func:`_difference_score`). ``None`` turns it off.
    * dropouts (:func:`~vaefix_pl.metrics.dropouts.dropout_flags`): the estimate falls ``gap_db``
      under the reference's local RMS (times the item's RMS ratio; that RMS over ``gap_floor_db``)
      for 0.75 ms while the reference, at the envelope lag, has no near-gap within
      ``gap_tolerance_s``; not within ``max_lag_s`` of an item's ends.

    Flags closer than ``merge_s`` form one event (a dropout's two edges, a burst's frames).
    Measured on real speech and music: ``docs/METRICS.md``.
    """
    lengths = _check_pair(reference, estimate, lengths)
    n = reference.shape[-1]
    mask = valid_mask(lengths, n)
    win = max(8, int(round(frame_s * sample_rate)))
    hop = max(1, int(round(hop_s * sample_rate)))
    sides = (max(1, int(round(gap_s * sample_rate / hop))), max(1, int(round(context_s * sample_rate / hop))))
    frames = (win, hop, bands, 10.0 ** (floor_db / 10.0), *sides)
    tol = max(0, int(round(tolerance_s * sample_rate / hop)))
    max_lag = int(round((max_lag_s or 0.0) * sample_rate))
    if max_lag_s and n >= win:
        lag_env, env_hop = envelope_lag(reference, estimate, lengths, sample_rate, max_lag_s)
        shift, lag = torch.round(lag_env.double() * env_hop / hop).long(), lag_env.long() * env_hop
    else:
        shift = lag = torch.zeros_like(lengths)
    score, valid = _transient_score(reference, estimate, lengths, frames, tol, shift)
    flagged = score > threshold_db
    if lpc_order and n > 2 * lpc_order:
        white = _whitened(reference, estimate, lengths, lag, lpc_order, sample_rate)
        starts = torch.arange(valid.shape[1], device=mask.device)[None, :] * hop  # not at the filters' edges
        inner = (starts >= max_lag) & (starts + win + max_lag <= lengths[:, None])
        flagged |= (_transient_score(*white, lengths, frames, tol, shift)[0] > threshold_db) & inner
    wave_lag = None
    if waveform_snr_db is not None:
        rm, em = _masked(reference, mask, torch.float32), _masked(estimate, mask, torch.float32)
        wave_lag = estimate_lag(rm, em, lengths, max_lag=max_lag)
        if valid.shape[1] > 0:
            score = _difference_score(reference, estimate, lengths, frames, wave_lag, waveform_snr_db)
            flagged |= score > waveform_threshold_db
    flags = torch.zeros_like(mask)
    fi = torch.nonzero(flagged & valid, as_tuple=True)
    flags[fi[0], (fi[1] * hop + win // 2).clamp(max=n - 1)] = True
    flags &= mask
    gaps = (tolerance_s, gap_tolerance_s, gap_db, gap_floor_db, max_lag, wave_lag, waveform_snr_db or 0.0)
    flags |= dropout_flags(reference, estimate, mask, lag, sample_rate, *gaps)
    onsets = click_events(flags, int(round(merge_s * sample_rate)))
    return onsets if as_mask else _indices(onsets)
