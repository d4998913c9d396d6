"""Decoded-mel export (resume, DDP exactly once), DecodedMelDataset alignment, FixedDecoderBaseline, the example."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from lightning.pytorch.loggers.logger import Logger
from safetensors import safe_open
from signals import formant_pulses, harmonic
from torch.utils.data import DataLoader

from vaefix_pl.cli.commands import main as vaefix
from vaefix_pl.core.frontend import HOP, LOG_MEL_FLOOR, LogMelFrontend, normalize_level
from vaefix_pl.core.probes import PROBE_NAMES, probe_signals
from vaefix_pl.export.dataset import DecodedMelDataset, collate_decoded_mels, split_ids
from vaefix_pl.export.layout import (
    MANIFEST,
    ExportSettingsError,
    frame_centre,
    read_manifest,
    segment_samples,
)
from vaefix_pl.export.writer import MelExportWriter, export_mels
from vaefix_pl.finetune.baseline import FixedDecoderBaseline, score_vocoder

ROOT = Path(__file__).resolve().parents[1]
PROBE_SECONDS = 1.28  # 128 frames; with pad_frames_to=128 the VAE sees exactly the clip
EXPORT_KW = dict(accelerator="cpu", num_workers=0, pad_frames_to=128, probe_seconds=PROBE_SECONDS)
EDGE = 4  # frames whose 1024-sample window reaches past a segment edge (512 / 160 rounded up)


@pytest.fixture(scope="module")
def probe_exports(tiny_model_dir, tmp_path_factory):
    """``framing -> export folder`` of the probe set (1.28 s clips), made once per module on first use."""
    made: dict[str, Path] = {}

    def get(framing: str) -> Path:
        if framing not in made:
            out = tmp_path_factory.mktemp(f"export_{framing}")
            summary = export_mels(None, out, model=tiny_model_dir, framing=framing, shard_size=3, **EXPORT_KW)
            assert summary["exported"] == len(PROBE_NAMES) and summary["clips"] == len(PROBE_NAMES)
            made[framing] = out
        return made[framing]

    return get


@pytest.fixture(params=["tacotron", "hifigan"])
def probe_export(request, probe_exports) -> tuple[Path, str]:
    return probe_exports(request.param), request.param


@pytest.fixture
def tacotron_export(probe_exports) -> Path:
    return probe_exports("tacotron")


def _shard_key_counts(export: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for shard in sorted((export / "shards").glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            for k in fh.keys():
                counts[k] = counts.get(k, 0) + 1
    return counts


# ------------------------------------------------------------------------------------------ export
def test_export_holds_the_decoded_mel_true_mel_and_normalised_waveform(probe_export, tiny_model_dir):
    from vaefix_pl.core.reconstruct import Reconstructor

    export, framing = probe_export
    entries = read_manifest(export)
    assert [e["id"] for e in entries] == sorted(PROBE_NAMES)
    probes = probe_signals(seconds=PROBE_SECONDS)
    rec = Reconstructor.from_pretrained(str(tiny_model_dir), framing=framing, pad_frames_to=128)
    n = len(next(iter(probes.values())))
    x = torch.stack([torch.from_numpy(probes[e["id"]]) for e in entries])
    out = rec(x)  # an independent run of the pipeline on the same signals
    normed, gain = normalize_level(x.double())
    ds = DecodedMelDataset(export)
    for i, e in enumerate(entries):
        assert e["samples"] == n and e["frames"] == math.ceil(n / HOP) == 128
        s = e["settings"]
        assert s["framing"] == framing and s["scaling_factor"] == pytest.approx(0.75)
        assert s["model"] == str(Path(tiny_model_dir).resolve()) and s["pad_frames_to"] == 128
        assert e["keys"] == {k: f"{e['id']}/{k}" for k in ("mel_hat", "mel", "waveform")}
        assert e["gain"] == pytest.approx(float(gain[i]), rel=1e-12)
        clip = ds.clip(e["id"])
        assert clip["mel_hat"].shape == clip["mel"].shape == (128, 64) and clip["waveform"].shape == (n,)
        # the waveform the mels came from: the input with DC removed, peak 0.5
        torch.testing.assert_close(clip["waveform"].double(), normed[i], atol=2e-7, rtol=0)
        assert float(clip["waveform"].abs().max()) == pytest.approx(
            0.5, abs=1e-4
        )  # eps 1e-8 of the level step
        # the true mel is the front-end of that waveform (independent float64 front-end; the pipeline's
        # float32 STFT is ~1e-6 of full scale off, which the log magnifies only just above the 1e-5 floor)
        ref_mel = LogMelFrontend(framing).double()(normed[i : i + 1])[0, 0, :128]
        loud = ref_mel > -7.0
        torch.testing.assert_close(clip["mel"].double()[loud], ref_mel[loud], atol=1e-4, rtol=0)
        torch.testing.assert_close(clip["mel"].double(), ref_mel, atol=2e-2, rtol=0)
        torch.testing.assert_close(clip["mel_hat"], out.mel_hat[i, 0, :128], atol=1e-5, rtol=0)
        assert not torch.equal(clip["mel_hat"], clip["mel"])
    # each key in exactly one shard; shard sizes follow shard_size
    counts = _shard_key_counts(export)
    assert sorted(counts) == sorted(f"{i}/{k}" for i in PROBE_NAMES for k in ("mel_hat", "mel", "waveform"))
    assert set(counts.values()) == {1}
    assert sorted(len([e for e in entries if e["shard"] == sh]) for sh in {e["shard"] for e in entries}) == [
        1,
        3,
        3,
    ]
    info = json.loads((export / "export.json").read_text())
    assert info["clips"] == 7 and info["settings"]["framing"] == framing and not (export / ".parts").exists()


# ------------------------------------------------------------------------------------------ alignment
def test_alignment_convention_by_hand():
    assert segment_samples(0, 32) == (0, 5120) and segment_samples(7, 3) == (1120, 1600)
    # tacotron frame k is centred on the first sample of its block, hifigan on its middle
    assert frame_centre(7, "tacotron") == 1120 == segment_samples(7, 1)[0]
    assert frame_centre(7, "hifigan") == 1200 == sum(segment_samples(7, 1)) / 2


def test_segments_are_exactly_the_samples_their_frames_came_from(probe_export):
    export, framing = probe_export
    seg = 40
    full = DecodedMelDataset(export, None, which="mel")
    train = DecodedMelDataset(export, seg, which="mel", seed=1)
    frontend = LogMelFrontend(framing)
    starts = set()
    for epoch in range(3):
        train.set_epoch(epoch)
        for i in range(len(train)):
            item = train[i]
            clip = full[i]
            s = item["start_frame"]
            starts.add(s)
            a, b = segment_samples(s, seg)
            assert item["id"] == clip["id"] and 0 <= s <= clip["frames"] - seg
            assert item["mel"].shape == (seg, 64) and item["waveform"].shape == (seg * HOP,)
            # indices: the segment is a slice of the full clip, mel rows and samples alike
            assert torch.equal(item["waveform"], clip["waveform"][a:b])
            assert torch.equal(item["mel"], clip["mel"][s : s + seg])
            assert item["length"] == min(clip["length"] - a, seg * HOP)
            # content: the segment's own samples through the same front-end give the same frames
            again = frontend(item["waveform"][None])[0, 0]
            assert again.shape[0] == (seg + 1 if framing == "tacotron" else seg)
            inner, ref = again[EDGE : seg - EDGE], item["mel"][EDGE : seg - EDGE]
            torch.testing.assert_close(inner[ref > -7.0], ref[ref > -7.0], atol=1e-4, rtol=0)
            torch.testing.assert_close(inner, ref, atol=5e-3, rtol=0)  # float32 noise near the log floor
            if clip["id"] == "near_silence":
                continue
            # ... and the check has teeth: half a hop off, the frames differ clearly
            off = full[i]["waveform"][a + 80 : b + 80] if b + 80 <= clip["waveform"].shape[0] else None
            if off is not None:
                shifted = frontend(off[None])[0, 0]
                assert (shifted[EDGE : seg - EDGE] - item["mel"][EDGE : seg - EDGE]).abs().max() > 0.1
    assert len(starts) > 5  # the starts are random


def test_seeded_segments_are_reproducible_and_short_clips_are_padded(probe_export):
    export, _ = probe_export
    a = DecodedMelDataset(export, 40, seed=3)
    b = DecodedMelDataset(export, 40, seed=3)
    assert [a[i]["start_frame"] for i in range(len(a))] == [b[i]["start_frame"] for i in range(len(b))]
    centred = DecodedMelDataset(export, 40, random_segments=False)
    assert {centred[i]["start_frame"] for i in range(len(centred))} == {(128 - 40) // 2}
    long = DecodedMelDataset(export, 150)  # longer than the 128-frame clips
    item = long[0]
    clip = DecodedMelDataset(export)[0]
    assert item["start_frame"] == 0 and item["length"] == clip["length"] == 20480
    assert torch.equal(item["mel"][:128], clip["mel"]) and bool((item["mel"][128:] == LOG_MEL_FLOOR).all())
    assert (
        torch.equal(item["waveform"][:20480], clip["waveform"][:20480]) and not item["waveform"][20480:].any()
    )


def test_dataloader_collate_and_split(probe_export):
    export, _ = probe_export
    train = DecodedMelDataset(export, 32, split="train", val_fraction=0.3)
    val = DecodedMelDataset(export, None, split="val", val_fraction=0.3)
    assert set(train.ids).isdisjoint(val.ids) and sorted(train.ids + val.ids) == sorted(PROBE_NAMES)
    assert val.ids == split_ids(PROBE_NAMES, 0.3)[1] and len(val) >= 1
    loader = DataLoader(train, batch_size=3, shuffle=True, num_workers=2, collate_fn=collate_decoded_mels)
    batches = list(loader)  # worker processes open their own shard handles
    assert sum(len(b["ids"]) for b in batches) == len(train)
    b = batches[0]
    assert b["mel"].shape == (3, 32, 64) and b["waveform"].shape == (3, 32 * HOP)
    assert b["lengths"].tolist() == [32 * HOP] * 3 and b["frames"].tolist() == [32] * 3
    # full clips of different lengths pad to the longest
    items = [{"id": "x", "mel": torch.zeros(3, 64), "waveform": torch.ones(480), "length": 470, "frames": 3,
              "start_frame": 0}, val[0]]  # fmt: skip
    c = collate_decoded_mels(items)
    assert c["mel"].shape == (2, 128, 64) and bool((c["mel"][0, 3:] == LOG_MEL_FLOOR).all())
    assert c["lengths"].tolist() == [470, 20480] and not c["waveform"][0, 480:].any()


def test_split_is_stable_when_clips_are_added():
    ids = [f"clip{i:03d}" for i in range(200)]
    train, val = split_ids(ids, 0.1, seed=0)
    assert 8 <= len(val) <= 35 and sorted(train + val) == ids
    _, val_more = split_ids(ids + [f"new{i}" for i in range(50)], 0.1, seed=0)
    assert set(val) == {v for v in val_more if v.startswith("clip")}
    assert split_ids(["a", "b"], 0.1)[1] and split_ids(["a", "b"], 0.99)[0]  # never an empty side
    assert split_ids(ids, val_ids=["clip005", "nope"]) == ([i for i in ids if i != "clip005"], ["clip005"])


# ------------------------------------------------------------------------------------------ resume
def _files(folder: Path, lengths: list[int]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, n in enumerate(lengths):
        x = formant_pulses(n, seed=i) if i % 2 else harmonic(n, f0=150 + 25 * i)
        sf.write(folder / f"clip{i}.wav", x, 16000)
        out.append(str(folder / f"clip{i}.wav"))
    return out


def test_interrupted_export_resumes_without_duplicates(tmp_path, tiny_model_dir, monkeypatch, capsys):
    lengths = [9000, 12345, 16000, 5000, 20480, 7777, 11111]
    inputs = tmp_path / "in"
    _files(inputs, lengths)
    out = tmp_path / "export"
    kw = dict(model=tiny_model_dir, shard_size=2, batch_size=2, **EXPORT_KW)

    # 1) a crash while writing the second shard: the first shard's clips are referenced by a part file only
    calls = {"n": 0}
    real_flush = MelExportWriter._flush

    def crashing_flush(self, items):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError("disk full (simulated)")
        return real_flush(self, items)

    monkeypatch.setattr(MelExportWriter, "_flush", crashing_flush)
    with pytest.raises(OSError, match="simulated"):
        export_mels(inputs, out, **kw)
    monkeypatch.undo()
    assert read_manifest(out) == []  # nothing folded yet
    parts = list((out / ".parts").glob("*.jsonl"))
    first = [json.loads(line) for p in parts for line in p.read_text().splitlines()]
    assert len(first) == 2
    first_shard = first[0]["shard"]
    # debris of a harder crash: a truncated shard, a temporary file, a torn part line
    good = (out / first_shard).read_bytes()
    (out / "shards" / "shard-r000-dead0000-00000.safetensors").write_bytes(good[: len(good) // 2])
    (out / "shards" / ".tmp-abcdef").write_bytes(b"partial")
    with open(parts[0], "a") as fh:
        fh.write('{"id": "clip9", "shard": "shards/shard-r000-dead0000-00000.saf')

    # 2) resume through the CLI: only the missing clips are computed
    rc = vaefix([
        "export-mels", str(inputs), "--out", str(out), "--model", str(tiny_model_dir), "--shard-size", "2",
        "--batch-size", "2", "--accelerator", "cpu", "--num-workers", "0", "--pad-frames-to", "128",
    ])  # fmt: skip
    assert rc == 0
    assert "7 clips in the manifest; 5 exported now, 2 already there, 0 failed" in capsys.readouterr().out
    entries = read_manifest(out)
    assert sorted(e["id"] for e in entries) == sorted(f"clip{i}" for i in range(7))
    assert len(entries) == len({e["id"] for e in entries}) == 7
    kept = {e["id"]: e["shard"] for e in entries}
    assert all(kept[r["id"]] == first_shard for r in first)  # not recomputed
    counts = _shard_key_counts(out)
    assert set(counts.values()) == {1} and len(counts) == 3 * 7
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(
        {Path(e["shard"]).name for e in entries}
    )
    by_id = {e["id"]: e for e in entries}
    for i, n in enumerate(lengths):
        e = by_id[f"clip{i}"]
        assert e["samples"] == n and e["frames"] == math.ceil(n / HOP)
    before = {c["id"]: c for c in (DecodedMelDataset(out).clip(i) for i in range(7))}

    # 3) a manifest that lost two lines: those two are exported again, with the same content
    lines = (out / MANIFEST).read_text().splitlines()
    dropped = [json.loads(x)["id"] for x in lines[2:4]]
    (out / MANIFEST).write_text("\n".join(lines[:2] + lines[4:]) + "\n")
    summary = export_mels(inputs, out, **kw)
    assert summary["exported"] == 2 and summary["skipped"] == 5 and summary["clips"] == 7
    entries = read_manifest(out)
    assert sorted(e["id"] for e in entries) == sorted(by_id) and len(entries) == 7
    after = DecodedMelDataset(out)
    for cid in dropped:
        assert by_id[cid]["shard"] != {e["id"]: e for e in entries}[cid]["shard"]
        for k in ("mel_hat", "mel", "waveform"):
            torch.testing.assert_close(after.clip(cid)[k], before[cid][k], atol=1e-4, rtol=0)

    # 4) a rerun has nothing to do; other settings are refused instead of mixed in
    assert export_mels(inputs, out, **kw)["exported"] == 0
    with pytest.raises(ExportSettingsError, match="framing: export has 'tacotron', this run 'hifigan'"):
        export_mels(inputs, out, framing="hifigan", **kw)


def test_writer_mode_beside_the_reconstruction_writer(tmp_path, tiny_model_dir, tacotron_export):
    from vaefix_pl import AudioDataModule, ReconstructionModule, ReconstructionWriter

    export = tacotron_export
    out = tmp_path / "mels"
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        callbacks=[ReconstructionWriter(tmp_path / "recon"), MelExportWriter(out, shard_size=4)],
    )  # fmt: skip
    module = ReconstructionModule(model=str(tiny_model_dir), pad_frames_to=128, metrics=["mel_distance"],
                                  return_mels=True)  # fmt: skip
    data = AudioDataModule(None, batch_size=4, num_workers=0, probe_seconds=PROBE_SECONDS)
    trainer.predict(module, datamodule=data, return_predictions=False)
    assert (tmp_path / "recon" / "metrics.csv").is_file()  # the reconstruction run itself went on
    a, b = DecodedMelDataset(out), DecodedMelDataset(export)
    assert a.ids == b.ids == sorted(PROBE_NAMES) and a.settings["framing"] == "tacotron"
    for i in range(len(a)):
        for k in ("mel_hat", "mel", "waveform"):
            torch.testing.assert_close(a.clip(i)[k], b.clip(i)[k], atol=1e-4, rtol=0)
    # resuming the writer-mode export with export_mels: same settings, nothing left to do
    assert export_mels(None, out, model=tiny_model_dir, **EXPORT_KW)["exported"] == 0
    # without return_mels the writer says what to change
    bare = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                     callbacks=[MelExportWriter(tmp_path / "bare")])  # fmt: skip
    no_mels = ReconstructionModule(model=str(tiny_model_dir), pad_frames_to=128, metrics=[])
    with pytest.raises(ValueError, match="return_mels=True"):
        bare.predict(no_mels, datamodule=AudioDataModule(None, num_workers=0, probe_seconds=0.5))


def test_cli_help_lists_the_options(capsys):
    assert vaefix(["export-mels", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--out", "--model", "--seconds", "--framing", "--shard-size", "--devices"):
        assert flag in text


def test_unreadable_input_is_listed_not_exported(tmp_path, tiny_model_dir):
    inputs = tmp_path / "in"
    _files(inputs, [8000])
    (inputs / "broken.wav").write_bytes(b"RIFF-not-audio")
    out = tmp_path / "export"
    summary = export_mels(inputs, out, model=tiny_model_dir, **EXPORT_KW)
    assert summary["clips"] == 1 and summary["failed"] == 1
    import csv

    errors = list(csv.DictReader((out / "errors.csv").open()))
    assert [e["id"] for e in errors] == ["broken"] and "broken.wav" in errors[0]["reason"]


@pytest.mark.slow
def test_ddp_two_processes_export_every_clip_exactly_once(tmp_path, tiny_model_dir):
    out = tmp_path / "export"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "vaefix_pl.cli", "export-mels", "--out", str(out), "--model", str(tiny_model_dir),
        "--devices", "2", "--accelerator", "cpu", "--num-workers", "0", "--shard-size", "2",
        "--batch-size", "1", "--pad-frames-to", "128", "--probe-seconds", str(PROBE_SECONDS),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, timeout=600, capture_output=True)
    entries = read_manifest(out)
    assert sorted(e["id"] for e in entries) == sorted(PROBE_NAMES) and len(entries) == 7
    counts = _shard_key_counts(out)
    assert sorted(counts) == sorted(f"{i}/{k}" for i in PROBE_NAMES for k in ("mel_hat", "mel", "waveform"))
    assert set(counts.values()) == {1}  # no clip written twice, not even into an unreferenced shard
    ranks = {Path(e["shard"]).name.split("-")[1] for e in entries}
    assert ranks == {"r000", "r001"}  # both ranks wrote
    assert json.loads((out / "export.json").read_text())["world_size"] == 2
    # the same as a single-process export
    single = tmp_path / "single"
    export_mels(None, single, model=tiny_model_dir, **EXPORT_KW)
    a, b = DecodedMelDataset(out), DecodedMelDataset(single)
    for i in range(7):
        for k in ("mel_hat", "mel", "waveform"):
            torch.testing.assert_close(a.clip(i)[k], b.clip(i)[k], atol=1e-4, rtol=0)  # batch of 1 vs 7


# ------------------------------------------------------------------------------------------ callback
class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call: ``[(step, {name: value})]``."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.history.append((step, dict(metrics)))


class TinyVocoderModule(L.LightningModule):
    def __init__(self, vocoder) -> None:
        super().__init__()
        self.net = torch.nn.Module()
        self.net.vocoder = vocoder

    def validation_step(self, batch, batch_idx):
        self.log("val/dummy", 0.0, batch_size=1)


def _validate(module, callback, logger):
    trainer = L.Trainer(accelerator="cpu", logger=logger, callbacks=[callback], enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1)  # fmt: skip
    val = DecodedMelDataset(callback.export_dir, None, split="val")
    trainer.validate(module, DataLoader(val, batch_size=1, collate_fn=collate_decoded_mels))
    return trainer


def test_baseline_callback_logs_baseline_current_and_delta(tmp_path, tiny_model_dir, tacotron_export):
    from vaefix_pl.metrics import compute_metrics
    from vaefix_pl.vocoders.hifigan import load_hifigan

    export = tacotron_export
    current = load_hifigan(tiny_model_dir, trainable=True)
    module = TinyVocoderModule(current)
    names = ["mel_distance", "snr", "clicks_added_per_s"]
    cb = FixedDecoderBaseline(export, vocoder="net.vocoder", metrics=names, perceptual=["pesq"],
                              val_fraction=0.3, audio_dir=tmp_path / "audio", num_audio_examples=1)  # fmt: skip
    logger = MemoryLogger()
    _validate(module, cb, logger)
    logged = {k: v for _, m in logger.history for k, v in m.items()}
    for m in names:
        assert math.isfinite(logged[f"baseline/{m}"]) and math.isfinite(logged[f"vocoder/{m}"])
        assert logged[f"delta/{m}"] == 0.0  # the current vocoder still is the baseline
    # independent reference: the metrics of the frozen HiFi-GAN on the held-out decoded mels
    val = DecodedMelDataset(export, None, split="val", val_fraction=0.3)
    clips = [val.clip(i) for i in range(len(val))]
    frozen = load_hifigan(tiny_model_dir)
    expected = []
    for c in clips:
        with torch.no_grad():
            est = frozen(c["mel_hat"][None])[:, : c["samples"]]
        expected.append(
            float(compute_metrics(c["waveform"][None], est, None, ["mel_distance"])["mel_distance"][0])
        )
    assert logged["baseline/mel_distance"] == pytest.approx(np.mean(expected), rel=1e-6)
    assert "baseline/pesq" in cb.last_scores  # logged when finite (PESQ may refuse random-weight audio)
    assert (tmp_path / "audio" / "target" / f"{clips[0]['id']}.wav").is_file()
    assert (tmp_path / "audio" / "baseline" / f"{clips[0]['id']}.wav").is_file()
    assert (tmp_path / "audio" / "step0000000" / f"{clips[0]['id']}.wav").is_file()

    # change the current vocoder: the baseline is not recomputed, delta = current - baseline
    with torch.no_grad():
        current.inner.conv_post.weight.mul_(0.5)
    logger2 = MemoryLogger()
    _validate(module, cb, logger2)
    assert cb.baseline_runs == 1
    logged2 = {k: v for _, m in logger2.history for k, v in m.items()}
    assert logged2["baseline/mel_distance"] == logged["baseline/mel_distance"]
    assert logged2["delta/mel_distance"] != 0.0
    assert logged2["delta/mel_distance"] == pytest.approx(
        logged2["vocoder/mel_distance"] - logged2["baseline/mel_distance"], abs=1e-6
    )  # the logger receives float32
    # the cache travels with checkpoints: a restored callback does not rerun the baseline
    cb2 = FixedDecoderBaseline(export, vocoder=lambda m: m.net.vocoder, metrics=names, perceptual=[],
                               val_fraction=0.3, audio_dir=tmp_path / "audio2")  # fmt: skip
    cb2.load_state_dict(cb.state_dict())
    _validate(module, cb2, MemoryLogger())
    assert cb2.baseline_runs == 0
    assert cb2.last_scores["delta/mel_distance"] == pytest.approx(logged2["delta/mel_distance"], rel=1e-6)


def test_baseline_callback_with_griffin_lim_baseline_and_clear_errors(tmp_path, tiny_model_dir, probe_export):
    from vaefix_pl.vocoders.griffinlim import GriffinLimVocoder
    from vaefix_pl.vocoders.hifigan import load_hifigan

    export, framing = probe_export
    val = DecodedMelDataset(export, None, split="val", max_items=1)
    cb = FixedDecoderBaseline(dataset=val, baseline="griffinlim", vocoder="net.vocoder", metrics=["mel_distance"],
                              perceptual=[], audio_dir=tmp_path / "a")  # fmt: skip
    module = TinyVocoderModule(load_hifigan(tiny_model_dir))
    scores = cb.evaluate(module)
    clips = [{"id": val.ids[0], "mel": val.clip(0)["mel_hat"], "waveform": val.clip(0)["waveform"]}]
    gl_scores, _ = score_vocoder(GriffinLimVocoder(framing), clips, ["mel_distance"], [])
    assert scores["baseline/mel_distance"] == pytest.approx(gl_scores["mel_distance"][0], rel=1e-6)
    with pytest.raises(AttributeError, match="has no attribute 'generator'"):
        FixedDecoderBaseline(dataset=val, vocoder="generator").evaluate(module)
    with pytest.raises(ValueError, match="segment_frames=None"):
        FixedDecoderBaseline(dataset=DecodedMelDataset(export, 16))


def test_score_vocoder_scores_each_clip_as_if_alone():
    from vaefix_pl.metrics import compute_metrics
    from vaefix_pl.vocoders.griffinlim import GriffinLimVocoder

    gl = GriffinLimVocoder("tacotron", n_iter=8)
    frontend = LogMelFrontend("tacotron")
    clips = []
    for i, n in enumerate([4000, 6400, 4000, 2560]):  # two share a frame count and run together
        x = torch.from_numpy(harmonic(n, f0=180 + 40 * i) if i % 2 else formant_pulses(n, seed=i)).float()
        f = math.ceil(n / HOP)
        padded = torch.nn.functional.pad(x, (0, f * HOP - n))
        clips.append({"id": f"c{i}", "mel": frontend(padded[None])[0, 0, :f], "waveform": x})
    scores, audio = score_vocoder(gl, clips, ["mel_distance", "snr"], [], batch_size=4)
    for i, c in enumerate(clips):
        with torch.no_grad():
            alone = gl(c["mel"][None])[:, : c["waveform"].shape[0]]
        assert audio[c["id"]].shape == c["waveform"].shape
        expected = compute_metrics(c["waveform"][None], alone, None, ["mel_distance", "snr"])
        for m in ("mel_distance", "snr"):
            assert scores[m][i] == pytest.approx(float(expected[m][0]), rel=1e-5, abs=1e-6)


def _load_example():
    spec = importlib.util.spec_from_file_location(
        "finetune_vocoder", ROOT / "examples" / "finetune_vocoder.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_example_finetunes_and_logs_baseline_and_delta(tmp_path):
    example = _load_example()
    out = tmp_path / "ft"
    scores = example.main(["--tiny", "--steps", "3", "--out", str(out), "--accelerator", "cpu",
                           "--batch-size", "4", "--lr", "1e-3", "--val-fraction", "0.3"])  # fmt: skip
    rows = list(csv.DictReader(open(out / "logs" / "version_0" / "metrics.csv")))
    evals = [r for r in rows if r.get("delta/mel_distance")]
    assert len(evals) == 2  # before training (step 0) and at the end
    for r in evals:
        for m in ("mel_distance", "mrstft_distance", "lsd", "snr", "clicks_added_per_s"):
            assert math.isfinite(float(r[f"baseline/{m}"])) and math.isfinite(float(r[f"delta/{m}"]))
    assert all(float(evals[0][k]) == 0.0 for k in evals[0] if k.startswith("delta/") and evals[0][k])
    assert float(evals[1]["delta/mel_distance"]) != 0.0  # the vocoder was trained
    assert float(evals[1]["baseline/mel_distance"]) == float(evals[0]["baseline/mel_distance"])
    assert scores["delta/mel_distance"] == pytest.approx(float(evals[1]["delta/mel_distance"]), rel=1e-6)
    assert any((out / "logs" / "version_0" / "fixed_decoder_baseline").rglob("*.wav"))


@pytest.mark.slow
def test_example_under_two_process_ddp_logs_once(tmp_path):
    """Rank 0 scores and broadcasts; every rank logs the same numbers; files are written once."""
    out = tmp_path / "ft"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, str(ROOT / "examples" / "finetune_vocoder.py"), "--tiny", "--devices", "2",
        "--accelerator", "cpu", "--steps", "2", "--out", str(out), "--val-fraction", "0.3", "--no-perceptual",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, timeout=600, capture_output=True)
    rows = list(csv.DictReader(open(out / "logs" / "version_0" / "metrics.csv")))
    evals = [r for r in rows if r.get("delta/mel_distance")]
    assert len(evals) == 2 and all(math.isfinite(float(r["baseline/mel_distance"])) for r in evals)
    assert float(evals[0]["delta/mel_distance"]) == 0.0
    scores = (out / "logs" / "version_0" / "fixed_decoder_baseline" / "scores.jsonl").read_text().splitlines()
    assert len(scores) == 2  # one evaluation per validation, on rank 0 only
