"""Thin torchmetrics ``Metric`` classes over the pure functions, for in-process aggregation across ranks.

The project's own DDP path does not need them (rank-local rows are merged from files and
:func:`summarize` runs on rank 0). They are for users who aggregate inside a Lightning loop: the
per-item values are list states with ``dist_reduce_fx="cat"``, so after torchmetrics' sync every rank
holds all items and the summary (mean, median, CI, n, NaN count) is exact, not a mean of means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from vaefix_pl.core.frontend import SAMPLE_RATE
from vaefix_pl.metrics.aggregate import summarize
from vaefix_pl.metrics.registry import DEFAULT_METRICS, compute_metrics, split_metric_names

__all__ = ["MeanMetricWithCI", "ReconstructionMetrics"]

_STAT_KEYS = ("mean", "std", "median", "ci95_low", "ci95_high", "n", "nan_count")


def _stats_tensors(summary: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
    return {k: torch.tensor(float(summary[k]), dtype=torch.float64, device=device) for k in _STAT_KEYS}


class MeanMetricWithCI(Metric):
    """Accumulates per-item values (any shape, flattened) and returns mean, median, std and a 95 % CI.

    ``compute()`` -> ``{"mean", "std", "median", "ci95_low", "ci95_high", "n", "nan_count"}`` float64
    scalars over all ranks; non-finite values are excluded and counted. ``ci``: ``"t"`` (Student t,
    default here: cheap on every step) or ``"bootstrap"`` (seeded, as :func:`summarize`).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, ci: str = "t", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ci = ci
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, values: Tensor) -> None:
        self.values.append(torch.as_tensor(values).detach().reshape(-1).to(torch.float64))

    def compute(self) -> dict[str, Tensor]:
        values = dim_zero_cat(self.values) if len(self.values) else torch.zeros(0, dtype=torch.float64)
        rows = [{"value": v} for v in values.cpu().tolist()]
        summary = summarize(rows, ["value"], ci=self.ci)["value"]
        return _stats_tensors(summary, self.device)


class ReconstructionMetrics(Metric):
    """Per-item reconstruction metrics (:func:`compute_metrics`) accumulated over batches and ranks.

    ``update(reference, estimate, lengths)`` with ``(B, N)`` waveforms; ``compute()`` returns the mean
    of the finite values per metric (``{name: float64 scalar}``); :meth:`values` the concatenated
    per-item values and :meth:`summary` the full :func:`summarize` dict (after the cross-rank sync).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self, names: Sequence[str] | None = None, sample_rate: int = SAMPLE_RATE, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        fast, perceptual = split_metric_names(list(DEFAULT_METRICS if names is None else names))
        if perceptual:
            raise ValueError(f"{perceptual} run on the CPU (PerceptualScorer), not in ReconstructionMetrics")
        self.names = tuple(fast)
        self.sample_rate = sample_rate
        for name in self.names:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, reference: Tensor, estimate: Tensor, lengths: Tensor | None = None) -> None:
        values = compute_metrics(reference, estimate, lengths, self.names, self.sample_rate)
        for name, v in values.items():
            getattr(self, name).append(v.detach().to(torch.float64))

    def values(self) -> dict[str, Tensor]:
        """``{name: (n_items,) float64}`` over everything accumulated (synced when distributed)."""
        out = {}
        for name in self.names:
            state = getattr(self, name)
            out[name] = dim_zero_cat(state) if len(state) else torch.zeros(0, dtype=torch.float64)
        return out

    def compute(self) -> dict[str, Tensor]:
        out = {}
        for name, v in self.values().items():
            finite = v[torch.isfinite(v)]
            out[name] = finite.mean() if finite.numel() else torch.tensor(float("nan"), dtype=torch.float64)
        return out

    def summary(self, ci: str = "bootstrap") -> dict[str, dict[str, Any]]:
        """:func:`summarize` of the accumulated items; call after ``compute()`` so states are synced."""
        vals = {k: v.cpu().tolist() for k, v in self.values().items()}
        n = max((len(v) for v in vals.values()), default=0)
        rows = [{k: vals[k][i] for k in self.names} for i in range(n)]
        return summarize(rows, list(self.names), ci=ci)
