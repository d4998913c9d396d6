"""Overlapping windows for long items: plan, crossfades, overlap-add, exact window mels, boundary clicks."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from metric_signals import music_like, speech_like
from scipy.stats import binomtest
from signals import chirp, formant_pulses, harmonic, noise
from torch import nn

from vaefix_pl.core.frontend import HOP, LogMelFrontend, normalize_level
from vaefix_pl.core.reconstruct import Reconstructor
from vaefix_pl.core.windowing import (
    MEL_CONTEXT,
    boundary_samples,
    crossfade_weights,
    fade_curves,
    gather_window_samples,
    num_windows,
    overlap_add,
    plan_windows,
    planned_frames,
    window_geometry,
)
from vaefix_pl.metrics.clicks import added_clicks, detect_clicks

W, OV = 1024, 100
H = W - OV


# ------------------------------------------------------------------------------------------ plan
def test_geometry_rounds_to_whole_latent_frames_and_rejects_bad_overlaps():
    assert window_geometry(10.24, 1.0) == (1024, 100)
    assert window_geometry(10.24, 0.5) == (1024, 52)  # 50 frames -> next multiple of 4
    assert window_geometry(5.0, 0.01) == (500, 4)
    with pytest.raises(ValueError, match="at most half"):
        window_geometry(10.24, 6.0)
    with pytest.raises(ValueError, match="window_overlap_seconds must be > 0"):
        window_geometry(10.24, 0.0)
    with pytest.raises(ValueError, match="window_seconds must be > 0"):
        window_geometry(0.0, 0.5)


def test_window_counts_and_spans_by_hand():
    frames = torch.tensor([1, 1024, 1025, 1948, 1949, 60000])
    # K = 1 + ceil((F - 1024) / 924) beyond one window; span = (K - 1) * 924 + 1024
    assert num_windows(frames, W, H).tolist() == [1, 1, 2, 2, 3, 65]
    assert planned_frames(frames, W, H).tolist() == [1024, 1024, 1948, 1948, 2872, 64 * 924 + 1024]
    plan = plan_windows(frames, W, H, items=torch.tensor([2, 4]))
    assert plan.item.tolist() == [2, 2, 4, 4, 4]
    assert plan.start.tolist() == [0, 924, 0, 924, 1848]
    assert plan.index.tolist() == [0, 1, 0, 1, 2] and plan.count.tolist() == [2, 2, 3, 3, 3]
    item, pos = boundary_samples(plan, OV)
    assert item.tolist() == [2, 2, 2, 4, 4, 4, 4, 4, 4]
    assert pos[:3].tolist() == [924 * 160, 974 * 160, 1024 * 160]


# ------------------------------------------------------------------------------------- crossfades
@pytest.mark.parametrize("kind", ["equal_gain", "equal_power"])
def test_fade_curves(kind):
    rise, fall = fade_curves(100, kind)
    t = (np.arange(100) + 0.5) / 100
    expect = np.sin(np.pi * t / 2) ** (2 if kind == "equal_gain" else 1)
    np.testing.assert_allclose(rise.numpy(), expect, atol=1e-12)
    total = rise + fall if kind == "equal_gain" else rise.square() + fall.square()
    np.testing.assert_allclose(total.numpy(), 1.0, atol=1e-12)
    assert torch.all(torch.diff(rise) > 0) and torch.all(torch.diff(fall) < 0)


def _cut(x: np.ndarray, window: int, hop: int) -> tuple[torch.Tensor, int]:
    """Windows of ``x`` cut by hand with NumPy (zero past the end), and the window count."""
    k = 1 + max(0, math.ceil((len(x) - window) / hop))
    padded = np.zeros((k - 1) * hop + window)
    padded[: len(x)] = x
    return torch.from_numpy(np.stack([padded[i * hop : i * hop + window] for i in range(k)])), k


@pytest.mark.parametrize("n", [5000, 16000 * 4 + 77])
def test_overlap_add_of_hand_cut_windows_gives_the_signal_back(n):
    """Equal-gain weights sum to 1: cut windows (identity 'model') overlap-add to the input exactly."""
    w, o = 2048, 400  # samples
    x = formant_pulses(n, seed=3) + 0.1 * noise(n, 4)
    windows, k = _cut(x, w, w - o)
    frames = torch.tensor([n])
    plan = plan_windows(frames, w, w - o)
    assert len(plan) == k
    out = torch.zeros(1, n, dtype=torch.float64)
    weights = crossfade_weights(plan, w, o, "equal_gain", dtype=torch.float64)
    overlap_add(out, windows, plan.item, plan.start, weights, dim=-1)
    np.testing.assert_allclose(out[0].numpy(), x, atol=1e-12)
    # equal power: squares of the weights sum to 1 (fed the weights themselves)
    out2 = torch.zeros(1, n, dtype=torch.float64)
    wp = crossfade_weights(plan, w, o, "equal_power", dtype=torch.float64)
    overlap_add(out2, wp, plan.item, plan.start, wp, dim=-1)
    np.testing.assert_allclose(out2[0].numpy(), 1.0, atol=1e-12)


def test_overlap_add_skips_nan_at_zero_weight_and_places_mels_by_item():
    plan = plan_windows(torch.tensor([10, 30]), 8, 6, items=torch.tensor([1]))
    values = torch.arange(len(plan) * 8 * 2, dtype=torch.float32).reshape(len(plan), 1, 8, 2)
    weights = torch.ones(len(plan), 8)
    weights[0, -2:] = 0  # drop the first window's last two frames
    values[0, 0, -2:] = float("nan")
    out = torch.zeros(2, 1, 40, 2)
    overlap_add(out, values, plan.item, plan.start, weights, dim=1)
    assert torch.isfinite(out).all() and torch.all(out[0] == 0)
    assert torch.equal(out[1, 0, :6], values[0, 0, :6])
    assert torch.equal(out[1, 0, 6:8], values[1, 0, :2])


@pytest.mark.parametrize("framing", ["tacotron", "hifigan"])
def test_window_mels_are_exact_slices_of_the_whole_items_mel(framing):
    """Frames start..start+W of the samples around a window == the same frames of the whole item."""
    w = 64  # frames; small windows keep the test fast, the index arithmetic is the same
    lengths = torch.tensor([40000, 16000 * 2 + 37])
    x = torch.zeros(2, int(lengths.max()), dtype=torch.float64)
    x[0, :40000] = torch.from_numpy(chirp(40000))
    x[1, : int(lengths[1])] = torch.from_numpy(harmonic(int(lengths[1]), seed=2))
    frames = (lengths + HOP - 1) // HOP
    plan = plan_windows(frames, w, w - 16)
    total = planned_frames(frames, w, w - 16)
    fe = LogMelFrontend(framing)
    mels = fe(gather_window_samples(x, lengths, plan, w, total))[:, :, MEL_CONTEXT : MEL_CONTEXT + w]
    for m, (i, s) in enumerate(zip(plan.item.tolist(), plan.start.tolist())):
        padded = torch.zeros(int(total[i]) * HOP, dtype=torch.float64)
        padded[: int(lengths[i])] = x[i, : int(lengths[i])]
        whole = fe(padded[None])[0, 0, s : s + w]
        torch.testing.assert_close(mels[m, 0], whole, atol=1e-9, rtol=0)


# --------------------------------------------------------------------- identity-like reconstructor
class _Dist:
    def __init__(self, z: torch.Tensor) -> None:
        self.z, self.mean, self.std = z, z, torch.zeros_like(z)

    def mode(self) -> torch.Tensor:
        return self.z


class IdentityVAE(nn.Module):
    """A lossless 'VAE': pixel-unshuffle by 4 (latent ``(B, 16, T/4, 16)``) and its exact inverse."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(latent_channels=16, scaling_factor=0.5)

    def encode(self, mel):
        return SimpleNamespace(latent_dist=_Dist(torch.nn.functional.pixel_unshuffle(mel, 4)))

    def decode(self, z):
        return SimpleNamespace(sample=torch.nn.functional.pixel_shuffle(z, 4))


class FramewiseVocoder(nn.Module):
    """Sample ``160 t + j`` = ``(mel[t] . v) * shape[j]``: each output frame from its own mel frame only."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("v", torch.randn(64, generator=g, dtype=torch.float64) / 64)
        self.register_buffer("shape", torch.sin(torch.linspace(0, 2 * math.pi, 160, dtype=torch.float64)))

    def forward(self, mel):
        return ((mel.double() @ self.v)[:, :, None] * self.shape).flatten(1).float()


def _batch(signals):
    lengths = torch.tensor([len(s) for s in signals])
    x = torch.zeros(len(signals), int(lengths.max()))
    for i, s in enumerate(signals):
        x[i, : len(s)] = torch.from_numpy(s).float()
    return x, lengths


def test_windowed_pass_of_a_local_model_equals_the_whole_pass_across_boundaries():
    """Identity VAE + frame-local vocoder: windows (3 per sub-batch, spanning items) reproduce the
    un-windowed result and an independent reference to ~1e-6, boundaries included."""
    sigs = [speech_like(500000, seed=1), formant_pulses(163841, seed=2), harmonic(40000), music_like(330000)]
    x, lengths = _batch(sigs)
    whole = Reconstructor(IdentityVAE(), FramewiseVocoder(), pad_frames_to=4)
    win = Reconstructor(
        IdentityVAE(), FramewiseVocoder(), pad_frames_to=4, window_seconds=10.24, max_windows=3
    )
    assert win.windowed(lengths).tolist() == [True, True, False, True]
    a, b = whole(x, lengths), win(x, lengths)
    voc = FramewiseVocoder()
    normed, gain = normalize_level(x.double(), lengths)
    for i, n in enumerate(lengths.tolist()):
        f = int(a.frames[i])
        scale = a.waveform[i].abs().max()
        assert (a.waveform[i] - b.waveform[i]).abs().max() < 1e-6 * scale
        torch.testing.assert_close(b.mel[i, :, :f], a.mel[i, :, :f], atol=2e-6, rtol=0)
        torch.testing.assert_close(b.mel_hat[i, :, :f], a.mel_hat[i, :, :f], atol=2e-6, rtol=0)
        torch.testing.assert_close(b.latent[i, :, : f // 4], a.latent[i, :, : f // 4], atol=2e-6, rtol=0)
        # independent reference: the frame-local vocoder on the whole item's float64 log-mel
        padded = torch.zeros(1, int(b.canonical_frames[i]) * HOP, dtype=torch.float64)
        padded[0, :n] = normed[i, :n]
        ref = voc(LogMelFrontend("tacotron")(padded)[:, 0, : int(b.canonical_frames[i])])[0, :n] / gain[i]
        assert (b.waveform[i, :n].double() - ref).abs().max() < 5e-5 * scale  # float32 log-mel vs float64
        assert torch.all(b.waveform[i, n:] == 0)
    # the boundaries themselves: +/- 50 ms around every fade start, middle and end
    item, pos = boundary_samples(win._plan(lengths), win.overlap_frames)
    assert len(pos) == 3 * (3 + 1 + 2)
    for i, p in zip(item.tolist(), pos.tolist()):
        sl = slice(max(0, p - 800), min(p + 800, int(lengths[i])))
        assert (a.waveform[i, sl] - b.waveform[i, sl]).abs().max() < 1e-5


def test_equal_power_lifts_correlated_windows_and_equal_gain_does_not():
    """Why equal gain is the default: identical window contents gain sin+cos = sqrt(2) mid-overlap."""
    x = torch.from_numpy(harmonic(400000)).float()[None]
    eg = Reconstructor(IdentityVAE(), FramewiseVocoder(), window_seconds=10.24, crossfade="equal_gain")(x)
    ep = Reconstructor(IdentityVAE(), FramewiseVocoder(), window_seconds=10.24, crossfade="equal_power")(x)
    mid = (924 + 50) * 160  # middle of the first overlap
    sl = slice(mid - 400, mid + 400)
    ratio = ep.waveform[0, sl].norm() / eg.waveform[0, sl].norm()
    assert ratio.item() == pytest.approx(math.sqrt(2), rel=1e-3)
    outside = slice(5 * 16000, 6 * 16000)
    assert torch.equal(ep.waveform[0, outside], eg.waveform[0, outside])


# ------------------------------------------------------------------------------- boundary clicks
def _near_boundaries(rec: Reconstructor, n: int, half: int = 800) -> np.ndarray:
    _, pos = boundary_samples(rec._plan(torch.tensor([n])), rec.overlap_frames)
    near = np.zeros(n, bool)
    for p in pos.tolist():
        near[max(0, p - half) : p + half] = True
    return near


def _excess_p(onsets: torch.Tensor, near: np.ndarray) -> float:
    """One-sided binomial p-value that clicks fall near boundaries more often than their share of time."""
    idx = onsets.cpu().numpy()
    k = int(near[idx].sum())
    return binomtest(k, max(len(idx), 1), near.mean(), alternative="greater").pvalue if len(idx) else 1.0


@pytest.fixture(scope="module")
def long_speech() -> torch.Tensor:
    return torch.from_numpy(speech_like(16000 * 75, seed=1)).float()[None]


@pytest.mark.parametrize("vocoder", ["hifigan", "griffinlim"])
def test_no_excess_clicks_near_window_boundaries(tiny_model_dir, long_speech, vocoder):
    """Clicks within +/-50 ms of the fades (start, middle, end) are no more frequent than elsewhere,
    and the same measurement does flag clicks put at the boundaries on purpose."""
    from vaefix_pl.vocoders.griffinlim import GriffinLimVocoder

    base = Reconstructor.from_pretrained(str(tiny_model_dir))
    voc = base.vocoder if vocoder == "hifigan" else GriffinLimVocoder("tacotron", n_iter=16)
    rec = Reconstructor(base.vae, voc, base.scaling_factor, window_seconds=10.24, max_windows=4)
    out = rec(long_speech)
    n = long_speech.shape[1]
    near = _near_boundaries(rec, n)
    assert 0.02 < near.mean() < 0.05  # 7 overlaps x 3 landmarks x 0.1 s of 75 s
    added = added_clicks(out.reference, out.waveform)[0]
    found = detect_clicks(out.waveform)[0]
    assert _excess_p(added, near) > 0.01 and _excess_p(found, near) > 0.01
    # sensitivity: 2 ms bursts at the output's peak level, one at each landmark, are flagged as an
    # excess (the tiny random models' output is loud broadband noise that masks weaker ones)
    _, pos = boundary_samples(rec._plan(torch.tensor([n])), rec.overlap_frames)
    spiked = out.waveform.clone()
    burst = torch.from_numpy(noise(32, 9, peak=float(out.waveform.abs().max()))).float()
    for p in pos.tolist():
        spiked[0, p : p + 32] += burst
    assert _excess_p(added_clicks(out.reference, spiked)[0], near) < 1e-3
