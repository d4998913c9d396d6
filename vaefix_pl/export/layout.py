"""Decoded-mel export for vocoder fine-tuning: layout, alignment convention and resume (``export/``), with
``DecodedMelDataset`` and the ``FixedDecoderBaseline`` callback (``finetune/``) built on it.

Users fine-tune vocoders on what AudioLDM2's frozen VAE decodes. This module gives them the data and the
yardstick:

* **Export** (:func:`export_mels`, ``vaefix export-mels``, or :class:`MelExportWriter` added to any
  ``trainer.predict`` run of a ``ReconstructionModule(return_mels=True)``): per clip the VAE-decoded mel
  ``mel_hat`` ``(F, 64)``, the ground-truth mel ``mel`` ``(F, 64)`` (natural log, the VAE's input) and the
  level-normalised ``waveform`` ``(N,)`` the mels were computed from (DC removed, peak 0.5: the level the
  VAE and vocoder were trained at), with ``F = ceil(N / 160)``.
* **Data** (:class:`DecodedMelDataset`): aligned random segments for training, full clips for validation.
* **Yardstick** (:class:`FixedDecoderBaseline`): a Lightning callback that scores the user's current
  vocoder and the frozen AudioLDM2 HiFi-GAN on the same held-out decoded mels and logs both and the delta.

Alignment convention (both framings)
------------------------------------
Mel frame ``k`` pairs with waveform samples ``[160 k, 160 k + 160)``: the vocoder's output sample ``n``
belongs to frame ``n // 160``, and that output timeline *is* the input's timeline (the
:class:`~vaefix_pl.core.reconstruct.Reconstructor` compares vocoder sample ``n`` with input sample ``n``). A
segment of frames ``[s, s + S)`` therefore comes with samples ``[160 s, 160 (s + S))``, in both framings.

What the framing changes is where frame ``k``'s 1024-sample analysis window sits on that timeline:

* ``"hifigan"``: centred on sample ``160 k + 80``, the middle of the frame's block (HiFi-GAN's own
  convention);
* ``"tacotron"`` (AudioLDM2's inference framing): centred on sample ``160 k``, the *first* sample of the
  block. A vocoder that emits each block centred on its frame's analysis centre comes out 80 samples
  late on this timeline; one trained on a tacotron export learns to emit block ``k`` just after the
  centre of frame ``k``, which is what lines its output up with the input in AudioLDM2's own pipeline.

Equivalently: the same front-end applied to a segment's ``S * 160`` samples reproduces the segment's
``S`` frames (``"tacotron"`` makes ``S + 1`` frames, the last, centred on the segment's end, is dropped,
exactly as the Reconstructor drops frame ``L`` of an ``L * 160``-sample clip) everywhere except the
frames whose windows reach past the segment's edges (4 frames at each end). The tests check exactly this.
See :func:`segment_samples` and :func:`frame_centre`.

Export layout
-------------
``<out>/shards/shard-r<rank>-<run>-<k>.safetensors`` hold the tensors under the keys
``<id>/mel_hat``, ``<id>/mel``, ``<id>/waveform`` (float32); ``<out>/manifest.jsonl`` has one JSON line per
clip: ``id``, ``path`` (source file, ``null`` for probes), ``frames`` (F), ``samples`` (N), ``shard``
(relative path), ``keys``, ``gain`` (``normalised = (x - mean) * gain``), ``health`` (decoded-mel health
before repair) and ``settings`` (framing, model, scaling factor, latent mode, precision, pad_frames_to,
seconds, ...). ``<out>/export.json`` summarises the export; ``<out>/errors.csv`` lists clips that failed (the same table as every other command).

Crash safety and resume: a shard is written to a temporary file, fsynced and renamed into place, and
only then are its clips appended (and fsynced) to the rank's own part file ``<out>/.parts/*.jsonl``; at the
end rank 0 folds the parts into ``manifest.jsonl`` (atomically). A shard is thus referenced only once it is
complete. A new run first folds leftover parts of an interrupted run, deletes shards and temporary
files nothing references, and skips every id already in the manifest: each clip is exported exactly
once, also under DDP (each rank writes its own shards and part file). One export run per folder at a time.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from safetensors import safe_open

from vaefix_pl.core.frontend import FRAMINGS, HOP, Framing
from vaefix_pl.runs.files import atomic_write_bytes, jsonable
from vaefix_pl.runs.partlog import PARTS, part_files, read_jsonl
from vaefix_pl.runs.tables import ERROR_COLUMNS, rows_to_csv

FORMAT = "vaefix-mel-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.jsonl"
EXPORT_INFO = "export.json"
ERRORS = "errors.csv"
SHARDS = "shards"
TENSORS = ("mel_hat", "mel", "waveform")
#: Settings that must agree between an export and a run resuming it (mixing them would mix data).
RESUME_KEYS = (
    "format_version", "framing", "model", "scaling_factor", "latent_mode", "seed", "precision",
    "pad_frames_to", "seconds", "offset", "channel", "sample_rate", "hop", "n_mels",
)  # fmt: skip

log = logging.getLogger(__name__)


class ExportSettingsError(ValueError):
    """An export folder holds clips made with other settings than this run's; the message lists them."""


# ============================================================================== alignment (pure functions)
def segment_samples(start_frame: int, frames: int, hop: int = HOP) -> tuple[int, int]:
    """Waveform span ``[a, b)`` that mel frames ``[start_frame, start_frame + frames)`` pair with.

    ``(hop * start_frame, hop * (start_frame + frames))`` in both framings (hop 160 at 16 kHz, 480 at
    48 kHz; see the module docstring).
    """
    return hop * int(start_frame), hop * (int(start_frame) + int(frames))


def frame_centre(frame: int, framing: Framing, hop: int = HOP) -> float:
    """Sample on which frame ``frame``'s analysis window is centred: ``160 k`` (tacotron), ``160 k + 80`` (hifigan)."""
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
    return hop * frame + (0 if framing == "tacotron" else hop / 2)


# ============================================================================== manifest and shards (I/O)
def read_manifest(export_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The export's ``manifest.jsonl`` entries (complete clips only), first occurrence of each id."""
    seen: set[str] = set()
    out = []
    for e in read_jsonl(Path(export_dir) / MANIFEST):
        if e.get("id") not in seen:
            seen.add(e["id"])
            out.append(e)
    return out


#: this export's part files (the reconstruction writer's ``rank<k>.jsonl`` may share the folder)
EXPORT_PART = r"rank\d+-.+\.jsonl"


def _part_files(export_dir: Path) -> list[Path]:
    return part_files(export_dir, EXPORT_PART)


def completed_ids(export_dir: str | os.PathLike) -> set[str]:
    """Ids already exported: in the manifest or in leftover part files whose shard exists.

    Reads the parts before the manifest, so a concurrent fold (which writes the manifest before it
    deletes the parts) never hides an id.
    """
    out = Path(export_dir)
    ids: set[str] = set()
    for part in _part_files(out):
        for rec in read_jsonl(part):
            if rec.get("kind", "item") == "item" and "shard" in rec and (out / rec["shard"]).is_file():
                ids.add(rec["id"])
    ids.update(e["id"] for e in read_manifest(out))
    return ids


def _shard_keys(path: Path) -> set[str] | None:
    """Tensor keys of a shard, ``None`` when it is missing or unreadable (truncated)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return set(fh.keys())
    except Exception:  # noqa: BLE001 - any unreadable shard is simply not usable
        return None


def consolidate_export(export_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Fold part files into ``manifest.jsonl``, drop unusable entries, delete unreferenced shards.

    Part entries are kept only when their shard reads and holds their keys, and only for ids not yet in
    the manifest (first wins). The manifest is replaced atomically before the parts are deleted.
    Shards and temporary files that no manifest entry references are then deleted. Call it from one
    process only (rank 0), with no export writing into the folder. Returns the manifest entries.
    """
    out = Path(export_dir)
    manifest = read_manifest(out)
    ids = {e["id"] for e in manifest}
    parts = _part_files(out)
    keys_of: dict[str, set[str] | None] = {}
    new: list[dict[str, Any]] = []
    errors: dict[str, dict[str, Any]] = {}
    for part in parts:
        for rec in read_jsonl(part):
            kind = rec.pop("kind", "item")
            if kind == "error":
                errors[rec["id"]] = rec
                continue
            if rec["id"] in ids or "shard" not in rec:
                continue
            if rec["shard"] not in keys_of:
                keys_of[rec["shard"]] = _shard_keys(out / rec["shard"])
            have = keys_of[rec["shard"]]
            if have is None or not set(rec.get("keys", {}).values()) <= have:
                continue
            new.append(rec)
            ids.add(rec["id"])
    if new or parts or not (out / MANIFEST).exists():
        manifest = manifest + sorted(new, key=lambda e: e["id"])
        text = "".join(json.dumps(jsonable(e)) + "\n" for e in manifest)
        atomic_write_bytes(out / MANIFEST, text.encode("utf-8"))
    if parts:
        failed = [e for i, e in sorted(errors.items()) if i not in ids]
        text = rows_to_csv(failed, first=ERROR_COLUMNS) if failed else ",".join(ERROR_COLUMNS) + "\n"
        atomic_write_bytes(out / ERRORS, text.encode("utf-8"))
        for part in parts:
            part.unlink(missing_ok=True)
    if (out / PARTS).is_dir() and not any((out / PARTS).iterdir()):
        (out / PARTS).rmdir()
    referenced = {Path(e["shard"]).name for e in manifest}
    shard_dir = out / SHARDS
    if shard_dir.is_dir():
        for f in shard_dir.iterdir():
            if f.is_file() and f.name not in referenced:
                log.info("removing unreferenced %s", f)
                f.unlink(missing_ok=True)
    return manifest


def _settings_of(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    for e in entries:
        if isinstance(e.get("settings"), Mapping):
            return dict(e["settings"])
    return None


def existing_settings(export_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Settings of the clips already in an export folder (manifest or leftover parts), or ``None``."""
    out = Path(export_dir)
    found = _settings_of(read_manifest(out))
    if found is None:
        for part in _part_files(out):
            found = _settings_of(r for r in read_jsonl(part) if r.get("kind", "item") == "item")
            if found is not None:
                break
    return found


def check_settings_compatible(existing: Mapping[str, Any] | None, new: Mapping[str, Any], where: str) -> None:
    """Raise :class:`ExportSettingsError` when a resume would mix clips made with different settings."""
    if not existing:
        return
    diff = {
        k: (existing[k], new[k])
        for k in RESUME_KEYS
        if k in existing and k in new and not _same(existing[k], new[k])
    }
    if diff:
        listed = ", ".join(f"{k}: export has {a!r}, this run {b!r}" for k, (a, b) in diff.items())
        raise ExportSettingsError(
            f"{where} holds clips exported with other settings ({listed}); resuming would mix them. "
            f"Use another output folder or the export's settings."
        )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b


def _model_id(model: Any) -> str | None:
    """A local model folder as an absolute path (so relative and absolute spellings compare equal)."""
    if model is None:
        return None
    p = Path(str(model)).expanduser()
    return str(p.resolve()) if p.exists() else str(model)
