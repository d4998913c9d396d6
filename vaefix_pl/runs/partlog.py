"""The one per-rank part log: each rank appends JSON lines to its own file under ``<out>/.parts/``;
rank 0 folds them into the run's final files. Used by the reconstruction writer (``rank<k>.jsonl``,
``previous.jsonl``) and the mel export (``rank<k>-<run>.jsonl``), which may share one folder: each
lists only its own files by name.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from vaefix_pl.runs.files import jsonable

log = logging.getLogger(__name__)

PARTS = ".parts"


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """JSON lines of ``path`` (``[]`` if absent); a torn line (a killed rank) is skipped with a warning."""
    p = Path(path)
    out: list[dict[str, Any]] = []
    if not p.is_file():
        return out
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipping a partial line", p)
    return out


def append_jsonl(fh: IO[str], records: Iterable[Mapping[str, Any]], fsync: bool = False) -> None:
    """Append ``records`` as JSON lines to the open part file ``fh`` and flush (``fsync``: to disk too)."""
    for rec in records:
        fh.write(json.dumps(jsonable(rec)) + "\n")
    fh.flush()
    if fsync:
        os.fsync(fh.fileno())


def part_files(out_dir: str | os.PathLike, pattern: str | re.Pattern[str]) -> list[Path]:
    """The part files under ``<out_dir>/.parts`` whose names fully match ``pattern``, sorted by name."""
    folder = Path(out_dir) / PARTS
    if not folder.is_dir():
        return []
    rx = re.compile(pattern)
    return sorted(f for f in folder.iterdir() if rx.fullmatch(f.name))
