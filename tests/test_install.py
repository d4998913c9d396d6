"""The install itself: torch and torchaudio are the verified pair, and torchaudio's compiled ops run.

A torchaudio built against another torch fails at ``import torchaudio`` with an undefined symbol in
``libtorchaudio.so`` (torchaudio 2.11.1 over torch 2.11.0). ``conftest.py`` then collects this file
alone, so a broken install shows as these failures and not as collection errors everywhere.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def _pinned(name: str) -> str:
    """The exact version ``constraints.txt`` pins for ``name``."""
    m = re.search(rf"^{re.escape(name)}==([^\s;]+)", CONSTRAINTS.read_text(), flags=re.MULTILINE)
    assert m, f"constraints.txt pins no {name}"
    return m.group(1)


@pytest.mark.parametrize("name", ["torch", "torchaudio"])
def test_installed_pair_is_the_pinned_pair(name):
    installed = importlib.metadata.version(name).split("+")[0]  # drop the local tag (+cpu, +cu130)
    assert installed == _pinned(name), (
        f"{name} {installed} is installed but constraints.txt pins {_pinned(name)}: "
        "reinstall with `make install` (pip install -c constraints.txt ...)"
    )


def _torchaudio():
    """``import torchaudio``, or one failure line that names both versions and the loader's reason."""
    try:
        import torchaudio

        return torchaudio
    except Exception as e:  # noqa: BLE001 - OSError from dlopen, or an ImportError
        reason = str(e.__cause__ or e)
    pytest.fail(
        f"torchaudio {importlib.metadata.version('torchaudio')} does not load on torch {torch.__version__}: "
        f"{reason} -- install the pinned pair: make install (constraints.txt)",
        pytrace=False,
    )


def test_torchaudio_compiled_lfilter_matches_scipy():
    torchaudio = _torchaudio()

    b, a = scipy.signal.butter(4, [0.05, 0.3], btype="band")
    x = np.random.default_rng(0).standard_normal(4000)
    got = torchaudio.functional.lfilter(
        torch.from_numpy(x), torch.from_numpy(a), torch.from_numpy(b), clamp=False
    ).numpy()
    np.testing.assert_allclose(got, scipy.signal.lfilter(b, a, x), atol=1e-10)


def test_torchaudio_resample_keeps_a_band_limited_tone():
    torchaudio = _torchaudio()

    sr_in, sr_out, f = 44100, 16000, 440.0
    t_in = np.arange(sr_in) / sr_in
    y = torchaudio.functional.resample(torch.from_numpy(np.sin(2 * np.pi * f * t_in)), sr_in, sr_out).numpy()
    assert y.shape == (sr_out,)
    t_out = np.arange(sr_out) / sr_out
    mid = slice(1000, sr_out - 1000)  # away from the zero-padded edges of the sinc kernel
    np.testing.assert_allclose(y[mid], np.sin(2 * np.pi * f * t_out)[mid], atol=2e-3)


def test_make_install_stops_with_one_line_when_the_disk_is_too_full(tmp_path):
    """The Makefile's free-disk check runs before the venv is made: one line naming what is needed
    and what is free, a non-zero exit, and no half-made ``.venv``."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "venv"
    proc = subprocess.run(
        ["make", "-s", "install", f"VENV={venv}", "MIN_FREE_GB=1000000000"],
        cwd=CONSTRAINTS.parent, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    first = proc.stderr.strip().splitlines()[0]
    assert re.fullmatch(
        r"make install: needs about 1000000000 GB of free disk for \.venv, [\d.]+ GB free here", first
    )
    assert not venv.exists()
