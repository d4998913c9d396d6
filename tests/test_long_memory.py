"""Issue 22, item 3: host memory of a whole ``vaefix reconstruct`` run does not grow with the file.

The fast tests check the pieces that make it so, against independent references: block-wise scoring
of long items equals whole-item scoring (:mod:`vaefix_pl.metrics.streaming`), block-wise resampling
equals one-shot ``torchaudio`` resampling and the analytic signal (:mod:`vaefix_pl.data.resample`),
and block-wise reading equals reading the file whole.

The memory test generates long files here (1 and 10 minutes at 16 kHz); each run is a real subprocess
whose peak RSS is ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` read in a fresh measuring child.
It takes several minutes on 2 CPU cores, so it runs only with ``VAEFIX_MEMORY_TEST=1``;
``benchmarks/long_memory.py`` gives the figures for 1, 10 and 60 minutes and 48 kHz
(docs/ROBUSTNESS.md).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

import vaefix_pl.metrics.streaming as streaming
from vaefix_pl.data import audio as audio_mod
from vaefix_pl.data.audio import AudioReadError, load_audio
from vaefix_pl.data.resample import StreamResampler
from vaefix_pl.metrics.registry import DEFAULT_METRICS, compute_metrics

ROOT = Path(__file__).resolve().parents[1]
#: 10 minutes at 16 kHz is 38 MB of float32: a run whose working set is bounded by the window stays
#: within its 1-minute peak (torch + Lightning + models + a window's buffers) plus a few waveforms.
ABSOLUTE_BOUND = 4 * 2**30
ALL_FAST = [*DEFAULT_METRICS, "xcorr_peak", "mrstft_sc", "mrstft_logmag"]


def _pair(n: int, sr: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A tone plus noise and a delayed, noisier copy with 12 clicks (float32, ``(n,)``)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (
        1 + 0.5 * np.sin(2 * np.pi * 0.7 * t)
    ) + 0.05 * rng.standard_normal(n)
    y = 0.9 * np.roll(x, 3) + 0.01 * rng.standard_normal(n)
    y[rng.integers(sr // 10, n - sr // 10, 12)] += 0.8
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


@pytest.mark.parametrize("sr", [16000, 48000])
def test_long_items_scored_block_wise_equal_whole_item_scores(monkeypatch, sr):
    # small blocks so that a few seconds span many blocks and click windows (and their seams)
    long_n, short_n = 68_800, 11_200  # 4.3 s / 0.7 s at 16 kHz (1.4 s / 0.23 s at 48 kHz)
    ref_l, est_l = _pair(long_n, sr, 0)
    ref_s, est_s = _pair(short_n, sr, 1)
    ref = torch.zeros(2, long_n)
    est = torch.zeros(2, long_n)
    ref[0], est[0] = ref_l, est_l
    ref[1, :short_n], est[1, :short_n] = ref_s, est_s
    lengths = torch.tensor([long_n, short_n])
    whole = compute_metrics(ref, est, lengths, ALL_FAST, sample_rate=sr)  # both below the threshold
    short_alone = compute_metrics(ref_s[None], est_s[None], None, ALL_FAST, sample_rate=sr)

    calls = []
    real = streaming.stream_item_metrics
    monkeypatch.setattr(
        streaming, "stream_item_metrics", lambda r, e, *a, **k: calls.append(r.shape) or real(r, e, *a, **k)
    )
    monkeypatch.setattr(streaming, "STREAM_ABOVE_SAMPLES", 16000)  # the long item streams, the short one not
    monkeypatch.setattr(streaming, "BLOCK_SAMPLES", 5003)  # odd, so blocks cut frames at every phase
    monkeypatch.setattr(streaming, "CLICK_BLOCK_SAMPLES", 8000)
    got = compute_metrics(ref, est, lengths, ALL_FAST, sample_rate=sr)
    assert calls == [(long_n,)]
    assert whole["clicks_est_per_s"][0] > 0  # the clicks are found, so their counts are compared
    for name in ALL_FAST:
        tol = 1e-12 if name in ("lag", "clicks_added_per_s", "clicks_ref_per_s", "clicks_est_per_s") else 1e-7
        tol = 1e-6 if name == "xcorr_peak" else tol  # a float32 FFT of one row vs of a batch: ~3e-7 apart
        torch.testing.assert_close(got[name][0], whole[name][0], rtol=tol, atol=tol, msg=name)
        torch.testing.assert_close(got[name][1], short_alone[name][0], rtol=0, atol=0, msg=name)  # unchanged
    # and against NumPy directly: the block sums of the waveform scores
    r, e = ref_l.double().numpy(), est_l.double().numpy()
    assert math.isclose(
        got["snr"][0].item(), 10 * np.log10((r**2).sum() / ((r - e) ** 2).sum()), rel_tol=1e-12
    )
    assert math.isclose(got["pearson"][0].item(), np.corrcoef(r, e)[0, 1], rel_tol=1e-12)
    assert got["lag"][0].item() == 3


def test_long_item_lag_reads_only_the_excerpt(monkeypatch):
    from vaefix_pl.metrics import functional as F
    from vaefix_pl.metrics import registry as reg

    ref, est = _pair(3 * 16000, 16000)
    seen = []
    real = F.estimate_lag
    monkeypatch.setattr(F, "estimate_lag", lambda r, e, *a, **k: seen.append(r.shape) or real(r, e, *a, **k))
    monkeypatch.setattr(streaming, "STREAM_ABOVE_SAMPLES", 16000)
    monkeypatch.setattr(reg, "LAG_EXCERPT_SECONDS", 1.0)
    out = compute_metrics(ref[None], est[None], None, ["lag", "snr_aligned"])
    assert seen == [(1, 16000)] and out["lag"].item() == 3


@pytest.mark.parametrize(
    ("sr", "target"), [(44100, 16000), (48000, 16000), (8000, 16000), (22050, 48000), (16000, 48000)]
)
def test_stream_resampler_equals_one_shot_torchaudio(sr, target):
    x = torch.from_numpy(np.random.default_rng(sr).standard_normal(sr * 2 + 17).astype(np.float32))
    one = torchaudio.functional.resample(x, sr, target)
    rs = StreamResampler(sr, target)
    cuts = np.sort(np.random.default_rng(1).choice(np.arange(1, x.shape[0]), 9, replace=False))
    parts = [rs.push(b) for b in np.split(x, cuts)] + [rs.flush()]
    y = torch.cat(parts)
    assert y.shape[0] == math.ceil(target * x.shape[0] / sr) == one.shape[0]
    torch.testing.assert_close(y, one, rtol=0, atol=2e-6)


def test_stream_resampler_reproduces_a_band_limited_tone():
    """Independent of torchaudio: a 1 kHz tone at 44.1 kHz resampled to 16 kHz is the 1 kHz tone at 16 kHz."""
    sr, target, n = 44100, 16000, 44100 * 3
    x = torch.from_numpy(np.sin(2 * np.pi * 1000 * np.arange(n) / sr).astype(np.float32))
    rs = StreamResampler(sr, target)
    y = torch.cat([rs.push(b) for b in x.split(10007)] + [rs.flush()]).double().numpy()
    want = np.sin(2 * np.pi * 1000 * np.arange(y.shape[0]) / target)
    inner = slice(200, -200)  # away from the zero-padded ends
    assert np.abs(y[inner] - want[inner]).max() < 2e-3


def test_load_audio_reads_in_blocks_equal_to_reading_whole(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    data = (0.3 * rng.standard_normal((44100 * 2 + 123, 3))).astype(np.float32)
    path = tmp_path / "three.wav"
    sf.write(path, data, 44100, subtype="FLOAT")
    monkeypatch.setattr(audio_mod, "READ_BLOCK_FRAMES", 1000)
    mixed = torch.from_numpy(data.mean(1))
    for kwargs, span in (({}, slice(None)), ({"offset": 0.5, "seconds": 1.0}, slice(22050, 66150))):
        got = load_audio(path, 16000, **kwargs)
        want = torchaudio.functional.resample(mixed[span], 44100, 16000)
        assert got.dtype == torch.float32 and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
    torch.testing.assert_close(
        load_audio(path, 16000, channel=2),
        torchaudio.functional.resample(torch.from_numpy(data[:, 2].copy()), 44100, 16000),
        rtol=0,
        atol=2e-6,
    )
    same = tmp_path / "same.wav"
    sf.write(same, data[:, 0], 16000, subtype="FLOAT")
    assert torch.equal(load_audio(same, 16000), torch.from_numpy(data[:, 0].copy()))  # no resampling: exact
    with pytest.raises(AudioReadError, match="channel 5 out of range"):
        load_audio(path, 16000, channel=5)


def test_non_finite_samples_are_counted_over_every_block(tmp_path, monkeypatch):
    data = np.zeros(5000, np.float32)
    data[[10, 4000]] = np.nan
    data[2500] = np.inf
    sf.write(tmp_path / "bad.wav", data, 16000, subtype="FLOAT")
    monkeypatch.setattr(audio_mod, "READ_BLOCK_FRAMES", 1000)
    with pytest.raises(AudioReadError, match=r"non-finite samples \(2 NaN, 1 infinite\)"):
        load_audio(tmp_path / "bad.wav")


def test_a_rate_needing_a_huge_resampling_filter_is_an_error_naming_the_limit(tmp_path):
    from vaefix_pl.data.inputs import AudioDataset, collate_audio, discover_inputs

    sf.write(tmp_path / "odd.wav", np.zeros(441, np.float32), 44101, subtype="FLOAT")  # 16000 x 44135 taps
    sf.write(tmp_path / "good.wav", np.zeros(1600, np.float32), 16000, subtype="FLOAT")
    ds = AudioDataset(sorted(discover_inputs(tmp_path), key=lambda e: e.id))
    batch = collate_audio([ds[i] for i in range(len(ds))])
    assert batch["ids"] == ["good"]
    (err,) = batch["errors"]
    assert err["id"] == "odd" and "44101 Hz to 16000 Hz needs a 2.6 GB filter" in err["reason"]
    assert "limit is 64 MiB" in err["reason"]


def _peak_rss(cmd: list[str]) -> int:
    code = (
        "import json, resource, subprocess, sys\n"
        "rc = subprocess.run(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode\n"
        "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, rc]))\n"
    )
    # two malloc arenas: the per-thread arenas' high-water marks vary by tens of MiB run to run
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "MALLOC_ARENA_MAX": "2"}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cmd)], env=env, capture_output=True, text=True
    )
    peak, rc = json.loads(out.stdout.strip().splitlines()[-1])
    assert rc == 0
    return int(peak)


def _write_tone(path: Path, seconds: float, sr: int = 16000) -> None:
    """The benchmark's signal (benchmarks/long_memory.py), written in 60 s blocks."""
    with sf.SoundFile(path, "w", sr, 1, subtype="PCM_16") as fh:
        rng = np.random.default_rng(0)
        n = int(seconds * sr)
        for a in range(0, n, 60 * sr):
            t = np.arange(a, min(n, a + 60 * sr)) / sr
            x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
            fh.write((x + 0.05 * rng.standard_normal(t.shape[0])).astype(np.float32))


#: Growth allowed from the short to the 4x longer file (8 more minutes): allocator noise. The whole-item
#: path grows by ~20 bytes per sample (the decoded input, its mels, latent and outputs: ~150 MiB for
#: these 8 minutes); streamed, nothing of the item is held whole.
GROWTH_BOUND = 32 * 2**20


def test_peak_rss_does_not_grow_with_the_file(tmp_path, tiny_model_dir):
    """A real ``vaefix reconstruct`` child process on 160 s and 640 s of audio (two fast metrics; both
    stream in segments, so both runs take the same path): the 4x longer run peaks within
    :data:`GROWTH_BOUND` of the shorter one."""
    config = tmp_path / "fast.yaml"
    config.write_text("model:\n  metrics: [snr, lsd]\n")
    peaks = {}
    for seconds in (160, 640):
        wav = tmp_path / f"long{seconds}.wav"
        _write_tone(wav, seconds)
        out = tmp_path / f"out{seconds}"
        peaks[seconds] = _peak_rss([sys.executable, "-m", "vaefix_pl.cli", "reconstruct", str(wav),
                                    "--model", str(tiny_model_dir), "--out", str(out), "--accelerator", "cpu",
                                    "--num-workers", "0", "--config", str(config)])  # fmt: skip
        assert (out / "metrics.csv").is_file()
        assert sf.info(out / f"long{seconds}.recon.wav").frames == seconds * 16000
    print({m: f"{p / 2**20:.0f} MiB" for m, p in peaks.items()})  # shown with -s
    assert peaks[640] - peaks[160] < GROWTH_BOUND, peaks


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("VAEFIX_MEMORY_TEST") != "1", reason="several minutes: set VAEFIX_MEMORY_TEST=1"
)
def test_peak_rss_is_flat_from_1_to_10_minutes(tmp_path, tiny_model_dir):
    peaks = {}
    for minutes in (1, 10):
        n = minutes * 60 * 16000
        t = np.arange(n) / 16000.0
        x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(n)
        wav = tmp_path / f"long{minutes}.wav"
        sf.write(wav, x.astype(np.float32), 16000, subtype="PCM_16")
        del x, t
        out = tmp_path / f"out{minutes}"
        peaks[minutes] = _peak_rss([sys.executable, "-m", "vaefix_pl.cli", "reconstruct", str(wav),
                                    "--model", str(tiny_model_dir), "--out", str(out), "--accelerator", "cpu",
                                    "--num-workers", "0"])  # fmt: skip
        assert (out / "metrics.csv").is_file()
    print({m: f"{p / 2**20:.0f} MiB" for m, p in peaks.items()})  # shown with -s
    assert peaks[10] < 1.5 * peaks[1], peaks
    assert peaks[10] < ABSOLUTE_BOUND, peaks
