"""Interrupted runs: a run killed with SIGKILL part-way and rerun ends with every input exactly once in
``metrics.csv``, no torn or temporary files, and the items finished before the kill not recomputed;
``--overwrite`` redoes everything; a rerun under DDP skips the same items on every rank."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from signals import chirp, formant_pulses, harmonic, noise

import vaefix_pl.pipeline.writer as writer_mod
from vaefix_pl.cli.commands import main as vaefix

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "resume_script.py"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _corpus(folder: Path, count: int) -> dict[str, int]:
    """``count`` clips of 0.2-0.5 s (speech-like, harmonic, chirp, noise) -> {id: samples}."""
    kinds = (formant_pulses, harmonic, chirp, noise)
    expected = {}
    for i in range(count):
        n = 3200 + 400 * i
        x = kinds[i % 4](n, seed=i) if kinds[i % 4] in (formant_pulses, harmonic, noise) else chirp(n)
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"clip{i:02d}.wav", x, 16000, subtype="PCM_16")
        expected[f"clip{i:02d}"] = n
    return expected


def _env(log: Path, delay: float = 0.0) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        VAEFIX_TEST_WRITE_LOG=str(log),
        VAEFIX_TEST_WRITE_DELAY=str(delay),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]),
    )
    return env


def _logged_ids(log_dir: Path, out: Path) -> list[str]:
    """Item ids of every WAV write in the logs (one entry per write)."""
    ids = []
    for f in sorted(log_dir.glob("*.log")) if log_dir.is_dir() else []:
        for line in f.read_text(encoding="utf-8").splitlines():
            rel = Path(line).relative_to(out).as_posix()
            ids.append(rel.rsplit(".", 2)[0])
    return ids


def _complete_on_disk(out: Path) -> set[str]:
    """Ids the killed run finished: a part record without error and both WAVs present (read by hand)."""
    done = set()
    for part in (out / ".parts").glob("*rank*.jsonl"):
        for line in part.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("kind", "item") == "item" and not rec.get("error"):
                if all((out / f"{rec['id']}.{t}.wav").is_file() for t in ("original", "recon")):
                    done.add(rec["id"])
    return done


def _check_outputs(out: Path, expected: dict[str, int]) -> None:
    rows = _read_csv(out / "metrics.csv")
    assert [r["id"] for r in rows] == sorted(expected)  # every input exactly once
    assert all(not r.get("error") and np.isfinite(float(r["mel_distance"])) for r in rows)
    for item_id, n in expected.items():
        for tag in ("original", "recon"):
            x, sr = sf.read(out / f"{item_id}.{tag}.wav")  # raises on a torn file
            assert sr == 16000 and x.shape == (n,) and np.isfinite(x).all()
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".wav") == [
        "errors.csv",
        "metrics.csv",
        "summary.json",
        "summary.md",
    ]
    assert not list(out.rglob(".vaefix-tmp-*"))


def test_sigkill_part_way_then_rerun_finishes_without_redoing_work(tmp_path, tiny_model_dir):
    expected = _corpus(tmp_path / "in", 12)
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "reconstruct", str(tmp_path / "in"), "--model", str(tiny_model_dir),
           "--out", str(out), "--batch-size", "2", "--num-workers", "0", "--accelerator", "cpu"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=_env(tmp_path / "log1", delay=0.4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 180
    try:
        while len(list(out.glob("*.recon.wav"))) < 2:
            assert proc.poll() is None, (
                "the run ended before it could be killed: " + proc.stderr.read().decode()
            )
            assert time.monotonic() < deadline, "no output appeared in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.csv").exists()  # killed before the end
    done = _complete_on_disk(out)
    assert 1 <= len(done) < len(expected), done
    print(f"complete at the kill: {len(done)} of {len(expected)}")
    mtimes = {p: p.stat().st_mtime_ns for i in done for p in out.glob(f"{i}.*.wav")}
    dead = json.loads((out / ".vaefix.lock").read_text())["run"]  # the killed run's lock record
    (out / f".vaefix-tmp-{dead}-torn123.wav").write_bytes(b"RIFF")  # what a write cut by the kill leaves

    rerun = subprocess.run(cmd, env=_env(tmp_path / "log2"), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _check_outputs(out, expected)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # finished items untouched
    written = _logged_ids(tmp_path / "log2", out)
    assert sorted(written) == sorted([i for i in expected if i not in done] * 2)  # the rest, once each
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resume"]["skipped_complete"] == len(done) and summary["n_ok"] == len(expected)


@pytest.fixture
def write_log(monkeypatch):
    """Record every WAV write of an in-process run."""
    calls: list[str] = []
    real = writer_mod.write_wav

    def logged(path, waveform, sample_rate=16000):
        calls.append(str(path))
        return real(path, waveform, sample_rate)

    monkeypatch.setattr(writer_mod, "write_wav", logged)
    return calls


def test_rerun_skips_complete_items_retries_failed_and_overwrite_redoes_all(
    tmp_path, tiny_model_dir, write_log
):
    expected = _corpus(tmp_path / "in", 4)
    (tmp_path / "in" / "late.wav").write_bytes(b"not yet audio")
    out = tmp_path / "out"
    argv = ["reconstruct", str(tmp_path / "in"), "--model", str(tiny_model_dir), "--out", str(out),
            "--batch-size", "2", "--num-workers", "0", "--accelerator", "cpu"]  # fmt: skip

    assert vaefix(argv) == 0
    assert len(write_log) == 8 and [e["id"] for e in _read_csv(out / "errors.csv")] == ["late"]
    first = {r["id"]: r for r in _read_csv(out / "metrics.csv")}

    write_log.clear()  # nothing changed: nothing is redone, the tables are the same
    assert vaefix(argv) == 0
    assert write_log == []
    assert {r["id"]: r for r in _read_csv(out / "metrics.csv")} == first
    assert json.loads((out / "summary.json").read_text())["resume"]["skipped_complete"] == 4

    write_log.clear()  # a lost output is redone; a failed input, now readable, is retried and succeeds
    (out / "clip02.recon.wav").unlink()
    sf.write(tmp_path / "in" / "late.wav", harmonic(2400, f0=310.0), 16000)
    assert vaefix(argv) == 0
    assert sorted(Path(p).name for p in write_log) == sorted(
        ["clip02.original.wav", "clip02.recon.wav", "late.original.wav", "late.recon.wav"]
    )
    _check_outputs(out, {**expected, "late": 2400})
    assert _read_csv(out / "errors.csv") == []

    write_log.clear()  # --overwrite redoes every input
    before = (out / "clip00.recon.wav").stat().st_mtime_ns
    time.sleep(0.01)
    assert vaefix([*argv, "--overwrite"]) == 0
    assert len(write_log) == 10 and (out / "clip00.recon.wav").stat().st_mtime_ns != before
    _check_outputs(out, {**expected, "late": 2400})
    assert json.loads((out / "summary.json").read_text())["resume"]["skipped_complete"] == 0


def test_inputs_removed_since_the_last_run_leave_the_table(tmp_path, tiny_model_dir):
    expected = _corpus(tmp_path / "in", 3)
    out = tmp_path / "out"
    argv = ["reconstruct", str(tmp_path / "in"), "--model", str(tiny_model_dir), "--out", str(out),
            "--num-workers", "0", "--accelerator", "cpu"]  # fmt: skip
    assert vaefix(argv) == 0
    (tmp_path / "in" / "clip01.wav").unlink()
    assert vaefix(argv) == 0
    assert [r["id"] for r in _read_csv(out / "metrics.csv")] == sorted(set(expected) - {"clip01"})


def test_ddp_rerun_skips_the_same_items_on_every_rank(tmp_path, tiny_model_dir):
    expected = _corpus(tmp_path / "in", 6)
    out = tmp_path / "out"
    base = ["reconstruct", str(tmp_path / "in"), "--model", str(tiny_model_dir), "--out", str(out),
            "--batch-size", "1", "--num-workers", "0", "--accelerator", "cpu"]  # fmt: skip
    assert vaefix(base) == 0
    lost = ["clip01", "clip03", "clip04"]
    for i in lost:
        (out / f"{i}.recon.wav").unlink()
    done = sorted(set(expected) - set(lost))
    mtimes = {i: (out / f"{i}.recon.wav").stat().st_mtime_ns for i in done}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *base, "--devices", "2"],
        # Lightning's DDP (it relaunches this script, whose writer logs its WAV writes); the launcher's
        # ranks (`vaefix reconstruct --devices 2` without Lightning) are checked in tests/test_launch.py
        env={**_env(tmp_path / "log"), "VAEFIX_RUNNER": "lightning"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    logs = sorted((tmp_path / "log").glob("*.log"))
    ranks = {f.name.split("-")[0] for f in logs}
    assert ranks <= {"rank0", "rank1"}
    written = _logged_ids(tmp_path / "log", out)
    assert sorted(written) == sorted(lost * 2)  # each lost item once (two WAVs), on one rank only
    assert {i: (out / f"{i}.recon.wav").stat().st_mtime_ns for i in done} == mtimes
    _check_outputs(out, expected)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resume"]["skipped_complete"] == 3 and summary["timing"]["world_size"] == 2
