"""``ReconstructionWriter``: writes each batch's audio and metric rows as soon as the batch ends.

Per batch (every rank): ``<out>/<id>.original.wav``, ``<id>.recon.wav`` (``<id>.post.wav`` with the
repair chain) written atomically by a small thread pool, and one JSON line per item appended to the
rank's own ``<out>/.parts/rank<k>.jsonl``. CPU-only metrics (PESQ/STOI) go to a process pool fed
from here, so the GPU never waits on them. At the end rank 0 merges the parts into
``metrics.csv`` (one row per input, sorted by id), ``errors.csv``, ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import platform
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from vaefix_pl.audio import write_wav
from vaefix_pl.frontend import SAMPLE_RATE
from vaefix_pl.io_utils import atomic_write_text, jsonable

log = logging.getLogger(__name__)

PARTS = ".parts"
AUDIO_TAGS = ("original", "recon", "post")


def _value(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        x = x.item()
    if isinstance(x, bool):
        return int(x)
    return x


def metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Numeric score columns of merged rows (not id/path/health/error bookkeeping)."""
    skip = {"id", "path", "seconds", "error", "rank"}
    cols: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k in skip or k.startswith("health_") or k.endswith("_error") or k in cols:
                continue
            if isinstance(v, (int, float)) or v is None:
                cols.append(k)
    return cols


def merge_parts(parts: Sequence[Path]) -> list[dict[str, Any]]:
    """Merge the ranks' JSON lines into one row per id (perceptual rows join their item's row)."""
    by_id: dict[str, dict[str, Any]] = {}
    for part in parts:
        with open(part, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a torn last line from a killed rank
                    log.warning("%s: skipping a partial line", part)
                    continue
                kind = rec.pop("kind", "item")
                row = by_id.setdefault(rec["id"], {"id": rec["id"]})
                if kind == "perceptual":
                    prefix = "" if rec.pop("tag", "recon") == "recon" else "post_"
                    for k, v in rec.items():
                        if k != "id":
                            row[prefix + k] = v
                else:
                    row.update(rec)
    return [by_id[k] for k in sorted(by_id)]


def rows_to_csv(rows: Sequence[dict[str, Any]], first: Sequence[str] = ("id", "path", "seconds")) -> str:
    cols = [c for c in first if any(c in r for r in rows)]
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
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
        "failed": [{"id": r["id"], "path": r.get("path"), "reason": r["error"]} for r in failed],
        "metrics": summary_metrics,
        "health": {
            f"items_with_{name}": sum(1 for r in ok_rows if (r.get(col) or 0) > 0)
            for name, col in _HEALTH_COUNTS.items()
            if any(col in r for r in ok_rows)
        },
        **extra,
    }
    errors = [{"id": r["id"], "path": r.get("path"), "reason": r["error"]} for r in failed]
    atomic_write_text(out_dir / "metrics.csv", rows_to_csv(rows))
    atomic_write_text(out_dir / "errors.csv", rows_to_csv(errors) if errors else "id,path,reason\n")
    atomic_write_text(out_dir / "summary.json", json.dumps(jsonable(summary), indent=2))
    atomic_write_text(
        out_dir / "summary.md",
        summary_markdown(summary_metrics, title=f"{title}: {len(ok_rows)} clips, {len(failed)} failed"),
    )
    return summary


class ReconstructionWriter(BasePredictionWriter):
    """Write audio and metric rows per batch; merge ``metrics.csv``/``summary.json`` on rank 0 at the end.

    Use with ``trainer.predict(..., return_predictions=False)`` so memory does not grow with the data.

    Args:
        output_dir: where everything goes (ids with ``/`` make subfolders).
        write_audio: write the WAV files (off: metrics only).
        io_workers: threads writing WAV files.
        perceptual_workers: processes for PESQ/STOI (``None``: up to 4, fewer on small machines).
        report: write ``report.html`` at the end (needs :mod:`vaefix_pl.report`).
    """

    def __init__(
        self,
        output_dir: str = "outputs",
        write_audio: bool = True,
        io_workers: int = 4,
        perceptual_workers: int | None = None,
        report: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.write_audio = write_audio
        self.io_workers = io_workers
        self.perceptual_workers = perceptual_workers
        self.report = report
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._part = None
        self._scorer = None
        self._t0 = 0.0
        self._audio_seconds = 0.0
        self.timing: dict[str, float] = {}

    # ------------------------------------------------------------------------------ lifecycle
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        parts = self.output_dir / PARTS
        if trainer.is_global_zero:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(parts, ignore_errors=True)  # stale parts of an earlier run
            parts.mkdir(parents=True)
        trainer.strategy.barrier("vaefix_writer_start")
        parts.mkdir(parents=True, exist_ok=True)
        self._part = open(parts / f"rank{trainer.global_rank}.jsonl", "a", encoding="utf-8")
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.io_workers), thread_name_prefix="vaefix-io")
        self._pending = []
        names = list(getattr(pl_module, "perceptual_metrics", []) or [])
        if names:
            from vaefix_pl.metrics import PerceptualScorer

            self._scorer = PerceptualScorer(names=names, max_workers=self.perceptual_workers)
        self._t0 = time.perf_counter()
        self._audio_seconds = 0.0
        self.timing = {}

    def _append(self, records: Sequence[dict[str, Any]]) -> None:
        assert self._part is not None
        for rec in records:
            self._part.write(json.dumps(jsonable(rec)) + "\n")
        self._part.flush()

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
        records: list[dict[str, Any]] = [
            {"id": e["id"], "path": e["path"], "error": e["reason"], "rank": trainer.global_rank}
            for e in prediction["errors"]
        ]
        ids = list(prediction["ids"])
        if ids:
            lengths = prediction["lengths"].tolist()
            audio = {tag: t.detach().float().cpu() for tag, t in prediction["audio"].items()}
            metrics = {
                tag: {k: v.detach().double().cpu().tolist() for k, v in scores.items()}
                for tag, scores in prediction["metrics"].items()
            }
            health = {k: v.detach().cpu().tolist() for k, v in prediction["health"].items()}
            for i, (item_id, n) in enumerate(zip(ids, lengths)):
                row: dict[str, Any] = {
                    "id": item_id,
                    "path": prediction["paths"][i],
                    "seconds": n / SAMPLE_RATE,
                    "rank": trainer.global_rank,
                }
                for tag, scores in metrics.items():
                    prefix = "" if tag == "recon" else f"{tag}_"
                    row.update({prefix + k: _value(v[i]) for k, v in scores.items()})
                row.update({f"health_{k}": _value(v[i]) for k, v in health.items()})
                records.append(row)
                if self.write_audio:
                    for tag, wav in audio.items():
                        target = self.output_dir / f"{item_id}.{tag}.wav"
                        self._pending.append(self._pool.submit(write_wav, target, wav[i, :n].clone()))
                self._audio_seconds += n / SAMPLE_RATE
            if self._scorer is not None:
                ref = [audio["original"][i, :n].numpy() for i, n in enumerate(lengths)]
                for tag in ("recon", "post"):
                    if tag in audio:
                        est = [audio[tag][i, :n].numpy() for i, n in enumerate(lengths)]
                        self._scorer.submit(ids, ref, est, tag=tag)
        self._append(records)
        if self._scorer is not None:
            self._append([{"kind": "perceptual", **r} for r in self._scorer.poll()])
        self._reap()

    def _reap(self, wait: bool = False) -> None:
        keep = []
        for fut in self._pending:
            if wait or fut.done():
                fut.result()  # re-raise write errors (disk full, permissions)
            else:
                keep.append(fut)
        self._pending = keep

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gpu_done = time.perf_counter()
        self._reap(wait=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._scorer is not None:
            self._append([{"kind": "perceptual", **r} for r in self._scorer.drain()])
            self._scorer.close()
            self._scorer = None
        all_done = time.perf_counter()
        if self._part is not None:
            self._part.close()
            self._part = None
        self.timing = {
            "predict_s": gpu_done - self._t0,
            "write_and_score_tail_s": all_done - gpu_done,
            "rank_audio_s": self._audio_seconds,
        }
        trainer.strategy.barrier("vaefix_writer_end")
        if trainer.is_global_zero:
            self.finalize(pl_module, trainer)

    # ------------------------------------------------------------------------------ merge
    def finalize(self, pl_module: L.LightningModule | None = None, trainer: L.Trainer | None = None) -> dict:
        """Merge the rank parts into ``metrics.csv``, ``errors.csv``, ``summary.json`` and ``summary.md``."""

        parts = sorted((self.output_dir / PARTS).glob("rank*.jsonl"))
        rows = merge_parts(parts)
        for r in rows:
            r.pop("rank", None)
        audio_s = sum(r.get("seconds") or 0.0 for r in rows if not r.get("error"))
        wall = time.perf_counter() - self._t0 if self._t0 else float("nan")
        extra = {
            "timing": {
                **self.timing,
                "wall_s": wall,
                "audio_s": audio_s,
                "x_realtime": audio_s / wall if wall and math.isfinite(wall) and wall > 0 else None,
                "world_size": trainer.world_size if trainer is not None else 1,
            },
            "settings": {
                "module": pl_module.settings() if hasattr(pl_module, "settings") else {},
                "data": dict(trainer.datamodule.hparams)
                if trainer is not None and trainer.datamodule
                else {},
                "writer": {"output_dir": str(self.output_dir), "write_audio": self.write_audio},
                "versions": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "lightning": L.__version__,
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                },
            },
        }
        summary = write_run_tables(self.output_dir, rows, extra, title="vaefix summary")
        shutil.rmtree(self.output_dir / PARTS, ignore_errors=True)
        if self.report:
            from vaefix_pl.report import write_report

            write_report(self.output_dir)
        return summary
