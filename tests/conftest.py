from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/signals.py and other test helpers

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# Inductor probes the CPU's vector ISAs by compiling and loading a test program per ISA in a fresh
# Python, once per process and cache folder: seconds in every compiling test process on the 2-core
# CI box. Trust torch's own CPU detection instead (tests only; the package leaves the probe on).
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")


def _torchaudio_error() -> str | None:
    """Why ``import torchaudio`` fails (an ABI mismatch with torch), or ``None``."""
    try:
        import torchaudio  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means a broken install
        return f"{type(e).__name__}: {e}"
    return None


_BROKEN_INSTALL = _torchaudio_error()
if _BROKEN_INSTALL:
    # Every other module imports vaefix_pl, which imports torchaudio: collect only the install test,
    # so a broken pair is one clear failure instead of a collection error in every file.
    collect_ignore_glob = [
        p.name for p in Path(__file__).parent.glob("test_*.py") if p.name != "test_install.py"
    ]


def pytest_report_header(config):
    if _BROKEN_INSTALL:
        return [
            f"BROKEN INSTALL, only test_install.py is collected: torchaudio does not load ({_BROKEN_INSTALL})"
        ]
    return None


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Tiny AudioLDM2-shaped models in diffusers format, written once per session."""
    from vaefix_pl.testing import write_tiny_audioldm2

    return write_tiny_audioldm2(tmp_path_factory.mktemp("tiny_audioldm2"), seed=0)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request) -> torch.device:
    """Runs a test on the CPU and, where CUDA exists, again on the GPU."""
    return torch.device(request.param)
