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


def test_needs_source_compile_follows_what_cpython_accepts(tmp_path, monkeypatch):
    """A module without .pyc, with one written by py_compile into a bytecode-cache prefix, and with
    its source changed afterwards (the .pyc then no longer matches, as CPython's own check says)."""
    import importlib.util
    import os
    import py_compile

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from pyc_cache import needs_source_compile
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    pkg = tmp_path / "site" / "vaefix_probe_mod"
    pkg.mkdir(parents=True)
    src = pkg / "__init__.py"
    src.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    prefix = tmp_path / "pyc"
    assert needs_source_compile("vaefix_probe_mod", str(prefix))
    monkeypatch.setattr(sys, "pycache_prefix", str(prefix))
    py_compile.compile(str(src), cfile=importlib.util.cache_from_source(str(src)), doraise=True)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    assert not needs_source_compile("vaefix_probe_mod", str(prefix))
    assert needs_source_compile("vaefix_probe_mod", None)  # nothing in __pycache__ beside the source
    src.write_text("X = 22\n")  # other size
    os.utime(src, (1, 1))  # and other mtime
    assert needs_source_compile("vaefix_probe_mod", str(prefix))
    assert not needs_source_compile("sys")  # built in: never compiled from source


def test_every_eager_rewrites_variant_is_a_valid_optimize_call():
    """benchmarks/eager_rewrites.py: each variant's settings are optimize() arguments, never compiled,
    autotuning off; "auto-now" is what `speed: auto` applies and "auto" the preset before it."""
    import inspect
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from eager_rewrites import VARIANTS, settings_of

    from vaefix_pl.core.config import SPEED_PRESETS, speed_settings
    from vaefix_pl.core.reconstruct import Reconstructor

    accepted = set(inspect.signature(Reconstructor.optimize).parameters) - {"self"}
    for precision in ("fp32", "bf16"):
        for name in VARIANTS:
            s = settings_of(name, precision)
            assert set(s) <= accepted, name
            assert not s.get("compile") and s["cudnn_benchmark"] is False
        assert settings_of("auto-now", precision) == {
            **speed_settings("auto", precision),
            "cudnn_benchmark": False,
        }
        assert settings_of("auto", precision) == {**SPEED_PRESETS["auto"], "cudnn_benchmark": False}
    assert settings_of("all-h100table", "fp32")["narrow_convs"][(64, 3)] == "phase2"


def test_bare_gap_smoke_and_kernel_categories(tmp_path):
    """benchmarks/bare_gap.py on the CPU (tiny models): both lengths placements are timed and saved; the
    kernel categoriser puts Inductor's fused-convolution names under Triton, not under convolutions."""
    import json

    out = tmp_path / "gap.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bare_gap.py"),
            "--smoke",
            "--config",
            "fp32",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert set(got["x_real_time"]) == {"device", "host"} and all(
        len(v) == 2 for v in got["x_real_time"].values()
    )
    assert all(x > 0 for v in got["x_real_time"].values() for x in v)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bare_gap import category

    assert category("triton_poi_fused__to_copy_convolution_div_leaky_relu_1") == "triton"
    assert category("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc") == "convolution"
    assert category("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT") == "gemm"
    assert (
        category("void at::native::elementwise_kernel<128, 2, ...>")
        == "other (eager element-wise, reductions)"
    )
