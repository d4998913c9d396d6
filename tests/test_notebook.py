"""notebooks/quickstart.ipynb executes top to bottom (tiny models), so it never rots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def _text(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        out.append(o.get("text", ""))
        out.extend(str(v) for k, v in o.get("data", {}).items() if k in ("text/plain", "text/markdown"))
    return "".join(out)


def test_quickstart_notebook_runs(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VAEFIX_NOTEBOOK_TINY", "1")  # CI: tiny models on the CPU, whatever the cache holds
    monkeypatch.setenv("VAEFIX_MODEL", str(tiny_model_dir))  # the session's tiny models: no second write
    # the kernel runs in a temporary folder; it imports this checkout's package even when not pip-installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit the notebook without outputs"
    )
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError with the cell's traceback on any failure
    code = [c for c in nb.cells if c.cell_type == "code"]
    text = "\n".join(_text(c) for c in code)
    assert "TINY RANDOM MODELS" in text
    assert "mel_distance" in text  # the score table
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)  # the figure
    assert "(a) vocoder on the true mel" in text and "(d) full pipeline + repair chain" in text
    assert "verdict: transposed" in text and "verdict: log10" in text
    assert "corrected mel matches ours: True" in text
    assert "report.html" in text
