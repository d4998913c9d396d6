"""Input discovery, ids, manifests, decoding in the dataset, collate and the data module."""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import torch
from signals import harmonic, noise

from vaefix_pl.core.probes import PROBE_NAMES
from vaefix_pl.data.inputs import (
    MIN_BATCH_SAMPLES,
    AudioDataset,
    collate_audio,
    discover_inputs,
)
from vaefix_pl.data.module import AudioDataModule


def _wav(path, n, sr=16000, channels=1, seed=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = noise(n, seed) if channels == 1 else np.stack([noise(n, seed + c) for c in range(channels)], 1)
    sf.write(path, x, sr, format=fmt)
    return path


def test_folder_is_recursive_and_ids_do_not_collide(tmp_path):
    _wav(tmp_path / "a" / "x.wav", 1600)
    _wav(tmp_path / "b" / "x.wav", 1600)
    _wav(tmp_path / "b" / "deep" / "y.flac", 1600)
    _wav(tmp_path / "b" / "y.wav", 1600)
    _wav(tmp_path / "b" / "y.ogg", 1600, fmt="OGG")
    (tmp_path / "notes.md").write_text("not audio")
    entries = discover_inputs(str(tmp_path))
    ids = sorted(e.id for e in entries)
    assert ids == ["a/x", "b/deep/y", "b/x", "b/y__ogg", "b/y__wav"]
    assert all(e.error is None and e.seconds == 0.1 for e in entries)


def test_several_inputs_and_manifests(tmp_path):
    f1 = _wav(tmp_path / "d1" / "s.wav", 3200)
    f2 = _wav(tmp_path / "d2" / "s.wav", 4800)
    (tmp_path / "list.txt").write_text("# a comment\nd1/s.wav\n\nd2/s.wav\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.csv").write_text(f"path,label\n../d1/s.wav,a\n{f2},b\n")
    for inp in (str(tmp_path / "list.txt"), str(tmp_path / "sub" / "m.csv"), [str(f1), str(f2)]):
        entries = discover_inputs(inp)
        assert [e.id for e in entries] == ["d1/s", "d2/s"]
        assert [e.path for e in entries] == [str(f1.resolve()), str(f2.resolve())]


def test_missing_and_broken_files_become_error_items(tmp_path):
    good = _wav(tmp_path / "good.wav", 1600)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....garbage")
    entries = discover_inputs([str(good), str(bad), str(tmp_path / "gone.wav")])
    errors = {e.id: e.error for e in entries if e.error}
    assert set(errors) == {"bad", "gone"}
    assert "bad.wav" in errors["bad"] and "no such file" in errors["gone"]
    batch = collate_audio([AudioDataset(entries)[i] for i in range(3)])
    assert batch["ids"] == ["good"] and batch["waveform"].shape == (1, 1600)
    assert {e["id"] for e in batch["errors"]} == {"bad", "gone"}


def test_dataset_resamples_mixes_and_crops(tmp_path):
    st = _wav(tmp_path / "st.wav", 44100, sr=44100, channels=2)
    mono = _wav(tmp_path / "mono.wav", 8000)
    entries = discover_inputs([str(st), str(mono)])
    full = AudioDataset(entries)
    assert full[0]["waveform"].shape == (16000,) and full[1]["waveform"].shape == (8000,)
    fixed = AudioDataset(entries, seconds=0.75)
    assert fixed[0]["waveform"].shape == (12000,) and fixed[1]["waveform"].shape == (12000,)
    assert torch.all(fixed[1]["waveform"][8000:] == 0)
    assert torch.equal(fixed[1]["waveform"][:8000], full[1]["waveform"])


def test_collate_pads_and_reports_lengths():
    items = [
        {"id": "a", "path": None, "waveform": torch.from_numpy(harmonic(100)).float(), "error": None},
        {"id": "b", "path": None, "waveform": torch.ones(250), "error": None},
    ]
    b = collate_audio(items)
    assert b["waveform"].shape == (2, 250) and b["lengths"].tolist() == [100, 250]
    assert torch.all(b["waveform"][0, 100:] == 0)


def test_probe_set_is_the_default_input():
    dm = AudioDataModule(inputs=None, batch_size=3, num_workers=0)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    ids = [i for b in batches for i in b["ids"]]
    assert sorted(ids) == sorted(PROBE_NAMES)
    assert batches[0]["waveform"].shape == (3, 64000)


def test_sorted_by_duration_longest_first(tmp_path):
    for i, n in enumerate([1600, 8000, 3200, 4800]):
        _wav(tmp_path / f"c{i}.wav", n)
    dm = AudioDataModule(inputs=str(tmp_path), batch_size=2, num_workers=0)
    dm.setup("predict")
    lengths = [int(v) for b in dm.predict_dataloader() for v in b["lengths"]]
    assert lengths == [8000, 4800, 3200, 1600]


def test_linked_folder_is_scanned_once_with_its_own_ids(tmp_path):
    _wav(tmp_path / "real" / "x.wav", 1600)
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "d" / "link")  # followed: it leads outside d
    os.symlink(tmp_path / "d", tmp_path / "d" / "self")  # a loop: not followed twice
    entries = discover_inputs(str(tmp_path / "d"))
    assert [(e.id, e.error) for e in entries] == [("x", None)]
    assert entries[0].path == str(tmp_path / "d" / "link" / "x.wav")  # as found, links not resolved


def test_collate_gives_room_for_items_shorter_than_a_frame():
    items = [{"id": "tiny", "path": None, "waveform": torch.tensor([0.25, -0.5, 0.125]), "error": None}]
    b = collate_audio(items)
    assert b["lengths"].tolist() == [3] and b["waveform"].shape == (1, MIN_BATCH_SAMPLES)
    assert b["waveform"][0, :3].tolist() == [0.25, -0.5, 0.125] and torch.all(b["waveform"][0, 3:] == 0)


def test_error_items_carry_their_stage(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF....garbage")
    entries = discover_inputs([str(tmp_path / "bad.wav"), str(tmp_path / "gone.wav")])
    batch = collate_audio([AudioDataset(entries)[i] for i in range(2)])
    assert {e["id"]: e["stage"] for e in batch["errors"]} == {"bad": "decode", "gone": "discover"}


def test_drop_ids_leaves_the_rest_in_order(tmp_path):
    for i, n in enumerate([1600, 8000, 3200, 4800]):
        _wav(tmp_path / f"c{i}.wav", n)
    dm = AudioDataModule(inputs=str(tmp_path), batch_size=2, num_workers=0)
    dm.setup("predict")
    assert dm.drop_ids({"c1", "c3", "not-an-input"}) == 2
    assert dm.entry_ids() == ["c1", "c3", "c2", "c0"]  # every input of the run, dropped ones included
    lengths = [int(v) for b in dm.predict_dataloader() for v in b["lengths"]]
    assert lengths == [3200, 1600]
