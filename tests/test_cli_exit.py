"""The ``vaefix`` console script's exit (:func:`vaefix_pl.cli.errors.fast_exit`): the same effects as
``sys.exit`` (threads joined, ``atexit`` run, output flushed, the exit status), checked against
``sys.exit`` itself in a second process. A whole run through it: tests/test_cli_errors.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import atexit, concurrent.futures, sys, threading, time
    from pathlib import Path
    from vaefix_pl.cli.errors import fast_exit

    out = Path(sys.argv[1])
    def late(name, delay):
        time.sleep(delay)
        (out / name).write_text("done")
    threading.Thread(target=late, args=("thread", 0.3)).start()          # non-daemon: joined
    pool = concurrent.futures.ThreadPoolExecutor(1)                       # never shut down by hand
    pool.submit(late, "pool", 0.3)
    atexit.register(lambda: (out / "atexit").write_text("done"))
    log = open(out / "log.txt", "w")                                      # closed by an atexit handler
    log.write("line")
    atexit.register(log.close)
    sys.stdout.write("no newline, still buffered")                       # piped: block-buffered
    fast_exit(None if sys.argv[2] == "none" else int(sys.argv[2]))
    """
)


def _child(tmp_path: Path, code: str, fast: bool) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / ("fast" if fast else "sys") / code
    out.mkdir(parents=True)
    env = {**os.environ, "VAEFIX_FAST_EXIT": "1" if fast else "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), code], env=env, capture_output=True, text=True, timeout=60
    )
    return proc, out


@pytest.mark.parametrize("code", ["none", "0", "3", "70", "130"])
def test_fast_exit_has_the_effects_of_sys_exit(tmp_path, code):
    got, got_dir = _child(tmp_path, code, fast=True)
    ref, ref_dir = _child(tmp_path, code, fast=False)
    assert got.returncode == ref.returncode == (0 if code == "none" else int(code)), got.stderr
    assert got.stdout == ref.stdout == "no newline, still buffered"
    for name in ("thread", "pool", "atexit"):
        assert (got_dir / name).read_text() == (ref_dir / name).read_text() == "done", name
    assert (got_dir / "log.txt").read_text() == "line"
