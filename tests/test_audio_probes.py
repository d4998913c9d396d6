"""Audio loading helpers (mono, resample, spans, errors) and the built-in probe set."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from signals import harmonic, noise

from vaefix_pl.core.probes import PROBE_NAMES, probe_signals
from vaefix_pl.data.audio import AudioReadError, load_audio, to_mono, write_wav


def test_stereo_44k1_is_mixed_down_and_resampled(tmp_path):
    left, right = harmonic(44100, f0=220.0, sr=44100), noise(44100, 3)
    path = tmp_path / "st.flac"
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="PCM_24")
    x = load_audio(path)
    assert x.dtype == torch.float32 and x.shape == (16000,)
    stored = torch.from_numpy(sf.read(path, dtype="float32")[0].T.copy())
    ref = torchaudio.functional.resample(stored.mean(0), 44100, 16000)
    assert torch.allclose(x, ref, atol=1e-6)
    first = load_audio(path, channel=0)
    assert torch.allclose(first, torchaudio.functional.resample(stored[0], 44100, 16000), atol=1e-6)


def test_offset_and_seconds_select_a_span(tmp_path):
    x = noise(48000, 1).astype(np.float32)
    path = tmp_path / "m.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    y = load_audio(path, offset=0.5, seconds=1.0)
    assert torch.equal(y, torch.from_numpy(x[8000:24000]))


@pytest.mark.parametrize(
    "content, reason", [(b"", "cannot decode"), (b"not audio at all" * 10, "cannot decode")]
)
def test_unreadable_files_name_the_file_and_reason(tmp_path, content, reason):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    with pytest.raises(AudioReadError, match=reason) as info:
        load_audio(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(AudioReadError, match="no such file"):
        load_audio(tmp_path / "missing.wav")


def test_non_finite_samples_are_rejected_with_their_counts(tmp_path):
    x = harmonic(4000).astype(np.float32)
    x[[10, 20, 30]] = np.nan
    x[40], x[50] = np.inf, -np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioReadError, match=r"non-finite samples \(3 NaN, 2 infinite\): rejected") as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_offset_past_the_end_is_an_error(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, noise(1600), 16000)
    with pytest.raises(AudioReadError, match="no samples"):
        load_audio(path, offset=2.0)


def test_to_mono_rejects_bad_channel():
    with pytest.raises(ValueError, match="out of range"):
        to_mono(torch.zeros(2, 10), 3)


def test_write_wav_round_trip_leaves_no_temp_files(tmp_path):
    x = torch.from_numpy(harmonic(16037)).float()
    p = write_wav(tmp_path / "sub" / "a.wav", x)
    back, sr = sf.read(p, dtype="float32")
    assert sr == 16000 and np.array_equal(back, x.numpy())
    assert [f.name for f in p.parent.iterdir()] == ["a.wav"]


def test_probe_set_is_deterministic_and_sane():
    a, b = probe_signals(), probe_signals()
    assert tuple(a) == PROBE_NAMES and len(a) == 7
    for name in PROBE_NAMES:
        assert np.array_equal(a[name], b[name])
        assert a[name].dtype == np.float32 and a[name].shape == (64000,)
        assert np.isfinite(a[name]).all()
    assert all(np.abs(a[n]).max() == pytest.approx(0.5) for n in PROBE_NAMES if n != "near_silence")
    assert np.abs(a["near_silence"]).max() < 2e-3
    assert not np.array_equal(probe_signals(seed=1)["speech_like"], a["speech_like"])
    # the chirp really spans the band: energy below 100 Hz and above 7.5 kHz
    spec = np.abs(np.fft.rfft(a["chirp"]))
    freqs = np.fft.rfftfreq(len(a["chirp"]), 1 / 16000)
    assert spec[freqs < 100].max() > 0.05 * spec.max() and spec[freqs > 7500].max() > 0.05 * spec.max()
    # the bursts have digital silence between them
    assert (a["noise_bursts"] == 0).mean() > 0.4
