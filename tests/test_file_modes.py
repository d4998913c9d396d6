"""Output files follow the user's umask (``0o666 & ~umask``, what ``open()`` gives a new file), not the
0600 that ``tempfile.mkstemp`` gives the temporary files they are written through."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vaefix_pl.data import audio as audio_module
from vaefix_pl.data.audio import write_wav
from vaefix_pl.runs.files import atomic_write_bytes, atomic_write_many, atomic_write_text


@pytest.fixture
def umask():
    """Set the process umask (and forget the cached file mode) for one test; restore both after."""
    old = os.umask(0o022)
    os.umask(old)

    def set_umask(value: int) -> None:
        os.umask(value)
        audio_module.new_file_mode.cache_clear()

    yield set_umask
    os.umask(old)
    audio_module.new_file_mode.cache_clear()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    files = [
        atomic_write_bytes(tmp_path / "a.bin", b"x"),
        atomic_write_text(tmp_path / "summary.json", "{}"),
        *atomic_write_many({tmp_path / "metrics.csv": "id\n", tmp_path / "summary.md": "#\n"}),
        write_wav(tmp_path / "clip.recon.wav", np.zeros(160, np.float32)),
    ]
    # the reference: a file created by plain open() under the same umask
    (tmp_path / "plain").write_text("x")
    assert _mode(tmp_path / "plain") == expected
    for f in files:
        assert _mode(f) == expected, f
    assert sf.info(str(tmp_path / "clip.recon.wav")).frames == 160


def test_run_outputs_follow_the_umask(tmp_path, umask, tiny_model_dir):
    """WAVs, metrics.csv, summary.json, report.html and the figures of a real run, under 022 then 077."""
    from vaefix_pl.cli import main

    wav = tmp_path / "tone.wav"
    t = np.arange(16000) / 16000
    sf.write(wav, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    out = tmp_path / "out"
    for mask, expected in ((0o022, 0o644), (0o077, 0o600)):
        umask(mask)
        argv = ["reconstruct", str(wav), "--model", str(tiny_model_dir), "--out", str(out), "--report",
                "--num-workers", "0", "--overwrite"]  # fmt: skip
        assert main(argv) == 0
        written = {p.relative_to(out).as_posix(): _mode(p) for p in out.rglob("*") if p.is_file()}
        for name in ("tone.recon.wav", "tone.original.wav", "metrics.csv", "summary.json", "report.html"):
            assert written.get(name) == expected, (name, written)
        figures = [n for n in written if n.startswith("figures/")]
        assert figures, written
        assert {written[n] for n in figures} == {expected}, written
