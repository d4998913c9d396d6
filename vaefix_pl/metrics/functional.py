"""Pure per-item metric functions on batched, padded waveforms (no I/O, no state).

Conventions (all functions):

* ``reference`` and ``estimate`` are ``(B, N)`` float waveforms at 16 kHz (any rate where stated),
  ``lengths`` ``(B,)`` holds each item's valid sample count (``None``: all ``N`` valid). Every score is
  computed per item over its valid samples only: padding never enters a metric, and an item scores the
  same alone as inside a padded batch of any size.
* Results are ``(B,)`` tensors on the input's device. Waveform statistics run in float64; spectral
  transforms run in float32 (float64 when the input is float64).
* Lag sign: ``lag > 0`` means the estimate is delayed, ``estimate[n] ~= reference[n - lag]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from vaefix_pl.core.frontend import SAMPLE_RATE, LogMelFrontend, valid_mask
from vaefix_pl.core.geometry import geometry_for_rate
from vaefix_pl.core.lengths import full_lengths as _lengths  # noqa: I001 - clicks.py imports this name

__all__ = [
    "MRSTFT_RESOLUTIONS",
    "align",
    "estimate_lag",
    "log_spectral_distance",
    "lsd_stft_settings",
    "mel_distance",
    "mrstft_distance",
    "pearson",
    "si_sdr",
    "snr",
]

#: (n_fft, hop, win_length) of the multi-resolution STFT distance: 16 kHz settings (32/64/128 ms Hann
#: windows, 75 % overlap), not auraloss' 24 kHz ParallelWaveGAN defaults ([1024, 2048, 512] / [120, 240, 50]).
MRSTFT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def _all_full(lengths: Tensor | None, n: int) -> bool:
    """Whether every item is known, without a device read-back, to fill the batch width ``n``
    (``None`` or CPU lengths all equal to ``n``): then the per-item padding gathers reduce to ``F.pad``."""
    if lengths is None:
        return True
    lengths = torch.as_tensor(lengths)
    return lengths.device.type == "cpu" and bool((lengths == n).all())


def _check_pair(reference: Tensor, estimate: Tensor, lengths: Tensor | None) -> Tensor:
    if reference.shape != estimate.shape:
        raise ValueError(
            f"reference {tuple(reference.shape)} and estimate {tuple(estimate.shape)} differ in shape"
        )
    return _lengths(reference, lengths)


def _pair_mask(reference: Tensor, lengths: Tensor | None, mask: Tensor | None) -> Tensor:
    if mask is not None:
        if mask.shape != reference.shape:
            raise ValueError(f"mask {tuple(mask.shape)} must match the waveforms {tuple(reference.shape)}")
        return mask.to(torch.bool)
    return valid_mask(_lengths(reference, lengths), reference.shape[-1])


def _masked(x: Tensor, mask: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``x`` (cast to ``dtype``) where ``mask``, exact zeros elsewhere, even if the padding holds NaN/inf."""
    x = x.to(dtype) if dtype is not None else x
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _work_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; anything else (fp16/bf16/fp32) is transformed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _reflect_center_pad(
    x: Tensor, lengths: Tensor, pad: int, mode: str = "reflect", full: bool = False
) -> Tensor:
    """``(B, N) -> (B, N + 2 pad)``: what ``F.pad(x_i[:L_i], (pad, pad), mode)`` gives for each item alone.

    Done with one gather (no loop over items) so that a padded batch reproduces each item's own edge
    padding exactly: the tail is reflected about each item's own last sample (``mode="reflect"``) or
    zero (``mode="constant"``); everything past ``L + pad`` is zero. Items with ``L <= pad`` cannot be
    reflect-padded (as in torch) and come out zero past their end. ``full``: the caller knows every
    length equals ``N`` (:func:`_all_full`), so plain ``F.pad`` gives the same.
    """
    b, n = x.shape
    if full and (mode == "constant" or pad < n):  # every item fills the batch: torch's own padding
        return torch.nn.functional.pad(x[:, None], (pad, pad), mode=mode)[:, 0]
    m = torch.arange(n + 2 * pad, device=x.device)[None, :] - pad  # source position, may be <0 or >=L
    big_l = lengths[:, None]
    if mode == "reflect":
        src = torch.where(m < 0, -m, torch.where(m < big_l, m, 2 * (big_l - 1) - m))
        ok = (src >= 0) & (src < big_l) & (m < big_l + pad)
    elif mode == "constant":
        src = m
        ok = (m >= 0) & (m < big_l)
    else:
        raise ValueError(f"mode must be 'reflect' or 'constant', got {mode!r}")
    out = torch.gather(x, 1, src.clamp(0, max(n - 1, 0)).expand(b, -1))
    return _masked(out, ok)


def _stft_power(
    x: Tensor,
    lengths: Tensor,
    n_fft: int,
    hop: int,
    win_length: int | None = None,
    pad_mode: str = "reflect",
    full: bool = False,
) -> tuple[Tensor, Tensor]:
    """Centred STFT power ``|X|^2`` ``(B, T, n_fft//2 + 1)`` and the frame mask ``(B, T)``.

    Equivalent to ``torch.stft(x_i[:L_i], center=True, pad_mode=pad_mode)`` per item, Hann window of
    ``win_length`` (default ``n_fft``); frame ``t`` is valid for an item when the item alone has it
    (``t < 1 + (L + 2 (n_fft // 2) - n_fft) // hop``), so batch padding never leaks in.
    """
    win_length = win_length or n_fft
    dtype = _work_dtype(x)
    pad = n_fft // 2
    xm = x.to(dtype) if full else _masked(x, valid_mask(lengths, x.shape[-1]), dtype)
    xp = _reflect_center_pad(xm, lengths, pad, pad_mode, full=full)
    if xp.shape[-1] < n_fft:  # batch shorter than one window: pad so that stft runs; no frame is valid
        xp = torch.nn.functional.pad(xp, (0, n_fft - xp.shape[-1]))
    window = torch.hann_window(win_length, periodic=True, dtype=dtype, device=x.device)
    spec = torch.stft(xp, n_fft, hop, win_length, window, center=False, return_complex=True)
    power = spec.real.square() + spec.imag.square()  # (B, F, T)
    t = power.shape[-1]
    n_valid = 1 + torch.div(lengths + 2 * pad - n_fft, hop, rounding_mode="floor")
    if pad_mode == "reflect":  # reflection needs more samples than it pads
        n_valid = torch.where(lengths > pad, n_valid, torch.zeros_like(n_valid))
    frame_mask = torch.arange(t, device=x.device)[None, :] < n_valid.clamp(min=0)[:, None]
    return power.transpose(1, 2), frame_mask


def _stft_power_pair(
    reference: Tensor, estimate: Tensor, lengths: Tensor, *args: Any, **kwargs: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_stft_power` of both signals in one batch (half the kernel launches): ``(P_ref, P_est, mask)``."""
    b = reference.shape[0]
    both = torch.cat([reference, estimate.to(reference.dtype)])
    power, fmask = _stft_power(both, torch.cat([lengths, lengths]), *args, **kwargs)
    return power[:b], power[b:], fmask[:b]


def _masked_mean(values: Tensor, mask: Tensor, dim: int | tuple[int, ...]) -> Tensor:
    """Mean of ``values`` where ``mask``; NaN where the mask is empty."""
    count = mask.to(values.dtype).sum(dim=dim)
    total = _masked(values, mask).sum(dim=dim)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


# ----------------------------------------------------------------------------------------------------------
# lag
# ----------------------------------------------------------------------------------------------------------
def _fast_len(n: int) -> int:
    """The smallest 5-smooth size (``2^a 3^b 5^c``) >= ``n``: what ``scipy.fft.next_fast_len(n, real=True)``
    returns. Written out so that the first batch does not import ``scipy.fft`` for one integer
    (docs/STARTUP.md); tests/test_metrics.py checks it against scipy."""
    n = max(int(n), 1)
    best = 1 << (n - 1).bit_length()  # the next power of two always qualifies
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            q = p35 << max(0, (-(-n // p35) - 1).bit_length())  # p35 * 2^k, the first >= n
            best = min(best, q)
            p35 *= 3
        p5 *= 5
    return best


def estimate_lag(
    reference: Tensor,
    estimate: Tensor,
    lengths: Tensor | None = None,
    max_lag: int = 160,
    return_peak: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Integer lag (samples) that best aligns each estimate with its reference, ``(B,)`` int64.

    FFT cross-correlation ``c[l] = sum_n est[n] ref[n - l]`` over each item's valid samples, searched over
    ``-max_lag <= l <= max_lag`` (160 = 10 ms at 16 kHz); positive lag = the estimate is delayed
    (``estimate[n] ~= reference[n - lag]``). The FFT is long enough that no circular wrap reaches the
    searched lags, so an item's lag does not depend on the batch's padding. With ``return_peak`` also
    returns the peak normalised correlation ``c[lag] / (||ref|| ||est||)`` (float64, in ``[-1, 1]``;
    NaN when either signal is silent, whose lag is reported as 0).
    """
    lengths = _check_pair(reference, estimate, lengths)
    b, n = reference.shape
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0, got {max_lag}")
    dtype = _work_dtype(reference)
    mask = valid_mask(lengths, n)
    x = _masked(reference, mask, dtype)
    y = _masked(estimate, mask, dtype)
    nfft = _fast_len(n + max_lag + 1)
    corr = torch.fft.irfft(torch.fft.rfft(y, nfft) * torch.fft.rfft(x, nfft).conj(), nfft)  # (B, nfft)
    lags = torch.arange(-max_lag, max_lag + 1, device=reference.device)
    window = corr[:, lags % nfft]  # (B, 2 max_lag + 1), lag -max_lag .. +max_lag
    best = window.argmax(dim=1)
    lag = torch.where(window.abs().amax(dim=1) > 0, lags[best], torch.zeros_like(lags[best]))  # silence: 0
    if not return_peak:
        return lag
    norm = (x.double().square().sum(1) * y.double().square().sum(1)).sqrt()
    peak = window.gather(1, best[:, None])[:, 0].double() / norm
    return lag, peak


def align(
    reference: Tensor, estimate: Tensor, lengths: Tensor | None, lag: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Undo a per-item lag: ``(reference, estimate[n + lag], mask)`` over the overlap of valid samples.

    Returns ``(B, N)`` tensors (zero outside ``mask``) and the ``(B, N)`` boolean mask of samples where
    both the reference and the shifted estimate are valid; feed them to the metrics with ``mask=``.
    """
    lengths = _check_pair(reference, estimate, lengths)
    b, n = reference.shape
    pos = torch.arange(n, device=reference.device)[None, :]
    src = pos + lag.to(reference.device).long()[:, None]
    big_l = lengths[:, None]
    mask = (pos < big_l) & (src >= 0) & (src < big_l)
    shifted = torch.gather(estimate, 1, src.clamp(0, max(n - 1, 0)))
    zero = torch.zeros((), dtype=reference.dtype, device=reference.device)
    return torch.where(mask, reference, zero), torch.where(mask, shifted, zero.to(estimate.dtype)), mask


# ----------------------------------------------------------------------------------------------------------
# waveform metrics
# ----------------------------------------------------------------------------------------------------------
def snr(
    reference: Tensor, estimate: Tensor, lengths: Tensor | None = None, *, mask: Tensor | None = None
) -> Tensor:
    """The bug report's SNR in dB, ``10 log10(sum ref^2 / sum (ref - est)^2)`` per item, float64 ``(B,)``.

    No epsilon (as the bug report): identical signals give ``+inf``, a silent reference with a non-silent
    estimate ``-inf``, both silent ``nan``; summaries count non-finite values separately.
    """
    mask = _pair_mask(reference, lengths, mask)
    r = _masked(reference, mask, torch.float64)
    e = _masked(estimate, mask, torch.float64)
    return 10.0 * torch.log10(r.square().sum(1) / (r - e).square().sum(1))


def pearson(
    reference: Tensor, estimate: Tensor, lengths: Tensor | None = None, *, mask: Tensor | None = None
) -> Tensor:
    """The bug report's correlation: Pearson ``r`` per item (``np.corrcoef(ref, est)[0, 1]``), float64 ``(B,)``.

    ``nan`` when either signal is constant over its valid samples (as NumPy).
    """
    mask = _pair_mask(reference, lengths, mask)
    m = mask.double()
    count = m.sum(1, keepdim=True).clamp(min=1)
    r = _masked(reference, mask, torch.float64)
    e = _masked(estimate, mask, torch.float64)
    rc = (r - r.sum(1, keepdim=True) / count) * m
    ec = (e - e.sum(1, keepdim=True) / count) * m
    return (rc * ec).sum(1) / ((rc.square().sum(1) * ec.square().sum(1)).sqrt())


def si_sdr(
    reference: Tensor,
    estimate: Tensor,
    lengths: Tensor | None = None,
    *,
    mask: Tensor | None = None,
    zero_mean: bool = True,
) -> Tensor:
    """Scale-invariant SDR in dB per item, float64 ``(B,)``; torchmetrics' formula over valid samples.

    Same as ``torchmetrics.functional.audio.scale_invariant_signal_distortion_ratio(est_i, ref_i,
    zero_mean=zero_mean)`` on each item's valid slice, including its ``eps = finfo(input dtype).eps``.
    Written out here because torchmetrics has no mask/length argument and padding would bias the mean
    and the energies. ``zero_mean=True`` (Le Roux et al. 2019's definition; torchmetrics' default is
    False) so a DC offset is not scored as distortion.
    """
    mask = _pair_mask(reference, lengths, mask)
    eps = torch.finfo(estimate.dtype).eps if estimate.is_floating_point() else torch.finfo(torch.float32).eps
    m = mask.double()
    t = _masked(reference, mask, torch.float64)
    p = _masked(estimate, mask, torch.float64)
    if zero_mean:
        count = m.sum(1, keepdim=True).clamp(min=1)
        t = (t - t.sum(1, keepdim=True) / count) * m
        p = (p - p.sum(1, keepdim=True) / count) * m
    alpha = ((p * t).sum(1, keepdim=True) + eps) / (t.square().sum(1, keepdim=True) + eps)
    target = alpha * t
    noise = (target - p) * m
    value = 10.0 * torch.log10((target.square().sum(1) + eps) / (noise.square().sum(1) + eps))
    return torch.where(mask.any(1), value, torch.full_like(value, float("nan")))


# ----------------------------------------------------------------------------------------------------------
# spectral metrics
# ----------------------------------------------------------------------------------------------------------
def lsd_stft_settings(sample_rate: int = SAMPLE_RATE) -> tuple[int, int]:
    """``(n_fft, hop)`` of the LSD: ssr_eval's ``AudioMetrics`` rule that AudioSR/audioldm_eval use.

    ``n_fft = int(2048 / (44100 / sr))`` (743 at 16 kHz, 46 ms), ``hop = int(sr / 100)`` (160, 10 ms).
    """
    return int(2048 / (44100 / sample_rate)), int(sample_rate / 100)


def log_spectral_distance(
    reference: Tensor,
    estimate: Tensor,
    lengths: Tensor | None = None,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int | None = None,
    hop: int | None = None,
    eps: float = 1e-10,
    pad_mode: str = "reflect",
) -> Tensor:
    """Log-spectral distance per item (log10 units, as AudioSR reports it), float64 ``(B,)``.

    ``LSD = mean_t sqrt(mean_f (log10(P_ref + eps) - log10(P_est + eps))^2)`` with ``P = |STFT|^2``.
    STFT as ssr_eval's ``AudioMetrics`` (used by AudioSR and audioldm_eval): periodic Hann window of
    ``n_fft`` samples, ``n_fft = int(2048 * sr / 44100)`` = 743 and hop ``sr / 100`` = 160 at 16 kHz,
    centred frames with reflect padding (librosa < 0.10's default, which those tools ran with). One
    departure: ssr_eval writes ``log10(P_ref / (|X_est| + 1e-12)^2 + 1e-12)``, which scores two silent
    frames as 12 (maximally different); here ``eps`` = 1e-10 (-100 dB re full-scale power per bin, about
    23 dB below 16-bit quantisation noise) is added to both powers, so matched silence scores 0. Only
    frames the item has on its own (no batch padding) are averaged.
    """
    full = _all_full(lengths, reference.shape[-1])
    lengths = _check_pair(reference, estimate, lengths)
    d_fft, d_hop = lsd_stft_settings(sample_rate)
    n_fft, hop = n_fft or d_fft, hop or d_hop
    pr, pe, fmask = _stft_power_pair(reference, estimate, lengths, n_fft, hop, pad_mode=pad_mode, full=full)
    diff = torch.log10(pr + eps) - torch.log10(pe + eps)  # (B, T, F)
    per_frame = diff.square().mean(-1).sqrt()
    return _masked_mean(per_frame.double(), fmask, dim=1)


_MEL_FRONTENDS: dict[tuple[str, str, int], LogMelFrontend] = {}


def _frontend(framing: str, device: torch.device, sample_rate: int = SAMPLE_RATE) -> LogMelFrontend:
    key = (framing, str(device), int(sample_rate))
    if key not in _MEL_FRONTENDS:
        g = geometry_for_rate(sample_rate)
        _MEL_FRONTENDS[key] = LogMelFrontend(framing, g).to(device)  # type: ignore[arg-type]
    return _MEL_FRONTENDS[key]


def mel_distance(
    reference: Tensor,
    estimate: Tensor,
    lengths: Tensor | None = None,
    framing: str = "tacotron",
    sample_rate: int = SAMPLE_RATE,
) -> Tensor:
    """Mean absolute difference of AudioLDM2 log-mels (natural log, ``LogMelFrontend``), float64 ``(B,)``.

    ``sample_rate`` picks the geometry's front-end (16000: 64 bands, hop 160; 48000: 256 bands, hop 480).

    Averaged over the 64 bands and over the frames the item has alone (``N // 160 + 1`` for
    ``"tacotron"``); each item's tail is reflect-padded about its own end before the front-end, so the
    edge frames match the single-item front-end exactly. Unit: nats of mel magnitude (0 = identical).
    """
    full = _all_full(lengths, reference.shape[-1])
    lengths = _check_pair(reference, estimate, lengths)
    fe = _frontend(framing, reference.device, sample_rate)
    b, n = reference.shape
    dtype = _work_dtype(reference)
    both = torch.cat([reference, estimate]).to(dtype)  # one front-end call for both signals
    lens = torch.cat([lengths, lengths])
    if not full:
        both = _masked(both, valid_mask(lens, n))
    # (2B, N + pad): each item + its own reflected tail, zeros after
    ext = _reflect_center_pad(both, lens, fe.pad, full=full)[:, fe.pad :]
    mels = fe(ext)[:, 0]  # (2B, T, 64)
    mr, me = mels[:b], mels[b:]
    n_valid = fe.num_frames(lengths)
    n_valid = torch.where(lengths > fe.pad, n_valid, torch.zeros_like(n_valid))
    fmask = torch.arange(mr.shape[1], device=reference.device)[None, :] < n_valid[:, None]
    per_frame = (mr - me).abs().mean(-1)
    return _masked_mean(per_frame.double(), fmask, dim=1)


def mrstft_distance(
    reference: Tensor,
    estimate: Tensor,
    lengths: Tensor | None = None,
    resolutions: Sequence[tuple[int, int, int]] = MRSTFT_RESOLUTIONS,
    eps: float = 1e-8,
    return_parts: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Multi-resolution STFT distance per item, float64 ``(B,)`` (auraloss' definition, per item).

    For each ``(n_fft, hop, win)`` in ``resolutions`` (default 512/128, 1024/256, 2048/512, Hann windows
    of the FFT size, centred with reflect padding like ``torch.stft``): magnitudes
    ``S = sqrt(max(|X|^2, eps))``, spectral convergence ``||S_ref - S_est||_F / ||S_ref||_F`` plus
    log-magnitude L1 ``mean |ln S_ref - ln S_est|``, over the item's own frames; the result is the mean
    over resolutions of ``sc + logmag``. With ``return_parts`` returns ``(total, sc, logmag)``. NaN for
    items too short for the largest window's reflect padding (<= 1024 samples, 64 ms, by default).
    """
    full = _all_full(lengths, reference.shape[-1])
    lengths = _check_pair(reference, estimate, lengths)
    sc_all, lm_all = [], []
    for n_fft, hop, win in resolutions:
        pr, pe, fmask = _stft_power_pair(reference, estimate, lengths, n_fft, hop, win, full=full)
        sr_, se_ = pr.clamp(min=eps).sqrt(), pe.clamp(min=eps).sqrt()
        fm = fmask[:, :, None].to(sr_.dtype)
        num = ((sr_ - se_).square() * fm).double().sum((1, 2)).sqrt()
        den = (sr_.square() * fm).double().sum((1, 2)).sqrt()
        sc_all.append(num / den)
        lm = (torch.log(sr_) - torch.log(se_)).abs().mean(-1)
        lm_all.append(_masked_mean(lm.double(), fmask, dim=1))
    sc = torch.stack(sc_all).mean(0)
    lm = torch.stack(lm_all).mean(0)
    total = sc + lm
    return (total, sc, lm) if return_parts else total
