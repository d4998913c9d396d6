"""Bad and unusual inputs through ``vaefix reconstruct``: every input is reconstructed or is one row of
``errors.csv`` with a reason a person understands; the run goes on; ``--strict`` turns failures into
exit code 1. Also: ids and output paths never leave ``--out``, and only safetensors weights load."""

from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from signals import formant_pulses, harmonic, noise, tone

from vaefix_pl.cli.commands import main as vaefix
from vaefix_pl.core.models import ModelNotFoundError, load_audioldm2
from vaefix_pl.data.audio import unreadable_reason
from vaefix_pl.data.inputs import discover_inputs, safe_id
from vaefix_pl.lightning.writer import ReconstructionWriter
from vaefix_pl.runs.files import UnsafePathError, safe_output_path

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
SIX_TONES = (300.0, 700.0, 1100.0, 1900.0, 3100.0, 5300.0)  # Hz, one per channel of the 6-channel file


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, x: np.ndarray, sr: int, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr, **kw)
    return path


def build_corpus(root: Path) -> tuple[list[str], dict[str, int], dict[str, tuple[str, tuple[str, ...]]]]:
    """Write the corpus; returns (CLI inputs, {good id: samples at 16 kHz}, {bad id: (stage, key words)})."""
    d = root / "in"
    good: dict[str, int] = {}
    bad: dict[str, tuple[str, tuple[str, ...]]] = {}

    def ok(name: str, x: np.ndarray, sr: int, n16: int, **kw) -> None:
        _write(d / name, x, sr, **kw)
        good[Path(name).with_suffix("").as_posix()] = n16

    # sample formats and rates (durations chosen so that N * 16000 / sr is a whole number)
    ok("pcm16_16k.wav", formant_pulses(8000, seed=1), 16000, 8000, subtype="PCM_16")
    ok("u8_8k.wav", tone(4000, 440.0, sr=8000), 8000, 8000, subtype="PCM_U8")
    ok("pcm24_44k1.wav", harmonic(13230, sr=44100), 44100, 4800, subtype="PCM_24")
    ok("float_22k05.wav", noise(11025, 2).astype(np.float32), 22050, 8000, subtype="FLOAT")
    ok("lossless.flac", harmonic(8000, f0=150.0), 16000, 8000)
    ok("vorbis.ogg", harmonic(12000, f0=220.0, sr=24000), 24000, 8000, format="OGG", subtype="VORBIS")
    ok("stereo_48k.wav", np.stack([tone(24000, 500.0, sr=48000), noise(24000, 3)], 1), 48000, 8000)
    six = np.stack([tone(48000, f, peak=0.5, sr=96000) for f in SIX_TONES], 1)
    ok("six_channels_96k.wav", six, 96000, 8000, subtype="PCM_24")
    # edge-case signals
    ok("silence.wav", np.zeros(6400), 16000, 6400, subtype="FLOAT")
    ok("dc_only.wav", np.full(6400, 0.3), 16000, 6400, subtype="FLOAT")
    ok("clipped.wav", np.clip(3 * tone(6400, 200.0), -1.0, 1.0), 16000, 6400, subtype="FLOAT")
    ok("short_50.wav", noise(50, 4), 16000, 50)  # shorter than one 160-sample frame
    ok("short_1.wav", np.array([0.25]), 16000, 1, subtype="FLOAT")
    # names: spaces, non-ASCII, the same name in two folders
    ok("name with spaces é.wav", harmonic(4000, f0=330.0), 16000, 4000)
    ok("日本語/音声 ü.wav", harmonic(4000, f0=262.0), 16000, 4000)
    ok("a/same.wav", tone(3200, 600.0), 16000, 3200)
    ok("b/same.wav", tone(3200, 900.0), 16000, 3200)
    # a truncated WAV (data cut short) decodes the samples that are there: libsndfile reports them
    full = _write(root / "tmp_full.wav", formant_pulses(8000, seed=5), 16000, subtype="PCM_16").read_bytes()
    (d / "truncated_data.wav").write_bytes(full[: 44 + 2 * 5000])
    good["truncated_data"] = 5000
    # a working link to a good file is read through the link
    os.symlink(d / "pcm16_16k.wav", d / "linked.wav")
    good["linked"] = 8000
    if sf.__libsndfile_version__ >= "1.1":  # MP3 needs libsndfile >= 1.1; without it the file is an error row
        ok("lossy.mp3", harmonic(16000, f0=180.0), 16000, 16000, format="MP3")
    else:
        _write(d / "lossy.mp3", np.zeros(10), 16000, format="WAV")  # not MP3 data: fails either way
        bad["lossy"] = ("decode", ("cannot read audio header",))

    # bad inputs
    (d / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunkjunk" + bytes(range(256)) * 4)
    bad["corrupt"] = ("decode", ("cannot read audio header", "corrupt"))
    (d / "empty.wav").write_bytes(b"")
    bad["empty"] = ("decode", ("empty file", "0 bytes"))
    _write(d / "zero_frames.wav", np.zeros(0), 16000)
    bad["zero_frames"] = ("decode", ("no samples", "0 frames"))
    (d / "truncated_header.wav").write_bytes(full[:30])
    bad["truncated_header"] = ("decode", ("cannot read audio header", "truncated"))
    flac = _write(root / "tmp_full.flac", harmonic(16000), 16000).read_bytes()
    (d / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    bad["truncated"] = ("decode", ("cannot decode audio", "truncated"))
    x = tone(4000, 440.0).astype(np.float32)
    x[[100, 2000]] = np.nan
    x[3000] = np.inf
    _write(d / "nan_inf.wav", x, 16000, subtype="FLOAT")
    bad["nan_inf"] = ("decode", ("non-finite", "2 NaN", "1 infinite"))
    os.symlink("self_loop.wav", d / "self_loop.wav")
    bad["self_loop"] = ("discover", ("symbolic link loop",))
    os.symlink(d / "gone_target.wav", d / "broken_link.wav")
    bad["broken_link"] = ("discover", ("broken symbolic link",))
    (d / "loops").mkdir()
    os.symlink("..", d / "loops" / "up")  # a folder scan must not follow this forever
    (d / "notes.txt").write_text("not audio, not scanned")
    if not IS_ROOT:  # root reads files whatever their mode
        locked = _write(d / "locked.wav", tone(1600), 16000)
        locked.chmod(0)
        bad["locked"] = ("discover", ("permission denied",))
    # a manifest outside the folder: one real file elsewhere, one line pointing nowhere
    _write(root / "extra" / "kept.wav", tone(4800, 250.0), 16000)
    (root / "lists").mkdir()
    (root / "lists" / "m.txt").write_text("../extra/kept.wav\n../extra/nowhere.wav\n")
    good["extra/kept"] = 4800
    bad["extra/nowhere"] = ("discover", ("no such file",))
    # ids are relative to the inputs' common folder (root): the folder's files get an "in/" prefix
    good = {("in/" + k if not k.startswith("extra/") else k): v for k, v in good.items()}
    bad = {("in/" + k if not k.startswith("extra/") else k): v for k, v in bad.items()}
    return [str(d), str(root / "lists" / "m.txt")], good, bad


def _peak_magnitudes(x: np.ndarray, freqs: tuple[float, ...], sr: int = 16000) -> np.ndarray:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    bins = np.fft.rfftfreq(len(x), 1 / sr)
    return np.array([spec[np.abs(bins - f) < 20].max() for f in freqs])


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("corpus")
    inputs, good, bad = build_corpus(root)
    out = root / "out"
    argv = ["reconstruct", *inputs, "--model", str(tiny_model_dir), "--out", str(out),
            "--accelerator", "cpu", "--num-workers", "0", "--batch-size", "4"]  # fmt: skip
    rc = vaefix(argv)
    return SimpleNamespace(root=root, out=out, good=good, bad=bad, rc=rc, argv=argv)


def test_corpus_every_good_input_is_reconstructed_at_its_length(corpus_run):
    r = corpus_run
    assert r.rc == 0
    rows = {row["id"]: row for row in _read_csv(r.out / "metrics.csv")}
    assert sorted(rows) == sorted(list(r.good) + list(r.bad))  # every input exactly once
    for item_id, n in r.good.items():
        assert rows[item_id]["error"] == "", (item_id, rows[item_id]["error"])
        for tag in ("original", "recon"):
            x, sr = sf.read(r.out / f"{item_id}.{tag}.wav", dtype="float64")
            assert sr == 16000 and x.shape == (n,), (item_id, tag, x.shape, n)
            assert np.isfinite(x).all(), (item_id, tag)
    # the exact names survive: spaces, non-ASCII, same file name in two folders
    assert (r.out / "in" / "name with spaces é.recon.wav").is_file()
    assert (r.out / "in" / "日本語" / "音声 ü.recon.wav").is_file()
    a = sf.read(r.out / "in" / "a" / "same.original.wav")[0]
    b = sf.read(r.out / "in" / "b" / "same.original.wav")[0]
    assert (
        _peak_magnitudes(a, (600.0, 900.0)).argmax() == 0
        and _peak_magnitudes(b, (600.0, 900.0)).argmax() == 1
    )


def test_corpus_edge_signals_are_handled_not_blown_up(corpus_run):
    out = corpus_run.out / "in"
    # all-zero and DC-only: the level step divides by max|x - mean| + eps, never by zero; output silent
    for name in ("silence", "dc_only"):
        orig = sf.read(out / f"{name}.original.wav")[0]
        recon = sf.read(out / f"{name}.recon.wav")[0]
        assert np.abs(orig).max() < 1e-6 and np.abs(recon).max() < 1e-6, name
    # clipped at +/-1: kept at its level (peak 1, minus the tiny mean), reconstruction finite
    orig = sf.read(out / "clipped.original.wav")[0]
    assert abs(np.abs(orig).max() - 1.0) < 0.01
    # 6 channels at 96 kHz: the mean mix-down holds every channel's tone at 1/6 of its level
    mags = _peak_magnitudes(sf.read(out / "six_channels_96k.original.wav")[0], SIX_TONES)
    assert mags.max() / mags.min() < 1.1
    hann_gain = np.hanning(8000).sum() / 2  # |rfft| peak of a unit sine under a Hann window
    np.testing.assert_allclose(mags / hann_gain, 0.5 / 6, rtol=0.05)
    # 8-bit at 8 kHz, resampled to 16 kHz: the 440 Hz tone within the 8-bit quantisation error
    u8 = sf.read(out / "u8_8k.original.wav")[0]
    ref = tone(8000, 440.0)
    assert np.corrcoef(u8[200:-200], ref[200:-200])[0, 1] > 0.999
    # shorter than one frame: processed at its own length (the spectral scores are empty: no full frame)
    assert sf.read(out / "short_1.original.wav")[0].shape == (1,)


def test_corpus_every_bad_input_is_one_clear_error_row(corpus_run):
    r = corpus_run
    with open(r.out / "errors.csv", newline="", encoding="utf-8") as fh:
        assert fh.readline().strip() == "id,path,stage,reason"
    errors = _read_csv(r.out / "errors.csv")
    assert sorted(e["id"] for e in errors) == sorted(r.bad)  # one row each, nothing else
    for e in errors:
        stage, words = r.bad[e["id"]]
        assert e["stage"] == stage, e
        assert e["path"], e
        for w in words:
            assert w in e["reason"], (e["id"], w, e["reason"])
        assert Path(e["path"]).name in e["reason"]  # the reason names the file
    summary = json.loads((r.out / "summary.json").read_text())
    assert summary["n_failed"] == len(r.bad) and summary["n_ok"] == len(r.good)
    assert not (r.out / ".parts").exists()


def test_strict_exits_nonzero_when_any_input_failed(corpus_run, capsys):
    r = corpus_run
    # a rerun skips the complete items and retries the failed ones, which fail again
    assert vaefix([*r.argv, "--strict"]) == 1
    assert "strict" in capsys.readouterr().err
    summary = json.loads((r.out / "summary.json").read_text())
    assert summary["resume"]["skipped_complete"] == len(r.good)
    assert sorted(e["id"] for e in _read_csv(r.out / "errors.csv")) == sorted(r.bad)
    assert len(_read_csv(r.out / "metrics.csv")) == len(r.good) + len(r.bad)


def test_strict_exits_zero_when_nothing_failed(tmp_path, tiny_model_dir):
    _write(tmp_path / "in" / "fine.wav", harmonic(3200), 16000)
    argv = ["reconstruct", str(tmp_path / "in"), "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"),
            "--accelerator", "cpu", "--num-workers", "0", "--strict"]  # fmt: skip
    assert vaefix(argv) == 0


def test_predict_yaml_strict_key(tmp_path, tiny_model_dir):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.wav").write_bytes(b"not audio at all")
    _write(tmp_path / "in" / "fine.wav", harmonic(3200), 16000)
    cfg = tmp_path / "strict.yaml"
    cfg.write_text(f"writer:\n  output_dir: {tmp_path / 'out'}\n  strict: true\n")
    rc = vaefix(["predict", "--config", str(cfg), "--data.inputs", str(tmp_path / "in"),
                 "--model.model", str(tiny_model_dir), "--data.num_workers", "0",
                 "--trainer.accelerator", "cpu"])  # fmt: skip
    assert rc == 1
    assert [e["id"] for e in _read_csv(tmp_path / "out" / "errors.csv")] == ["broken"]


# ---------------------------------------------------------------------------------- discovery units
def test_folder_scan_survives_link_loops_and_lists_each_file_once(tmp_path):
    _write(tmp_path / "d" / "x.wav", tone(1600), 16000)
    (tmp_path / "d" / "sub").mkdir()
    os.symlink("..", tmp_path / "d" / "sub" / "up")  # loop back to d
    os.symlink(tmp_path / "d", tmp_path / "d" / "again")  # a second loop, absolute
    os.symlink("a.wav", tmp_path / "d" / "b.wav")
    os.symlink("b.wav", tmp_path / "d" / "a.wav")  # a <-> b
    entries = {e.id: e for e in discover_inputs(str(tmp_path / "d"))}
    assert sorted(entries) == ["a", "b", "x"]
    assert entries["x"].error is None
    for name in ("a", "b"):
        assert "symbolic link loop" in entries[name].error and entries[name].stage == "discover"


def test_unreadable_file_reason(tmp_path, monkeypatch):
    path = _write(tmp_path / "locked.wav", tone(1600), 16000)
    if IS_ROOT:  # chmod cannot stop root: pretend the permission check fails
        monkeypatch.setattr("vaefix_pl.data.audio.os.access", lambda p, mode: False)
    else:
        path.chmod(0)
    assert unreadable_reason(path) == "permission denied (the file is not readable)"
    (entry,) = discover_inputs(str(path))
    assert "permission denied" in entry.error and entry.stage == "discover"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("../../x", "x"),
        ("/etc/passwd", "etc/passwd"),
        ("a/../../b", "a/b"),
        ("..\\..\\win", "win"),
        ("", "item"),
        ("..", "item"),
        (".parts/rank0", "_parts/rank0"),
        ("bad\x00name:1", "bad_name_1"),
        ("名前 with space", "名前 with space"),
    ],
)
def test_safe_id(raw, expected):
    assert safe_id(raw) == expected


def test_long_names_are_shortened_below_the_file_name_limit():
    sid = safe_id("é" * 300)
    assert len(sid.encode("utf-8")) <= 200 and set(sid) == {"é"}


def test_manifest_entries_outside_the_folder_keep_outputs_inside_out(tmp_path):
    outside = _write(tmp_path / "far" / "away" / "x.wav", tone(1600), 16000)
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "m.txt").write_text(f"../../../far/away/x.wav\n{outside}/../../away/x.wav\n/tmp/../nowhere.wav\n")
    entries = discover_inputs(str(deep / "m.txt"))
    out = tmp_path / "out"
    for e in entries:
        assert ".." not in e.id.split("/") and not e.id.startswith("/")
        target = safe_output_path(out, e.id + ".recon.wav")
        assert str(target).startswith(str(out) + os.sep)


@pytest.mark.parametrize("name", ["../evil.wav", "../../evil.wav", "/tmp/evil.wav", "a/../../evil.wav", ""])
def test_safe_output_path_refuses_escapes(tmp_path, name):
    with pytest.raises(UnsafePathError):
        safe_output_path(tmp_path / "out", name)


def test_writer_never_writes_outside_out_even_for_hostile_ids(tmp_path):
    """Ids normally come from the data module (already safe); the writer checks again on its own."""
    out = tmp_path / "deep" / "out"
    writer = ReconstructionWriter(str(out), io_workers=1)
    trainer = SimpleNamespace(
        is_global_zero=True,
        global_rank=0,
        world_size=1,
        datamodule=None,
        strategy=SimpleNamespace(barrier=lambda name=None: None),
    )
    module = SimpleNamespace(perceptual_metrics=[], chain=None, settings=lambda: {})
    writer.setup(trainer, module, "predict")
    writer.on_predict_start(trainer, module)
    wav = torch.from_numpy(tone(1600)).float()[None].repeat(2, 1)
    prediction = {
        "ids": ["../../escaped", "fine"],
        "paths": ["/x/escaped.wav", "/x/fine.wav"],
        "lengths": torch.tensor([1600, 1600]),
        "errors": [],
        "audio": {"original": wav, "recon": wav},
        "metrics": {"recon": {"snr": torch.tensor([1.0, 2.0])}},
        "health": {},
    }
    writer.write_on_batch_end(trainer, module, prediction, None, None, 0)
    writer.on_predict_end(trainer, module)
    assert not any((tmp_path / "deep").glob("escaped*")) and not any(tmp_path.glob("escaped*"))
    assert (out / "fine.recon.wav").is_file()
    (err,) = _read_csv(out / "errors.csv")
    assert err["id"] == "../../escaped" and err["stage"] == "write" and "outside" in err["reason"]
    assert writer.failed


def test_a_failed_write_is_an_error_row_and_the_run_goes_on(tmp_path, monkeypatch):
    import vaefix_pl.pipeline.writer as writer_mod

    real = writer_mod.write_wav

    def flaky(path, waveform, sample_rate=16000):
        if "doomed" in str(path):
            raise OSError(28, "No space left on device")
        return real(path, waveform, sample_rate)

    monkeypatch.setattr(writer_mod, "write_wav", flaky)
    out = tmp_path / "out"
    writer = ReconstructionWriter(str(out), io_workers=2)
    trainer = SimpleNamespace(
        is_global_zero=True, global_rank=0, world_size=1, datamodule=None,
        strategy=SimpleNamespace(barrier=lambda name=None: None),
    )  # fmt: skip
    module = SimpleNamespace(perceptual_metrics=[], chain=None, settings=lambda: {})
    writer.setup(trainer, module, "predict")
    writer.on_predict_start(trainer, module)
    wav = torch.from_numpy(tone(800)).float()[None].repeat(2, 1)
    prediction = {
        "ids": ["doomed", "fine"], "paths": ["/x/doomed.wav", "/x/fine.wav"], "lengths": torch.tensor([800, 800]),
        "errors": [{"id": "gone", "path": "/x/gone.wav", "reason": "/x/gone.wav: no such file", "stage": "discover"}],
        "audio": {"original": wav, "recon": wav}, "metrics": {"recon": {"snr": torch.tensor([1.0, 2.0])}},
        "health": {},
    }  # fmt: skip
    writer.write_on_batch_end(trainer, module, prediction, None, None, 0)
    writer.on_predict_end(trainer, module)
    errors = {e["id"]: e for e in _read_csv(out / "errors.csv")}
    assert sorted(errors) == ["doomed", "gone"]
    assert errors["doomed"]["stage"] == "write" and "no space left on device" in errors["doomed"]["reason"]
    assert errors["gone"]["stage"] == "discover"
    rows = {r["id"]: r for r in _read_csv(out / "metrics.csv")}
    assert rows["fine"]["error"] == "" and float(rows["fine"]["snr"]) == 2.0
    assert rows["doomed"]["snr"] == ""  # the failed item's scores are gone with its row


# ---------------------------------------------------------------------------------- safe loading
class _Boom:
    """Unpickling this runs code: it creates a marker file. A safe loader never unpickles it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _pickle_bomb(path: Path, marker: Path) -> None:
    with open(path, "wb") as fh:
        pickle.dump({"weight": _Boom(str(marker))}, fh)


def test_a_folder_with_only_pickle_weights_is_refused(tmp_path, tiny_model_dir):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    marker = tmp_path / "code_ran"
    (model / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    _pickle_bomb(model / "vae" / "diffusion_pytorch_model.bin", marker)
    with pytest.raises(ModelNotFoundError, match="only safetensors") as info:
        load_audioldm2(str(model))
    assert "diffusion_pytorch_model.bin" in str(info.value)
    assert not marker.exists()


def test_pickle_files_beside_safetensors_are_never_read(tmp_path, tiny_model_dir):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    marker = tmp_path / "code_ran"
    _pickle_bomb(model / "vae" / "diffusion_pytorch_model.bin", marker)
    _pickle_bomb(model / "vocoder" / "pytorch_model.bin", marker)
    models = load_audioldm2(str(model))
    assert not marker.exists()
    assert all(torch.isfinite(p).all() for p in models.vae.parameters())
