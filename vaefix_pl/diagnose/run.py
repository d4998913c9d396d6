"""Diagnosis of a set of inputs: load them, decompose them in batches, write the WAVs and the run tables (the ``vaefix diagnose`` command drives it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaefix_pl.core.probes import probe_signals
from vaefix_pl.data.audio import AudioReadError, load_audio, write_wav
from vaefix_pl.data.inputs import collate_audio, discover_inputs
from vaefix_pl.diagnose.decompose import decompose, format_verdicts


def _load_inputs(
    audio: Sequence[str], seconds: float | None, sample_rate: int = 16000
) -> tuple[list[tuple[str, str | None, Tensor]], list[dict[str, Any]]]:
    """``([(id, path, (N,) waveform)], failed rows)`` for files/folders/manifests, or the probe set."""

    items: list[tuple[str, str | None, Tensor]] = []
    failed: list[dict[str, Any]] = []
    if not audio:
        for name, x in probe_signals(seconds=seconds or 4.0, sample_rate=sample_rate).items():
            items.append((name, None, torch.from_numpy(x)))
        return items, failed
    for entry in discover_inputs(list(audio)):
        if entry.error:
            failed.append({"id": entry.id, "path": entry.path, "error": entry.error})
            continue
        try:
            items.append((entry.id, entry.path, load_audio(entry.path, sample_rate, seconds=seconds)))
        except AudioReadError as exc:
            failed.append({"id": entry.id, "path": entry.path, "error": str(exc)})
    return items, failed


def _batches(items: Sequence[tuple[str, str | None, Tensor]], size: int):
    """``(chunk, (B, N) waveform, (B,) lengths)`` per ``size`` items, padded by the data layer's collate."""
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        batch = collate_audio([{"id": i, "path": p, "waveform": w, "error": None} for i, p, w in chunk])
        yield chunk, batch["waveform"].to(chunk[0][2].device), batch["lengths"]


def run_diagnosis(
    rec: Any,
    items: Sequence[tuple[str, str | None, Tensor]],
    out_dir: str | Path,
    chain: Any | None = None,
    batch_size: int = 4,
    write_audio: bool = True,
    log: Callable[[str], None] | None = print,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Decompose ``items`` in batches; write WAVs (original / ceiling / recon / post) under ``out_dir``.

    Returns ``(rows, items_json)``: the ``metrics.csv`` rows and one :meth:`Decomposition.item` per clip.
    """
    out = Path(out_dir)
    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    for chunk, wave, lengths in _batches(items, batch_size):
        d = decompose(rec, wave, lengths, chain=chain, ids=[c[0] for c in chunk])
        for i, (item_id, _path, _) in enumerate(chunk):
            n = int(lengths[i])
            if write_audio:
                for tag, w in d.audio.items():
                    write_wav(out / f"{item_id}.{tag}.wav", w[i, :n], d.sample_rate)
            if log is not None:
                log(format_verdicts(d, i))
        for row, (_, path, _) in zip(d.rows(), chunk):
            rows.append({"id": row.pop("id"), "path": path, **row})
        details += [d.item(i) for i in range(len(chunk))]
    return rows, details


def _write_tables(out: Path, rows: list[dict[str, Any]], failed: list[dict[str, Any]], extra: dict) -> dict:
    """``metrics.csv``, ``errors.csv``, ``summary.json``, ``summary.md`` in the writer's format."""
    from vaefix_pl.runs.tables import write_run_tables

    return write_run_tables(out, rows + failed, extra, title="vaefix diagnose")
