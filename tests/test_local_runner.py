"""``vaefix reconstruct`` on one device runs the plain loop (``vaefix_pl.pipeline.local``), without Lightning;
it must write what the Lightning path writes, resume the Lightning path's runs and vice versa."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vaefix_pl.cli import main

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("predict", "wall", "x_realtime", "waited", "tail")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Three clips of different lengths and content (a tone, a chirp, noise)."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    for i, seconds in enumerate((0.7, 1.3, 2.1)):
        t = np.arange(int(seconds * 16000)) / 16000
        x = [0.2 * np.sin(2 * np.pi * 330 * t), 0.2 * np.sin(2 * np.pi * (200 + 900 * t) * t),
             0.05 * rng.standard_normal(t.size)][i]  # fmt: skip
        sf.write(folder / f"c{i}.wav", x.astype(np.float32), 16000)
    return folder


def _run(clips: Path, out: Path, model: Path, runner: str, monkeypatch, *extra: str) -> int:
    monkeypatch.setenv("VAEFIX_RUNNER", runner)
    return main(
        ["reconstruct", str(clips), "--model", str(model), "--out", str(out), "--accelerator", "cpu", *extra]
    )


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _settings(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())["settings"]
    s["writer"].pop("output_dir")
    return s


def test_plain_loop_writes_what_lightning_writes(clips, tmp_path, tiny_model_dir, monkeypatch):
    a, b = tmp_path / "plain", tmp_path / "lightning"
    assert _run(clips, a, tiny_model_dir, "plain", monkeypatch, "--repair") == 0
    assert _run(clips, b, tiny_model_dir, "lightning", monkeypatch, "--repair") == 0
    rows_a, rows_b = _rows(a), _rows(b)
    assert [r["id"] for r in rows_a] == ["c0", "c1", "c2"] == [r["id"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        for key in ra:
            if key.startswith(TIMING) or key in ("src_mtime_ns",):
                continue
            va, vb = ra[key], rb[key]
            try:  # same code on the same CPU: equal to float rounding
                assert float(va) == pytest.approx(float(vb), rel=1e-5, abs=1e-6), key
            except ValueError:
                assert va == vb, key
    assert _settings(a) == _settings(b)
    for name in ("c1.recon.wav", "c1.post.wav", "c1.original.wav"):
        xa, ra = sf.read(a / name)
        xb, rb = sf.read(b / name)
        assert ra == rb and xa.shape == xb.shape
        np.testing.assert_allclose(xa, xb, atol=1e-6)


@pytest.mark.parametrize("first, second", [("plain", "lightning"), ("lightning", "plain")])
def test_each_runner_resumes_the_others_run(
    first, second, clips, tmp_path, tiny_model_dir, monkeypatch, caplog
):
    out = tmp_path / "out"
    assert _run(clips, out, tiny_model_dir, first, monkeypatch) == 0
    before = (out / "metrics.csv").read_text()
    caplog.clear()
    assert _run(clips, out, tiny_model_dir, second, monkeypatch) == 0
    assert "3 of 3 inputs already complete" in caplog.text  # same settings fingerprint on both paths
    assert (out / "metrics.csv").read_text() == before


def test_one_device_run_imports_no_lightning(clips, tmp_path, tiny_model_dir):
    code = (
        "import sys; from vaefix_pl.cli import main; "
        f"rc = main(['reconstruct', {str(clips / 'c0.wav')!r}, '--model', {str(tiny_model_dir)!r}, "
        f"'--out', {str(tmp_path / 'o')!r}, '--accelerator', 'cpu']); "
        "print(sorted(m for m in ('lightning', 'torchmetrics', 'pytorch_lightning') if m in sys.modules)); "
        "sys.exit(rc)"
    )
    env = {k: v for k, v in os.environ.items() if k != "VAEFIX_RUNNER"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "o" / "c0.recon.wav").is_file()


def test_gpu_accelerator_without_cuda_is_one_line(clips, tmp_path, tiny_model_dir, monkeypatch, capfd):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.delenv("VAEFIX_RUNNER", raising=False)
    rc = main(["reconstruct", str(clips), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"),
               "--accelerator", "gpu"])  # fmt: skip
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no CUDA device" in err[0]


def test_one_batch_is_decoded_without_worker_processes(clips):
    from vaefix_pl.data.inputs import AudioInputs

    one = AudioInputs(inputs=str(clips), batch_size=8)  # 3 inputs, one batch: no workers to start
    one.setup("predict")
    assert one.predict_dataloader().num_workers == 0
    many = AudioInputs(inputs=str(clips), batch_size=1)  # 3 batches: the resolved worker count
    many.setup("predict")
    assert many.predict_dataloader().num_workers == many.num_workers >= 1
    fixed = AudioInputs(inputs=str(clips), batch_size=8, num_workers=2)  # a number is used as given
    fixed.setup("predict")
    assert fixed.predict_dataloader().num_workers == 2


@pytest.mark.parametrize("flag, value, arg", [("none", None, "null"), ("5.12", 5.12, "5.12")])
def test_window_seconds_flag_reaches_both_runners(flag, value, arg):
    from vaefix_pl.cli.commands import _reconstruct_parser, reconstruct_args, reconstruct_settings

    ns = _reconstruct_parser().parse_args(["a.wav", "--window-seconds", flag])
    assert reconstruct_settings(ns)["model"]["window_seconds"] == value  # the plain loop's keyword
    assert f"--model.window_seconds={arg}" in reconstruct_args(ns)  # LightningCLI's argument
    unset = _reconstruct_parser().parse_args(["a.wav"])
    assert "window_seconds" not in reconstruct_settings(unset)["model"]  # the class default applies
