"""Block-wise scoring of one long item: host memory bounded by the block, not by the item.

:func:`vaefix_pl.metrics.registry.compute_metrics` sends every item longer than
:data:`STREAM_ABOVE_SAMPLES` here, one item at a time (so a long item never widens the batch's
temporaries); shorter items keep the batched path and their values do not change. What each metric
does on a long item:

* ``snr``, ``pearson``, ``si_sdr`` and their ``_aligned`` forms: the same float64 sums as
  :mod:`vaefix_pl.metrics.functional`, accumulated over blocks of :data:`BLOCK_SAMPLES` in up to three
  passes (means, then centred products, then SI-SDR's projection): equal to the whole-item values up
  to the order of summation.
* ``lsd``, ``mrstft_*``, ``mel_distance``: frame by frame. Each block is the exact span of the
  item's reflect-padded signal that its frames read, so every frame is the frame the whole-item STFT
  has; the per-frame values are summed and counted across blocks.
* ``lag``, ``xcorr_peak``: from the first ``lag_seconds`` (the registry's ``LAG_EXCERPT_SECONDS``, as
  its batched path does for items longer than that).
* ``clicks_*``: the detectors run on windows of :data:`CLICK_BLOCK_SAMPLES` with
  :data:`CLICK_MARGIN_SECONDS` of context on each side, and count the onsets inside each window's core.
  The detectors look at most tens of milliseconds around a sample, so this matches the whole-item
  count except where a whole-item statistic enters (the RMS-envelope lag of ``added_clicks``, its
  items' RMS ratio for dropouts), which is then taken per window.

Metrics registered by users run on the item whole (their memory is theirs).

The item may be a tensor or a :class:`FileSignal` (a float WAV read span by span): a long item
reconstructed in segments (:mod:`vaefix_pl.core.stream`) is scored from the files it was written to,
so no step holds it whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from vaefix_pl.metrics import clicks as _clicks
from vaefix_pl.metrics import functional as F

__all__ = [
    "BLOCK_SAMPLES",
    "CLICK_BLOCK_SAMPLES",
    "STREAM_ABOVE_SAMPLES",
    "FileSignal",
    "stream_item_metrics",
]

#: Items longer than this (samples: 32.8 s at 16 kHz, 10.9 s at 48 kHz) are scored block-wise.
STREAM_ABOVE_SAMPLES = 2**19
#: Samples per block of the waveform sums and of the framed metrics (about 16 s at 16 kHz).
BLOCK_SAMPLES = 2**18
#: Core samples per click window (8.2 s at 16 kHz) and the context added on each side.
CLICK_BLOCK_SAMPLES = 2**17
CLICK_MARGIN_SECONDS = 0.5


class FileSignal:
    """A mono float WAV file as the ``(L,)`` float32 item the block-wise metrics read span by span.

    ``start``/``stop``: the frames of the file it stands for (default: all of them).
    """

    ndim = 1
    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, path: Any, start: int = 0, stop: int | None = None) -> None:
        import soundfile as sf

        self.path = path
        frames = sf.info(str(path)).frames
        self.start, self.stop = start, frames if stop is None else stop
        self.shape = torch.Size([max(0, self.stop - self.start)])

    def read(self, a: int, b: int) -> Tensor:
        """Samples ``[a, b)`` (clipped to the signal) as a float32 tensor."""
        import soundfile as sf

        a, b = max(0, a), min(self.shape[0], b)
        if b <= a:
            return torch.zeros(0)
        with sf.SoundFile(str(self.path)) as fh:
            fh.seek(self.start + a)
            data = fh.read(frames=b - a, dtype="float32")
        return torch.from_numpy(data.reshape(-1)[: b - a])

    def span(self, a: int, b: int) -> FileSignal:
        """Samples ``[a, b)`` as a :class:`FileSignal` (nothing read)."""
        a, b = max(0, a), min(self.shape[0], b)
        return FileSignal(self.path, self.start + a, self.start + max(a, b))


def _read(x: Any, a: int, b: int) -> Tensor:
    """``x[a:b]`` of a tensor or a :class:`FileSignal`."""
    return x[a:b] if isinstance(x, Tensor) else x.read(a, b)


def _span(x: Any, a: int, b: int) -> Any:
    return x[a:b] if isinstance(x, Tensor) else x.span(a, b)


# ------------------------------------------------------------------------------------------ waveform sums
def _blocks(n: int, block: int) -> Iterator[slice]:
    for a in range(0, n, block):
        yield slice(a, min(n, a + block))


def _wave_scores(r: Tensor, e: Tensor, eps: float, block: int) -> dict[str, Tensor]:
    """``snr``, ``pearson``, ``si_sdr`` (zero-mean) of 1-D ``r``/``e`` (all samples valid), float64 scalars,
    with the formulas of :func:`F.snr`, :func:`F.pearson`, :func:`F.si_sdr` as block sums."""
    z = torch.zeros((), dtype=torch.float64, device=r.device)
    n = r.shape[0]
    s_r, s_e, s_rr, s_dd = z, z, z, z
    for s in _blocks(n, block):
        rb, eb = _read(r, s.start, s.stop).double(), _read(e, s.start, s.stop).double()
        s_r, s_e = s_r + rb.sum(), s_e + eb.sum()
        s_rr, s_dd = s_rr + rb.square().sum(), s_dd + (rb - eb).square().sum()
    count = max(n, 1)
    mr, me = s_r / count, s_e / count
    s_tp, s_tt, s_pp = z, z, z
    for s in _blocks(n, block):
        t, p = _read(r, s.start, s.stop).double() - mr, _read(e, s.start, s.stop).double() - me
        s_tp, s_tt, s_pp = s_tp + (t * p).sum(), s_tt + t.square().sum(), s_pp + p.square().sum()
    alpha = (s_tp + eps) / (s_tt + eps)
    s_target, s_noise = z, z
    for s in _blocks(n, block):
        target = alpha * (_read(r, s.start, s.stop).double() - mr)
        s_target = s_target + target.square().sum()
        s_noise = s_noise + (target - (_read(e, s.start, s.stop).double() - me)).square().sum()
    si = 10.0 * torch.log10((s_target + eps) / (s_noise + eps))
    return {
        "snr": 10.0 * torch.log10(s_rr / s_dd),
        "pearson": s_tp / (s_tt * s_pp).sqrt(),
        "si_sdr": si if n > 0 else torch.full_like(si, float("nan")),
    }


# ------------------------------------------------------------------------------------------ framed metrics
def _padded_span(x: Tensor, pad: int, a: int, b: int) -> Tensor:
    """``xp[a:b]`` of ``xp = reflect-pad(x, pad)`` (``torch`` reflect: the edge sample not repeated),
    built from indices so that only the span is materialised. ``x``: 1-D, longer than ``pad``."""
    n = x.shape[0]
    m = torch.arange(a, b, device=x.device) - pad
    src = torch.where(m < 0, -m, torch.where(m < n, m, 2 * (n - 1) - m)).clamp(0, n - 1)
    if isinstance(x, Tensor):
        return x[src]

    # the read range from the span's ends and the reflections' turning points (no device read-back)
    def reflect(i: int) -> int:
        return min(n - 1, max(0, -i if i < 0 else (i if i < n else 2 * (n - 1) - i)))

    ends = [reflect(a - pad), reflect(b - 1 - pad)] + [0] * (a - pad < 0 <= b - 1 - pad)
    ends += [n - 1] * (a - pad <= n - 1 <= b - 1 - pad)
    lo, hi = min(ends), max(ends) + 1
    return x.read(lo, hi)[src - lo]


def _frame_blocks(n_frames: int, hop: int, block: int) -> Iterator[tuple[int, int]]:
    per = max(1, block // hop)
    for t0 in range(0, n_frames, per):
        yield t0, min(n_frames, t0 + per)


def _spans(both: tuple[Tensor, Tensor], pad: int, a: int, b: int) -> Tensor:
    """``(2, b - a)``: :func:`_padded_span` of the reference and the estimate, in the work dtype."""
    return torch.stack([_padded_span(row, pad, a, b) for row in both]).to(F._work_dtype(both[0]))


def _stft_frames(
    both: tuple[Tensor, Tensor], n_fft: int, hop: int, win_length: int, t0: int, t1: int, pad: int
) -> Tensor:
    """Power ``|X|^2`` ``(2, t1 - t0, n_fft//2 + 1)`` of frames ``t0..t1`` of the centred (reflect) STFT of
    the reference and the estimate: the frames :func:`F._stft_power` has at those indices."""
    seg = _spans(both, pad, t0 * hop, (t1 - 1) * hop + n_fft)
    window = torch.hann_window(win_length, periodic=True, dtype=seg.dtype, device=seg.device)
    spec = torch.stft(seg, n_fft, hop, win_length, window, center=False, return_complex=True)
    return (spec.real.square() + spec.imag.square()).transpose(1, 2)


def _stft_valid_frames(n: int, n_fft: int, hop: int) -> int:
    pad = n_fft // 2
    return 0 if n <= pad else 1 + (n + 2 * pad - n_fft) // hop


def _mean(total: Tensor, count: int) -> Tensor:
    return total / count if count > 0 else torch.full_like(total, float("nan"))


def _lsd(both: tuple[Tensor, Tensor], sample_rate: int, block: int, eps: float = 1e-10) -> Tensor:
    n_fft, hop = F.lsd_stft_settings(sample_rate)
    total = torch.zeros((), dtype=torch.float64, device=both[0].device)
    frames = _stft_valid_frames(both[0].shape[-1], n_fft, hop)
    for t0, t1 in _frame_blocks(frames, hop, block):
        p = _stft_frames(both, n_fft, hop, n_fft, t0, t1, n_fft // 2)
        diff = torch.log10(p[0] + eps) - torch.log10(p[1] + eps)
        total = total + diff.square().mean(-1).sqrt().double().sum()
    return _mean(total, frames)


def _mrstft(both: tuple[Tensor, Tensor], block: int, eps: float = 1e-8) -> tuple[Tensor, Tensor, Tensor]:
    z = torch.zeros((), dtype=torch.float64, device=both[0].device)
    sc_all, lm_all = [], []
    for n_fft, hop, win in F.MRSTFT_RESOLUTIONS:
        num, den, lm = z, z, z
        frames = _stft_valid_frames(both[0].shape[-1], n_fft, hop)
        for t0, t1 in _frame_blocks(frames, hop, block):
            p = _stft_frames(both, n_fft, hop, win, t0, t1, n_fft // 2).clamp(min=eps).sqrt()
            num = num + (p[0] - p[1]).square().double().sum()
            den = den + p[0].square().double().sum()
            lm = lm + (torch.log(p[0]) - torch.log(p[1])).abs().mean(-1).double().sum()
        sc_all.append(num.sqrt() / den.sqrt() if frames > 0 else torch.full_like(z, float("nan")))
        lm_all.append(_mean(lm, frames))
    sc, lm_ = torch.stack(sc_all).mean(0), torch.stack(lm_all).mean(0)
    return sc + lm_, sc, lm_


def _mel_distance(both: tuple[Tensor, Tensor], sample_rate: int, block: int) -> Tensor:
    """:func:`F.mel_distance` frame by frame (the ``LogMelFrontend`` steps after its own padding)."""
    fe = F._frontend("tacotron", both[0].device, sample_rate)
    n = both[0].shape[-1]
    frames = int(fe.num_frames(n)) if n > fe.pad else 0
    dtype = F._work_dtype(both[0])
    basis, window = fe.mel_basis.to(dtype), fe.window.to(dtype)
    total = torch.zeros((), dtype=torch.float64, device=both[0].device)
    with torch.autocast(both[0].device.type, enabled=False):
        for t0, t1 in _frame_blocks(frames, fe.hop, block):
            seg = _spans(both, fe.pad, t0 * fe.hop, (t1 - 1) * fe.hop + fe.n_fft)
            mag = torch.stft(
                seg, fe.n_fft, fe.hop, window.shape[0], window, center=False, return_complex=True
            ).abs()
            mel = torch.log(torch.clamp(torch.matmul(basis, mag).transpose(1, 2), min=fe.floor))
            total = total + (mel[0] - mel[1]).abs().mean(-1).double().sum()
    return _mean(total, frames)


# ------------------------------------------------------------------------------------------ clicks
def _click_counts(
    r: Tensor, e: Tensor, sample_rate: int, added: bool, own: bool, block: int
) -> dict[str, int]:
    """Onsets per detector, counted in each window's core (windows with ``CLICK_MARGIN_SECONDS`` of context)."""
    n = r.shape[0]
    margin = int(round(CLICK_MARGIN_SECONDS * sample_rate))
    counts = {"added": 0, "ref": 0, "est": 0}
    for s in _blocks(n, block):
        a, b = max(0, s.start - margin), min(n, s.stop + margin)
        core = slice(s.start - a, s.stop - a)
        rs, es = _read(r, a, b)[None], _read(e, a, b)[None]
        if added:
            onsets = _clicks.added_clicks(rs, es, None, sample_rate, as_mask=True)
            counts["added"] += int(onsets[0, core].sum())
        if own:
            onsets = _clicks.detect_clicks(torch.cat([rs, es]), None, sample_rate, as_mask=True)
            counts["ref"] += int(onsets[0, core].sum())
            counts["est"] += int(onsets[1, core].sum())
    return counts


# ------------------------------------------------------------------------------------------ one item
class _Item:
    """One long item's inputs and its shared intermediate results."""

    def __init__(self, r: Tensor, e: Tensor, sample_rate: int, block: int, lag_seconds: float) -> None:
        self.r, self.e, self.sample_rate, self.block = r, e, sample_rate, block
        self.lag_seconds = lag_seconds
        self.eps = torch.finfo(e.dtype).eps
        self.both = (r, e)  # the framed metrics' input, cast per span (no whole-item copy)
        self.cache: dict[str, Any] = {}

    def cached(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = fn()
        return self.cache[key]

    def lag(self) -> tuple[Tensor, Tensor]:
        def run() -> tuple[Tensor, Tensor]:
            m = int(self.lag_seconds * self.sample_rate)
            max_lag = int(round(0.01 * self.sample_rate))
            r, e = _read(self.r, 0, m)[None], _read(self.e, 0, m)[None]
            lag, peak = F.estimate_lag(r, e, None, max_lag, return_peak=True)
            return lag[0], peak[0]

        return self.cached("lag", run)

    def wave(self, aligned: bool) -> dict[str, Tensor]:
        def run() -> dict[str, Tensor]:
            r, e = self.r, self.e
            if aligned:  # the pairs (ref[n], est[n + lag]) where both are valid, as F.align
                lag, n = int(self.lag()[0]), r.shape[0]
                lo, hi = max(0, -lag), min(n, n - lag)
                r, e = _span(r, lo, max(lo, hi)), _span(e, lo + lag, max(lo, hi) + lag)
            return _wave_scores(r, e, self.eps, self.block)

        return self.cached(f"wave{aligned}", run)

    def clicks(self, which: str) -> Tensor:
        def run() -> dict[str, int]:
            return _click_counts(self.r, self.e, self.sample_rate, True, False, CLICK_BLOCK_SAMPLES)

        def run_own() -> dict[str, int]:
            return _click_counts(self.r, self.e, self.sample_rate, False, True, CLICK_BLOCK_SAMPLES)

        counts = self.cached("clicks_added", run) if which == "added" else self.cached("clicks_own", run_own)
        seconds = self.r.shape[0] / self.sample_rate
        return torch.tensor(counts[which] / seconds, dtype=torch.float64, device=self.r.device)


def _lag_value(it: _Item) -> Tensor:
    lag, peak = it.lag()
    return torch.where(torch.isfinite(peak), lag.double(), torch.full_like(peak, float("nan")))


_STREAMED: dict[str, Callable[[_Item], Tensor]] = {
    "lag": _lag_value,
    "xcorr_peak": lambda it: it.lag()[1],
    "lsd": lambda it: it.cached("lsd", lambda: _lsd(it.both, it.sample_rate, it.block)),
    "mel_distance": lambda it: it.cached("mel", lambda: _mel_distance(it.both, it.sample_rate, it.block)),
    "mrstft_distance": lambda it: it.cached("mrstft", lambda: _mrstft(it.both, it.block))[0],
    "mrstft_sc": lambda it: it.cached("mrstft", lambda: _mrstft(it.both, it.block))[1],
    "mrstft_logmag": lambda it: it.cached("mrstft", lambda: _mrstft(it.both, it.block))[2],
    "clicks_added_per_s": lambda it: it.clicks("added"),
    "clicks_ref_per_s": lambda it: it.clicks("ref"),
    "clicks_est_per_s": lambda it: it.clicks("est"),
}
for _name in ("snr", "pearson", "si_sdr"):
    _STREAMED[_name] = lambda it, k=_name: it.wave(False)[k]
    _STREAMED[f"{_name}_aligned"] = lambda it, k=_name: it.wave(True)[k]


def streamed(name: str) -> bool:
    """Whether ``name`` has a block-wise form here (others run on the item whole)."""
    return name in _STREAMED


@torch.no_grad()
def stream_item_metrics(
    reference: Tensor,
    estimate: Tensor,
    names: Sequence[str],
    sample_rate: int,
    block: int | None = None,
    lag_seconds: float = 60.0,
) -> dict[str, Tensor]:
    """Scores of one item ``reference``/``estimate`` ``(L,)`` (every sample valid): ``{name: float64 scalar}``
    for the names :func:`streamed` knows, with peak memory set by ``block`` (samples, default
    :data:`BLOCK_SAMPLES`), not by ``L``. The lag is estimated from the first ``lag_seconds``."""
    if reference.ndim != 1 or reference.shape != estimate.shape:
        raise ValueError(f"one item: (L,) and (L,), got {tuple(reference.shape)} and {tuple(estimate.shape)}")
    it = _Item(reference, estimate, int(sample_rate), int(block or BLOCK_SAMPLES), float(lag_seconds))
    return {name: _STREAMED[name](it).to(torch.float64) for name in names if name in _STREAMED}
