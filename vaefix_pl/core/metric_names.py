"""The metric name sets, defined once (a leaf module: it imports nothing, everything else reads it).

In core, not metrics, so that reading a name costs no import of the metric code (diagnose.stages and
the report read them; the metrics package imports torch and every metric).

Each name is a column of ``metrics.csv`` and a key of :func:`~vaefix_pl.metrics.registry.metric_info`;
the registry checks at import time that every name listed here is registered.
"""

from __future__ import annotations

#: The headline metric: clicks the reconstruction adds (bold first row of summary tables).
HEADLINE_METRIC = "clicks_added_per_s"

#: CPU perceptual metrics (run by ``PerceptualScorer``, never by ``compute_metrics``).
PERCEPTUAL_METRICS: tuple[str, ...] = ("pesq", "stoi", "estoi")

#: What ``compute_metrics`` computes when no names are given.
DEFAULT_METRICS: tuple[str, ...] = (
    "lag",
    "snr",
    "snr_aligned",
    "pearson",
    "pearson_aligned",
    "si_sdr",
    "si_sdr_aligned",
    "lsd",
    "mel_distance",
    "mrstft_distance",
    HEADLINE_METRIC,
    "clicks_ref_per_s",
    "clicks_est_per_s",
)

#: Waveform metrics scored on each stage of ``vaefix diagnose`` (and the report's stage table).
STAGE_METRICS: tuple[str, ...] = ("mel_distance", "mrstft_distance", "lsd", "snr", "si_sdr", HEADLINE_METRIC)

#: Fast metrics the fixed-decoder baseline logs; perceptual ones it adds when installed.
BASELINE_METRICS: tuple[str, ...] = (*STAGE_METRICS[:5], "lag", HEADLINE_METRIC)
BASELINE_PERCEPTUAL: tuple[str, ...] = PERCEPTUAL_METRICS[:2]

#: Summary-table order: the headline click metric first, then spectral, perceptual, waveform, lag.
TABLE_ORDER: tuple[str, ...] = (
    HEADLINE_METRIC,
    "mel_distance",
    "mrstft_distance",
    "lsd",
    *PERCEPTUAL_METRICS,
    "si_sdr",
    "si_sdr_aligned",
    "snr",
    "snr_aligned",
    "pearson",
    "pearson_aligned",
    "lag",
    "clicks_ref_per_s",
    "clicks_est_per_s",
)
