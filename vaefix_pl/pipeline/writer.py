"""``RunWriter``: writes each batch's audio and metric rows as soon as the batch ends.

Per batch (every rank): ``<out>/<id>.original.wav``, ``<id>.recon.wav`` (``<id>.post.wav`` with the
repair chain) written atomically by a small thread pool, and one JSON line per item appended to the
rank's own ``<out>/.parts/rank<k>.jsonl``. CPU-only metrics (PESQ/STOI) go to a process pool fed
from here, so the GPU never waits on them. At the end rank 0 merges the parts into
``metrics.csv`` (one row per input, sorted by id), ``errors.csv`` (``id, path, stage, reason``),
``summary.json`` and ``summary.md``.

Plain class with Lightning's callback hook names and arguments (duck-typed ``trainer`` and
``pl_module``): :class:`~vaefix_pl.lightning.writer.ReconstructionWriter` adds the
``BasePredictionWriter`` base for ``trainer.predict``; :mod:`vaefix_pl.pipeline.local` calls the same
hooks in a plain loop.

Resume (why it is safe): every WAV is written to a temporary file and renamed, so a file under its
final name is complete. An item counts as complete when its record (in ``metrics.csv`` of an earlier
run or in the part files of an interrupted one) has no error and all its WAVs exist. The writer's
``setup`` hook runs after the datamodule's ``setup`` and before the dataloader is built (Lightning's
``_call_setup_hook``), on every rank, before any rank writes: each rank reads the same files, drops
the same completed ids from the data, and the sampler then splits what is left. Rank 0 carries the
completed records into ``.parts/previous.jsonl`` and the final merge keeps the newest record per id,
so ``metrics.csv`` holds every input exactly once. ``overwrite=True`` redoes everything.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from pathlib import Path
from typing import Any

import torch

from vaefix_pl.core.errors import OutputError
from vaefix_pl.core.frontend import SAMPLE_RATE
from vaefix_pl.data.audio import write_wav
from vaefix_pl.pipeline.ranks import rank_timing
from vaefix_pl.runs.files import (
    UnsafePathError,
    atomic_write_text,
    jsonable,
    remove_temp_files,
    safe_output_path,
    write_error_reason,
)
from vaefix_pl.runs.identity import file_identity, settings_fingerprint
from vaefix_pl.runs.lock import RunLock, acquire_run_lock
from vaefix_pl.runs.partlog import PARTS, append_jsonl
from vaefix_pl.runs.tables import (
    AUDIO_TAGS,
    PREVIOUS,
    identity_mismatch,
    is_complete,
    merge_parts,
    previous_rows,
    read_summary,
    write_run_tables,
    writer_part_files,
)

log = logging.getLogger(__name__)


def _value(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        x = x.item()
    if isinstance(x, bool):
        return int(x)
    return x


def _to_host(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as ``dtype`` on the CPU; from a GPU, a non-blocking copy into pinned memory (valid once the
    stream reaches the event recorded after it)."""
    t = t.detach().to(dtype)
    if t.device.type != "cuda":
        return t
    out = torch.empty(t.shape, dtype=dtype, pin_memory=True)
    out.copy_(t, non_blocking=True)
    return out


def _stage_to_host(prediction: dict[str, Any]) -> dict[str, Any]:
    """Queue the copies of a prediction's tensors to the host and record an event after them.

    Audio as float32 ``(B, N)``, metrics float64, health as is, lengths int64. ``ready`` is a CUDA
    event to synchronize on before reading (``None`` when nothing came from a GPU).
    """
    staged: dict[str, Any] = {k: prediction[k] for k in ("ids", "paths", "errors")}
    lengths = torch.as_tensor(prediction["lengths"])
    staged["lengths"] = _to_host(lengths, torch.int64)
    staged["audio"] = {tag: _to_host(t, torch.float32) for tag, t in prediction["audio"].items()}
    staged["metrics"] = {
        tag: {k: _to_host(v, torch.float64) for k, v in scores.items()}
        for tag, scores in prediction["metrics"].items()
    }
    staged["health"] = {k: _to_host(v, v.dtype) for k, v in prediction["health"].items()}
    on_gpu = any(t.device.type == "cuda" for t in [lengths, *prediction["audio"].values()])
    staged["ready"] = None
    if on_gpu:
        staged["ready"] = torch.cuda.Event()
        staged["ready"].record()
    return staged


class RunWriter:
    """Write audio and metric rows per batch; merge ``metrics.csv``/``summary.json`` on rank 0 at the end.

    Use with ``trainer.predict(..., return_predictions=False)`` so memory does not grow with the data.
    A rerun into the same ``output_dir`` skips inputs already complete (see the module docstring);
    this needs the inputs from a datamodule with ``entry_ids``/``drop_ids`` (``AudioDataModule``).

    Args:
        output_dir: where everything goes (ids with ``/`` make subfolders; no id can leave it).
        write_audio: write the WAV files (off: metrics only).
        io_workers: threads writing WAV files.
        perceptual_workers: processes for PESQ/STOI (``None``: up to 4, fewer on small machines).
        report: ask for ``report.html`` after the run: the ``vaefix`` CLI writes it once ``predict`` returns
            (library callers: ``vaefix_pl.write_report(output_dir)``); the writer itself writes no report.
        overwrite: recompute every input, even those an earlier run into ``output_dir`` completed.
        strict: mark the run as failed when any input failed (``vaefix`` then exits with code 1;
            :attr:`failed` is set either way).
        max_pending_batches: batches whose device->host copies and writes may still be in flight
            while the next batch runs (the loop waits beyond that; memory stays bounded).
    """

    def __init__(
        self,
        output_dir: str = "outputs",
        write_audio: bool = True,
        io_workers: int = 4,
        perceptual_workers: int | None = None,
        report: bool = False,
        overwrite: bool = False,
        strict: bool = False,
        max_pending_batches: int = 2,
    ) -> None:
        super().__init__()  # BasePredictionWriter's (write_interval="batch"), in ReconstructionWriter
        self.output_dir = Path(output_dir)
        self.write_audio = write_audio
        self.io_workers = io_workers
        self.perceptual_workers = perceptual_workers
        self.report = report
        self.overwrite = overwrite
        self.strict = strict
        self.max_pending_batches = max_pending_batches
        self._pool: ThreadPoolExecutor | None = None
        self._batch_pool: ThreadPoolExecutor | None = None
        self._batches: deque[Future] = deque()
        self._wait_s = 0.0
        self._pending: list[tuple[Future, str, str | None]] = []
        self._part = None
        self._scorer = None
        self._t0 = 0.0
        self._rate = SAMPLE_RATE
        self._model_fields: dict[str, Any] = {}
        self._audio_seconds = 0.0
        self._items = 0
        self._first_batch_s: float | None = None
        self.timing: dict[str, Any] = {}
        #: ids an earlier run completed, left out of this run (set in ``setup``)
        self.skipped: list[str] = []
        self._carry: list[dict[str, Any]] = []
        self._input_ids: set[str] | None = None
        self._nothing_to_do = False
        self._finalized = False
        #: ``summary.json`` of the last finalised run (rank 0), and whether any input failed
        self.summary: dict[str, Any] | None = None
        self.failed = False
        #: this run's id (a uuid hex shared by its ranks): names its part and temporary files
        self.run_id: str | None = None
        self._lock: RunLock | None = None
        self._dead_runs: list[str] = []
        #: per input id: source identity (``src_size``, ``src_mtime_ns``) recorded with its row
        self._identity: dict[str, dict[str, Any]] = {}
        self._fingerprint = ""
        #: ``{id: why}`` of inputs an earlier run recorded but that are redone (changed file or settings)
        self.redone: dict[str, str] = {}

    # ------------------------------------------------------------------------------ resume
    def expected_tags(self, pl_module: Any) -> list[str]:
        """WAV tags a complete item has: ``original``, ``recon`` and ``post`` with a repair chain."""
        if not self.write_audio:
            return []
        has_chain = getattr(pl_module, "chain", None) is not None
        return [t for t in AUDIO_TAGS if t != "post" or has_chain]

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # Runs on every rank after the datamodule's setup and before the dataloader exists, and no rank
        # writes before the "post_setup" barrier that follows: all ranks read the same files and drop
        # the same ids, so the sampler splits identical lists.
        self._finalized = False
        self.skipped, self._carry, self._nothing_to_do, self.redone = [], [], False, {}
        if stage == "predict":
            self._lock_run(trainer)
            self._fingerprint = settings_fingerprint(pl_module, getattr(trainer, "datamodule", None))
        dm = getattr(trainer, "datamodule", None)
        if stage != "predict" or not (hasattr(dm, "entry_ids") and hasattr(dm, "drop_ids")):
            self._input_ids = None
            return
        if hasattr(dm, "drop_inside"):
            own = dm.drop_inside(self.output_dir, [f".{t}.wav" for t in AUDIO_TAGS])
            if own and trainer.is_global_zero:
                log.warning(
                    "%s: not reading %d files inside the output folder as inputs", self.output_dir, len(own)
                )
        self._input_ids = set(dm.entry_ids())
        entries = getattr(getattr(dm, "dataset", None), "entries", None) or []
        self._identity = {e.id: {"path": e.path, **file_identity(e.path)} for e in entries}
        if not self.overwrite:
            tags = self.expected_tags(pl_module)
            needs = [n for n in getattr(pl_module, "perceptual_metrics", []) or []]
            done = []
            for r in previous_rows(self.output_dir):
                if r["id"] not in self._input_ids or not is_complete(r, self.output_dir, tags, needs):
                    continue
                why = identity_mismatch(r, self._identity.get(r["id"], {}), self._fingerprint)
                if why is None:
                    done.append(r)
                else:
                    self.redone[r["id"]] = why
                    if trainer.is_global_zero:
                        log.warning("%s %s: redone", r.get("path") or r["id"], why)
            self._carry = done
            self.skipped = [r["id"] for r in done]
            if self.skipped:
                dm.drop_ids(set(self.skipped))
                if trainer.is_global_zero:
                    log.warning(
                        "%s: %d of %d inputs already complete, skipping them (pass overwrite / --overwrite "
                        "to redo them)",
                        self.output_dir,
                        len(self.skipped),
                        len(self._input_ids),
                    )
        self._nothing_to_do = len(self.skipped) == len(self._input_ids)

    def _lock_run(self, trainer: Any) -> None:
        """Rank 0 takes the folder's run lock and makes the run id; every rank learns both (or the
        refusal, raised as :class:`OutputError` on every rank)."""
        if self._lock is not None and self._lock.fd is not None:
            return
        lock, msg = None, None
        if trainer.is_global_zero:
            try:
                lock = acquire_run_lock(self.output_dir)
            except OutputError as exc:
                msg = str(exc)
        info = (msg, lock.run_id if lock else None, lock.dead_runs if lock else [])
        if trainer.world_size > 1:
            info = trainer.strategy.broadcast(info, src=0)
        msg, run_id, dead = info
        if msg:
            raise OutputError(msg)
        self._lock, self.run_id, self._dead_runs = lock, run_id, list(dead)
        os.environ["VAEFIX_RUN_TAG"] = run_id  # the temporary-file prefix of this run (every rank)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._release()

    def _part_name(self, rank: int) -> str:
        return f"recon-{self.run_id}-rank{rank}.jsonl"

    def _start_parts(self) -> None:
        """Rank 0, holding the lock, before any rank writes: clear the temporary files of killed runs
        (their own prefix only), carry completed records into ``previous.jsonl`` and retire the part
        files of killed runs (the lock proves no live run owns them; their other records are redone)."""
        parts = self.output_dir / PARTS
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for f in remove_temp_files(self.output_dir, self._dead_runs):
            log.info("removed %s (left by an interrupted run)", f)
        parts.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(jsonable(r)) + "\n" for r in self._carry)
        atomic_write_text(parts / PREVIOUS, text)
        for f in writer_part_files(self.output_dir):
            if f.name != PREVIOUS and self.run_id not in f.name:
                f.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------ lifecycle
    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        parts = self.output_dir / PARTS
        if trainer.is_global_zero:
            self._start_parts()
        trainer.strategy.barrier("vaefix_writer_start")
        parts.mkdir(parents=True, exist_ok=True)
        self._part = open(parts / self._part_name(trainer.global_rank), "w", encoding="utf-8")
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.io_workers), thread_name_prefix="vaefix-io")
        self._batch_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vaefix-batch")  # FIFO
        self._batches = deque()
        self._wait_s = 0.0
        self._pending = []
        #: the model's rate: WAVs are written and scored at it
        self._rate = int(getattr(pl_module, "sample_rate", None) or SAMPLE_RATE)
        rec = getattr(pl_module, "reconstructor", None)
        #: recorded on every metrics.csv row: which geometry and the checkpoint's own scaling_factor
        self._model_fields = (
            {"geometry": rec.geometry.name, "scaling_factor": float(rec.scaling_factor)}
            if rec is not None and hasattr(rec, "geometry")
            else {}
        )
        names = list(getattr(pl_module, "perceptual_metrics", []) or [])
        if names:
            from vaefix_pl.metrics import PerceptualScorer

            self._scorer = PerceptualScorer(
                names=names, sample_rate=self._rate, max_workers=self.perceptual_workers
            )
        self._t0 = time.perf_counter()
        self._audio_seconds = 0.0
        self._items, self._first_batch_s = 0, None
        self.timing = {}

    def _append(self, records: Sequence[dict[str, Any]]) -> None:
        assert self._part is not None
        append_jsonl(self._part, records)

    def write_on_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        prediction: dict[str, Any],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # Only queue the device->host copies here and hand the rest (rows, WAV writes, scoring) to the
        # writer's batch thread: a synchronous copy and the per-item Python work would leave the GPU
        # idle between batches. At most ``max_pending_batches`` batches wait, so memory stays bounded.
        staged = _stage_to_host(prediction)
        t = time.perf_counter()
        self._items += len(staged["ids"]) + len(prediction.get("streams") or ())
        if self._first_batch_s is None:  # the first batch carries any compile / autotune of this rank
            self._first_batch_s = t - self._t0
        while len(self._batches) >= max(1, self.max_pending_batches):
            self._batches.popleft().result()
        self._wait_s += time.perf_counter() - t
        assert self._batch_pool is not None
        self._batches.append(self._batch_pool.submit(self._write_batch, staged, trainer.global_rank))
        if prediction.get("streams"):  # long items: their models run as they are written, here
            from vaefix_pl.pipeline.streamed import write_streams

            write_streams(self, prediction["streams"], trainer.global_rank)

    def _write_batch(self, staged: dict[str, Any], rank: int) -> None:
        """The writer's batch thread: wait for the batch's copies, then rows, WAV writes and scoring."""
        if staged["ready"] is not None:
            staged["ready"].synchronize()
        records: list[dict[str, Any]] = [
            {
                "id": e["id"],
                "path": e["path"],
                "error": e["reason"],
                # errors that do not say where they arose come from the model step (the data's carry a stage)
                "error_stage": e.get("stage") or "reconstruct",
                "rank": rank,
            }
            for e in staged["errors"]
        ]
        ids = list(staged["ids"])
        if ids:
            lengths = staged["lengths"].tolist()
            audio = staged["audio"]
            metrics = {
                tag: {k: v.tolist() for k, v in scores.items()} for tag, scores in staged["metrics"].items()
            }
            health = {k: v.tolist() for k, v in staged["health"].items()}
            scored: list[int] = []
            for i, (item_id, n) in enumerate(zip(ids, lengths)):
                path = staged["paths"][i]
                targets: dict[str, Path] = {}
                if self.write_audio:
                    try:
                        targets = {
                            tag: safe_output_path(self.output_dir, f"{item_id}.{tag}.wav") for tag in audio
                        }
                    except UnsafePathError as exc:
                        records.append(
                            {
                                "id": item_id,
                                "path": path,
                                "error": str(exc),
                                "error_stage": "write",
                                "rank": rank,
                            }
                        )
                        continue
                row = self._row(item_id, path, n, rank)
                for tag, scores in metrics.items():
                    prefix = "" if tag == "recon" else f"{tag}_"
                    row.update({prefix + k: _value(v[i]) for k, v in scores.items()})
                row.update({f"health_{k}": _value(v[i]) for k, v in health.items()})
                records.append(row)
                for tag, target in targets.items():
                    # a view, not a copy: the staged batch is this writer's own and is never written to
                    fut = self._pool.submit(write_wav, target, audio[tag][i, :n], self._rate)
                    self._pending.append((fut, item_id, path))
                self._audio_seconds += n / self._rate
                scored.append(i)
            if self._scorer is not None and scored:
                s_ids = [ids[i] for i in scored]
                ref = [audio["original"][i, : lengths[i]].numpy() for i in scored]
                for tag in ("recon", "post"):
                    if tag in audio:
                        est = [audio[tag][i, : lengths[i]].numpy() for i in scored]
                        self._scorer.submit(s_ids, ref, est, tag=tag)
        self._append(records)
        if self._scorer is not None:
            self._append([{"kind": "perceptual", **r} for r in self._scorer.poll()])
        self._reap(rank=rank)

    def _row(self, item_id: str, path: Any, n: int, rank: int) -> dict[str, Any]:
        """An item's row before its scores: id, path, seconds, source identity, settings, model fields."""
        row: dict[str, Any] = {"id": item_id, "path": path, "seconds": n / self._rate, "rank": rank}
        ident = self._identity.get(item_id, {})
        row.update({k: v for k, v in ident.items() if k != "path"}, settings_fp=self._fingerprint)
        row.update(self._model_fields)
        return row

    def _drain_batches(self) -> None:
        """Wait for every queued batch (re-raising a failure of the batch thread)."""
        while self._batches:
            self._batches.popleft().result()
        if self._batch_pool is not None:
            self._batch_pool.shutdown(wait=True)
            self._batch_pool = None

    def _reap(self, wait: bool = False, rank: int = 0) -> None:
        """Collect finished WAV writes; a failed write (disk full, name too long, permissions) becomes
        an error record of its item (stage ``write``), which replaces the item's scores at the merge."""
        keep, failed = [], []
        for fut, item_id, path in self._pending:
            if wait or fut.done():
                try:
                    fut.result()
                except Exception as exc:  # noqa: BLE001 - any write failure is the item's, not the run's
                    failed.append(
                        {
                            "id": item_id,
                            "path": path,
                            "error": f"cannot write the output: {write_error_reason(exc, self.output_dir)}",
                            "error_stage": "write",
                            "rank": rank,
                        }
                    )
            else:
                keep.append((fut, item_id, path))
        self._pending = keep
        if failed:
            for rec in failed:
                log.error("%s: %s", rec["id"], rec["error"])
            self._append(list({r["id"]: r for r in failed}.values()))

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        gpu_done = time.perf_counter()
        self._drain_batches()
        self._reap(wait=True, rank=trainer.global_rank)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
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
            "loop_waited_on_writer_s": self._wait_s,
            "rank_audio_s": self._audio_seconds,
        }
        # every rank's figures reach rank 0 (summary.json timing.ranks): which rank ended last and why
        self.timing["ranks"] = rank_timing(
            trainer,
            {"items": self._items, "audio_s": self._audio_seconds, "first_batch_s": self._first_batch_s,
             "predict_s": gpu_done - self._t0, "write_and_score_tail_s": all_done - gpu_done},
        )  # fmt: skip
        trainer.strategy.barrier("vaefix_writer_end")
        if trainer.is_global_zero:
            self.finalize(pl_module, trainer)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._batch_pool is not None:  # the run failed before on_predict_end drained the queue
            self._batch_pool.shutdown(wait=True, cancel_futures=True)
            self._batch_pool = None
            self._batches.clear()
        # Lightning skips the predict loop (and on_predict_start/end) when no batch is left: a rerun
        # whose inputs were all complete. Its tables still get written, from the carried records.
        if stage == "predict" and self._nothing_to_do and not self._finalized and trainer.is_global_zero:
            if self._pool is None and self._part is None:
                self._t0 = time.perf_counter()
                self._start_parts()
                self.finalize(pl_module, trainer)
        if stage == "predict" and trainer.is_global_zero:
            self._release()

    # ------------------------------------------------------------------------------ merge
    def finalize(self, pl_module: Any = None, trainer: Any = None) -> dict:
        """Merge the parts into ``metrics.csv``, ``errors.csv``, ``summary.json`` and ``summary.md``."""

        parts = [
            f
            for f in writer_part_files(self.output_dir)
            if f.name == PREVIOUS or (self.run_id or "") in f.name
        ]
        rows = merge_parts(parts)
        if self._input_ids is not None:
            rows = [r for r in rows if r["id"] in self._input_ids]
        for r in rows:
            r.pop("rank", None)
        skipped = set(self.skipped)
        run_audio_s = sum(
            r.get("seconds") or 0.0 for r in rows if not r.get("error") and r["id"] not in skipped
        )
        run_wall = time.perf_counter() - self._t0 if self._t0 else float("nan")
        # A resumed run keeps the figures of the runs it continues: the table's audio and the wall
        # time of every run that produced it (this one's alone under ``this_run``).
        prev_timing = (read_summary(self.output_dir).get("timing") or {}) if skipped else {}
        prev_wall = prev_timing.get("wall_s") if isinstance(prev_timing.get("wall_s"), (int, float)) else 0.0
        wall = run_wall + prev_wall
        audio_s = run_audio_s + sum(
            r.get("seconds") or 0.0 for r in rows if not r.get("error") and r["id"] in skipped
        )
        extra = {
            "resumed": len(skipped),
            "timing": {
                **self.timing,
                "wall_s": wall,
                "audio_s": audio_s,
                "x_realtime": audio_s / wall if wall and math.isfinite(wall) and wall > 0 else None,
                "world_size": trainer.world_size if trainer is not None else 1,
                "this_run": {"wall_s": run_wall, "audio_s": run_audio_s},
            },
            "resume": {
                "skipped_complete": len(skipped),
                "overwrite": self.overwrite,
                "redone": dict(self.redone),
            },
            "settings": {
                "module": pl_module.settings() if hasattr(pl_module, "settings") else {},
                "data": dict(trainer.datamodule.hparams)
                if trainer is not None and trainer.datamodule
                else {},
                "writer": {
                    "output_dir": str(self.output_dir),
                    "write_audio": self.write_audio,
                    "overwrite": self.overwrite,
                    "strict": self.strict,
                },
                "versions": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "lightning": _version("lightning"),
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                },
            },
        }
        summary = write_run_tables(self.output_dir, rows, extra, title="vaefix summary")
        for f in parts:  # the tables now hold every record
            f.unlink(missing_ok=True)
        try:
            (self.output_dir / PARTS).rmdir()
        except OSError:  # not empty: files of another writer (e.g. a mel export) live there too
            pass
        self.summary = summary
        self.failed = summary["n_failed"] > 0
        self._finalized = True
        return summary


def _version(package: str) -> str | None:
    try:
        return _pkg_version(package)
    except PackageNotFoundError:
        return None
