"""Small file helpers shared by the writers: atomic writes and safe output paths (``jsonable`` is
re-exported from :mod:`vaefix_pl.core.utils`, where it is defined)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from vaefix_pl.core.utils import jsonable  # noqa: F401 - re-exported for the writers
from vaefix_pl.data.audio import TEMP_PREFIX, new_file_mode, temp_prefix


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename: never a torn file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(), dir=p.parent)
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp makes 0600; the output follows the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_many(files: Mapping[str | os.PathLike, str]) -> list[Path]:
    """Write several UTF-8 files as one step: every temporary file is written and fsynced first, then
    all are renamed in the given order (so list the file readers trust most last). When any write
    fails (a full disk), no file is replaced and the temporaries are removed: the previous set stays."""
    done: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(), dir=p.parent)
            done.append((tmp, p))
            os.fchmod(fd, new_file_mode())
            with os.fdopen(fd, "wb") as fh:
                fh.write(text.encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:
        for tmp, _ in done:
            Path(tmp).unlink(missing_ok=True)
        raise
    for tmp, p in done:
        os.replace(tmp, p)
    return [p for _, p in done]


def write_error_reason(exc: BaseException, folder: str | os.PathLike) -> str:
    """A failed write said plainly: ``no space left on device`` for ENOSPC, and for libsndfile's bare
    "System error." when the folder's disk is (nearly) full; else the exception's type and text."""
    if getattr(exc, "errno", None) == errno.ENOSPC:
        return f"no space left on device ({folder})"
    if "System error" in str(exc):
        try:
            if shutil.disk_usage(folder).free < 1 << 20:
                return f"no space left on device ({folder})"
        except OSError:
            pass
    return f"{type(exc).__name__}: {exc}"


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


class UnsafePathError(ValueError):
    """An output name would put a file outside the output folder."""


def safe_output_path(root: str | os.PathLike, name: str, no_links: bool = False) -> Path:
    """``root / name``, refusing any ``name`` that is absolute or climbs out of ``root``.

    Checked lexically on the normalised path (``..`` folded), so ids like ``../../x`` or ``/etc/x``
    raise :class:`UnsafePathError` instead of writing elsewhere. Links the user placed inside ``root``
    are theirs to follow, unless ``no_links`` (the report: no component may be a symbolic link). The data module already makes ids safe (:func:`vaefix_pl.data.inputs.safe_id`); this
    is the writer's own guard for ids from anywhere else.
    """
    if not name or os.path.isabs(name) or "\x00" in name:
        raise UnsafePathError(f"output name {name!r} is empty, absolute or holds a NUL byte")
    base = os.path.abspath(root)
    target = os.path.abspath(os.path.join(base, name))
    if os.path.commonpath([base, target]) != base or target == base:
        raise UnsafePathError(f"output name {name!r} would write outside {base}")
    if no_links:  # nothing between root and the file (the file included) may be a symbolic link
        cur = base
        for comp in os.path.relpath(target, base).split(os.sep):
            cur = os.path.join(cur, comp)
            if os.path.islink(cur):
                raise UnsafePathError(f"{cur} is a symbolic link; not following it")
    return Path(target)


def remove_temp_files(root: str | os.PathLike, run_tags: list[str] | tuple[str, ...]) -> list[Path]:
    """Delete leftover temporary files of the given (dead) runs under ``root``, recursively:
    ``<TEMP_PREFIX><tag>-*`` only, so a user's own files (``.tmp-mine``) are never touched. Returns what
    was removed. Only call it while holding the run lock of ``root``."""
    removed = []
    for tag in run_tags:
        if not tag or not all(c.isalnum() or c == "_" for c in tag):
            continue
        for f in Path(root).rglob(f"{TEMP_PREFIX}{tag}-*"):
            if f.is_file() and not f.is_symlink():
                f.unlink(missing_ok=True)
                removed.append(f)
    return removed
