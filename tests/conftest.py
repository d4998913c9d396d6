from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/signals.py and other test helpers

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


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
