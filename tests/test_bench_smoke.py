"""The whole-run benchmark's CPU smoke mode: every `vaefix reconstruct` row and the hand-written loop
finish, write one reconstruction per input, and the table is printed (what a GPU run relies on)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cli_wall_smoke(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "cli_wall.py"),
            "--smoke",
            "--work",
            str(tmp_path),
            "--json",
            str(tmp_path / "rows.json"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert {(r["config"], r["n"]) for r in rows} == {
        ("seed-style loop", 1),
        ("seed-style loop", 3),
        ("fp32", 1),
        ("fp32", 3),
    }
    for r in rows:
        assert r["rc"] == 0 and r["recon_files"] == r["n"], r
        assert 0 < r["first_recon_s"] <= r["wall_s"]
    assert "| fp32 | 3 |" in proc.stdout
