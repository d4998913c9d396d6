"""Summaries of per-clip metric rows: mean, median, std, 95 % CI, n and non-finite count; Markdown table.

``summarize`` runs on plain rows (dicts, e.g. the lines of ``metrics.csv`` merged from every rank), so
the DDP-safe path is: each rank writes its rows, rank 0 merges them and summarises. Statistics are in
float64. Confidence intervals of the mean:

* ``ci="bootstrap"`` (default): percentile bootstrap of the mean, 2000 resamples from a seeded NumPy
  generator (``seed=0``): reproducible, no normality assumption (click rates are skewed and often 0).
* ``ci="t"``: Student t interval ``mean +- t_{0.975, n-1} s / sqrt(n)``.

Non-finite values (NaN: unscorable clip; +-inf: e.g. the SNR of a perfect reconstruction) and missing
values are excluded from every statistic and counted in ``nan_count``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Number
from typing import Any

import numpy as np

from vaefix_pl.core.metric_names import HEADLINE_METRIC, TABLE_ORDER
from vaefix_pl.core.utils import format_number
from vaefix_pl.core.utils import jsonable as json_safe
from vaefix_pl.metrics.registry import metric_info

__all__ = ["CI_METHODS", "json_safe", "summarize", "summarize_by", "summary_markdown"]

CI_METHODS = ("bootstrap", "t")
_NOT_METRICS = {"id", "tag", "rank", "index", "path", "file", "split", "batch", "batch_idx", "item"}
#: Table order (the one list is :data:`vaefix_pl.core.metric_names.TABLE_ORDER`).
PREFERRED_ORDER = TABLE_ORDER


def _is_number(v: Any) -> bool:
    return isinstance(v, Number | np.number) and not isinstance(v, bool | np.bool_)


def _to_float(v: Any) -> float:
    """A row value as float; strings from a CSV are parsed, anything unparsable or empty is NaN."""
    if type(v) is float or type(v) is int:  # the common case, before the slower ABC check (not bool)
        return float(v)
    if v is None:
        return math.nan
    if _is_number(v):
        return float(v)
    if hasattr(v, "item"):  # 0-d tensor / array
        try:
            return float(v.item())
        except (TypeError, ValueError):
            return math.nan
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return math.nan
    return math.nan


def _metric_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key in _NOT_METRICS or key.endswith("_error"):
                continue
            if (
                _is_number(value)
                or (isinstance(value, str) and _looks_numeric(value))
                or hasattr(value, "item")
            ):
                seen.setdefault(key, None)
    return _ordered(seen)


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _ordered(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    rank = {n: i for i, n in enumerate(PREFERRED_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))


def _bootstrap_cis(xs: np.ndarray, level: float, n_boot: int, seed: int) -> list[tuple[float, float]]:
    """Percentile-bootstrap intervals of the mean of each column of ``xs`` ``(n, k)``, one set of resamples.

    Each resample's index draw becomes a count per value (``bincount``), and every column's resampled
    means are one matrix product: the same resamples as ``x[idx].mean(1)`` per column, without
    gathering ``(n_boot, n)`` values k times.
    """
    rng = np.random.default_rng(seed)
    n = xs.shape[0]
    means = np.empty((n_boot, xs.shape[1]))
    chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))  # bound the index matrix's memory
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        rows = np.arange(stop - start)[:, None] * n
        counts = np.bincount((idx + rows).ravel(), minlength=(stop - start) * n).reshape(stop - start, n)
        means[start:stop] = counts @ xs / n
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    return [(float(lo), float(hi)) for lo, hi in zip(low, high)]


def _t_ci(x: np.ndarray, level: float) -> tuple[float, float]:
    from scipy import stats

    n = x.shape[0]
    mean = float(x.mean())
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    if sem == 0.0:
        return mean, mean
    half = float(stats.t.ppf(0.5 + level / 2.0, df=n - 1)) * sem
    return mean - half, mean + half


def summarize(
    rows: Sequence[Mapping[str, Any]],
    metric_names: Sequence[str] | None = None,
    ci: str = "bootstrap",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per-metric summary of per-clip rows.

    Args:
        rows: one mapping per clip (``{"id": ..., "snr": 3.2, ...}``); values may be floats, 0-d
            tensors or numeric strings (a CSV read back). Keys ``id``/``tag``/``*_error`` are not metrics.
        metric_names: which metrics (default: every numeric key, headline first).
        ci: ``"bootstrap"`` (seeded percentile bootstrap of the mean) or ``"t"`` (Student t).
    Returns:
        ``{metric: {"mean", "std" (ddof 1), "median", "ci95_low", "ci95_high", "n" (finite values),
        "nan_count" (non-finite or missing), "ci_method"}}``; statistics are NaN when ``n`` is 0 (CI and
        std also when ``n`` is 1).
    """
    if ci not in CI_METHODS:
        raise ValueError(f"ci must be one of {CI_METHODS}, got {ci!r}")
    names = _ordered(metric_names) if metric_names is not None else _metric_names(rows)
    method = f"percentile bootstrap ({n_boot} resamples, seed {seed})" if ci == "bootstrap" else "Student t"
    out: dict[str, dict[str, Any]] = {}
    finite_of: dict[str, np.ndarray] = {}
    for name in names:
        values = np.array([_to_float(row.get(name)) for row in rows], dtype=np.float64)
        finite = finite_of[name] = values[np.isfinite(values)]
        n = int(finite.shape[0])
        stats: dict[str, Any] = {
            "mean": math.nan,
            "std": math.nan,
            "median": math.nan,
            "ci95_low": math.nan,
            "ci95_high": math.nan,
            "n": n,
            "nan_count": int(values.shape[0] - n),
            "ci_method": method,
        }
        if n:
            stats["mean"] = float(finite.mean())
            stats["median"] = float(np.median(finite))
        if n > 1:
            stats["std"] = float(finite.std(ddof=1))
            if ci != "bootstrap":
                stats["ci95_low"], stats["ci95_high"] = _t_ci(finite, level)
        out[name] = stats
    if ci == "bootstrap":  # metrics with as many finite values share one set of resamples
        by_n: dict[int, list[str]] = {}
        for name, finite in finite_of.items():
            if finite.shape[0] > 1:
                by_n.setdefault(int(finite.shape[0]), []).append(name)
        for group in by_n.values():
            cis = _bootstrap_cis(np.stack([finite_of[m] for m in group], 1), level, n_boot, seed)
            for name, (low, high) in zip(group, cis):
                out[name]["ci95_low"], out[name]["ci95_high"] = low, high
    return out


def summarize_by(
    rows: Sequence[Mapping[str, Any]], key: str = "tag", **kwargs: Any
) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`summarize` per group of rows sharing ``row[key]`` (e.g. ``"recon"`` vs ``"postprocessed"``)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row.get(key, "")), []).append(row)
    return {group: summarize(members, **kwargs) for group, members in groups.items()}


_STAT_COLUMNS = ("mean", "ci95_low", "ci95_high", "median", "std")


def summary_markdown(
    summary: Mapping[str, Mapping[str, Any]],
    title: str = "Reconstruction metrics",
    units: Mapping[str, str] | None = None,
    better: Mapping[str, str] | None = None,
) -> str:
    """A Markdown table of a :func:`summarize` result, for ``summary.md``.

    Columns: metric, unit, better (higher/lower), mean, 95 % CI, median, std, n, non-finite. Units and
    directions default to the metric registry's (:func:`vaefix_pl.metrics.metric_info`).
    """
    if units is None or better is None:
        info = metric_info()
        units = units if units is not None else {k: v["unit"] for k, v in info.items()}
        better = better if better is not None else {k: v["better"] for k, v in info.items()}
    lines = [f"# {title}", ""]
    methods = sorted({str(s.get("ci_method", "")) for s in summary.values() if s.get("ci_method")})
    if methods:
        lines += [
            f"95 % CI of the mean: {', '.join(methods)}. Non-finite values are excluded and counted.",
            "",
        ]
    lines += [
        "| metric | unit | better | mean | 95 % CI | median | std | n | non-finite |",
        "| --- | --- | --- | ---: | :---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in summary.items():
        mean, low, high, median, std = (format_number(_to_float(s.get(k))) for k in _STAT_COLUMNS)
        metric = f"**{name}**" if name == HEADLINE_METRIC else name
        lines.append(
            f"| {metric} | {units.get(name, '')} | {better.get(name, '')} | {mean} | [{low}, {high}] | "
            f"{median} | {std} | {int(s.get('n', 0))} | {int(s.get('nan_count', 0))} |"
        )
    return "\n".join(lines) + "\n"
