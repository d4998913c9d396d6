"""Reconstruction quality metrics: waveform, lag, spectral, perceptual and click scores, and summaries.

Public API (shapes: waveforms ``(B, N)`` at 16 kHz, ``lengths`` ``(B,)`` valid sample counts)::

    compute_metrics(reference, estimate, lengths, names=None, sample_rate=16000) -> {name: (B,) float64}
    available_metrics(kind="fast") -> list[str]; split_metric_names(names) -> (fast, perceptual)
    PerceptualScorer(names=("pesq", "stoi", "estoi"), sample_rate=16000, max_workers=None)
        .submit(ids, reference_arrays, estimate_arrays, tag="recon"); .poll(); .drain(timeout); .close()
    perceptual_scores(reference_array, estimate_array, sample_rate) -> dict
    summarize(rows, metric_names=None, ci="bootstrap") -> {metric: {mean, std, median, ci95_low, ...}}
    summary_markdown(summary, title=...) -> str

Pure functions (``functional``, ``clicks``): ``estimate_lag``, ``align``, ``snr``, ``pearson``,
``si_sdr``, ``log_spectral_distance``, ``mel_distance``, ``mrstft_distance``, ``detect_clicks``,
``added_clicks``. torchmetrics classes (``classes``): ``ReconstructionMetrics``, ``MeanMetricWithCI``.
"""

from __future__ import annotations

from vaefix_pl.metrics.aggregate import json_safe, summarize, summarize_by, summary_markdown
from vaefix_pl.metrics.clicks import added_clicks, count_per_second, detect_clicks, lp_residual
from vaefix_pl.metrics.functional import (
    MRSTFT_RESOLUTIONS,
    align,
    estimate_lag,
    log_spectral_distance,
    lsd_stft_settings,
    mel_distance,
    mrstft_distance,
    pearson,
    si_sdr,
    snr,
)
from vaefix_pl.metrics.perceptual import PERCEPTUAL_METRICS, PerceptualScorer, perceptual_scores
from vaefix_pl.metrics.registry import (
    DEFAULT_METRICS,
    MetricContext,
    MetricSpec,
    available_metrics,
    compute_metrics,
    get_metric,
    metric_info,
    register_metric,
    split_metric_names,
)


def __getattr__(name: str):  # torchmetrics classes load on first use (they import torchmetrics.Metric)
    if name in ("ReconstructionMetrics", "MeanMetricWithCI"):
        from vaefix_pl.metrics import classes

        return getattr(classes, name)
    raise AttributeError(f"module 'vaefix_pl.metrics' has no attribute {name!r}")


__all__ = [
    "DEFAULT_METRICS",
    "MRSTFT_RESOLUTIONS",
    "PERCEPTUAL_METRICS",
    "MeanMetricWithCI",
    "MetricContext",
    "MetricSpec",
    "PerceptualScorer",
    "ReconstructionMetrics",
    "added_clicks",
    "align",
    "available_metrics",
    "compute_metrics",
    "count_per_second",
    "detect_clicks",
    "estimate_lag",
    "get_metric",
    "json_safe",
    "log_spectral_distance",
    "lp_residual",
    "lsd_stft_settings",
    "mel_distance",
    "metric_info",
    "mrstft_distance",
    "pearson",
    "perceptual_scores",
    "register_metric",
    "si_sdr",
    "snr",
    "split_metric_names",
    "summarize",
    "summarize_by",
    "summary_markdown",
]
