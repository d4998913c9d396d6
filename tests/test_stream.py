"""A long item reconstructed segment by segment (``core.stream.ItemStream``) equals the whole-item path.

The reference is :meth:`Reconstructor.forward` on the same item (the path every other test checks
against librosa/NumPy): the streamed spans, joined, must be its ``waveform`` and ``reference``, and the
health figures its ``health`` (float64 statistics merged per segment instead of summed whole).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vaefix_pl.core.reconstruct import Reconstructor
from vaefix_pl.core.stream import ItemStream, streams_item


def _signal(n: int, sr: int = 16000, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (
        1 + 0.5 * np.sin(2 * np.pi * 0.7 * t)
    ) + 0.05 * rng.standard_normal(n)
    return torch.tensor(x + 0.01, dtype=torch.float32)  # a DC offset, removed by the level step


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    rec = Reconstructor.from_pretrained(str(tiny_model_dir))
    return rec.vae, rec.vocoder, rec.scaling_factor


@pytest.mark.parametrize(
    ("seconds", "segment", "max_windows", "crossfade"),
    [
        (9.37, 3, None, "equal_gain"),
        (7.01, 2, 3, "equal_power"),
        (6.4, 1, 2, "equal_gain"),
        (5.0, 50, None, "equal_gain"),
    ],
)
def test_streamed_item_equals_the_whole_item_forward(models, seconds, segment, max_windows, crossfade):
    vae, vocoder, sf_ = models
    rec = Reconstructor(
        vae, vocoder, sf_, window_seconds=1.28, window_overlap_seconds=0.32, max_windows=max_windows,
        crossfade=crossfade,
    )  # fmt: skip
    x = _signal(int(seconds * 16000))
    whole = rec(x[None])
    stream = ItemStream(rec, x, segment_windows=segment)
    spans = list(stream)
    assert len(spans) == math.ceil(len(rec._plan(torch.tensor([x.shape[0]]))) / segment)
    recon = torch.cat([s["recon"] for s in spans])
    ref = torch.cat([s["original"] for s in spans])
    assert recon.shape == ref.shape == x.shape
    torch.testing.assert_close(ref, whole.reference[0], rtol=0, atol=0)  # element-wise steps: exact
    torch.testing.assert_close(recon, whole.waveform[0], rtol=1e-5, atol=1e-6)
    assert stream.gain == whole.gain[0].item()
    # one window per model call (max_windows None, batch of 1): the same model calls as forward, so the
    # statistics differ only by their summation order; several per call: by the sub-batch numerics too
    tol = 1e-9 if max_windows is None else 1e-5
    for k, v in whole.health.items():
        got, want = stream.health[k], v[0].item()
        if isinstance(want, float) and math.isnan(want):
            assert math.isnan(got), k
        else:
            assert got == pytest.approx(want, rel=tol, abs=tol), k


def test_only_long_windowed_items_stream(models):
    vae, vocoder, sf_ = models
    rec = Reconstructor(vae, vocoder, sf_, window_seconds=10.24)
    assert not streams_item(rec, 16000 * 60)  # 7 windows
    assert streams_item(rec, 16000 * 600)
    assert not streams_item(Reconstructor(vae, vocoder, sf_), 16000 * 600)  # no windows: whole


def _run_cli(wav, model, out, *extra):
    from vaefix_pl.cli.commands import main

    rc = main(["reconstruct", str(wav), "--model", str(model), "--out", str(out), "--accelerator", "cpu",
               "--num-workers", "0", *extra])  # fmt: skip
    assert rc == 0


def test_a_streamed_run_writes_the_files_and_rows_of_the_whole_item_run(
    tmp_path, tiny_model_dir, monkeypatch
):
    """The same few-minute file through the CLI twice: streamed (the default for it) and whole (streaming
    off): the same WAVs (within the models' sub-batch numerics), the same columns and the same scores."""
    import csv

    import soundfile as sf

    import vaefix_pl.core.stream as stream_mod

    n = int(41.3 * 16000)  # 2.56 s windows 1.56 s apart: 26 windows, four segments of 8
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "long.wav", _signal(n).numpy(), 16000, subtype="FLOAT")
    sf.write(tmp_path / "in" / "short.wav", _signal(16000 * 3, seed=1).numpy(), 16000, subtype="FLOAT")
    flags = ("--window-seconds", "2.56", "--batch-size", "2")
    calls = []
    real = stream_mod.ItemStream.__iter__
    monkeypatch.setattr(stream_mod.ItemStream, "__iter__", lambda self: calls.append(self.n) or real(self))
    _run_cli(tmp_path / "in", tiny_model_dir, tmp_path / "streamed", *flags)
    assert calls == [n]
    monkeypatch.setattr(stream_mod, "SEGMENT_WINDOWS", 10**6)  # nothing streams
    _run_cli(tmp_path / "in", tiny_model_dir, tmp_path / "whole", *flags)
    assert calls == [n]
    rows = {}
    for name in ("streamed", "whole"):
        with open(tmp_path / name / "metrics.csv", newline="") as fh:
            rows[name] = {r["id"]: r for r in csv.DictReader(fh)}
    assert sorted(rows["whole"]) == ["long", "short"]
    assert list(rows["streamed"]["long"]) == list(rows["whole"]["long"])  # same columns, same order
    # its batch-mate ran in a batch of one instead of two: the same up to the sub-batch numerics
    for item in ("long", "short"):
        for k, want in rows["whole"][item].items():
            got = rows["streamed"][item][k]
            try:
                w, g = float(want), float(got)
            except ValueError:
                assert got == want, k
                continue
            assert g == pytest.approx(w, rel=1e-4, abs=1e-6) or (math.isnan(g) and math.isnan(w)), k
    for tag in ("original", "recon"):
        a, sr_a = sf.read(tmp_path / "streamed" / f"long.{tag}.wav", dtype="float32")
        assert sf.info(tmp_path / "streamed" / f"long.{tag}.wav").subtype == "FLOAT"
        b, sr_b = sf.read(tmp_path / "whole" / f"long.{tag}.wav", dtype="float32")
        assert sr_a == sr_b == 16000 and a.shape == b.shape == (n,)
        np.testing.assert_allclose(a, b, rtol=0, atol=0 if tag == "original" else 1e-5)
    assert not [p for p in (tmp_path / "streamed").rglob("*") if p.name.startswith(".vaefix-tmp")]


def test_a_file_read_as_it_streams_equals_the_item_read_whole(models, tmp_path, monkeypatch):
    """``ItemStream`` over ``StreamedAudio`` (two passes over a 44.1 kHz file, resampled block by block,
    the level in re-cut blocks) gives the spans and gain of ``ItemStream`` over ``load_audio``'s tensor."""
    import soundfile as sf

    import vaefix_pl.core.frontend as frontend
    import vaefix_pl.core.stream as stream_mod
    from vaefix_pl.data import audio as audio_mod
    from vaefix_pl.data.audio import StreamedAudio, load_audio

    for mod in (frontend, stream_mod):
        monkeypatch.setattr(mod, "_LEVEL_BLOCK", 10007)  # several level blocks, cut across read blocks
    monkeypatch.setattr(audio_mod, "READ_BLOCK_FRAMES", 4099)
    vae, vocoder, sf_ = models
    rec = Reconstructor(vae, vocoder, sf_, window_seconds=1.28, window_overlap_seconds=0.32)
    x = _signal(int(6.3 * 44100), sr=44100).numpy()
    sf.write(tmp_path / "a.wav", np.stack([x, 0.5 * x], 1), 44100, subtype="FLOAT")
    whole = load_audio(tmp_path / "a.wav", 16000)
    audio = StreamedAudio(tmp_path / "a.wav", 16000)
    assert audio.expected == whole.shape[0]
    a, b = ItemStream(rec, whole, segment_windows=2), ItemStream(rec, audio, segment_windows=2)
    spans_a, spans_b = list(a), list(b)
    assert a.gain == b.gain and a.health == b.health
    for tag in ("original", "recon"):
        torch.testing.assert_close(
            torch.cat([s[tag] for s in spans_b]), torch.cat([s[tag] for s in spans_a]), rtol=0, atol=0
        )
    ref = rec(whole[None])
    torch.testing.assert_close(torch.cat([s["recon"] for s in spans_b]), ref.waveform[0], rtol=0, atol=0)


def test_a_long_file_with_bad_samples_is_a_decode_row_and_the_run_goes_on(tmp_path, tiny_model_dir):
    import csv

    import soundfile as sf

    (tmp_path / "in").mkdir()
    bad = _signal(int(40 * 16000)).numpy()
    bad[300000] = np.nan  # past the first read block: found by the level pass, before any output
    sf.write(tmp_path / "in" / "bad.wav", bad, 16000, subtype="FLOAT")
    sf.write(tmp_path / "in" / "good.wav", _signal(16000 * 2).numpy(), 16000, subtype="FLOAT")
    _run_cli(tmp_path / "in", tiny_model_dir, tmp_path / "out", "--window-seconds", "2.56")
    with open(tmp_path / "out" / "errors.csv", newline="") as fh:
        (err,) = list(csv.DictReader(fh))
    assert err["id"] == "bad" and err["stage"] == "decode"
    assert "non-finite samples (1 NaN, 0 infinite)" in err["reason"]
    assert (tmp_path / "out" / "good.recon.wav").is_file()
    assert not (tmp_path / "out" / "bad.recon.wav").exists()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".vaefix-tmp")]
