"""Summaries (mean, median, std, CI, n, non-finite count), the Markdown table and the torchmetrics classes."""

from __future__ import annotations

import json
import math

import metric_signals as ms
import numpy as np
import pytest
import torch
from scipy import stats

from vaefix_pl.metrics import (
    MeanMetricWithCI,
    ReconstructionMetrics,
    compute_metrics,
    json_safe,
    summarize,
    summarize_by,
    summary_markdown,
)


def _rows(values: dict[str, list]) -> list[dict]:
    n = len(next(iter(values.values())))
    return [{"id": f"clip{i}", "tag": "recon", **{k: v[i] for k, v in values.items()}} for i in range(n)]


def test_statistics_and_student_t_interval_match_numpy_and_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=40)
    summary = summarize(_rows({"snr": list(x)}), ci="t")["snr"]
    assert summary["n"] == 40 and summary["nan_count"] == 0
    assert summary["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert summary["median"] == pytest.approx(np.median(x), rel=1e-12)
    assert summary["std"] == pytest.approx(x.std(ddof=1), rel=1e-12)
    low, high = stats.t.interval(0.95, df=39, loc=x.mean(), scale=stats.sem(x))
    assert summary["ci95_low"] == pytest.approx(low, rel=1e-10)
    assert summary["ci95_high"] == pytest.approx(high, rel=1e-10)
    assert summary["ci_method"] == "Student t"


def test_bootstrap_interval_is_seeded_and_sensible():
    rng = np.random.default_rng(1)
    x = rng.exponential(0.5, size=200)  # skewed, like click rates
    rows = _rows({"clicks_added_per_s": list(x)})
    a = summarize(rows)["clicks_added_per_s"]
    b = summarize(rows)["clicks_added_per_s"]
    assert a == b  # reproducible
    assert "bootstrap" in a["ci_method"]
    assert a["ci95_low"] < x.mean() < a["ci95_high"]
    # close to the normal-theory interval for n = 200
    half_t = stats.t.ppf(0.975, 199) * stats.sem(x)
    assert (a["ci95_high"] - a["ci95_low"]) / 2 == pytest.approx(half_t, rel=0.15)
    c = summarize(rows, seed=1)["clicks_added_per_s"]
    assert c["ci95_low"] != a["ci95_low"]


def test_bootstrap_shared_resamples_match_direct_resampling():
    """Metrics with as many values share one set of resamples; each interval is the percentile
    interval of ``x[idx].mean(1)`` over the same seeded index draws (NumPy, written out here)."""
    rng = np.random.default_rng(3)
    cols = {"snr": rng.normal(5, 2, 300), "lsd": rng.exponential(1.0, 300), "lag": rng.integers(-3, 4, 300)}
    cols["mel_distance"] = rng.normal(1, 0.1, 300)
    cols["mel_distance"][:7] = np.nan  # another n: its own resamples
    summary = summarize(_rows({k: list(v) for k, v in cols.items()}), n_boot=500, seed=4)
    for name, x in cols.items():
        x = x[np.isfinite(x)].astype(np.float64)
        idx = np.random.default_rng(4).integers(0, len(x), size=(500, len(x)))
        low, high = np.quantile(x[idx].mean(axis=1), [0.025, 0.975])
        assert summary[name]["ci95_low"] == pytest.approx(low, rel=1e-12, abs=1e-12)
        assert summary[name]["ci95_high"] == pytest.approx(high, rel=1e-12, abs=1e-12)


def test_non_finite_values_are_excluded_and_counted():
    rows = _rows({"snr": [1.0, float("nan"), float("inf"), 3.0, None, "5.0", "", -float("inf")]})
    rows.append({"id": "x", "tag": "recon"})  # metric missing entirely
    s = summarize(rows, ci="t")["snr"]
    assert s["n"] == 3 and s["nan_count"] == 6
    assert s["mean"] == pytest.approx(3.0) and s["median"] == pytest.approx(3.0)
    one = summarize(_rows({"lsd": [2.0, float("nan")]}))["lsd"]
    assert one["n"] == 1 and one["mean"] == 2.0 and math.isnan(one["std"]) and math.isnan(one["ci95_low"])
    empty = summarize(_rows({"lsd": [float("nan")]}))["lsd"]
    assert empty["n"] == 0 and empty["nan_count"] == 1 and math.isnan(empty["mean"])


def test_metric_discovery_order_and_grouping():
    rows = _rows(
        {"snr": [1.0, 2.0], "clicks_added_per_s": [0.0, 0.5], "pesq_error": ["", "silent"], "custom": [1, 2]}
    )
    rows[1]["tag"] = "post"
    names = list(summarize(rows))
    assert names[0] == "clicks_added_per_s"  # the headline first
    assert "pesq_error" not in names and "id" not in names and "custom" in names
    groups = summarize_by(rows, key="tag", ci="t")
    assert set(groups) == {"recon", "post"} and groups["post"]["snr"]["mean"] == 2.0
    with pytest.raises(ValueError, match="ci must be one of"):
        summarize(rows, ci="normal")


def test_markdown_table_and_json_safety():
    rows = _rows(
        {"clicks_added_per_s": [0.0, 0.25, 0.5], "lsd": [1.1, 1.2, float("nan")], "pesq": [3.1, 3.3, 3.2]}
    )
    summary = summarize(rows)
    md = summary_markdown(summary, title="Run 7")
    lines = md.splitlines()
    assert lines[0] == "# Run 7"
    header = next(i for i, line in enumerate(lines) if line.startswith("| metric"))
    body = lines[header + 2 :]
    assert len(body) == 3 and body[0].startswith("| **clicks_added_per_s** | 1/s | lower |")
    assert "| lsd | log10 power | lower |" in md and "| pesq | MOS-LQO | higher |" in md
    assert body[1].rstrip().endswith("| 2 | 1 |")  # n, non-finite of lsd
    assert "bootstrap" in md
    text = json.dumps(json_safe({"summary": summary, "x": [float("nan"), np.float32(1.5)]}), allow_nan=False)
    assert json.loads(text)["x"] == [None, 1.5]


def test_rows_read_back_from_csv_strings_give_the_same_summary(tmp_path):
    import csv

    rows = _rows({"snr": [1.5, 2.5, float("nan")], "lag": [80, 80, 0]})
    path = tmp_path / "metrics.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with path.open() as f:
        read = list(csv.DictReader(f))
    assert summarize(read, ci="t") == summarize(rows, ci="t")


# ------------------------------------------------------------------------------- torchmetrics classes
def _fake_two_ranks(offset: float):
    """dist_sync_fn that pretends a second rank holds the same values plus ``offset``."""

    def gather(tensor, group=None):
        return [tensor, tensor + offset]

    return gather


def test_mean_metric_with_ci_concatenates_across_ranks():
    metric = MeanMetricWithCI(dist_sync_fn=_fake_two_ranks(10.0), distributed_available_fn=lambda: True)
    metric.update(torch.tensor([1.0, 2.0, float("nan")]))
    metric.update(torch.tensor([3.0]))
    out = metric.compute()
    values = np.array([1.0, 2.0, 3.0, 11.0, 12.0, 13.0])  # NaN excluded on both "ranks"
    assert out["n"].item() == 6 and out["nan_count"].item() == 2
    assert out["mean"].item() == pytest.approx(values.mean())
    low, high = stats.t.interval(0.95, df=5, loc=values.mean(), scale=stats.sem(values))
    assert out["ci95_low"].item() == pytest.approx(low) and out["ci95_high"].item() == pytest.approx(high)


def test_reconstruction_metrics_accumulates_per_item_values():
    refs = [ms.speech_like(8000, 1), ms.music_like(6000, 2), ms.speech_like(7000, 3)]
    ests = [ms.lowpass_delay(r) for r in refs]
    n = 8000
    ref = torch.zeros(3, n)
    est = torch.zeros(3, n)
    for i, (r, e) in enumerate(zip(refs, ests)):
        ref[i, : r.shape[0]] = torch.tensor(r)
        est[i, : e.shape[0]] = torch.tensor(e)
    lengths = torch.tensor([r.shape[0] for r in refs])
    names = ["snr", "lsd", "lag"]
    metric = ReconstructionMetrics(names)
    metric.update(ref[:2], est[:2], lengths[:2])
    metric.update(ref[2:], est[2:], lengths[2:])
    direct = compute_metrics(ref, est, lengths, names)
    values = metric.values()
    for name in names:
        np.testing.assert_allclose(values[name].numpy(), direct[name].numpy(), rtol=1e-6)
    means = metric.compute()
    assert means["lsd"].item() == pytest.approx(direct["lsd"].mean().item(), rel=1e-6)
    assert metric.summary(ci="t")["lag"]["n"] == 3
    with pytest.raises(ValueError, match="PerceptualScorer"):
        ReconstructionMetrics(["snr", "pesq"])

    synced = ReconstructionMetrics(
        ["lsd"], dist_sync_fn=_fake_two_ranks(1.0), distributed_available_fn=lambda: True
    )
    synced.update(ref, est, lengths)
    assert synced.compute()["lsd"].item() == pytest.approx(direct["lsd"].mean().item() + 0.5, rel=1e-6)
