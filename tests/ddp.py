"""Run ``ddp_predict_script.py`` (2 gloo processes, the writer's WAV calls logged) on harmonic clips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf
from signals import harmonic

ROOT = Path(__file__).resolve().parents[1]


def run_ddp_predict(tmp_path: Path, model: Path, lengths: list[int]) -> Path:
    """Write ``clip<i>.wav`` of ``lengths`` samples (16 kHz) and reconstruct them on 2 CPU ranks; the output folder."""
    inputs = tmp_path / "in"
    inputs.mkdir(exist_ok=True)
    for i, n in enumerate(lengths):
        sf.write(inputs / f"clip{i}.wav", harmonic(n, f0=100 + 30 * i), 16000)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_predict_script.py"), "--model", str(model),
         "--inputs", str(inputs), "--out", str(out)],
        check=True, env=env, timeout=600,
    )  # fmt: skip
    return out
