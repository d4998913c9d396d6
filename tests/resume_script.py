"""``vaefix <args>`` in its own process for test_resume.py: it can be SIGKILLed part-way, and Lightning's
"ddp" strategy can relaunch this script once per extra rank (which it cannot do from inside pytest).

Environment: ``VAEFIX_TEST_WRITE_LOG`` (a folder): every finished WAV write is appended to
``<folder>/rank<LOCAL_RANK>-<pid>.log`` as one line ``<path>``; ``VAEFIX_TEST_WRITE_DELAY`` (seconds):
each WAV write waits that long first, so a test can kill the run while batches are still coming;
``VAEFIX_TEST_WRITE_GATE`` (a file): each WAV write waits while that file exists.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import vaefix_pl.pipeline.writer as writer_mod
from vaefix_pl.cli.commands import main

log_dir = os.environ.get("VAEFIX_TEST_WRITE_LOG")
delay = float(os.environ.get("VAEFIX_TEST_WRITE_DELAY", "0"))
gate = os.environ.get("VAEFIX_TEST_WRITE_GATE")
real_write = writer_mod.write_wav


def logged_write(path, waveform, sample_rate=16000):
    if delay:
        time.sleep(delay)
    while gate and os.path.exists(gate):
        time.sleep(0.05)
    out = real_write(path, waveform, sample_rate)
    if log_dir:
        log = Path(log_dir) / f"rank{os.environ.get('LOCAL_RANK', '0')}-{os.getpid()}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{path}\n")
    return out


writer_mod.write_wav = logged_write

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
