"""The persistent compile cache: reuse across processes, keying, corrupt entries rebuilt."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vaefix_pl.core import compile_cache as cc

SCRIPT = Path(__file__).with_name("compile_cache_script.py")


def _run(root: Path, channels: int, path: str = "torch.compile") -> dict:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(root), str(channels), path],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fake_model(folder: Path, hop: int = 160) -> Path:
    for sub, weights in (("vae", "diffusion_pytorch_model.safetensors"), ("vocoder", "model.safetensors")):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / "config.json").write_text(json.dumps({"hop": hop, "sub": sub}))
        (folder / sub / weights).write_bytes(b"w" * 10)
    return folder


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VAEFIX_CACHE_DIR", str(tmp_path / "c"))
    assert cc.cache_root() == tmp_path / "c" / "compile"
    monkeypatch.delenv("VAEFIX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cc.cache_root() == tmp_path / "x" / "vaefix" / "compile"


def test_key_changes_with_model_config_weights_precision_settings(tmp_path):
    m = _fake_model(tmp_path / "m")
    fp = cc.model_fingerprint(m)
    k0, parts = cc.cache_key(fp, "cpu", "fp32", {"speed": "compile", "frames": 1024})
    assert parts["torch"] and cc.cache_key(fp, "cpu", "fp32", {"speed": "compile", "frames": 1024})[0] == k0
    assert cc.cache_key(fp, "cpu", "bf16", {"speed": "compile", "frames": 1024})[0] != k0
    assert cc.cache_key(fp, "cpu", "fp32", {"speed": "compile", "frames": 512})[0] != k0
    (m / "vocoder" / "config.json").write_text(json.dumps({"hop": 256, "sub": "vocoder"}))
    assert cc.model_fingerprint(m) != fp
    fp2 = cc.model_fingerprint(m)
    (m / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"w" * 11)  # new size
    assert cc.model_fingerprint(m) != fp2


def test_key_changes_with_the_packages_own_code(tmp_path, monkeypatch):
    """An edited or upgraded vaefix (its networks or speed rewrites) gets a new key: the old artefacts
    were traced from other code."""
    src = tmp_path / "core"
    src.mkdir()
    (src / "speed.py").write_text("def f(x):\n    return x\n")
    (src / "nets.py").write_text("W = 1\n")
    fp = cc.code_fingerprint(src)
    assert cc.code_fingerprint(src) == fp and len(fp) == 64
    (src / "speed.py").write_text("def f(x):\n    return x + 1\n")
    assert cc.code_fingerprint(src) != fp
    (src / "speed.py").write_text("def f(x):\n    return x\n")
    assert cc.code_fingerprint(src) == fp
    (src / "extra.py").write_text("")
    assert cc.code_fingerprint(src) != fp
    # the default covers vaefix_pl/core, and cache_key holds it
    real = Path(cc.__file__).resolve().parent
    assert cc.code_fingerprint() == cc.code_fingerprint(real)
    k0, parts = cc.cache_key("m", "cpu", "fp32", {"speed": "compile"})
    assert parts["code"] == cc.code_fingerprint()
    monkeypatch.setattr(cc, "_CODE_FP", "0" * 64)
    assert cc.cache_key("m", "cpu", "fp32", {"speed": "compile"})[0] != k0


def test_verify_detects_corrupt_missing_and_unsealed(tmp_path):
    cache = cc.CompileCache(tmp_path / "k")
    assert cache.verify() is None  # new folder
    entry = cache.inductor_dir / "ab" / "entry.py"
    entry.parent.mkdir(parents=True)
    entry.write_text("x = 1\n")
    assert cache.verify() == "unsealed"
    cache.seal()
    assert cache.verify() is None
    entry.write_text("x = 2\n")
    assert cache.verify() == "corrupt"
    cache.seal()
    entry.unlink()
    assert cache.verify() == "corrupt"
    (cache.path / cc.MANIFEST).write_text("{not json")
    assert cache.verify() == "corrupt"
    cache.activate(seal_at_exit=False)
    try:
        assert cache.rebuilt == "corrupt" and cache.inductor_dir.is_dir()
        assert not list(cache.inductor_dir.rglob("*"))
        import os

        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache.inductor_dir)
        # one Triton folder for every GPU index (Inductor's default is triton/<index>/ per device)
        assert os.environ["TRITON_CACHE_DIR"] == str(cache.inductor_dir / "triton" / "all")
    finally:
        cache.deactivate()
    assert os.environ.get("TRITON_CACHE_DIR") != str(cache.inductor_dir / "triton" / "all")  # restored


def test_info_and_clear(tmp_path):
    a = cc.compile_cache_for(None, "cpu", "fp32", {"n": 1}, model_config={"c": 1}, root=tmp_path)
    b = cc.compile_cache_for(None, "cpu", "fp32", {"n": 1}, model_config={"c": 2}, root=tmp_path)
    assert a.path != b.path
    for c in (a, b):
        c.activate(seal_at_exit=False)
        (c.inductor_dir / "f").write_bytes(b"12345")
        c.seal()
        c.deactivate()
    rows = cc.cache_info(tmp_path)
    assert {r["key"] for r in rows} == {a.path.name, b.path.name}
    assert all(r["sealed"] and r["bytes"] > 5 and r["meta"]["precision"] == "fp32" for r in rows)
    assert cc.clear_cache(a.path.name, root=tmp_path) > 0
    assert [r["key"] for r in cc.cache_info(tmp_path)] == [b.path.name]
    cc.clear_cache(root=tmp_path)
    assert cc.cache_info(tmp_path) == []


@pytest.mark.slow
def test_second_process_reuses_and_corrupt_entry_is_rebuilt(tmp_path):
    first = _run(tmp_path, 4)
    assert first["miss"] >= 1 and first["hit"] == 0 and first["diff"] == 0.0
    second = _run(tmp_path, 4)  # a fresh process: Inductor's FX graph comes from our folder
    assert second["key_dir"] == first["key_dir"]
    assert second["hit"] >= 1 and second["miss"] == 0 and second["rebuilt"] is None
    # and AOTAutograd's graph too (a frozen graph bypasses that cache: docs/STARTUP.md)
    assert second["aot_hit"] >= 1 and second["aot_miss"] == 0
    # Corrupt every FX-graph entry on disk: the next process must notice, rebuild and still compute.
    entries = [p for p in (Path(first["key_dir"]) / "inductor" / "fxgraph").rglob("*") if p.is_file()]
    assert entries
    for p in entries:
        p.write_bytes(b"\x00garbage")
    third = _run(tmp_path, 4)
    assert third["rebuilt"] == "corrupt" and third["miss"] >= 1 and third["hit"] == 0
    assert third["diff"] == 0.0


@pytest.mark.slow
def test_second_process_loads_the_precompiled_artefact_and_a_corrupt_one_fails_the_manifest(tmp_path):
    """CUDA's default path (no packages): the first process saves ``aot_compile`` artefacts into the
    key folder, the next loads them without compiling (no Inductor or AOTAutograd cache lookups at
    all), and a damaged artefact fails the manifest (a folder that fails it is wiped and rebuilt:
    ``test_second_process_reuses_and_corrupt_entry_is_rebuilt``)."""
    first = _run(tmp_path, 4, "precompile")
    assert first["stats"] == {"precompiled": 1} and first["diff"] == 0.0
    saved = list(Path(first["key_dir"]).rglob("*.precompiled"))
    assert [p.parent.name for p in saved] == ["aoti"]
    second = _run(tmp_path, 4, "precompile")
    assert second["key_dir"] == first["key_dir"] and second["rebuilt"] is None
    assert second["stats"] == {"precompiled_loaded": 1} and second["diff"] == 0.0
    assert second["aot_miss"] == second["miss"] == 0  # nothing was compiled
    assert cc.CompileCache(first["key_dir"]).verify() is None
    saved[0].write_bytes(b"\x00garbage")
    assert cc.CompileCache(first["key_dir"]).verify() == "corrupt"


@pytest.mark.slow
def test_changed_model_config_does_not_reuse(tmp_path):
    first = _run(tmp_path, 4)
    other = _run(tmp_path, 8)
    assert other["key_dir"] != first["key_dir"]
    assert other["hit"] == 0 and other["miss"] >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [Path(first["key_dir"]).name, Path(other["key_dir"]).name]
    )


def test_unsealed_folder_of_a_live_process_is_shared_of_a_dead_one_rebuilt(tmp_path):
    import os
    import socket

    cache = cc.CompileCache(tmp_path / "k")
    entry = cache.inductor_dir / "ab" / "entry.py"
    entry.parent.mkdir(parents=True)
    entry.write_text("x = 1\n")
    (cache.path / cc.OWNER).write_text(f"{socket.gethostname()} {os.getppid()}")  # alive, not us
    cache.activate(seal_at_exit=False)
    cache.deactivate()
    assert cache.rebuilt is None and entry.exists()
    (cache.path / cc.OWNER).write_text(f"{socket.gethostname()} 999999999")  # no such process
    cache.activate(seal_at_exit=False)
    cache.deactivate()
    assert cache.rebuilt == "unsealed" and not entry.exists()


def test_half_written_leftovers_of_a_killed_run_are_swept_when_old(tmp_path):
    """A run killed while saving a precompiled artefact or building a package leaves ``*.tmp``,
    ``*.partial.pt2`` or a ``.build.<pid>`` folder in ``aoti/``: an hour later the next activation
    deletes them; fresh ones (a live run saving now) and the artefacts themselves stay."""
    import os
    import time

    cache = cc.CompileCache(tmp_path / "k")
    aoti_dir = cache.path / "aoti"
    (aoti_dir / ".build.123" / "x").mkdir(parents=True)
    old = [
        aoti_dir / "v-1x2.precompiled.123.tmp",
        aoti_dir / "v-1x2.123.partial.pt2",
        aoti_dir / ".build.123",
    ]
    for p in old[:2]:
        p.write_bytes(b"half")
    fresh = aoti_dir / "v-1x2.precompiled.456.tmp"
    fresh.write_bytes(b"being written")
    kept = aoti_dir / "v-1x2.precompiled"
    kept.write_bytes(b"artefact")
    hour_ago = time.time() - 2 * cc.TEMP_MAX_AGE_S
    for p in [*old, kept]:
        os.utime(p, (hour_ago, hour_ago))
    cache.activate(seal_at_exit=False)
    cache.deactivate()
    assert not any(p.exists() for p in old)
    assert fresh.exists() and kept.read_bytes() == b"artefact"
