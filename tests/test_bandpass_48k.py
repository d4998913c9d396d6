"""The seed's repair band-pass (elliptic, order 5, 1 dB ripple, 60 dB stop, 60-7000 Hz), designed at a
48 kHz model's rate: stable, same passband, a wider upper transition than at 16 kHz (checked with SciPy)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal as ss
import torch

from vaefix_pl.repair.dsp import bandpass, design_bandpass


def _db(sos: np.ndarray, freqs: np.ndarray, sr: int) -> np.ndarray:
    _, h = ss.sosfreqz(sos, worN=freqs, fs=sr)
    return 20 * np.log10(np.abs(h) + 1e-30)


@pytest.mark.parametrize("sr", [16000, 48000])
def test_design_is_stable_with_the_seed_passband(sr):
    sos = design_bandpass(sr)
    ref = ss.ellip(5, 1.0, 60.0, [60.0, 7000.0], btype="band", output="sos", fs=sr)  # independent design
    np.testing.assert_allclose(sos, ref, rtol=1e-10, atol=1e-12)
    _, poles, _ = ss.sos2zpk(sos)
    assert np.abs(poles).max() < 1.0  # stable (0.99944 at 48 kHz: the 60 Hz edge sits near DC)
    passband = _db(sos, np.linspace(60.0, 7000.0, 2000), sr)
    assert passband.max() <= 1e-6 and passband.min() >= -1.0 - 1e-6  # the 1 dB equiripple band
    assert (_db(sos, np.array([5.0, 10.0, 20.0]), sr) <= -60.0 + 0.5).all()  # low stop band


def test_at_48k_the_upper_transition_is_wider_and_stops_by_12k():
    # At 16 kHz, 7 kHz lies near Nyquist, so the bilinear warp makes the upper edge steep (-60 dB by
    # 7.5 kHz); at 48 kHz the same design rolls off over 7-12 kHz and removes 12-24 kHz (>= 60 dB).
    s16, s48 = design_bandpass(16000), design_bandpass(48000)
    assert _db(s16, np.array([7500.0]), 16000)[0] <= -59.5
    mid = _db(s48, np.array([7500.0, 8000.0, 10000.0]), 48000)
    assert (mid > -60.0).all() and mid[0] < -3.0
    assert (_db(s48, np.linspace(12000.0, 23999.0, 500), 48000) <= -59.5).all()


def test_zero_phase_filter_at_48k_equals_scipy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 48000 // 2))
    lengths = torch.tensor([x.shape[1], 9000])
    got = bandpass(torch.from_numpy(x), lengths, sample_rate=48000).numpy()
    sos = design_bandpass(48000)
    np.testing.assert_allclose(got[0], ss.sosfiltfilt(sos, x[0]), atol=1e-9)
    np.testing.assert_allclose(got[1, :9000], ss.sosfiltfilt(sos, x[1, :9000]), atol=1e-9)
    assert not got[1, 9000:].any()
