"""A run folder's tables: the one reader and writer of ``metrics.csv``, ``errors.csv``, ``summary.json`` and ``summary.md``, and the merge of the ranks' part logs into them (used by the writer, ``vaefix diagnose`` and the report)."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vaefix_pl.core.errors import OutputError
from vaefix_pl.runs.files import (
    UnsafePathError,
    atomic_write_many,
    jsonable,
    safe_output_path,
    write_error_reason,
)
from vaefix_pl.runs.partlog import PARTS, part_files, read_jsonl

log = logging.getLogger(__name__)

PREVIOUS = "previous.jsonl"
AUDIO_TAGS = ("original", "recon", "post")
ERROR_COLUMNS = ("id", "path", "stage", "reason")
#: the writer's part files: ``recon-<run id>-rank<k>.jsonl`` (and ``rank<k>.jsonl`` of older versions)
_RANK_PART = r"recon-[0-9a-f]+-rank\d+\.jsonl|rank\d+\.jsonl"
#: metrics.csv columns that stay strings when an earlier run's table is read back
_TEXT_COLUMNS = {"id", "path", "error", "error_stage", "settings_fp", "geometry"}
#: bookkeeping columns: the source file's identity and the settings hash (never scores)
IDENTITY_COLUMNS = ("src_size", "src_mtime_ns", "settings_fp")
#: first characters a spreadsheet reads as a formula (OWASP CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: per-row model facts (the checkpoint's geometry and own scaling_factor), not scores
MODEL_COLUMNS = ("geometry", "scaling_factor")


def metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Numeric score columns of merged rows (not id/path/health/error bookkeeping)."""
    skip = {"id", "path", "seconds", "error", "error_stage", "rank", *IDENTITY_COLUMNS, *MODEL_COLUMNS}
    cols: dict[str, None] = {}  # insertion-ordered set: first-seen order, O(1) membership
    for r in rows:
        for k, v in r.items():
            if k in skip or k in cols or k.startswith("health_") or k.endswith("_error"):
                continue
            if isinstance(v, (int, float)) or v is None:
                cols[k] = None
    return list(cols)


def merge_parts(parts: Sequence[Path], rows: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Merge the ranks' JSON lines into one row per id, sorted by id.

    ``rows`` (e.g. an earlier ``metrics.csv``) come first, then ``parts`` in the given order. An item
    record replaces any earlier row of its id (the newest record wins, so a rerun's result replaces an
    old failure and a late write error replaces its item's scores); perceptual records join the row of
    their item.
    """
    by_id: dict[str, dict[str, Any]] = {r["id"]: dict(r) for r in rows}
    for part in parts:
        for rec in read_jsonl(part):
            kind = rec.pop("kind", "item")
            if kind == "perceptual":
                row = by_id.setdefault(rec["id"], {"id": rec["id"]})
                prefix = "" if rec.pop("tag", "recon") == "recon" else "post_"
                for k, v in rec.items():
                    if k != "id":
                        row[prefix + k] = v
            else:
                by_id[rec["id"]] = rec
    return [by_id[k] for k in sorted(by_id)]


def _cell(text: str) -> Any:
    """A ``metrics.csv`` cell back as a Python value: ``""`` -> None, else int, float or the string."""
    if text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def neutralise_cell(v: Any) -> Any:
    """A text cell safe to open in a spreadsheet (OWASP): a leading ``= + - @``, tab or CR gets a ``'``
    in front (so does a leading ``'``, so the reader can strip exactly one back). Numbers pass unchanged."""
    if isinstance(v, str) and v and (v.startswith(_FORMULA_START) or v.startswith("'")):
        return "'" + v
    return v


def restore_cell(text: str) -> str:
    """:func:`neutralise_cell` undone on a text cell read back."""
    return text[1:] if text.startswith("'") else text


def read_metrics_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.csv`` written by :func:`write_run_tables`, numbers as numbers ([] if absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [
                {
                    k: (restore_cell(v) if k in _TEXT_COLUMNS else _cell(v))
                    for k, v in r.items()
                    if k is not None and v is not None
                }
                for r in csv.DictReader(fh)
                if r.get("id")
            ]
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        log.warning("%s: cannot read the earlier results (%s); their items are recomputed", path, exc)
        return []


def writer_part_files(out_dir: Path) -> list[Path]:
    """The reconstruction writer's part files in merge order: ``previous.jsonl`` first, then ``rank<k>.jsonl``."""
    prev = Path(out_dir) / PARTS / PREVIOUS
    return ([prev] if prev.is_file() else []) + part_files(out_dir, _RANK_PART)


def previous_rows(out_dir: Path) -> list[dict[str, Any]]:
    """What earlier runs into ``out_dir`` recorded: ``metrics.csv`` overlaid with leftover part files."""
    return merge_parts(writer_part_files(out_dir), read_metrics_csv(out_dir / "metrics.csv"))


def read_summary(out_dir: Path) -> dict[str, Any]:
    """``summary.json`` of an earlier run into ``out_dir`` (``{}`` if absent or unreadable)."""
    try:
        data = json.loads((Path(out_dir) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def identity_mismatch(row: dict[str, Any], current: dict[str, Any], fingerprint: str) -> str | None:
    """Why an earlier run's ``row`` does not describe the input as it is now (``None``: it does).

    ``current`` is ``{"path", "src_size", "src_mtime_ns"}`` of the input now; ``fingerprint`` the
    settings hash of this run. The path, size, modification time and settings must all match.
    """
    if row.get("settings_fp") in (None, ""):
        return "has no identity recorded by the last run"
    if str(row.get("settings_fp")) != fingerprint:
        return "was made with other settings in the last run"
    if current.get("path") is not None and row.get("path") != current.get("path"):
        return f"is a different file than the last run's {row.get('path')}"
    for k in ("src_size", "src_mtime_ns"):
        if current.get(k) is not None and row.get(k) != current.get(k):
            return "changed since the last run"
    return None


def is_complete(
    row: dict[str, Any], out_dir: Path, tags: Sequence[str], required: Sequence[str] = ()
) -> bool:
    """True when ``row`` records a success, every ``<id>.<tag>.wav`` exists and ``required`` keys are set
    (e.g. perceptual scores that arrive after the item's row)."""
    if row.get("error") or any(k not in row for k in required):
        return False
    try:
        return all(safe_output_path(out_dir, f"{row['id']}.{tag}.wav").is_file() for tag in tags)
    except UnsafePathError:
        return False


def rows_to_csv(rows: Sequence[dict[str, Any]], first: Sequence[str] = ("id", "path", "seconds")) -> str:
    cols = dict.fromkeys(c for c in first if any(c in r for r in rows))
    for r in rows:
        cols.update(dict.fromkeys(r))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    w.writerows(["" if v is None else neutralise_cell(v) for v in map(r.get, cols)] for r in rows)
    return buf.getvalue()


#: health columns counted in ``summary.json`` (``items_with_<name>``) when a run has them.
_HEALTH_COUNTS = {
    "nonfinite_mel_hat": "health_mel_hat_nonfinite",
    "nonfinite_output": "health_output_nonfinite",
    "constant_mel_hat": "health_mel_hat_constant",
    "faults": "health_faults",
    "warnings": "health_warnings",
}


def write_run_tables(
    out_dir: Path, rows: Sequence[dict[str, Any]], extra: dict[str, Any], title: str
) -> dict:
    """Write a run's ``metrics.csv`` (one row per id, failed ones with their ``error``), ``errors.csv``,
    ``summary.json`` (per metric mean/std/median/95 % CI/n, failures, health counts, ``extra``) and
    ``summary.md``, each atomically. Used by the writer and by ``vaefix diagnose``."""
    from vaefix_pl.metrics import summarize, summary_markdown

    rows = sorted(rows, key=lambda r: r["id"])
    failed = [r for r in rows if r.get("error")]
    ok_rows = [r for r in rows if not r.get("error")]
    summary_metrics = summarize(ok_rows, metric_columns(ok_rows))
    summary = {
        "n_inputs": len(rows),
        "n_ok": len(ok_rows),
        "n_failed": len(failed),
        "failed": [
            {"id": r["id"], "path": r.get("path"), "stage": r.get("error_stage"), "reason": r["error"]}
            for r in failed
        ],
        "metrics": summary_metrics,
        "health": {
            f"items_with_{name}": sum(1 for r in ok_rows if (r.get(col) or 0) > 0)
            for name, col in _HEALTH_COUNTS.items()
            if any(col in r for r in ok_rows)
        },
        **extra,
    }
    errors = [
        {"id": r["id"], "path": r.get("path"), "stage": r.get("error_stage") or "", "reason": r["error"]}
        for r in failed
    ]
    # One step, errors.csv and summary.json last: a failure (full disk) replaces none of the
    # previous tables and says so in one line.
    texts = {
        out_dir / "metrics.csv": rows_to_csv(rows),
        out_dir / "summary.md": summary_markdown(
            summary_metrics, title=f"{title}: {len(ok_rows)} clips, {len(failed)} failed"
        ),
        out_dir / "errors.csv": rows_to_csv(errors, first=ERROR_COLUMNS)
        if errors
        else ",".join(ERROR_COLUMNS) + "\n",
        out_dir / "summary.json": json.dumps(jsonable(summary), indent=2),
    }
    try:
        atomic_write_many(texts)
    except OSError as exc:
        raise OutputError(
            f"{out_dir}: cannot write the tables, {write_error_reason(exc, out_dir)}; the previous tables are "
            "kept and a rerun with space resumes"
        ) from exc
    return summary
