"""Click detectors against known inserted clicks: recall and false clicks per second, measured and recorded.

Clicks: single-sample impulses and 1-3 ms decaying bursts (alternating), peaks uniform in -20..-6 dBFS,
random sign and position (>= 150 ms apart), matched to detections within 50 ms. Seeds here (300+) were
not used to choose the detectors' parameters. Run with ``-s`` to see the measured table.
"""

from __future__ import annotations

from functools import partial

import metric_signals as ms
import numpy as np
import pytest
import torch

from vaefix_pl.metrics import added_clicks, count_per_second, detect_clicks

SR = 16000
TOL = int(0.05 * SR)  # 50 ms matching tolerance
SECONDS = 4.0
N = int(SECONDS * SR)
CLICKS_PER_SIGNAL = 20
SEEDS = (300, 301, 302)  # 3 x 20 = 60 clicks per condition

MAX_FALSE_PER_S = 0.1
MIN_RECALL = 0.9


def _score(detected: list[torch.Tensor], truths: list[np.ndarray]) -> tuple[int, int, int]:
    hits = clicks = false = 0
    for det, truth in zip(detected, truths):
        h, f = ms.match_clicks(det.cpu().numpy(), truth, TOL)
        hits, clicks, false = hits + h, clicks + truth.size, false + f
    return hits, clicks, false


def _report(
    record_property, label: str, hits: int, clicks: int, false_with: int, false_clean: int, seconds: float
):
    recall = hits / clicks
    fp_with, fp_clean = false_with / seconds, false_clean / seconds
    line = (
        f"{label:36s} recall {hits}/{clicks} = {recall:.3f}   false/s with clicks {fp_with:.3f}   "
        f"false/s clean {fp_clean:.3f}   ({seconds:.0f} s of audio)"
    )
    print("\n" + line)
    record_property(
        label, {"recall": recall, "false_per_s_with_clicks": fp_with, "false_per_s_clean": fp_clean}
    )
    return recall, fp_with, fp_clean


# --------------------------------------------------------------------------------------- detect_clicks
def _background(kind: str, seed: int, click_floor_db: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    level = (-6.0, -26.0, -40.0)[seed % 3]  # louder than the clicks, and 20+ dB under them
    if kind == "tone":
        return ms.tone(N, rng.uniform(60, 7000), level, phase=rng.uniform(0, 2 * np.pi))
    if kind == "harmonic":
        return ms.harmonic_tone(N, rng.uniform(60, 500), 20, level, seed=seed)
    if kind == "chirp":
        return ms.chirp(N, 50, 7800, level) if seed % 2 else ms.chirp(N, 7800, 50, level)
    if kind == "noise":  # stationary noise with its RMS 20 dB under the quietest click's peak
        return ms.steady_noise(N, click_floor_db - 20.0, seed=seed, color=("white", "pink")[seed % 2])
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["tone", "harmonic", "chirp", "noise"])
def test_detect_clicks_recall_and_false_rate(kind, record_property):
    with_clicks, clean, truths = [], [], []
    for seed in SEEDS:
        for lo, hi in ((-20.0, -13.0), (-13.0, -6.0)):  # two signals per seed, 10 clicks each
            bg = _background(kind, seed * 10 + int(-lo), lo)
            y, clicks = ms.insert_clicks(
                bg, CLICKS_PER_SIGNAL // 2, seed=seed * 100 - int(lo), peak_range_db=(lo, hi)
            )
            with_clicks.append(y)
            clean.append(bg)
            truths.append(clicks.positions)
    x = torch.tensor(np.stack(with_clicks + clean), dtype=torch.float32)
    det = detect_clicks(x, None, SR)
    k = len(with_clicks)
    hits, total, false_with = _score(det[:k], truths)
    false_clean = sum(int(d.numel()) for d in det[k:])
    recall, fp_with, fp_clean = _report(
        record_property, f"detect_clicks/{kind}", hits, total, false_with, false_clean, k * SECONDS
    )
    assert total >= 50
    assert recall >= MIN_RECALL
    assert fp_clean <= MAX_FALSE_PER_S and fp_with <= MAX_FALSE_PER_S


# ---------------------------------------------------------------------------------------- added_clicks
_SIGNALS = {"speech": ms.speech_like, "music": ms.music_like}
_DEGRADATIONS = {
    "lowpass7k+delay5ms": partial(ms.lowpass_delay, cutoff=7000.0, delay_s=0.005),
    "griffinlim": partial(ms.griffin_lim, n_fft=1024, hop=256, n_iter=16),
}


@pytest.mark.parametrize("degradation", list(_DEGRADATIONS))
@pytest.mark.parametrize("signal", list(_SIGNALS))
def test_added_clicks_recall_and_false_rate(signal, degradation, record_property):
    refs, ests, cleans, truths = [], [], [], []
    for seed in SEEDS:
        ref = _SIGNALS[signal](N, seed=seed)  # peak -6 dBFS
        est = _DEGRADATIONS[degradation](ref)
        y, clicks = ms.insert_clicks(est, CLICKS_PER_SIGNAL, seed=1000 + seed)
        refs.append(ref)
        ests.append(y)
        cleans.append(est)
        truths.append(clicks.positions)
    k = len(refs)
    r = torch.tensor(np.stack(refs + refs), dtype=torch.float32)
    e = torch.tensor(np.stack(ests + cleans), dtype=torch.float32)
    det = added_clicks(r, e, None, SR)
    hits, total, false_with = _score(det[:k], truths)
    false_clean = sum(int(d.numel()) for d in det[k:])
    recall, fp_with, fp_clean = _report(
        record_property,
        f"added_clicks/{signal}/{degradation}",
        hits,
        total,
        false_with,
        false_clean,
        k * SECONDS,
    )
    assert total >= 50
    assert recall >= MIN_RECALL
    assert fp_clean <= MAX_FALSE_PER_S and fp_with <= MAX_FALSE_PER_S


# ------------------------------------------------------------------------------------------ properties
def test_a_burst_counts_once_and_silence_has_no_clicks():
    rng = np.random.default_rng(5)
    x = ms.tone(SR, 440.0, -12.0)
    for ms_len, pos in ((0.001, 4000), (0.003, 9000)):
        m = int(ms_len * SR)
        x[pos : pos + m] += 0.3 * rng.standard_normal(m)
    x[13000] += 0.2
    batch = torch.tensor(np.stack([x, np.zeros(SR)]), dtype=torch.float32)
    det = detect_clicks(batch, None, SR)
    found = det[0].numpy()
    assert found.size == 3, found
    assert np.all(np.abs(found - np.array([4000, 9000, 13000])) < 80)
    assert det[1].numel() == 0
    rate = count_per_second(detect_clicks(batch, None, SR, as_mask=True), torch.tensor([SR, SR]), SR)
    assert rate.tolist() == [3.0, 0.0]


def test_added_clicks_ignores_clicks_the_reference_already_has():
    ref = ms.speech_like(2 * SR, seed=3)
    ref_clicked, clicks = ms.insert_clicks(ref, 6, seed=4)
    est = ms.lowpass_delay(ref_clicked, delay_s=0.003)  # reproduces the original's own clicks
    r = torch.tensor(np.stack([ref_clicked, ref]), dtype=torch.float32)
    e = torch.tensor(np.stack([est, est]), dtype=torch.float32)
    det = added_clicks(r, e, None, SR)
    assert det[0].numel() == 0  # explained by the reference
    hits, false = ms.match_clicks(det[1].numpy(), clicks.positions, TOL)
    assert hits >= 5 and false == 0  # the same clicks are "added" against a clean reference


def test_reference_free_detector_fires_on_voiced_speech():
    """Documented limitation (as FFmpeg adeclick): AR-residual detectors flag glottal pulses."""
    x = torch.tensor(ms.speech_like(4 * SR, seed=9)[None], dtype=torch.float32)
    rate = count_per_second(detect_clicks(x, None, SR, as_mask=True), torch.tensor([4 * SR]), SR)
    clean_added = added_clicks(x, x, None, SR)[0].numel()
    print(
        f"\nreference-free detector on clean speech-like audio: {rate.item():.1f} clicks/s; added: {clean_added}"
    )
    assert clean_added == 0


def test_lpc_filter_matches_scipy_lfilter_hop_by_hop_and_cross_faded():
    """The block-wise inverse filter against scipy ``lfilter`` run with each hop's filter."""
    from scipy.signal import lfilter

    from vaefix_pl.metrics.clicks import _lpc_filter

    rng = np.random.default_rng(0)
    hop, n_hops, order = 128, 8, 4
    x = rng.standard_normal((2, n_hops * hop - 37))
    a = rng.standard_normal((2, n_hops, order + 1))
    a[..., 0] = 1.0
    n = x.shape[1]
    hard = _lpc_filter(torch.tensor(x), torch.tensor(a), hop).numpy()
    soft = _lpc_filter(torch.tensor(x), torch.tensor(a), hop, crossfade=True).numpy()
    for i in range(2):
        each = np.stack([lfilter(a[i, f], [1.0], x[i]) for f in range(n_hops)])  # (F, N)
        f = np.minimum(np.arange(n) // hop, n_hops - 1)
        np.testing.assert_allclose(hard[i], each[f, np.arange(n)], atol=1e-9)
        # between the centres of hops f and f + 1 the weight moves linearly from filter f to f + 1
        pos = (np.arange(n) - hop // 2) / hop
        lo = np.clip(np.floor(pos).astype(int), 0, n_hops - 1)
        hi = np.clip(lo + 1, 0, n_hops - 1)
        w = np.clip(pos - np.floor(pos), 0, 1)
        w = np.where(pos < 0, 0.0, w)
        want = (1 - w) * each[lo, np.arange(n)] + w * each[hi, np.arange(n)]
        np.testing.assert_allclose(soft[i], want, atol=1e-9)


def test_toeplitz_solve_matches_scipy_solve_toeplitz():
    """The Levinson recursion against scipy's Toeplitz solver on the same loaded normal equations.

    Rows: windowed noise (well conditioned), a pure tone and a constant (singular without the
    loading), and a silent block.
    """
    from scipy.linalg import solve_toeplitz

    from vaefix_pl.metrics.clicks import _toeplitz_solve

    rng = np.random.default_rng(1)
    order, win, loading = 32, 401, 1e-7
    t = np.arange(win)
    blocks = [rng.standard_normal(win) * s for s in (0.01, 0.3, 1.0)]
    blocks += [np.sin(0.3 * t), np.full(win, 0.5), np.zeros(win)]
    x = np.stack(blocks) * np.hanning(win)
    r = np.stack([np.correlate(b, b, "full")[win - 1 : win + order] for b in x])  # biased autocorrelation
    a = _toeplitz_solve(torch.tensor(r), order, loading).numpy()
    assert np.all(a[:, 0] == 1)
    tiny = np.finfo(np.float64).tiny ** 0.5
    from scipy.linalg import toeplitz

    for i, row in enumerate(r):
        col = row[:order].copy()
        col[0] = col[0] * (1 + loading) + tiny
        rhs = -row[1 : order + 1]
        want = solve_toeplitz(col, rhs)
        # the same solution (ill-conditioned rows agree to ~1e-5 of their largest coefficient) ...
        np.testing.assert_allclose(a[i, 1:], want, rtol=1e-5, atol=1e-5 * np.abs(want).max(initial=1.0))
        # ... and it solves the loaded system as well as scipy's does
        resid = np.abs(toeplitz(col) @ a[i, 1:] - rhs).max()
        assert resid <= 10 * np.abs(toeplitz(col) @ want - rhs).max() + 1e-12 * np.abs(rhs).max(initial=1.0)


@pytest.mark.cuda
def test_added_clicks_on_cuda_matches_cpu():
    """Same events on the GPU (float32 FFTs may move a borderline frame: allow one event of 40)."""
    refs, ests = [], []
    for seed in SEEDS:
        ref = ms.speech_like(N, seed=seed)
        est, _ = ms.insert_clicks(ms.lowpass_delay(ref), CLICKS_PER_SIGNAL, seed=2000 + seed)
        refs.append(ref)
        ests.append(est)
    r = torch.tensor(np.stack(refs), dtype=torch.float32)
    e = torch.tensor(np.stack(ests), dtype=torch.float32)
    lengths = torch.tensor([N, N - 5000, N - 12345])
    cpu = added_clicks(r, e, lengths, SR)
    gpu = added_clicks(r.cuda(), e.cuda(), lengths.cuda(), SR)
    for c, g in zip(cpu, gpu):
        assert g.device.type == "cuda"
        assert len(set(c.tolist()) ^ set(g.cpu().tolist())) <= 1


@pytest.mark.parametrize("prefix_sums", [False, True])
def test_any_within_matches_a_numpy_window_scan(prefix_sums: bool) -> None:
    """Both ways of the event merge's window test (max-pool on the CPU, prefix sums on CUDA) equal a
    plain NumPy scan of ``flags[max(i - before, 0) : i + after + 1]``, edges and empty rows included."""
    from vaefix_pl.metrics.clicks import _any_within

    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 300):
        for p in (0.0, 0.02, 0.3, 1.0):
            flags = rng.random((3, n)) < p
            for before, after in ((0, 0), (4, 0), (0, 4), (96, 0), (0, 96), (2, 500)):
                want = np.array(
                    [[row[max(i - before, 0) : i + after + 1].any() for i in range(n)] for row in flags]
                )
                (got,) = _any_within(torch.from_numpy(flags), [(before, after)], prefix_sums=prefix_sums)
                np.testing.assert_array_equal(got.numpy(), want, err_msg=f"n={n} p={p} {before=} {after=}")
