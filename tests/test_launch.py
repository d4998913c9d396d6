"""``vaefix reconstruct --devices N``: one plain-loop process per device, started together
(``vaefix_pl.pipeline.launch``), each input exactly once, one merged table equal to a one-process run's."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vaefix_pl.core.errors import SettingsError
from vaefix_pl.pipeline.launch import RANK_VARS, launch, plan_devices, rank_and_world, visible_gpus

ROOT = Path(__file__).resolve().parents[1]


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "metrics.csv", newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def _vaefix(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    for k in RANK_VARS:
        env.pop(k, None)
    return subprocess.run(
        [sys.executable, "-m", "vaefix_pl.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Seven clips of mixed lengths (0.3-3.5 s) and content."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(1)
    for i, seconds in enumerate((0.3, 3.5, 0.8, 1.7, 0.5, 2.6, 1.1)):
        t = np.arange(int(seconds * 16000)) / 16000
        x = 0.2 * np.sin(2 * np.pi * (150 + 70 * i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(folder / f"m{i}.wav", x.astype(np.float32), 16000)
    return folder


def test_two_ranks_write_each_input_once_and_match_one_process(mixed, tmp_path, tiny_model_dir):
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--model", str(tiny_model_dir), "--accelerator", "cpu", "--batch-size", "2"]
    r1 = _vaefix("reconstruct", str(mixed), "--out", str(one), *common)
    r2 = _vaefix("reconstruct", str(mixed), "--out", str(two), "--devices", "2", *common)
    assert r1.returncode == 0, r1.stderr[-2000:]
    assert r2.returncode == 0, r2.stderr[-2000:]
    # one summary, printed once (rank 0), one progress bar
    assert r2.stdout.count("7 clips reconstructed") == 1
    a, b = _rows(one), _rows(two)
    assert sorted(b) == sorted(a) == [f"m{i}" for i in range(7)]
    for k in a:  # the same numbers whatever rank and batch-mates an item had
        for name in ("mel_distance", "snr", "lsd", "clicks_added_per_s", "seconds"):
            assert float(b[k][name]) == pytest.approx(float(a[k][name]), rel=1e-3, abs=1e-4), (k, name)
    assert len(list(two.glob("*.recon.wav"))) == len(list(two.glob("*.original.wav"))) == 7
    assert not (two / ".parts").exists()
    summary = json.loads((two / "summary.json").read_text())
    assert summary["n_ok"] == 7 and summary["timing"]["world_size"] == 2
    ranks = summary["timing"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and sum(r["items"] for r in ranks) == 7
    # balanced by audio seconds: the spread is at most the longest item
    spread = abs(ranks[0]["audio_s"] - ranks[1]["audio_s"])
    assert spread <= 3.5 + 1e-6, ranks


def test_a_resumed_launch_redoes_only_what_is_missing(mixed, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    common = ["--model", str(tiny_model_dir), "--accelerator", "cpu", "--devices", "2"]
    assert _vaefix("reconstruct", str(mixed), "--out", str(out), *common).returncode == 0
    (out / "m5.recon.wav").unlink()  # a lost WAV: m5 is incomplete, the others are not
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")}
    r = _vaefix("reconstruct", str(mixed), "--out", str(out), *common)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "6 of 7 inputs already complete" in r.stderr
    rewritten = sorted(p.name for p in out.glob("*.wav") if kept.get(p.name) != p.stat().st_mtime_ns)
    assert rewritten == ["m5.original.wav", "m5.recon.wav"]  # on one rank, once
    rows = _rows(out)
    del rows["m3"]  # as if m3 had not been written
    with open(out / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(next(iter(rows.values()))))
        w.writeheader()
        w.writerows(rows.values())
    r = _vaefix("reconstruct", str(mixed), "--out", str(out), *common)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "6 of 7 inputs already complete" in r.stderr
    assert sorted(_rows(out)) == [f"m{i}" for i in range(7)]


def test_the_first_failing_rank_stops_the_others_and_sets_the_exit_code():
    # rank 1 fails at once; rank 0 would sleep a minute: the launcher must stop it and return 3
    prog = [sys.executable, "-c",
            "import os, sys, time; r = int(os.environ['RANK']); assert os.environ['WORLD_SIZE'] == '2';"
            " sys.exit(3) if r == 1 else time.sleep(60)"]  # fmt: skip
    t = time.monotonic()
    assert launch([], 2, None, program=prog) == 3
    assert time.monotonic() - t < 30


def test_a_rank_killed_by_a_signal_is_one_line_and_exit_1(capfd):
    prog = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    assert launch([], 2, ["0", "1"], program=prog) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "killed by signal 9" in err[0] and "(GPU" in err[0]


def test_each_rank_gets_its_own_gpu_and_the_torchrun_variables():
    prog = [sys.executable, "-c",
            "import os, sys; r = os.environ['RANK'];"
            " sys.exit(0 if os.environ['CUDA_VISIBLE_DEVICES'] == ['5', '7'][int(r)]"
            " and os.environ['LOCAL_RANK'] == r and os.environ['MASTER_PORT'].isdigit() else 9)"]  # fmt: skip
    assert launch([], 2, ["5", "7"], program=prog) == 0


def test_plan_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpus() == ["3", "5"]
    assert plan_devices("2", None) == (2, ["3", "5"])
    assert plan_devices("auto", "gpu") == (2, ["3", "5"])
    assert plan_devices(-1, None) == (2, ["3", "5"])
    assert plan_devices("1", None) == (1, ["3"])
    assert plan_devices("1,0", None) == (2, ["5", "3"])
    assert plan_devices("3", "cpu") == (3, None)
    for bad in ("3", "0", "x", "0,0", "0,2"):
        with pytest.raises(SettingsError):
            plan_devices(bad, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []
    assert plan_devices("auto", None) == (1, None)
    assert plan_devices("2", None) == (2, None)  # no GPU: CPU processes, as Lightning does
    with pytest.raises(SettingsError):
        plan_devices("2", "gpu")


def test_rank_and_world(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_and_world() == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_and_world() == (1, 2)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(SettingsError):
        rank_and_world()


def test_the_parent_does_not_import_torch():
    # the ranks start while the parent is still cheap: its imports must not include torch
    code = ("import sys; import vaefix_pl.cli.commands, vaefix_pl.pipeline.launch;"
            " sys.exit(1 if 'torch' in sys.modules else 0)")  # fmt: skip
    assert (
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode
        == 0
    )


def test_predict_with_two_devices_starts_its_ranks_together(mixed, tmp_path, tiny_model_dir):
    out = tmp_path / "p"
    r = _vaefix("predict", f"--data.inputs={mixed}", f"--model.model={tiny_model_dir}", f"--writer.output_dir={out}",
                "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("7 clips reconstructed") == 1
    assert sorted(_rows(out)) == [f"m{i}" for i in range(7)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timing"]["world_size"] == 2 and sum(q["items"] for q in summary["timing"]["ranks"]) == 7


def test_predict_launch_reads_configs_then_flags(tmp_path, monkeypatch):
    from vaefix_pl.cli.commands import _predict_launch, _trainer_settings

    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("trainer:\n  devices: 1\n  accelerator: gpu\n")
    b.write_text("trainer:\n  devices: -1\n  strategy: ddp\n  num_nodes: 1\n")
    assert _trainer_settings(["--config", str(a)]) == {"devices": 1, "accelerator": "gpu"}
    assert _predict_launch(["--config", str(a)]) is None  # one device: Lightning alone
    assert _predict_launch(["--config", str(a), "--config", str(b)]) == (3, ["0", "1", "2"])
    assert _predict_launch(["--config", str(b), "--trainer.devices", "2"]) == (2, ["0", "1"])
    assert _predict_launch([f"--config={b}", "--trainer.devices=[0, 2]"]) == (2, ["0", "2"])
    assert _predict_launch(["--config", str(b), "--trainer.num_nodes=2"]) is None  # a cluster launcher's job
    assert _predict_launch(["--config", str(b), "--trainer.strategy=fsdp"]) is None
    monkeypatch.setenv("VAEFIX_RUNNER", "lightning")
    assert _predict_launch(["--config", str(b)]) is None  # Lightning's own launcher, on request
    monkeypatch.delenv("VAEFIX_RUNNER")
    monkeypatch.setenv("RANK", "0")
    assert _predict_launch(["--config", str(b)]) is None  # already one rank of a launch
