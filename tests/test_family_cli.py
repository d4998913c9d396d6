"""The whole ``vaefix reconstruct`` on a tiny model of every geometry (and a converted original checkpoint):
outputs at the model's rate, of the input's length, finite, and the checkpoint's own scaling_factor recorded."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from vaefix_pl.testing import geometry_configs, write_tiny_geometry, write_tiny_original_ldm

SCALING = 0.8125  # distinctive: no real checkpoint has it, so a recorded value must come from the config
ROOT = Path(__file__).resolve().parents[1]


def _set_scaling(folder: Path, value: float = SCALING) -> Path:
    cfg_path = folder / "vae" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["scaling_factor"] = value
    cfg_path.write_text(json.dumps(cfg))
    return folder


def _wav_44k(path: Path, seconds: float = 0.6) -> Path:
    t = np.arange(int(seconds * 44100)) / 44100
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.shape)
    sf.write(path, x.astype(np.float32), 44100, subtype="FLOAT")
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vaefix_pl.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def _model(tmp_path: Path, kind: str) -> tuple[Path, int]:
    if kind == "converted_48k":
        from vaefix_pl.convert import convert_checkpoint

        src = write_tiny_original_ldm(tmp_path / "orig.ckpt", "audioldm_48k", scale_factor=SCALING)
        out = tmp_path / "converted"
        convert_checkpoint(src, out)
        return out, 48000
    folder = _set_scaling(write_tiny_geometry(tmp_path / kind, kind))
    return folder, geometry_configs(kind)[1]["sampling_rate"]


@pytest.mark.parametrize("kind", ["audioldm_16k", "audioldm_48k", "converted_48k"])
def test_reconstruct_cli_on_every_geometry(tmp_path, kind):
    model, rate = _model(tmp_path, kind)
    wav = _wav_44k(tmp_path / "in.wav")
    out = tmp_path / "out"
    proc = _run("reconstruct", str(wav), "--model", str(model), "--out", str(out), "--num-workers", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]

    x44, _ = sf.read(wav)
    # the input's length at the model's rate (the loader resamples 44.1 kHz -> rate)
    expected = int(math.ceil(len(x44) * rate / 44100))
    for tag in ("recon", "original"):
        info = sf.info(out / f"in.{tag}.wav")
        assert info.samplerate == rate
        assert abs(info.frames - expected) <= 1, (info.frames, expected)
        y, _ = sf.read(out / f"in.{tag}.wav")
        assert np.isfinite(y).all()
    # the reference written is the input resampled to the model's rate (independent resampler)
    ref, _ = sf.read(out / "in.original.wav")
    g = math.gcd(44100, rate)
    indep = resample_poly(x44, rate // g, 44100 // g)[: len(ref)]
    mid = slice(len(ref) // 4, 3 * len(ref) // 4)
    corr = np.corrcoef(ref[mid], indep[mid])[0, 1]
    assert corr > 0.99

    summary = json.loads((out / "summary.json").read_text())
    rec = summary["settings"]["module"]["reconstructor"]
    assert rec["scaling_factor"] == SCALING
    assert rec["sample_rate"] == rate
    assert rec["geometry"] == ("audioldm_16k" if rate == 16000 else "audioldm_48k")
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1
    assert float(rows[0]["scaling_factor"]) == SCALING
    assert rows[0]["geometry"] == rec["geometry"]
    assert math.isclose(float(rows[0]["seconds"]), len(x44) / 44100, abs_tol=2 / rate)


def test_unsupported_geometry_is_one_line_nonzero_exit(tmp_path):
    folder = write_tiny_geometry(tmp_path / "m", "audioldm_16k")
    voc = folder / "vocoder" / "config.json"
    cfg = json.loads(voc.read_text())
    cfg.update(
        sampling_rate=22050,
        model_in_dim=80,
        upsample_rates=[8, 8, 2, 2],
        upsample_kernel_sizes=[16, 16, 4, 4],
    )
    voc.write_text(json.dumps(cfg))
    wav = _wav_44k(tmp_path / "in.wav", 0.3)
    proc = _run("reconstruct", str(wav), "--model", str(folder), "--out", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "22050" in ln]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "not supported" in lines[0] and "48000 Hz/256 mels/hop 480" in lines[0]
    assert "16000 Hz/64 mels/hop 160" in lines[0]
