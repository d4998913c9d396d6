"""Metric names -> functions, so a config picks metrics by name; ``compute_metrics`` runs a batch.

Fast metrics run on the input's device inside ``compute_metrics``; perceptual ones (PESQ/STOI/ESTOI) are
listed here for validation and units but run on the CPU through :class:`PerceptualScorer`. Metrics that
share work (the lag, aligned signals, click detections) share it through a per-batch cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vaefix_pl.core.frontend import SAMPLE_RATE
from vaefix_pl.core.lengths import full_lengths
from vaefix_pl.core.metric_names import DEFAULT_METRICS, PERCEPTUAL_METRICS, TABLE_ORDER
from vaefix_pl.metrics import clicks as _clicks
from vaefix_pl.metrics import functional as F
from vaefix_pl.metrics import streaming as _streaming

__all__ = [
    "DEFAULT_METRICS",
    "MetricContext",
    "MetricSpec",
    "available_metrics",
    "compute_metrics",
    "get_metric",
    "metric_info",
    "register_metric",
    "split_metric_names",
]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: ``fn(ctx) -> (B,)`` tensor (``None`` for perceptual metrics)."""

    name: str
    fn: Callable[[MetricContext], Tensor] | None
    unit: str
    better: str  # "higher", "lower" or "" (no direction, e.g. the lag)
    description: str
    kind: str = "fast"  # "fast" (compute_metrics) or "perceptual" (PerceptualScorer)


_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(
    name: str, unit: str, better: str, description: str, kind: str = "fast"
) -> Callable[[Callable[[MetricContext], Tensor]], Callable[[MetricContext], Tensor]]:
    """Decorator: register ``fn(ctx: MetricContext) -> Tensor (B,)`` under ``name``."""
    if better not in ("higher", "lower", ""):
        raise ValueError(f"better must be 'higher', 'lower' or '', got {better!r}")

    def wrap(fn: Callable[[MetricContext], Tensor]) -> Callable[[MetricContext], Tensor]:
        if name in _REGISTRY:
            raise ValueError(f"metric {name!r} is already registered")
        _REGISTRY[name] = MetricSpec(name, fn, unit, better, description, kind)
        return fn

    return wrap


def available_metrics(kind: str = "fast") -> list[str]:
    """Registered metric names: ``kind`` = ``"fast"`` (default), ``"perceptual"`` or ``"all"``."""
    if kind not in ("fast", "perceptual", "all"):
        raise ValueError(f"kind must be 'fast', 'perceptual' or 'all', got {kind!r}")
    return [n for n, s in _REGISTRY.items() if kind == "all" or s.kind == kind]


def get_metric(name: str) -> MetricSpec:
    """The spec of ``name``; a clear error listing the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown metric {name!r}. Valid fast metrics: {available_metrics('fast')}; "
            f"perceptual (CPU, PerceptualScorer): {available_metrics('perceptual')}"
        ) from None


def split_metric_names(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Validate a config's metric list and split it into ``(fast, perceptual)`` names."""
    if isinstance(names, str):
        names = [names]
    fast, perceptual = [], []
    for name in names:
        (fast if get_metric(name).kind == "fast" else perceptual).append(name)
    return fast, perceptual


def metric_info() -> dict[str, dict[str, str]]:
    """``{name: {"unit", "better", "description", "kind"}}`` for reports and tables."""
    return {
        n: {"unit": s.unit, "better": s.better, "description": s.description, "kind": s.kind}
        for n, s in _REGISTRY.items()
    }


#: Seconds of each item that the lag is estimated from (see ``MetricContext.lag_and_peak``).
LAG_EXCERPT_SECONDS = 60.0


class MetricContext:
    """One batch's inputs plus a cache of shared intermediate results (lag, alignment, detections)."""

    def __init__(self, reference: Tensor, estimate: Tensor, lengths: Tensor | None, sample_rate: int) -> None:
        if reference.shape != estimate.shape or reference.ndim != 2:
            raise ValueError(
                f"reference {tuple(reference.shape)} and estimate {tuple(estimate.shape)} must both be (B, N)"
            )
        if reference.dtype not in (torch.float32, torch.float64):
            reference = reference.float()
        if estimate.dtype != reference.dtype:
            estimate = estimate.to(reference.dtype)
        self.reference = reference
        self.estimate = estimate
        # Validated once on the host: a CUDA ``lengths`` is read back once here, and every metric gets
        # the CPU copy, so scoring queues its kernels without waiting for the GPU.
        self.host_lengths = (
            None if lengths is None else full_lengths(reference, torch.as_tensor(lengths).cpu(), "cpu")
        )
        self.lengths = full_lengths(reference, self.host_lengths)  # (B,) on the device
        self.sample_rate = int(sample_rate)
        self.cache: dict[str, Any] = {}

    def cached(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = fn()
        return self.cache[key]

    @property
    def seconds(self) -> Tensor:
        return self.lengths.double() / self.sample_rate

    def lag_and_peak(self) -> tuple[Tensor, Tensor]:
        """Lag and peak correlation from the first :data:`LAG_EXCERPT_SECONDS` of each item: the lag is
        the pipeline's fixed delay, and a whole-file FFT of an hour of audio needs gigabytes. Items no
        longer than the excerpt get exactly the whole-item result."""
        max_lag = int(round(0.01 * self.sample_rate))  # +-10 ms (160 samples at 16 kHz)
        m = int(LAG_EXCERPT_SECONDS * self.sample_rate)

        def lag() -> tuple[Tensor, Tensor]:
            ref, est, lens = self.reference, self.estimate, self.host_lengths
            if ref.shape[-1] > m:
                ref, est = ref[..., :m], est[..., :m]
                lens = None if lens is None else lens.clamp(max=m)
            return F.estimate_lag(ref, est, lens, max_lag=max_lag, return_peak=True)

        return self.cached("lag", lag)

    def aligned(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.cached(
            "aligned", lambda: F.align(self.reference, self.estimate, self.lengths, self.lag_and_peak()[0])
        )

    def residuals(self) -> tuple[Tensor, Tensor, Tensor]:
        """AR prediction error of ``cat([reference, estimate])`` (shared by both click detectors)."""

        def run() -> tuple[Tensor, Tensor, Tensor]:
            both = torch.cat([self.reference, self.estimate])
            lens = torch.cat([self.lengths, self.lengths])
            e, defined = _clicks.lp_residual(both, lens, self.sample_rate)
            return both, e, defined

        return self.cached("residuals", run)

    def click_rates(self) -> tuple[Tensor, Tensor]:
        """Reference-free click events per second of the reference and of the estimate."""

        def run() -> tuple[Tensor, Tensor]:
            both, e, defined = self.residuals()
            lens = torch.cat([self.lengths, self.lengths])
            onsets = _clicks.detect_clicks(both, lens, self.sample_rate, as_mask=True, residual=(e, defined))
            rate = _clicks.count_per_second(onsets, lens, self.sample_rate)
            b = self.reference.shape[0]
            return rate[:b], rate[b:]

        return self.cached("click_rates", run)

    def mrstft(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.cached(
            "mrstft",
            lambda: F.mrstft_distance(self.reference, self.estimate, self.host_lengths, return_parts=True),
        )


# ------------------------------------------------------------------------------------------ registrations
@register_metric("lag", "samples", "", "cross-correlation lag within +-10 ms; > 0: estimate delayed")
def _lag(ctx: MetricContext) -> Tensor:
    lag, peak = ctx.lag_and_peak()
    return torch.where(torch.isfinite(peak), lag.double(), torch.full_like(peak, float("nan")))  # silent: NaN


@register_metric("xcorr_peak", "", "higher", "normalised cross-correlation at the lag")
def _xcorr_peak(ctx: MetricContext) -> Tensor:
    return ctx.lag_and_peak()[1]


def _register_pair(name: str, fn: Callable[..., Tensor], unit: str, description: str, label: str) -> None:
    """``name`` (the valid parts as they are) and ``<name>_aligned`` (after undoing the lag)."""

    def plain(ctx: MetricContext) -> Tensor:
        return fn(ctx.reference, ctx.estimate, ctx.host_lengths)

    def aligned(ctx: MetricContext) -> Tensor:
        r, e, m = ctx.aligned()
        return fn(r, e, mask=m)

    register_metric(name, unit, "higher", description)(plain)
    register_metric(f"{name}_aligned", unit, "higher", f"{label} after undoing the lag")(aligned)


_register_pair("snr", F.snr, "dB", "the bug report's SNR 10 log10(sum ref^2 / sum (ref - est)^2)", "SNR")
_register_pair(
    "pearson", F.pearson, "", "the bug report's Pearson correlation (np.corrcoef)", "Pearson correlation"
)
_register_pair("si_sdr", F.si_sdr, "dB", "scale-invariant SDR (zero-mean, torchmetrics' formula)", "SI-SDR")


@register_metric(
    "lsd", "log10 power", "lower", "log-spectral distance (AudioSR/ssr_eval STFT: 743/160 at 16 kHz)"
)
def _lsd(ctx: MetricContext) -> Tensor:
    return F.log_spectral_distance(ctx.reference, ctx.estimate, ctx.host_lengths, ctx.sample_rate)


@register_metric(
    "mel_distance", "nats", "lower", "L1 between the model geometry's log-mels (64 bands/hop 160 at 16 kHz)"
)
def _mel_distance(ctx: MetricContext) -> Tensor:
    # the front-end of the geometry at this rate (a rate no geometry has raises a one-line ModelError)
    return F.mel_distance(ctx.reference, ctx.estimate, ctx.host_lengths, sample_rate=ctx.sample_rate)


def _part(method: str, i: int) -> Callable[[MetricContext], Tensor]:
    """Part ``i`` of a cached :class:`MetricContext` result that several metrics share."""
    return lambda ctx: getattr(ctx, method)()[i]


def _register_parts(method: str, specs: Sequence[tuple[str, str, str, str]]) -> None:
    """Register ``(name, unit, better, description)`` number ``i`` as part ``i`` of ``ctx.<method>()``."""
    for i, (name, unit, better, description) in enumerate(specs):
        register_metric(name, unit, better, description)(_part(method, i))


_register_parts(
    "mrstft",
    [
        ("mrstft_distance", "", "lower", "multi-resolution STFT: SC + log-mag L1 at 512/1024/2048"),
        ("mrstft_sc", "", "lower", "spectral-convergence part of mrstft_distance"),
        ("mrstft_logmag", "nats", "lower", "log-magnitude L1 part of mrstft_distance"),
    ],
)


@register_metric(
    "clicks_added_per_s", "1/s", "lower", "clicks in the estimate the reference does not explain"
)
def _clicks_added(ctx: MetricContext) -> Tensor:
    onsets = _clicks.added_clicks(ctx.reference, ctx.estimate, ctx.lengths, ctx.sample_rate, as_mask=True)
    return _clicks.count_per_second(onsets, ctx.lengths, ctx.sample_rate)


_register_parts(
    "click_rates",
    [
        ("clicks_ref_per_s", "1/s", "", "reference-free AR-residual click rate of the reference"),
        ("clicks_est_per_s", "1/s", "lower", "reference-free AR-residual click rate of the estimate"),
    ],
)


for _name, _unit, _desc in (
    ("pesq", "MOS-LQO", "PESQ P.862.2 wide-band (pesq via torchmetrics)"),
    ("stoi", "", "STOI (pystoi via torchmetrics)"),
    ("estoi", "", "extended STOI (pystoi via torchmetrics)"),
):
    assert _name in PERCEPTUAL_METRICS
    _REGISTRY[_name] = MetricSpec(_name, None, _unit, "higher", _desc, kind="perceptual")
_unregistered = set(DEFAULT_METRICS + TABLE_ORDER) - set(_REGISTRY)
if _unregistered:  # a name set in core.metric_names that no function scores
    raise RuntimeError(f"core.metric_names lists unregistered metrics: {sorted(_unregistered)}")


#: batches narrower than this (samples) are zero-padded before scoring (the longest analysis frame)
MIN_WIDTH = 2048


@torch.no_grad()
def compute_metrics(
    reference: Tensor,
    estimate: Tensor,
    lengths: Tensor | None = None,
    names: Sequence[str] | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> dict[str, Tensor]:
    """Fast per-item metrics of a batch, on the input's device: ``{name: (B,) float64 tensor}``.

    ``reference``/``estimate``: ``(B, N)`` float waveforms (original and reconstruction, same level);
    ``lengths``: ``(B,)`` valid sample counts (``None``: all valid). ``names`` default to
    :data:`DEFAULT_METRICS`; perceptual names are refused here (they belong to ``PerceptualScorer``).
    Every value depends only on the item's own valid samples (batch composition does not matter).
    """
    names = list(DEFAULT_METRICS if names is None else ([names] if isinstance(names, str) else names))
    fast, perceptual = split_metric_names(names)
    if perceptual:
        raise ValueError(
            f"{perceptual} are CPU perceptual metrics: score them with PerceptualScorer (use "
            f"split_metric_names(config_names) to separate them); compute_metrics runs {available_metrics()}"
        )
    long_rows = _long_rows(reference, lengths)
    if long_rows:
        return _compute_with_long_items(reference, estimate, lengths, fast, sample_rate, long_rows)
    if reference.shape[-1] < MIN_WIDTH:
        # Framed metrics (pooling, STFTs) need a minimum width; samples past every item's length are
        # never read as signal, so zero-padding the batch leaves each item's values unchanged.
        if lengths is None:
            lengths = torch.full(reference.shape[:1], reference.shape[-1])
        pad = MIN_WIDTH - reference.shape[-1]
        reference = torch.nn.functional.pad(reference, (0, pad))
        estimate = torch.nn.functional.pad(estimate, (0, pad))
    ctx = MetricContext(reference, estimate, lengths, sample_rate)
    out: dict[str, Tensor] = {}
    for name in fast:
        fn = get_metric(name).fn
        assert fn is not None
        out[name] = fn(ctx).to(torch.float64)
    return out


def _long_rows(reference: Tensor, lengths: Tensor | None) -> list[int]:
    """Rows longer than ``streaming.STREAM_ABOVE_SAMPLES`` (scored block-wise, one item at a time)."""
    if reference.ndim != 2 or reference.shape[-1] <= _streaming.STREAM_ABOVE_SAMPLES:
        return []
    if lengths is None:
        return list(range(reference.shape[0]))
    host = torch.as_tensor(lengths).detach().cpu().long().reshape(-1)
    return [i for i, n in enumerate(host.tolist()) if n > _streaming.STREAM_ABOVE_SAMPLES]


def _compute_with_long_items(
    reference: Tensor,
    estimate: Tensor,
    lengths: Tensor | None,
    names: Sequence[str],
    sample_rate: int,
    long_rows: Sequence[int],
) -> dict[str, Tensor]:
    """:func:`compute_metrics` of a batch holding long items: the short rows as one narrower batch, each
    long row block-wise (:mod:`vaefix_pl.metrics.streaming`), so no temporary spans the long item."""
    if reference.shape != estimate.shape or reference.ndim != 2:
        raise ValueError(
            f"reference {tuple(reference.shape)} and estimate {tuple(estimate.shape)} must both be (B, N)"
        )
    b, n = reference.shape
    host = (
        torch.full((b,), n, dtype=torch.long)
        if lengths is None
        else F._lengths(reference, torch.as_tensor(lengths).detach().cpu()).cpu()
    )
    out = {
        name: torch.full((b,), float("nan"), dtype=torch.float64, device=reference.device) for name in names
    }
    short = [i for i in range(b) if i not in set(long_rows)]
    if short:
        width = max(int(host[short].max()), 1)
        idx = torch.tensor(short, device=reference.device)
        part = compute_metrics(reference[idx, :width], estimate[idx, :width], host[short], names, sample_rate)
        for name in names:
            out[name][idx] = part[name]
    dtype = reference.dtype if reference.dtype in (torch.float32, torch.float64) else torch.float32
    for i in long_rows:
        m = int(host[i])
        ref, est = reference[i, :m].to(dtype), estimate[i, :m].to(dtype)
        values = _streaming.stream_item_metrics(ref, est, names, sample_rate, lag_seconds=LAG_EXCERPT_SECONDS)
        rest = [name for name in names if name not in values]
        if rest:  # metrics registered elsewhere: on the item whole
            ctx = MetricContext(ref[None], est[None], None, sample_rate)
            values.update({name: get_metric(name).fn(ctx)[0] for name in rest})  # type: ignore[misc]
        for name in names:
            out[name][i] = values[name].to(torch.float64)
    return out
