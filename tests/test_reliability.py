"""Issue 22: one run per output folder, resume by identity (and its figures), only the project's own
temporary files deleted, CSV cells neutralised against formula injection."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from signals import harmonic, noise

from vaefix_pl.cli.commands import main as vaefix
from vaefix_pl.core.errors import OutputError

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "resume_script.py"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _clips(folder: Path, names, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        x = (
            harmonic(2400 + 160 * i, f0=200.0 + 40 * i + seed)
            if seed == 0
            else noise(2400 + 160 * i, seed=seed + i)
        )
        sf.write(folder / f"{name}.wav", x, 16000, subtype="PCM_16")


def _argv(inp, out, model) -> list[str]:
    return ["reconstruct", str(inp), "--model", str(model), "--out", str(out),
            "--num-workers", "0", "--accelerator", "cpu"]  # fmt: skip


def _env(delay: float = 0.0) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        VAEFIX_TEST_WRITE_DELAY=str(delay),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]),
    )
    env.pop("VAEFIX_TEST_WRITE_LOG", None)
    return env


# ------------------------------------------------------------------ 1. one run per output folder
def test_two_real_runs_into_one_folder_one_refuses_and_nothing_is_lost(tmp_path, tiny_model_dir):
    names = [f"c{i}" for i in range(6)]
    _clips(tmp_path / "in", names)
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), *_argv(tmp_path / "in", out, tiny_model_dir), "--batch-size", "1"]
    gate = tmp_path / "gate"
    gate.write_text("")  # the first run's WAV writes wait until the second run has been refused
    first = subprocess.Popen(
        cmd,
        env={**_env(), "VAEFIX_TEST_WRITE_GATE": str(gate)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (out / ".vaefix.lock").is_file():  # the first run holds the folder
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        gate.unlink()
        _, err1 = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err1[-3000:]
    assert second.returncode != 0, (second.stderr[-3000:], err1[-2000:])
    line = f"another vaefix run (pid {first.pid}, started "
    assert line in second.stderr and f"is writing to {out}" in second.stderr
    rows = _read_csv(out / "metrics.csv")
    assert [r["id"] for r in rows] == names and all(not r.get("error") for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_ok"] == len(names)
    assert not (out / ".vaefix.lock").exists() and not (out / ".parts").exists()


def test_lock_is_refused_in_process_and_released_after_the_run(tmp_path, tiny_model_dir, capsys):
    from vaefix_pl.runs.lock import acquire_run_lock

    _clips(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    held = acquire_run_lock(out)
    try:
        # the CLI prints the OutputError as one line and returns its exit code
        assert vaefix(_argv(tmp_path / "in", out, tiny_model_dir)) == OutputError.exit_code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0]
        assert re.search(r"^error: another vaefix run \(pid \d+, started .*\) is writing to", err[0]), err
    finally:
        held.release()
    assert vaefix(_argv(tmp_path / "in", out, tiny_model_dir)) == 0
    assert vaefix(_argv(tmp_path / "in", out, tiny_model_dir)) == 0  # the lock was released


# ------------------------------------------------------------------ 2. resume by identity, keeps figures
def test_same_ids_from_another_folder_are_redone_with_the_reason(tmp_path, tiny_model_dir, caplog):
    names = ["a", "b"]
    _clips(tmp_path / "k1", names, seed=0)
    _clips(tmp_path / "k2", names, seed=7)
    out = tmp_path / "out"
    assert vaefix(_argv(tmp_path / "k1", out, tiny_model_dir)) == 0
    assert vaefix(_argv(tmp_path / "k2", out, tiny_model_dir)) == 0
    rows = _read_csv(out / "metrics.csv")
    assert [r["path"] for r in rows] == [str(tmp_path / "k2" / f"{n}.wav") for n in names]
    x, _ = sf.read(out / "a.original.wav")
    ref, _ = sf.read(tmp_path / "k2" / "a.wav")
    assert np.corrcoef(x, ref)[0, 1] > 0.999  # k2's audio (the original is written level-corrected)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resume"]["skipped_complete"] == 0
    assert "different file" in summary["resume"]["redone"]["a"]
    assert "k1/a.wav is a different file" in caplog.text or "different file" in caplog.text


def test_changed_file_and_changed_settings_are_redone(tmp_path, tiny_model_dir):
    _clips(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    argv = _argv(tmp_path / "in", out, tiny_model_dir)
    assert vaefix(argv) == 0
    time.sleep(0.01)
    sf.write(tmp_path / "in" / "a.wav", noise(4000, seed=3), 16000, subtype="PCM_16")  # same name, new audio
    assert vaefix(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["resume"]["skipped_complete"] == 1 and s["resume"]["redone"] == {
        "a": "changed since the last run"
    }
    assert sf.info(out / "a.original.wav").frames == 4000
    assert vaefix([*argv, "--seconds", "0.1"]) == 0  # other settings: everything is redone
    s = json.loads((out / "summary.json").read_text())
    assert s["resume"]["skipped_complete"] == 0 and set(s["resume"]["redone"]) == {"a", "b"}


def test_a_full_resume_keeps_the_earlier_figures(tmp_path, tiny_model_dir):
    _clips(tmp_path / "in", ["a", "b", "c"])
    out = tmp_path / "out"
    argv = _argv(tmp_path / "in", out, tiny_model_dir)
    assert vaefix(argv) == 0
    before = json.loads((out / "summary.json").read_text())
    assert vaefix(argv) == 0
    after = json.loads((out / "summary.json").read_text())
    assert after["resumed"] == 3 and after["resume"]["skipped_complete"] == 3
    assert (
        after["timing"]["audio_s"] == pytest.approx(before["timing"]["audio_s"])
        and after["timing"]["audio_s"] > 0.4
    )
    assert after["timing"]["wall_s"] >= before["timing"]["wall_s"]
    assert after["metrics"] == before["metrics"]


# ------------------------------------------------------------------ 8. only the project's own files deleted
def test_user_tmp_files_under_out_survive_reruns(tmp_path, tiny_model_dir):
    _clips(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    mine = [out / ".tmp-mine", out / "sub" / ".tmp-notes.wav"]
    for f in mine:
        f.write_text("user data")
    argv = _argv(tmp_path / "in", out, tiny_model_dir)
    assert vaefix(argv) == 0
    assert vaefix([*argv, "--overwrite"]) == 0
    assert all(f.read_text() == "user data" for f in mine)


# ------------------------------------------------------------------ 9. CSV injection
def test_formula_ids_are_neutralised_in_every_csv_and_read_back(tmp_path, tiny_model_dir):
    from vaefix_pl.runs.tables import read_metrics_csv

    names = ["=HYPERLINK(1)", "+cmd", "-2+3", "@SUM(A1)", "plain"]
    _clips(tmp_path / "in", names)
    (tmp_path / "in" / "=bad.wav").write_bytes(b"not audio")
    out = tmp_path / "out"
    argv = _argv(tmp_path / "in", out, tiny_model_dir)
    assert vaefix(argv) == 0
    for table in ("metrics.csv", "errors.csv"):
        for r in _read_csv(out / table):
            for col in ("id", "path", "reason", "error"):
                v = r.get(col) or ""
                assert not v.startswith(("=", "+", "-", "@", "\t", "\r")), (table, col, v)
    ids = {r["id"] for r in read_metrics_csv(out / "metrics.csv")}
    assert ids == {*names, "=bad"}  # the reader strips the quote back
    assert vaefix(argv) == 0  # and resume matches the neutralised ids
    assert json.loads((out / "summary.json").read_text())["resume"]["skipped_complete"] == len(names)


def test_neutralise_cell_follows_owasp():
    from vaefix_pl.runs.tables import neutralise_cell, rows_to_csv

    assert [neutralise_cell(v) for v in ["=1", "+1", "-1", "@a", "\tx", "\rx", "'q", "ok", 5, -1.0]] == [
        "'=1",
        "'+1",
        "'-1",
        "'@a",
        "'\tx",
        "'\rx",
        "''q",
        "ok",
        5,
        -1.0,
    ]
    text = rows_to_csv([{"id": "=1+2", "x": -3}])
    assert text.splitlines()[1] == "'=1+2,-3"


# ------------------------------------------------------------------ 4. the report stays in its folder
def test_report_confines_ids_and_never_follows_planted_links(tmp_path):
    from vaefix_pl.report.html import write_report

    out = tmp_path / "a" / "b" / "run"
    out.mkdir(parents=True)
    escape = tmp_path / "a" / "escape"
    escape.mkdir()
    x = harmonic(4000, f0=220.0)
    for stem in (out / "k01", out / "k02", escape / "x"):
        for tag in ("original", "recon"):
            sf.write(f"{stem}.{tag}.wav", x, 16000, subtype="FLOAT")
    rows = [{"id": i, "path": f"/in/{i}.wav", "seconds": 0.25, "mel_distance": 1.0}
            for i in ("../../escape/x", "k01", "k02")]  # fmt: skip
    with open(out / "metrics.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    victim, victim2 = tmp_path / "victim", tmp_path / "victim2"
    victim.write_text("precious")
    victim2.write_text("precious too")
    (out / "figures").mkdir()
    (out / "figures" / "k02.png").symlink_to(victim)
    (out / ".tmp-report.html").symlink_to(victim2)
    page = write_report(out)
    assert victim.read_text() == "precious" and victim2.read_text() == "precious too"
    assert (out / "figures" / "k02.png").is_symlink() and (out / "figures" / "k01.png").is_file()
    assert not list(escape.glob("*.png")) and not list((tmp_path / "a").glob("*.png"))
    assert page == out / "report.html" and page.is_file() and not page.is_symlink()


# ------------------------------------------------------------------ 6. a full disk
def test_write_failures_say_no_space_left(tmp_path, monkeypatch):
    import errno

    import vaefix_pl.runs.files as files_mod
    from vaefix_pl.runs.files import write_error_reason

    assert "no space left on device" in write_error_reason(OSError(errno.ENOSPC, "No space"), tmp_path)
    err = sf.LibsndfileError(2, "")  # libsndfile's SFE_SYSTEM: "System error."
    assert "System error" in str(err)
    monkeypatch.setattr(files_mod.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
    assert "no space left on device" in write_error_reason(err, tmp_path)


def test_a_full_disk_at_the_merge_keeps_the_previous_tables(tmp_path, monkeypatch):
    import errno

    import vaefix_pl.runs.files as files_mod
    from vaefix_pl.runs.tables import write_run_tables

    rows = [{"id": "a", "path": "/a.wav", "seconds": 1.0, "mel_distance": 2.0}]
    write_run_tables(tmp_path, rows, {}, title="t")
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    assert set(before) == {"metrics.csv", "errors.csv", "summary.json", "summary.md"}
    calls = []
    real = files_mod.os.fsync

    def full(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(files_mod.os, "fsync", full)
    more = [*rows, {"id": "b", "path": "/b.wav", "error": "x", "error_stage": "decode"}]
    with pytest.raises(OutputError, match="no space left on device") as exc:
        write_run_tables(tmp_path, more, {}, title="t")
    assert exc.value.exit_code == 5 and "\n" not in str(exc.value)
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before  # nothing replaced, no temp left


def test_wav_write_enospc_is_the_items_error_row(tmp_path, tiny_model_dir, monkeypatch):
    import errno

    import vaefix_pl.pipeline.writer as writer_mod

    _clips(tmp_path / "in", ["a", "b"])

    def full(path, waveform, sample_rate=16000):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_mod, "write_wav", full)
    out = tmp_path / "out"
    # every input failed, so the run says so with exit code 4 (the item's row still names the cause)
    assert vaefix(_argv(tmp_path / "in", out, tiny_model_dir)) == 4
    errs = _read_csv(out / "errors.csv")
    assert [e["id"] for e in errs] == ["a", "b"]
    assert all("no space left on device" in e["reason"] and e["stage"] == "write" for e in errs)


# ------------------------------------------------------------------ 3. items too big to decode
def test_huge_or_1hz_items_become_error_rows_naming_the_limit_and_the_batch_goes_on(tmp_path, monkeypatch):
    import vaefix_pl.data.audio as audio_mod
    from vaefix_pl.data.inputs import AudioDataset, collate_audio, discover_inputs

    sf.write(tmp_path / "onehz.wav", np.zeros(1200, np.float32), 1, subtype="FLOAT")  # 1.2 KB, "20 minutes"
    sf.write(tmp_path / "long.wav", harmonic(48000, f0=220.0), 16000, subtype="PCM_16")  # 3 s
    sf.write(tmp_path / "good.wav", harmonic(16000, f0=220.0), 16000, subtype="PCM_16")
    monkeypatch.setattr(audio_mod, "MAX_ITEM_SECONDS", 2.0)
    entries = sorted(discover_inputs(tmp_path), key=lambda e: e.id)
    ds = AudioDataset(entries)
    batch = collate_audio([ds[i] for i in range(len(ds))])
    assert batch["ids"] == ["good"] and batch["waveform"].shape == (1, 16000)
    errs = {e["id"]: e["reason"] for e in batch["errors"]}
    assert "below the 1000 Hz minimum" in errs["onehz"]
    assert "above the 2 s limit of one item" in errs["long"] and "--seconds" in errs["long"]
    cropped = AudioDataset(entries, seconds=1.5)  # cropped below the limit: read
    assert cropped[entries.index(next(e for e in entries if e.id == "long"))]["waveform"].shape == (24000,)


def test_lag_is_estimated_on_a_bounded_excerpt_exactly_as_whole_file_for_short_items(monkeypatch):
    import torch

    import vaefix_pl.metrics.registry as reg
    from vaefix_pl.metrics import functional as F

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((2, 48000)))
    y = torch.roll(x, 7, dims=1)
    lengths = torch.tensor([48000, 30000])
    whole = F.estimate_lag(x, y, lengths, max_lag=160, return_peak=True)
    ctx = reg.MetricContext(x, y, lengths, 16000)
    got = ctx.lag_and_peak()
    assert torch.equal(got[0], whole[0]) and torch.allclose(got[1], whole[1])
    seen = []
    real = F.estimate_lag
    monkeypatch.setattr(F, "estimate_lag", lambda r, e, *a, **k: seen.append(r.shape) or real(r, e, *a, **k))
    monkeypatch.setattr(reg, "LAG_EXCERPT_SECONDS", 1.0)
    lag, _ = reg.MetricContext(x, y, lengths, 16000).lag_and_peak()
    assert seen == [(2, 16000)] and lag.tolist() == [7, 7]  # only 1 s is transformed; the lag is found
