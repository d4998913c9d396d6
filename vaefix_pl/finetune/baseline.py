"""Fixed-decoder baseline for vocoder fine-tuning: decoded-mel export, ``DecodedMelDataset``, ``FixedDecoderBaseline``.

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
seconds, ...). ``<out>/export.json`` summarises the export; ``<out>/errors.jsonl`` lists clips that failed.

Crash safety and resume: a shard is written to a temporary file, fsynced and renamed into place, and
only then are its clips appended (and fsynced) to the rank's own part file ``<out>/.parts/*.jsonl``; at the
end rank 0 folds the parts into ``manifest.jsonl`` (atomically). A shard is thus referenced only once it is
complete. A new run first folds leftover parts of an interrupted run, deletes shards and temporary
files nothing references, and skips every id already in the manifest: each clip is exported exactly
once, also under DDP (each rank writes its own shards and part file). One export run per folder at a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from vaefix_pl.core.frontend import FRAMINGS, HOP, LOG_MEL_FLOOR, N_MELS, SAMPLE_RATE, Framing
from vaefix_pl.runs.files import atomic_write_bytes, jsonable

log = logging.getLogger(__name__)

__all__ = [
    "DecodedMelDataModule",
    "DecodedMelDataset",
    "ExportSettingsError",
    "FixedDecoderBaseline",
    "MelExportWriter",
    "collate_decoded_mels",
    "completed_ids",
    "consolidate_export",
    "export_main",
    "export_mels",
    "frame_centre",
    "read_manifest",
    "segment_samples",
    "split_ids",
]

FORMAT = "vaefix-mel-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.jsonl"
EXPORT_INFO = "export.json"
ERRORS = "errors.jsonl"
SHARDS = "shards"
PARTS = ".parts"
TENSORS = ("mel_hat", "mel", "waveform")
#: Settings that must agree between an export and a run resuming it (mixing them would mix data).
RESUME_KEYS = (
    "format_version", "framing", "model", "scaling_factor", "latent_mode", "seed", "precision",
    "pad_frames_to", "seconds", "offset", "channel", "sample_rate", "hop", "n_mels",
)  # fmt: skip


class ExportSettingsError(ValueError):
    """An export folder holds clips made with other settings than this run's; the message lists them."""


# ============================================================================== alignment (pure functions)
def segment_samples(start_frame: int, frames: int) -> tuple[int, int]:
    """Waveform span ``[a, b)`` that mel frames ``[start_frame, start_frame + frames)`` pair with.

    ``(160 * start_frame, 160 * (start_frame + frames))`` in both framings (see the module docstring).
    """
    return HOP * int(start_frame), HOP * (int(start_frame) + int(frames))


def frame_centre(frame: int, framing: Framing) -> float:
    """Sample on which frame ``frame``'s analysis window is centred: ``160 k`` (tacotron), ``160 k + 80`` (hifigan)."""
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
    return HOP * frame + (0 if framing == "tacotron" else HOP / 2)


# ============================================================================== manifest and shards (I/O)
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON lines of ``path``; a torn line (a killed writer) is skipped with a warning."""
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipping a partial line", path)
    return out


def read_manifest(export_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The export's ``manifest.jsonl`` entries (complete clips only), first occurrence of each id."""
    seen: set[str] = set()
    out = []
    for e in _read_jsonl(Path(export_dir) / MANIFEST):
        if e.get("id") not in seen:
            seen.add(e["id"])
            out.append(e)
    return out


def _part_files(export_dir: Path) -> list[Path]:
    return sorted((export_dir / PARTS).glob("*.jsonl"))


def completed_ids(export_dir: str | os.PathLike) -> set[str]:
    """Ids already exported: in the manifest or in leftover part files whose shard exists.

    Reads the parts before the manifest, so a concurrent fold (which writes the manifest before it
    deletes the parts) never hides an id.
    """
    out = Path(export_dir)
    ids: set[str] = set()
    for part in _part_files(out):
        for rec in _read_jsonl(part):
            if rec.get("kind", "item") == "item" and "shard" in rec and (out / rec["shard"]).is_file():
                ids.add(rec["id"])
    ids.update(e["id"] for e in read_manifest(out))
    return ids


def _shard_keys(path: Path) -> set[str] | None:
    """Tensor keys of a shard, ``None`` when it is missing or unreadable (truncated)."""
    from safetensors import safe_open

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
        for rec in _read_jsonl(part):
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
        text = "".join(json.dumps(jsonable(e)) + "\n" for e in failed)
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
            found = _settings_of(r for r in _read_jsonl(part) if r.get("kind", "item") == "item")
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


# ============================================================================== export writer (Lightning)
class MelExportWriter(BasePredictionWriter):
    """Write decoded mels, true mels and normalised waveforms of a ``trainer.predict`` run as an export.

    Works with :class:`~vaefix_pl.lightning.module.ReconstructionModule` built with ``return_mels=True`` (alone or
    beside a :class:`~vaefix_pl.lightning.writer.ReconstructionWriter`); see the module docstring for the layout,
    the alignment convention and the crash-safety rules. Ids already in the export are skipped, so a
    rerun over the same inputs resumes; each rank writes its own shards and part file, rank 0 folds them
    into ``manifest.jsonl`` after a barrier at the end.

    Args:
        output_dir: the export folder.
        shard_size: clips per shard file (per rank).
        settings: overrides of the recorded settings (e.g. ``{"model": "/abs/path"}``); by default they
            come from ``pl_module.reconstructor.settings()``, ``pl_module.hparams["model"]`` and the
            datamodule's ``seconds``/``offset``/``channel``/``probe_seconds``.
    """

    def __init__(
        self, output_dir: str | os.PathLike, shard_size: int = 64, settings: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(write_interval="batch")
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.output_dir = Path(output_dir)
        self.shard_size = int(shard_size)
        self.extra_settings = dict(settings or {})
        self.settings: dict[str, Any] = {}
        self.n_written = 0
        self.n_skipped = 0
        self._done: set[str] = set()
        self._buffer: list[dict[str, Any]] = []
        self._part = None
        self._token = ""
        self._rank = 0
        self._shard_index = 0

    def describe_settings(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The settings recorded with every clip (and compared on resume)."""
        s: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "sample_rate": SAMPLE_RATE,
            "hop": HOP,
            "n_mels": N_MELS,
        }
        rec = getattr(pl_module, "reconstructor", None)
        if rec is not None and hasattr(rec, "settings"):
            s.update(rec.settings())
        hp = getattr(pl_module, "hparams", {}) or {}
        s["model"] = _model_id(hp.get("model"))
        dm = getattr(trainer, "datamodule", None)
        dm_hp = getattr(dm, "hparams", {}) or {}
        for key in ("seconds", "offset", "channel", "probe_seconds"):
            if key in dm_hp:
                s[key] = dm_hp[key]
        s.update(self.extra_settings)
        if "model" in self.extra_settings:
            s["model"] = _model_id(self.extra_settings["model"])
        if s.get("latent_mode") == "mode":
            s.pop("seed", None)  # the posterior mode does not depend on the seed
        return jsonable(s)

    # ---------------------------------------------------------------------------------- lifecycle
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.settings = self.describe_settings(trainer, pl_module)
        # Every rank checks (same files, same answer), so a mismatch stops all ranks, not only rank 0.
        check_settings_compatible(existing_settings(self.output_dir), self.settings, str(self.output_dir))
        if trainer.is_global_zero:
            (self.output_dir / SHARDS).mkdir(parents=True, exist_ok=True)
            (self.output_dir / PARTS).mkdir(parents=True, exist_ok=True)
            consolidate_export(self.output_dir)  # leftovers of an interrupted run
        trainer.strategy.barrier("vaefix_mel_export_start")
        self._done = {e["id"] for e in read_manifest(self.output_dir)}
        self._rank = trainer.global_rank
        self._token = uuid.uuid4().hex[:8]
        self._shard_index = 0
        self._buffer = []
        self.n_written = self.n_skipped = 0
        (self.output_dir / PARTS).mkdir(parents=True, exist_ok=True)
        part = self.output_dir / PARTS / f"rank{self._rank:03d}-{self._token}.jsonl"
        self._part = open(part, "a", encoding="utf-8")

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        errors = [
            {"kind": "error", "id": e["id"], "path": e["path"], "reason": e["reason"]}
            for e in prediction.get("errors", [])
            if e["id"] not in self._done
        ]
        if errors:
            self._append(errors)
        ids = list(prediction["ids"])
        if not ids:
            return
        if "mels" not in prediction:
            raise ValueError(
                "MelExportWriter needs the decoded mels: build ReconstructionModule(..., return_mels=True) "
                "(YAML: model.return_mels: true)"
            )
        mels = prediction["mels"]
        lengths = prediction["lengths"].tolist()
        frames = mels["frames"].tolist()
        gain = mels["gain"].detach().double().cpu()
        original = prediction["audio"]["original"].detach().cpu()
        mel = mels["mel"].detach().float().cpu()
        mel_hat = mels["mel_hat"].detach().float().cpu()
        health = {
            k: v.detach().cpu() for k, v in prediction.get("health", {}).items() if k.startswith("mel_hat_")
        }
        paths = prediction.get("paths", [None] * len(ids))
        for i, clip_id in enumerate(ids):
            if clip_id in self._done:
                self.n_skipped += 1
                continue
            n, f = int(lengths[i]), int(frames[i])
            # The waveform the mels were computed from: the level-normalised input over its valid samples.
            wav = (original[i, :n].double() * gain[i]).float()
            self._buffer.append(
                {
                    "id": clip_id,
                    "path": paths[i],
                    "frames": f,
                    "samples": n,
                    "gain": float(gain[i]),
                    "health": {k: v[i] for k, v in health.items()},
                    "tensors": {
                        "mel_hat": mel_hat[i, 0, :f].clone(),
                        "mel": mel[i, 0, :f].clone(),
                        "waveform": wav.clone(),
                    },
                }
            )
            self._done.add(clip_id)
        while len(self._buffer) >= self.shard_size:
            self._flush(self._buffer[: self.shard_size])
            self._buffer = self._buffer[self.shard_size :]

    def _append(self, records: Sequence[Mapping[str, Any]]) -> None:
        assert self._part is not None, "on_predict_start did not run"
        for rec in records:
            self._part.write(json.dumps(jsonable(rec)) + "\n")
        self._part.flush()
        os.fsync(self._part.fileno())

    def _flush(self, items: Sequence[dict[str, Any]]) -> None:
        """Write one shard (atomically), then reference its clips in the part file."""
        if not items:
            return
        from safetensors.torch import save

        name = f"shard-r{self._rank:03d}-{self._token}-{self._shard_index:05d}.safetensors"
        self._shard_index += 1
        rel = f"{SHARDS}/{name}"
        tensors = {f"{it['id']}/{key}": t for it in items for key, t in it["tensors"].items()}
        meta = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "framing": str(self.settings.get("framing")),
        }
        atomic_write_bytes(self.output_dir / rel, save(tensors, metadata=meta))
        records = []
        for it in items:
            rec = {k: v for k, v in it.items() if k != "tensors"}
            rec.update(
                kind="item",
                shard=rel,
                keys={key: f"{it['id']}/{key}" for key in it["tensors"]},
                settings=self.settings,
            )
            records.append(rec)
        self._append(records)
        self.n_written += len(items)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(self._buffer)
        self._buffer = []
        if self._part is not None:
            self._part.close()
            self._part = None
        trainer.strategy.barrier("vaefix_mel_export_end")
        if trainer.is_global_zero:
            manifest = consolidate_export(self.output_dir)
            info = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "clips": len(manifest),
                "frames": sum(int(e["frames"]) for e in manifest),
                "seconds": sum(int(e["samples"]) for e in manifest) / SAMPLE_RATE,
                "shards": len({e["shard"] for e in manifest}),
                "settings": self.settings,
                "world_size": trainer.world_size,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "alignment": "mel frame k <-> waveform samples [160k, 160k+160) (see vaefix_pl.finetune.baseline)",
            }
            atomic_write_bytes(self.output_dir / EXPORT_INFO, json.dumps(jsonable(info), indent=2).encode())
        trainer.strategy.barrier("vaefix_mel_export_done")  # the manifest is final on every rank

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Keep what is complete: flush buffered clips (best effort), close the part file; no fold."""
        try:
            if self._part is not None:
                self._flush(self._buffer)
        except Exception:  # noqa: BLE001 - already failing; the next run redoes these clips
            log.warning("could not flush buffered clips after %r", exception)
        self._buffer = []
        if self._part is not None:
            self._part.close()
            self._part = None


class _NoVocoder(nn.Module):
    """Stands in for the vocoder during export: ``(B, T, 64) -> zeros (B, T*160)`` (its output is not used)."""

    def forward(self, mel: Tensor) -> Tensor:
        return mel.new_zeros(mel.shape[0], mel.shape[1] * HOP)


def export_mels(
    inputs: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    output_dir: str | os.PathLike = "mel_export",
    model: str | os.PathLike | None = None,
    seconds: float | None = None,
    offset: float = 0.0,
    framing: Framing = "tacotron",
    shard_size: int = 64,
    devices: int | str = 1,
    accelerator: str = "auto",
    strategy: str | None = None,
    num_nodes: int = 1,
    batch_size: int = 8,
    num_workers: int = 2,
    precision: str = "fp32",
    latent_mode: str = "mode",
    seed: int = 0,
    pad_frames_to: int = 1024,
    probe_seconds: float = 4.0,
    channel: str | int = "mean",
    allow_download: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Export decoded mels, true mels and normalised waveforms of ``inputs`` (``None``: the probe set).

    Resumes: ids already in ``output_dir`` are not recomputed. ``devices > 1`` runs DDP (every clip once).
    The vocoder is not run (export needs only the VAE). Returns a summary dict (``clips``,
    ``exported``, ``skipped``, ``failed``, ``manifest``); under DDP the counts are complete on rank 0.
    """
    from vaefix_pl.data.inputs import AudioDataModule
    from vaefix_pl.core.models import DEFAULT_SOURCE, load_audioldm2, normalize_precision, resolve_source
    from vaefix_pl.lightning.module import ReconstructionModule
    from vaefix_pl.core.reconstruct import Reconstructor

    out = Path(output_dir)
    source = str(resolve_source(model or DEFAULT_SOURCE, allow_download=allow_download).resolve())
    dm = AudioDataModule(
        inputs, seconds=seconds, offset=offset, batch_size=batch_size, num_workers=num_workers,
        channel=channel, probe_seconds=probe_seconds,
    )  # fmt: skip
    planned = {
        "format_version": FORMAT_VERSION, "framing": framing, "model": source, "latent_mode": latent_mode,
        "precision": normalize_precision(precision), "pad_frames_to": pad_frames_to, "seconds": seconds,
        "offset": offset, "channel": channel, "probe_seconds": probe_seconds, "sample_rate": SAMPLE_RATE,
        "hop": HOP, "n_mels": N_MELS, **({"seed": seed} if latent_mode == "sample" else {}),
    }  # fmt: skip
    check_settings_compatible(existing_settings(out), planned, str(out))  # before any work
    dm.setup("predict")
    assert dm.dataset is not None
    done = completed_ids(out)
    total = len(dm.dataset.entries)
    dm.dataset.entries = [e for e in dm.dataset.entries if e.id not in done]
    todo = len(dm.dataset.entries)
    summary: dict[str, Any] = {"output_dir": str(out), "manifest": str(out / MANIFEST), "inputs": total}
    if todo == 0:
        if (
            out.is_dir()
            and int(os.environ.get("LOCAL_RANK", "0")) == 0
            and int(os.environ.get("NODE_RANK", "0")) == 0
        ):
            consolidate_export(out)
        summary.update(exported=0, skipped=total, failed=0, clips=len(read_manifest(out)))
        return summary

    models = load_audioldm2(source, precision=precision, allow_download=allow_download)
    rec = Reconstructor(
        models.vae, _NoVocoder(), models.scaling_factor, framing=framing, latent_mode=latent_mode,
        seed=seed, precision=models.precision, pad_frames_to=pad_frames_to,
    )  # fmt: skip
    module = ReconstructionModule.from_reconstructor(
        rec, model=source, metrics=[], return_mels=True, seed=seed
    )
    writer = MelExportWriter(out, shard_size=shard_size, settings={"model": source})
    if strategy is None:
        strategy = "ddp" if (isinstance(devices, int) and devices > 1) or num_nodes > 1 else "auto"
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes, logger=False,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
        callbacks=[writer],
    )  # fmt: skip
    trainer.predict(module, datamodule=dm, return_predictions=False)
    manifest = read_manifest(out)
    ids = {e["id"] for e in manifest}
    failed = [e for e in _read_jsonl(out / ERRORS) if e["id"] not in ids]
    summary.update(
        exported=len(ids - done),
        skipped=total - todo,
        failed=len(failed),
        clips=len(manifest),
        rank_written=writer.n_written,
        is_global_zero=trainer.is_global_zero,
    )
    return summary


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vaefix export-mels",
        description="Export AudioLDM2 VAE-decoded mels, true mels and level-normalised waveforms for "
        "vocoder fine-tuning (sharded safetensors + manifest.jsonl; resumable; DDP-safe).",
    )
    p.add_argument("audio", nargs="*", help="files, folders or manifests (none: the built-in probe set)")
    p.add_argument("--out", required=True, help="export folder (rerun the same command to resume)")
    p.add_argument("--model", default=None, help="local diffusers folder or hub id (default cvssp/audioldm2)")
    p.add_argument("--seconds", type=float, default=None, help="crop/pad every clip to this length")
    p.add_argument("--offset", type=float, default=0.0, help="seconds to skip at the start of each file")
    p.add_argument("--framing", default="tacotron", choices=list(FRAMINGS))
    p.add_argument("--shard-size", type=int, default=64, help="clips per safetensors shard (per rank)")
    p.add_argument("--devices", default="1", help="number of devices (GPUs); >1 runs DDP")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--latent-mode", default="mode", choices=["mode", "sample"])
    p.add_argument("--seed", type=int, default=0, help="latent noise seed for --latent-mode sample")
    p.add_argument("--pad-frames-to", type=int, default=1024, help="canonical length multiple (frames)")
    p.add_argument("--probe-seconds", type=float, default=4.0, help="length of each probe signal")
    p.add_argument("--allow-download", action="store_true", help="let the loader fetch missing weights")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    return p


def export_main(argv: Sequence[str]) -> int:
    """``vaefix export-mels AUDIO... --out DIR [--model] [--seconds] [--framing] [--shard-size N] [--devices N]``."""
    ns = _export_parser().parse_args(list(argv))
    devices: int | str = int(ns.devices) if str(ns.devices).isdigit() else ns.devices
    summary = export_mels(
        ns.audio or None, ns.out, model=ns.model, seconds=ns.seconds, offset=ns.offset, framing=ns.framing,
        shard_size=ns.shard_size, devices=devices, accelerator=ns.accelerator, num_nodes=ns.num_nodes,
        batch_size=ns.batch_size, num_workers=ns.num_workers, precision=ns.precision,
        latent_mode=ns.latent_mode, seed=ns.seed, pad_frames_to=ns.pad_frames_to,
        probe_seconds=ns.probe_seconds, allow_download=ns.allow_download, progress=ns.progress,
    )  # fmt: skip
    if summary.get("is_global_zero", True):
        print(
            f"export {summary['output_dir']}: {summary['clips']} clips in the manifest; "
            f"{summary['exported']} exported now, {summary['skipped']} already there, {summary['failed']} failed"
        )
        if summary["failed"]:
            print(f"  failures listed in {Path(summary['output_dir']) / ERRORS}")
    return 0


# ============================================================================== dataset
def _id_hash(clip_id: str, seed: int) -> float:
    digest = hashlib.sha1(f"{seed}:{clip_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_ids(
    ids: Sequence[str], val_fraction: float = 0.1, seed: int = 0, val_ids: Iterable[str] | None = None
) -> tuple[list[str], list[str]]:
    """Deterministic ``(train, val)`` split of clip ids (sorted lists).

    ``val_ids`` given: exactly those (present ones) are held out. Otherwise an id is held out when a
    hash of ``(seed, id)`` falls below ``val_fraction``: stable when clips are added (no other id moves).
    With at least two ids and ``0 < val_fraction < 1``, each side gets at least one (the lowest / highest
    hash moves over).
    """
    ids = sorted(set(ids))
    if val_ids is not None:
        held = set(val_ids)
        return [i for i in ids if i not in held], [i for i in ids if i in held]
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    h = {i: _id_hash(i, seed) for i in ids}
    val = {i for i in ids if h[i] < val_fraction}
    if len(ids) >= 2 and 0.0 < val_fraction < 1.0:
        if not val:
            val = {min(ids, key=h.__getitem__)}
        if len(val) == len(ids):
            val.discard(max(ids, key=h.__getitem__))
    return [i for i in ids if i not in val], [i for i in ids if i in val]


class DecodedMelDataset(Dataset):
    """An export read back: aligned ``(mel, waveform)`` pairs for vocoder training and validation.

    Each item is ``{"id", "mel": (S, 64) float32 natural-log mel, "waveform": (S*160,) float32 at the
    normalised level, "length": valid samples (int), "frames": S, "start_frame": s}`` where the waveform
    is exactly samples ``[160 s, 160 (s + S))`` of the clip (module docstring: the alignment convention).

    Args:
        export_dir: an export folder (``manifest.jsonl`` + ``shards/``).
        segment_frames: ``None``: full clips (``S = F``, for validation). An int: segments of that many
            frames (for training): the start ``s`` is drawn uniformly from ``[0, F - S]``; a clip shorter
            than ``S`` frames is padded (mel with the log floor, waveform with zeros; ``length`` says how
            many samples are real).
        split: ``"all"``, ``"train"`` or ``"val"`` (see :func:`split_ids`; ``val_fraction``, ``split_seed``,
            ``val_ids``).
        which: the mel fed to the vocoder: ``"mel_hat"`` (VAE-decoded, default) or ``"mel"`` (ground truth).
        ids: restrict to these clip ids (after the split).
        random_segments: ``False``: the centred segment ``s = (F - S) // 2`` (deterministic).
        seed: ``None``: starts come from torch's global RNG (seeded per DataLoader worker, reproducible
            with ``seed_everything``); an int: from ``(seed, epoch, index)`` (call :meth:`set_epoch`).
        max_items: keep only the first this many clips (by id).

    Works with a plain ``DataLoader(ds, collate_fn=collate_decoded_mels)`` and with Lightning
    (:class:`DecodedMelDataModule`). Shards are opened lazily per worker process and read with
    ``safetensors`` slices, so a segment reads only its own rows.
    """

    def __init__(
        self,
        export_dir: str | os.PathLike,
        segment_frames: int | None = None,
        split: str = "all",
        which: str = "mel_hat",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        val_ids: Iterable[str] | None = None,
        ids: Iterable[str] | None = None,
        random_segments: bool = True,
        seed: int | None = None,
        max_items: int | None = None,
    ) -> None:
        self.export_dir = Path(export_dir)
        entries = read_manifest(self.export_dir)
        if not entries:
            raise FileNotFoundError(
                f"{self.export_dir / MANIFEST} is missing or empty: export first (vaefix export-mels ... --out "
                f"{self.export_dir})"
            )
        framings = {e["settings"]["framing"] for e in entries}
        if len(framings) != 1:
            raise ExportSettingsError(f"{self.export_dir} mixes framings {sorted(framings)}")
        if which not in ("mel_hat", "mel"):
            raise ValueError(f"which must be 'mel_hat' (decoded) or 'mel' (ground truth), got {which!r}")
        if split not in ("all", "train", "val"):
            raise ValueError(f"split must be 'all', 'train' or 'val', got {split!r}")
        if segment_frames is not None and segment_frames < 1:
            raise ValueError(f"segment_frames must be >= 1 or None, got {segment_frames}")
        self.settings: dict[str, Any] = dict(entries[0]["settings"])
        self.framing: Framing = self.settings["framing"]
        train, val = split_ids([e["id"] for e in entries], val_fraction, split_seed, val_ids)
        keep = set(train if split == "train" else val if split == "val" else train + val)
        if ids is not None:
            keep &= set(ids)
        self.entries = sorted((e for e in entries if e["id"] in keep), key=lambda e: e["id"])
        if max_items is not None:
            self.entries = self.entries[: int(max_items)]
        self.segment_frames = segment_frames
        self.split = split
        self.which = which
        self.random_segments = random_segments
        self.seed = seed
        self.epoch = 0
        self._handles: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.entries]

    def set_epoch(self, epoch: int) -> None:
        """Change the segment draws of a seeded dataset (``seed`` set) from one epoch to the next."""
        self.epoch = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # safetensors handles do not pickle; each worker opens its own
        return state

    def _handle(self, shard: str) -> Any:
        h = self._handles.get(shard)
        if h is None:
            from safetensors import safe_open

            h = safe_open(str(self.export_dir / shard), framework="pt")
            self._handles[shard] = h
        return h

    def _rows(self, entry: Mapping[str, Any], name: str, start: int, stop: int) -> Tensor:
        """Rows ``[start, stop)`` of a stored tensor (clipped to its size), read without loading the rest."""
        sl = self._handle(entry["shard"]).get_slice(entry["keys"][name])
        size = sl.get_shape()[0]
        a, b = min(max(start, 0), size), min(max(stop, 0), size)
        return sl[a:b].float()

    def clip(self, index_or_id: int | str) -> dict[str, Tensor | str | int]:
        """One whole clip as stored: ``{"id", "mel_hat": (F, 64), "mel": (F, 64), "waveform": (N,), "frames", "samples"}``."""
        e = self._entry(index_or_id)
        f, n = int(e["frames"]), int(e["samples"])
        return {
            "id": e["id"],
            "mel_hat": self._rows(e, "mel_hat", 0, f),
            "mel": self._rows(e, "mel", 0, f),
            "waveform": self._rows(e, "waveform", 0, n),
            "frames": f,
            "samples": n,
        }

    def _entry(self, index_or_id: int | str) -> dict[str, Any]:
        if isinstance(index_or_id, str):
            for e in self.entries:
                if e["id"] == index_or_id:
                    return e
            raise KeyError(
                f"{index_or_id!r} is not in this dataset ({self.split} split of {self.export_dir})"
            )
        return self.entries[index_or_id]

    def segment_start(self, index: int) -> int:
        """First frame of item ``index``'s segment (0 for full clips)."""
        e = self.entries[index]
        if self.segment_frames is None:
            return 0
        hi = max(0, int(e["frames"]) - self.segment_frames)
        if hi == 0:
            return 0
        if not self.random_segments:
            return hi // 2
        if self.seed is None:
            return int(torch.randint(0, hi + 1, (1,)).item())
        g = torch.Generator().manual_seed(int(_id_hash(f"{self.epoch}:{index}", self.seed) * 2**62))
        return int(torch.randint(0, hi + 1, (1,), generator=g).item())

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        f, n = int(e["frames"]), int(e["samples"])
        frames = f if self.segment_frames is None else int(self.segment_frames)
        s = self.segment_start(index)
        a, b = segment_samples(s, frames)
        mel = torch.full((frames, N_MELS), LOG_MEL_FLOOR, dtype=torch.float32)
        rows = self._rows(e, self.which, s, s + frames)
        mel[: rows.shape[0]] = rows
        wave = torch.zeros(b - a, dtype=torch.float32)
        samples = self._rows(e, "waveform", a, b)
        wave[: samples.shape[0]] = samples
        return {
            "id": e["id"],
            "mel": mel,
            "waveform": wave,
            "length": int(min(max(n - a, 0), b - a)),
            "frames": frames,
            "start_frame": s,
        }


def collate_decoded_mels(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch :class:`DecodedMelDataset` items.

    Returns ``{"mel": (B, T, 64)`` (padded with the log floor), ``"waveform": (B, T*160)`` (zero-padded),
    ``"lengths": (B,)`` valid samples, ``"frames": (B,)``, ``"start_frame": (B,)``, ``"ids": [B]}`` with
    ``T`` the longest item's frames.
    """
    t = max(int(it["frames"]) for it in items)
    b = len(items)
    mel = torch.full((b, t, N_MELS), LOG_MEL_FLOOR, dtype=torch.float32)
    wave = torch.zeros(b, t * HOP, dtype=torch.float32)
    for i, it in enumerate(items):
        mel[i, : it["mel"].shape[0]] = it["mel"]
        wave[i, : it["waveform"].shape[0]] = it["waveform"]
    return {
        "mel": mel,
        "waveform": wave,
        "lengths": torch.tensor([int(it["length"]) for it in items], dtype=torch.long),
        "frames": torch.tensor([int(it["frames"]) for it in items], dtype=torch.long),
        "start_frame": torch.tensor([int(it["start_frame"]) for it in items], dtype=torch.long),
        "ids": [it["id"] for it in items],
    }


class DecodedMelDataModule(L.LightningDataModule):
    """Train on random aligned segments, validate on full held-out clips of one export.

    Args:
        export_dir: the export folder.
        segment_frames: training segment length in frames (32 = 0.32 s, HiFi-GAN's usual 8192 samples
            is 51.2 frames at hop 160).
        batch_size / val_batch_size: loader batch sizes (validation clips differ in length: 1 keeps
            every clip unpadded).
        which: ``"mel_hat"`` (decoded, default) or ``"mel"``.
        val_fraction, split_seed, val_ids: the split (:func:`split_ids`); use the same in
            :class:`FixedDecoderBaseline` (it reads the same ``val`` split by default).
        max_val_items: cap on validation clips.
    """

    def __init__(
        self,
        export_dir: str,
        segment_frames: int = 32,
        batch_size: int = 16,
        val_batch_size: int = 1,
        num_workers: int = 0,
        which: str = "mel_hat",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        val_ids: list[str] | None = None,
        max_val_items: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_set: DecodedMelDataset | None = None
        self.val_set: DecodedMelDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        common = dict(
            which=hp.which, val_fraction=hp.val_fraction, split_seed=hp.split_seed, val_ids=hp.val_ids
        )
        if self.train_set is None:
            self.train_set = DecodedMelDataset(hp.export_dir, hp.segment_frames, split="train", **common)
        if self.val_set is None:
            self.val_set = DecodedMelDataset(
                hp.export_dir, None, split="val", max_items=hp.max_val_items, **common
            )

    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers,
            collate_fn=collate_decoded_mels, persistent_workers=self.hparams.num_workers > 0,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.train_set is not None
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        assert self.val_set is not None
        return self._loader(self.val_set, self.hparams.val_batch_size, shuffle=False)


# ============================================================================== baseline callback
#: Fast metrics the callback logs (those the metrics registry has); all in ``vaefix_pl.metrics``.
BASELINE_METRICS: tuple[str, ...] = (
    "mel_distance",
    "mrstft_distance",
    "lsd",
    "snr",
    "si_sdr",
    "lag",
    "clicks_added_per_s",
)
PERCEPTUAL: tuple[str, ...] = ("pesq", "stoi")


def score_vocoder(
    vocoder: Any,
    clips: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] = BASELINE_METRICS,
    perceptual: Sequence[str] = PERCEPTUAL,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    name: str = "vocoder",
) -> tuple[dict[str, list[float]], dict[str, Tensor]]:
    """Score a vocoder on full clips: ``({metric: [per clip]}, {id: (N,) waveform on the CPU})``.

    ``clips``: ``{"id", "mel": (F, 64), "waveform": (N,) reference at the normalised level}``. Clips of
    equal frame count run together (a clip's output never depends on others' padding); each output is
    cut to its reference's ``N`` samples. The vocoder runs in eval mode without gradients (its mode is
    restored), in its parameters' dtype. Perceptual scores are NaN where unscorable (reasons dropped).
    """
    from vaefix_pl.metrics import compute_metrics, perceptual_scores
    from vaefix_pl.vocoders.hifigan import vocode

    dev = torch.device(device)
    param = next((p for p in vocoder.parameters()), None) if isinstance(vocoder, nn.Module) else None
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = vocoder.training if isinstance(vocoder, nn.Module) else False
    if isinstance(vocoder, nn.Module):
        vocoder.eval()
    scores: dict[str, list[float]] = {m: [float("nan")] * len(clips) for m in [*metrics, *perceptual]}
    audio: dict[str, Tensor] = {}
    order: dict[int, list[int]] = {}
    for i, c in enumerate(clips):
        order.setdefault(int(c["mel"].shape[0]), []).append(i)
    try:
        with torch.no_grad():
            for _, idx in sorted(order.items()):
                for k in range(0, len(idx), batch_size):
                    group = idx[k : k + batch_size]
                    mel = torch.stack([clips[i]["mel"] for i in group]).to(dev, dtype)
                    est = vocode(vocoder, mel, name=name).float()
                    lengths = torch.tensor([int(clips[i]["waveform"].shape[0]) for i in group], device=dev)
                    n = int(lengths.max())
                    ref = torch.zeros(len(group), n, device=dev)
                    for j, i in enumerate(group):
                        ref[j, : lengths[j]] = clips[i]["waveform"].to(dev)
                    est = est[:, :n] * (torch.arange(n, device=dev)[None] < lengths[:, None])
                    values = compute_metrics(ref, est, lengths, list(metrics)) if metrics else {}
                    for m, v in values.items():
                        for j, i in enumerate(group):
                            scores[m][i] = float(v[j])
                    for j, i in enumerate(group):
                        wav = est[j, : lengths[j]].cpu()
                        audio[str(clips[i]["id"])] = wav
                        if perceptual:
                            row = perceptual_scores(
                                clips[i]["waveform"].double().numpy(), wav.double().numpy(), SAMPLE_RATE,
                                names=list(perceptual),
                            )  # fmt: skip
                            for m in perceptual:
                                scores[m][i] = float(row[m])
    finally:
        if isinstance(vocoder, nn.Module) and was_training:
            vocoder.train()
    return scores, audio


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


class FixedDecoderBaseline(Callback):
    """Score the vocoder being trained against AudioLDM2's frozen HiFi-GAN on held-out decoded mels.

    At the end of each validation (not during the sanity check) it runs the user's *current* vocoder and
    the frozen *baseline* vocoder on the same held-out clips of an export (decoded mels by default),
    scores both against the clips' normalised waveforms and logs, through ``pl_module.log`` (so they reach
    the user's logger and ``trainer.callback_metrics``, e.g. for ``ModelCheckpoint(monitor="delta/mel_distance")``):

    * ``baseline/<metric>``: the frozen vocoder (computed once, cached, saved in checkpoints);
    * ``<current_prefix>/<metric>`` (``vocoder/<metric>``): the current vocoder;
    * ``delta/<metric>`` = current - baseline (negative is better for distances, ``lsd``, click rates;
      positive for ``snr``, ``si_sdr``, ``pesq``, ``stoi``).

    Metrics: means over the clips of :data:`BASELINE_METRICS` (those the registry has) and PESQ/STOI when
    ``pesq``/``pystoi`` are installed and the clip is scorable; a metric with no finite value is not logged.
    Audio examples (the first ``num_audio_examples`` clips by id) go to ``audio_dir``: ``target/<id>.wav``
    and ``baseline/<id>.wav`` once, ``step<global_step>/<id>.wav`` at each evaluation, plus a
    ``scores.jsonl`` line per evaluation; a logger whose ``experiment`` has ``add_audio`` (TensorBoard) gets
    them too. Under DDP rank 0 evaluates and broadcasts the numbers, every rank logs them.

    Args:
        export_dir: the export (its ``val`` split by default; same ``val_fraction``/``split_seed`` as
            the training data) — or pass ``dataset``: a :class:`DecodedMelDataset` of full clips.
        vocoder: how to find the current vocoder: an attribute path of the LightningModule (default
            ``"vocoder"``, dots allowed: ``"model.generator"``), a function ``pl_module -> vocoder``, or
            the vocoder module itself. It must follow :class:`vaefix_pl.vocoders.hifigan.Vocoder` (``(B, T, 64)``
            -> ``(B, T*160)``; a ``(B, 1, N)`` output or a short tail is accepted).
        baseline: the fixed vocoder (any :func:`vaefix_pl.vocoders.hifigan.load_vocoder` spec): ``None`` = the
            HiFi-GAN of ``model`` (default: the export's model folder), ``"griffinlim"``, a folder, a
            YAML config, a module.
        model: model folder / hub id for the default baseline (overrides the export's).
        max_items: held-out clips scored (first by id).
        metrics / perceptual: metric names (fast ones / ``pesq``, ``stoi``, ``estoi``).
        num_audio_examples / audio_dir: how many clips to write, and where (default
            ``<trainer.log_dir>/fixed_decoder_baseline``, else ``<default_root_dir>/fixed_decoder_baseline``).
        every_n_validations: evaluate at every n-th validation run.
        check: run :func:`vaefix_pl.vocoders.hifigan.check_vocoder` on the current vocoder at fit start.
    """

    def __init__(
        self,
        export_dir: str | os.PathLike | None = None,
        *,
        dataset: DecodedMelDataset | None = None,
        vocoder: str | nn.Module | Callable[[L.LightningModule], Any] = "vocoder",
        baseline: Any = None,
        model: str | None = None,
        split: str = "val",
        which: str = "mel_hat",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        max_items: int = 8,
        batch_size: int = 4,
        metrics: Sequence[str] | None = None,
        perceptual: Sequence[str] | None = PERCEPTUAL,
        num_audio_examples: int = 2,
        audio_dir: str | os.PathLike | None = None,
        every_n_validations: int = 1,
        current_prefix: str = "vocoder",
        check: bool = True,
    ) -> None:
        super().__init__()
        if export_dir is None and dataset is None:
            raise ValueError("FixedDecoderBaseline needs export_dir or dataset")
        if dataset is not None and dataset.segment_frames is not None:
            raise ValueError(
                "FixedDecoderBaseline scores full clips: pass a dataset with segment_frames=None"
            )
        self.export_dir = export_dir
        self._dataset = dataset
        self.vocoder = vocoder
        self.baseline_spec = baseline
        self.model = model
        self.split, self.which = split, which
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.max_items = max_items
        self.batch_size = batch_size
        self._metric_names = None if metrics is None else list(metrics)
        self.perceptual = list(perceptual or [])
        self.num_audio_examples = num_audio_examples
        self.audio_dir = Path(audio_dir) if audio_dir is not None else None
        self.every_n_validations = max(1, int(every_n_validations))
        self.current_prefix = current_prefix
        self.check = check
        self.baseline_scores: dict[str, float] | None = None
        self.baseline_items: dict[str, list[float]] | None = None
        self.baseline_ids: list[str] | None = None
        self.last_scores: dict[str, float] = {}
        self.baseline_runs = 0  # how often the baseline vocoder was run (1 once cached)
        self._clips: list[dict[str, Any]] | None = None
        self._n_validations = 0

    # ---------------------------------------------------------------------------------- pieces
    @property
    def dataset(self) -> DecodedMelDataset:
        if self._dataset is None:
            self._dataset = DecodedMelDataset(
                self.export_dir, None, split=self.split, which=self.which, val_fraction=self.val_fraction,
                split_seed=self.split_seed,
            )  # fmt: skip
        return self._dataset

    def metric_names(self) -> list[str]:
        if self._metric_names is not None:
            return self._metric_names
        from vaefix_pl.metrics import available_metrics

        have = set(available_metrics())
        return [m for m in BASELINE_METRICS if m in have]

    def clips(self) -> list[dict[str, Any]]:
        """The held-out clips, loaded once: ``{"id", "mel": (F, 64), "waveform": (N,)}``."""
        if self._clips is None:
            ds = self.dataset
            self._clips = []
            for i in range(min(len(ds), self.max_items)):
                c = ds.clip(i)
                self._clips.append({"id": c["id"], "mel": c[ds.which], "waveform": c["waveform"]})
            if not self._clips:
                raise ValueError(
                    f"FixedDecoderBaseline: no held-out clips in {ds.export_dir} ({ds.split} split)"
                )
        return self._clips

    def current_vocoder(self, pl_module: L.LightningModule) -> Any:
        """The vocoder being trained, found as configured by ``vocoder``."""
        if isinstance(self.vocoder, str):
            obj: Any = pl_module
            for part in self.vocoder.split("."):
                if not hasattr(obj, part):
                    raise AttributeError(
                        f"FixedDecoderBaseline: {type(pl_module).__name__} has no attribute {self.vocoder!r}; pass "
                        f"vocoder='<attribute path>' or vocoder=lambda module: module.<your vocoder>"
                    )
                obj = getattr(obj, part)
            return obj
        if isinstance(self.vocoder, nn.Module):
            return self.vocoder
        return self.vocoder(pl_module)

    def _baseline_vocoder(self, device: torch.device) -> Any:
        from vaefix_pl.vocoders.hifigan import load_vocoder

        source = self.model or self.dataset.settings.get("model")
        return load_vocoder(self.baseline_spec, source=source, framing=self.dataset.framing, device=device)

    def _audio_dir(self, trainer: L.Trainer) -> Path:
        if self.audio_dir is not None:
            return self.audio_dir
        root = trainer.log_dir or trainer.default_root_dir
        return Path(root) / "fixed_decoder_baseline"

    # ---------------------------------------------------------------------------------- evaluation
    def evaluate(
        self, pl_module: L.LightningModule, trainer: L.Trainer | None = None, out_dir: Path | None = None
    ) -> dict[str, float]:
        """Score the current vocoder (and the baseline, once); return the flat dict of logged values.

        Runs no collectives (DDP calls it on rank 0 only). ``out_dir``: where audio examples go
        (``None``: the ``audio_dir`` given at construction, or none).
        """
        device = pl_module.device
        current_vocoder = self.current_vocoder(pl_module)  # fail fast on a wrong attribute
        clips = self.clips()
        ids = [c["id"] for c in clips]
        names, perceptual = self.metric_names(), self.perceptual
        out_dir = out_dir if out_dir is not None else self.audio_dir
        examples = ids[: self.num_audio_examples]
        if self.baseline_scores is None or self.baseline_ids != ids:
            base = self._baseline_vocoder(device)
            items, audio = score_vocoder(
                base, clips, names, perceptual, device, self.batch_size, name="baseline vocoder"
            )
            self.baseline_runs += 1
            self.baseline_items, self.baseline_ids = items, ids
            self.baseline_scores = {m: _mean(v) for m, v in items.items()}
            del base
            if out_dir is not None:
                self._write_audio(
                    trainer, out_dir, "target", {c["id"]: c["waveform"] for c in clips}, examples, "target"
                )
                self._write_audio(trainer, out_dir, "baseline", audio, examples, "baseline")
                atomic_write_bytes(
                    out_dir / "baseline.json",
                    json.dumps(
                        jsonable({"ids": ids, "mean": self.baseline_scores, "per_clip": items}), indent=2
                    ).encode(),
                )
        items, audio = score_vocoder(
            current_vocoder,
            clips,
            names,
            perceptual,
            device,
            self.batch_size,
            name="current vocoder",
        )
        current = {m: _mean(v) for m, v in items.items()}
        result: dict[str, float] = {}
        for m in current:
            b, c = self.baseline_scores.get(m, float("nan")), current[m]
            result[f"baseline/{m}"] = b
            result[f"{self.current_prefix}/{m}"] = c
            result[f"delta/{m}"] = c - b
        if out_dir is not None:
            step = trainer.global_step if trainer is not None else 0
            self._write_audio(trainer, out_dir, f"step{step:07d}", audio, examples, self.current_prefix)
            with open(out_dir / "scores.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(jsonable({"step": step, **result})) + "\n")
        self.last_scores = result
        return result

    def _write_audio(
        self,
        trainer: L.Trainer | None,
        out_dir: Path,
        folder: str,
        audio: Mapping[str, Tensor],
        ids: Sequence[str],
        log_tag: str,
    ) -> None:
        """WAV files under ``out_dir/folder`` and, for loggers with ``experiment.add_audio``, audio entries."""
        from vaefix_pl.data.audio import write_wav

        for clip_id in ids:
            if clip_id not in audio:
                continue
            wav = audio[clip_id].detach().float().cpu()
            write_wav(out_dir / folder / f"{clip_id}.wav", wav, SAMPLE_RATE)
            for logger in trainer.loggers if trainer is not None else []:
                add_audio = getattr(getattr(logger, "experiment", None), "add_audio", None)
                if callable(add_audio):
                    add_audio(f"{log_tag}/{clip_id}", wav[None], trainer.global_step, SAMPLE_RATE)

    # ---------------------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.check:
            from vaefix_pl.vocoders.hifigan import check_vocoder

            check_vocoder(
                self.current_vocoder(pl_module), framing=self.dataset.framing, device=pl_module.device,
                name="the vocoder being trained", strict=False,
            )  # fmt: skip

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._n_validations += 1
        if (self._n_validations - 1) % self.every_n_validations:
            return
        out_dir = self._audio_dir(trainer)  # on every rank: trainer.log_dir is a collective
        result = self.evaluate(pl_module, trainer, out_dir) if trainer.is_global_zero else None
        result = trainer.strategy.broadcast(result, src=0)
        finite = {k: float(v) for k, v in result.items() if math.isfinite(v)}
        if finite:
            pl_module.log_dict(finite, on_step=False, on_epoch=True, sync_dist=False)

    # ---------------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "baseline_scores": self.baseline_scores,
            "baseline_items": self.baseline_items,
            "baseline_ids": self.baseline_ids,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.baseline_scores = state_dict.get("baseline_scores")
        self.baseline_items = state_dict.get("baseline_items")
        self.baseline_ids = state_dict.get("baseline_ids")
