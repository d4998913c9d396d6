"""Decoded-mel export: :class:`MelExportWriter` (a prediction writer for any ``ReconstructionModule(return_mels=True)`` run) and :func:`export_mels` (the whole export in one call)."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors.torch import save
from torch import Tensor, nn

from vaefix_pl.core.config import ReconstructorConfig
from vaefix_pl.core.errors import SettingsError
from vaefix_pl.core.frontend import HOP, N_MELS, SAMPLE_RATE
from vaefix_pl.core.models import load_audioldm2, read_geometry, resolve_source
from vaefix_pl.core.reconstruct import Reconstructor
from vaefix_pl.core.utils import jsonable
from vaefix_pl.data.module import AudioDataModule
from vaefix_pl.export.layout import (
    ERRORS,
    EXPORT_INFO,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SHARDS,
    _model_id,
    check_settings_compatible,
    completed_ids,
    consolidate_export,
    existing_settings,
    read_manifest,
)
from vaefix_pl.lightning.module import ReconstructionModule
from vaefix_pl.runs.files import atomic_write_bytes
from vaefix_pl.runs.partlog import PARTS, append_jsonl
from vaefix_pl.runs.tables import read_metrics_csv

log = logging.getLogger(__name__)


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
        if rec is not None and hasattr(rec, "geometry"):
            s.update(sample_rate=rec.sample_rate, hop=rec.hop, n_mels=rec.n_mels)
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
        self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: dict[str, Any], *batch_info: Any
    ) -> None:
        """One batch's clips into the buffer (``batch_info``: Lightning's batch indices, batch, index)."""
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
        append_jsonl(self._part, records, fsync=True)

    def _flush(self, items: Sequence[dict[str, Any]]) -> None:
        """Write one shard (atomically), then reference its clips in the part file."""
        if not items:
            return
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
                "seconds": sum(int(e["samples"]) for e in manifest)
                / int(self.settings.get("sample_rate", SAMPLE_RATE)),
                "shards": len({e["shard"] for e in manifest}),
                "settings": self.settings,
                "world_size": trainer.world_size,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "alignment": "mel frame k <-> waveform samples [{h}k, {h}k+{h}) (see vaefix_pl.finetune.baseline)".format(
                    h=int(self.settings.get("hop", HOP))
                ),
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
    """Stands in for the vocoder during export: ``(B, T, n_mels) -> zeros (B, T*hop)`` (output not used)."""

    def __init__(self, hop: int = HOP) -> None:
        super().__init__()
        self.hop = hop

    def forward(self, mel: Tensor) -> Tensor:
        return mel.new_zeros(mel.shape[0], mel.shape[1] * self.hop)


def _export_config(
    config: ReconstructorConfig | str | os.PathLike | None, settings: dict[str, Any]
) -> ReconstructorConfig:
    """``config`` (a string: its ``model``) with the keyword ``settings`` applied; ``model=None`` keeps it."""
    if config is None or isinstance(config, ReconstructorConfig):
        config = config or ReconstructorConfig()
    else:
        config = ReconstructorConfig(model=str(config))
    if settings.get("model", "") is None:
        del settings["model"]
    unknown = sorted(set(settings) - set(ReconstructorConfig.names()))
    if unknown:
        raise TypeError(f"export_mels() got unexpected keyword arguments {unknown}")
    config = replace(config, **settings) if settings else config
    if config.window_seconds is not None:
        raise SettingsError("export_mels runs every clip whole: window_seconds must be None")
    return config


def export_mels(
    inputs: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    output_dir: str | os.PathLike = "mel_export",
    config: ReconstructorConfig | str | os.PathLike | None = None,
    *,
    seconds: float | None = None,
    offset: float = 0.0,
    shard_size: int = 64,
    devices: int | str = 1,
    accelerator: str = "auto",
    strategy: str | None = None,
    num_nodes: int = 1,
    batch_size: int = 8,
    num_workers: int = 2,
    probe_seconds: float = 4.0,
    channel: str | int = "mean",
    progress: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Export decoded mels, true mels and normalised waveforms of ``inputs`` (``None``: the probe set).

    The pipeline settings are a :class:`~vaefix_pl.core.config.ReconstructorConfig` (``config``; a
    string is taken as its ``model``), and any of its fields may also be given as a keyword
    (``model=``, ``framing=``, ``precision=``, ``latent_mode=``, ``seed=``, ``pad_frames_to=``,
    ``allow_download=``), overriding ``config``. Every clip runs whole and unoptimised: the window
    settings must stay off and ``speed`` is not used. The vocoder is not run (export needs only the VAE).

    Resumes: ids already in ``output_dir`` are not recomputed. ``devices > 1`` runs DDP (every clip once).
    Returns a summary dict (``clips``, ``exported``, ``skipped``, ``failed``, ``manifest``); under DDP
    the counts are complete on rank 0.
    """
    config = _export_config(config, settings)
    out = Path(output_dir)
    source = str(resolve_source(config.model, allow_download=config.allow_download).resolve())
    g = read_geometry(source)  # configs only: rate, hop and mel bins of the export
    dm = AudioDataModule(
        inputs, seconds=seconds, offset=offset, batch_size=batch_size, num_workers=num_workers,
        channel=channel, probe_seconds=probe_seconds, sample_rate=g.sample_rate,
    )  # fmt: skip
    planned = {
        "format_version": FORMAT_VERSION, "framing": config.framing, "model": source,
        "latent_mode": config.latent_mode, "precision": config.precision, "pad_frames_to": config.pad_frames_to,
        "seconds": seconds, "offset": offset, "channel": channel, "probe_seconds": probe_seconds,
        "sample_rate": g.sample_rate, "hop": g.hop, "n_mels": g.n_mels,
        **({"seed": config.seed} if config.latent_mode == "sample" else {}),
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

    models = load_audioldm2(source, precision=config.precision, allow_download=config.allow_download)
    config = replace(config, model=source, precision=models.precision)
    rec = Reconstructor(
        models.vae, _NoVocoder(g.hop), models.scaling_factor, config, geometry=models.geometry
    )
    module = ReconstructionModule.from_reconstructor(
        rec, model=source, metrics=[], return_mels=True, seed=config.seed
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
    errors_csv = out / ERRORS
    failed = [e for e in (read_metrics_csv(errors_csv) if errors_csv.is_file() else []) if e["id"] not in ids]
    summary.update(
        exported=len(ids - done),
        skipped=total - todo,
        failed=len(failed),
        clips=len(manifest),
        rank_written=writer.n_written,
        is_global_zero=trainer.is_global_zero,
    )
    return summary
