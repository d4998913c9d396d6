"""Front-end parity with an independent librosa/SciPy/NumPy float64 reference."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from scipy.signal import get_window
from signals import all_kinds, noise

from vaefix_pl.core.frontend import (
    LogMelFrontend,
    normalize_level,
    num_frames,
    samples_for_frames,
    slaney_mel_basis,
)

LENGTHS = [16000, 16037, 12345, 4800 + 7]


def reference_mel(x: np.ndarray, framing: str) -> np.ndarray:
    """(N,) float64 -> (T, 64) linear mel, built from librosa filters, scipy Hann and np.pad reflect."""
    pad = 512 if framing == "tacotron" else 432
    xp = np.pad(x.astype(np.float64), (pad, pad), mode="reflect")
    window = get_window("hann", 1024, fftbins=True)
    n_frames = 1 + (len(xp) - 1024) // 160
    frames = np.stack([xp[k * 160 : k * 160 + 1024] * window for k in range(n_frames)])
    mag = np.abs(np.fft.rfft(frames, axis=1))  # (T, 513)
    basis = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0, fmax=8000, dtype=np.float64)
    return mag @ basis.T


def test_mel_basis_equals_librosa():
    ours = slaney_mel_basis().numpy()
    ref = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0, fmax=8000)
    assert ours.shape == (64, 513)
    assert np.abs(ours - ref).max() < 1e-6
    ref64 = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0, fmax=8000, dtype=np.float64)
    assert np.abs(ours - ref64).max() < 1e-12


def test_window_is_scipy_periodic_hann():
    fe = LogMelFrontend()
    assert np.abs(fe.window.numpy() - get_window("hann", 1024, fftbins=True)).max() < 1e-15


@pytest.mark.parametrize("framing", ["tacotron", "hifigan"])
@pytest.mark.parametrize("n", LENGTHS)
def test_float64_parity(framing, n):
    fe = LogMelFrontend(framing)
    for seed in (0, 1):
        for name, x in all_kinds(n, seed).items():
            ours = fe(torch.from_numpy(x)[None])
            assert ours.dtype == torch.float64
            assert ours.shape == (1, 1, num_frames(n, framing), 64), name
            ref = np.log(np.maximum(reference_mel(x, framing), 1e-5))
            assert ref.shape[0] == ours.shape[2]
            err = np.abs(ours[0, 0].numpy() - ref).max()
            assert err < 1e-8, (name, framing, n, err)


@pytest.mark.parametrize("framing", ["tacotron", "hifigan"])
@pytest.mark.parametrize("n", LENGTHS)
def test_float32_parity(framing, n):
    fe = LogMelFrontend(framing)
    for name, x in all_kinds(n, seed=3).items():
        x32 = torch.from_numpy(x.astype(np.float32))[None]
        ref = reference_mel(x.astype(np.float32).astype(np.float64), framing)
        lin = fe.mel(x32)[0].double().numpy()
        assert np.abs(lin - ref).max() <= 1e-5 * ref.max(), name
        log = fe(x32)[0, 0].double().numpy()
        where = ref >= 1e-4
        assert np.abs(log - np.log(np.maximum(ref, 1e-5)))[where].max() < 2e-3, name


def test_batch_equals_items_and_device(device):
    fe = LogMelFrontend().to(device)
    xs = torch.from_numpy(np.stack([noise(16037, s) for s in range(3)])).float().to(device)
    batch = fe(xs)
    for i in range(3):
        assert torch.allclose(batch[i], fe(xs[i : i + 1])[0], atol=1e-5)
    ref = np.log(np.maximum(reference_mel(xs[0].double().cpu().numpy(), "tacotron"), 1e-5))
    assert np.abs(batch[0, 0].double().cpu().numpy() - ref)[ref > np.log(1e-4)].max() < 2e-3


@pytest.mark.parametrize("n", [641, 16000, 16037, 163840, 163999])
def test_frame_counts(n):
    x = torch.from_numpy(noise(n))[None].float()
    assert LogMelFrontend("tacotron")(x).shape[2] == n // 160 + 1
    assert LogMelFrontend("hifigan")(x).shape[2] == n // 160
    for framing in ("tacotron", "hifigan"):
        frames = num_frames(n, framing)
        assert num_frames(samples_for_frames(frames, framing), framing) == frames


def test_framings_are_half_a_hop_apart():
    """Same magnitudes, shifted by 80 samples: hifigan frame k == tacotron frame k of x delayed by -80."""
    x = torch.from_numpy(all_kinds(32000, 2)["formants"])[None]
    hifi = LogMelFrontend("hifigan")(x)[0, 0]
    taco_shifted = LogMelFrontend("tacotron")(x[:, 80:])[0, 0]
    # interior frames only: the reflect padding differs at the edges
    k = slice(5, 190)
    assert torch.allclose(hifi[k], taco_shifted[k], atol=1e-9)


def test_too_short_input_is_a_clear_error():
    with pytest.raises(ValueError, match="reflect padding"):
        LogMelFrontend("tacotron")(torch.zeros(1, 300))


def test_autocast_does_not_lower_precision():
    x = torch.from_numpy(noise(16000)).float()[None]
    fe = LogMelFrontend()
    ref = fe(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fe(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)


def test_normalize_level_per_item_over_valid_samples():
    rng = np.random.default_rng(0)
    lengths = [16000, 9000, 12345]
    n = max(lengths)
    x = np.zeros((3, n))
    for i, m in enumerate(lengths):
        x[i, :m] = 0.3 * rng.standard_normal(m) + 0.1 * (i + 1)  # different DC offsets
        x[i, m:] = 5.0  # garbage in the padding must not leak into the statistics
    y, gain = normalize_level(torch.from_numpy(x), torch.tensor(lengths))
    for i, m in enumerate(lengths):
        v = x[i, :m] - x[i, :m].mean()
        ref = v / (np.abs(v).max() + 1e-8) * 0.5
        assert np.abs(y[i, :m].numpy() - ref).max() < 1e-12
        assert np.all(y[i, m:].numpy() == 0)
        assert abs(gain[i].item() - 0.5 / (np.abs(v).max() + 1e-8)) < 1e-12
    assert np.allclose(np.abs(y.numpy()).max(axis=1), 0.5)


def test_normalize_level_across_column_blocks_and_silence():
    """Items longer than the float64 statistics' column block (2**20 samples), a DC-only and an
    all-zero item, against NumPy in float64 (padding stays zero, silence gives a finite zero output)."""
    n = (1 << 20) + 12345
    t = np.arange(n) / 16000
    x = np.zeros((3, n), dtype=np.float32)
    x[0] = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05).astype(np.float32)
    x[0, n // 2] = 0.9  # the extreme sits in the second block
    x[1, : n - 5000] = 0.25  # DC only
    lengths = np.array([n, n - 5000, 777])
    y, gain = normalize_level(torch.from_numpy(x), torch.from_numpy(lengths))
    for i, m in enumerate(lengths):
        v = x[i, :m].astype(np.float64)
        c = v - v.mean()
        g = 0.5 / (np.abs(c).max() + 1e-8)  # AudioLDM2 peak 0.5
        assert float(gain[i]) == pytest.approx(g, rel=1e-12)
        assert np.abs(y[i, :m].numpy() - (c * g).astype(np.float32)).max() <= 1e-7
        assert not y[i, m:].any()
    assert np.isfinite(y.numpy()).all() and not y[1].any() and not y[2].any()


def test_frontend_builds_under_another_default_device():
    """Lightning's configure_model builds the models under the accelerator's default device (CUDA); the
    mel basis must still come out right (a "meta" default device stands in for CUDA on the CPU)."""
    import librosa

    with torch.device("meta"):
        fe = LogMelFrontend()
    assert fe.mel_basis.device.type == "cpu" and fe.window.device.type == "cpu"
    ref = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0.0, fmax=8000.0, dtype=np.float64)
    np.testing.assert_allclose(fe.mel_basis.numpy(), ref, rtol=1e-9, atol=1e-12)
