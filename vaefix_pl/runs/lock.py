"""One run per output folder: an exclusive ``fcntl.flock`` on ``<out>/.vaefix.lock`` held for the whole run.

Rank 0 takes the lock and makes the run id (a uuid hex); the writer broadcasts both to the other ranks,
so the ranks of one run never lock each other out. The lock file holds ``{"pid", "started", "run"}`` of
its holder: a second run refuses with one line naming them, and a run that finds the file of a killed
run (unlocked) reads the dead run's id, whose temporary files it may then delete. The file is removed on
release; a run that acquired the lock re-checks that the path still names the file it locked (a release
in between would have unlinked it), so two runs can never both hold it.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from vaefix_pl.core.errors import OutputError

LOCK_NAME = ".vaefix.lock"


@dataclass
class RunLock:
    """A held lock: the run id, the folder, and the dead run ids found in the lock file before this run."""

    out_dir: Path
    run_id: str
    fd: int | None
    dead_runs: list[str] = field(default_factory=list)

    def release(self) -> None:
        """Remove the lock file and unlock (idempotent)."""
        if self.fd is None:
            return
        try:
            (self.out_dir / LOCK_NAME).unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def _holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def acquire_run_lock(out_dir: str | os.PathLike) -> RunLock:
    """Lock ``out_dir`` for this run or raise :class:`OutputError` (one line: who holds it, since when)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: --out is an existing file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
    path = out / LOCK_NAME
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputError(f"{path}: is a symbolic link; remove it (vaefix never follows it)") from exc
            raise OutputError(f"{out}: cannot create the lock file ({exc.strerror or exc})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = _holder(fd)
            os.close(fd)
            raise OutputError(
                f"another vaefix run (pid {h.get('pid', '?')}, started {h.get('started', '?')}) "
                f"is writing to {out}"
            ) from None
        try:  # a holder that released in between unlinked the file we opened: start over
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        dead = _holder(fd).get("run")
        run_id = uuid.uuid4().hex
        rec = {
            "pid": os.getpid(),
            "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "run": run_id,
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(rec).encode("utf-8"))
        return RunLock(out, run_id, fd, [dead] if isinstance(dead, str) and dead else [])
    raise OutputError(f"{out}: cannot take the run lock (the lock file keeps changing)")
