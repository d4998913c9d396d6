"""The writer's path for one long item: run its stream into its WAV files, score it from them, one row.

:class:`~vaefix_pl.pipeline.job.ReconstructionJob` hands items with more windows than one segment to
the writer as :class:`~vaefix_pl.core.stream.ItemStream` objects. Here each span is appended to
``<id>.original.wav`` and ``<id>.recon.wav`` (temporary names until complete, then renamed, as every
other WAV of the run: a file under its final name is complete), the scores are computed block-wise
from the written files (:class:`~vaefix_pl.metrics.streaming.FileSignal`: the files hold exactly the
float32 samples the whole-item path scores), and the item's row is returned, in the format of the
batched path's rows. Without ``write_audio`` the files are temporary and removed after scoring.
A failure (a write, or the models) becomes the item's error row; the run goes on.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import soundfile as sf

from vaefix_pl.data.audio import AudioReadError, new_file_mode, temp_prefix
from vaefix_pl.runs.files import UnsafePathError, safe_output_path, write_error_reason

log = logging.getLogger(__name__)

TAGS = ("original", "recon")


def _open(target: Path, rate: int) -> tuple[str, sf.SoundFile]:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(), suffix=".wav", dir=target.parent)
    try:
        os.fchmod(fd, new_file_mode())
    finally:
        os.close(fd)
    return tmp, sf.SoundFile(tmp, "w", rate, 1, subtype="FLOAT", format="WAV")


def score_files(ref: str, est: str, names: list[str], rate: int) -> dict[str, float]:
    """Block-wise scores of the written reference/estimate files (metrics without a block-wise form: on
    the item read whole, as :func:`~vaefix_pl.metrics.registry.compute_metrics` runs them)."""
    import torch

    from vaefix_pl.metrics import streaming
    from vaefix_pl.metrics.registry import LAG_EXCERPT_SECONDS, MetricContext, get_metric

    r, e = streaming.FileSignal(ref), streaming.FileSignal(est)
    values = streaming.stream_item_metrics(r, e, names, rate, lag_seconds=LAG_EXCERPT_SECONDS)
    rest = [name for name in names if name not in values]
    if rest:
        n = r.shape[0]
        ctx = MetricContext(r.read(0, n)[None], e.read(0, n)[None], None, rate)
        values.update({name: get_metric(name).fn(ctx)[0] for name in rest})  # type: ignore[misc]
    return {name: float(torch.as_tensor(values[name]).double()) for name in names}


def write_streamed_item(
    item: dict[str, Any], output_dir: Path, rate: int, write_audio: bool, rank: int, row: dict[str, Any]
) -> dict[str, Any]:
    """Run ``item["stream"]`` into the files, score them; returns the item's record: ``row`` (the
    writer's fields of the item) with its scores and ``health_*``, or an error record."""

    def error(stage: str, reason: str) -> dict[str, Any]:
        log.error("%s: %s", item["id"], reason)
        return {"id": item["id"], "path": item["path"], "error": reason, "error_stage": stage, "rank": rank}

    try:
        targets = {tag: safe_output_path(output_dir, f"{item['id']}.{tag}.wav") for tag in TAGS}
    except UnsafePathError as exc:
        return error("write", str(exc))
    files: dict[str, tuple[str, sf.SoundFile]] = {}
    stage = "write"
    try:
        for tag, target in targets.items():
            files[tag] = _open(target if write_audio else output_dir / target.name, rate)
        stage = "reconstruct"  # the models run while the stream advances
        for span in item["stream"]:
            stage = "write"
            for tag in TAGS:
                files[tag][1].write(span[tag].detach().cpu().numpy())
            stage = "reconstruct"
        stage = "write"
        for _, fh in files.values():
            fh.close()
        stage = "score"
        scores = score_files(files["original"][0], files["recon"][0], item["metrics"], rate)
        stage = "write"
        if write_audio:
            for tag, target in targets.items():
                os.replace(files[tag][0], target)
    except AudioReadError as exc:  # a long file read as it streams: its decode error, as the data's
        return error("decode", str(exc))
    except Exception as exc:  # noqa: BLE001 - one item's failure is its row, never the run's end
        if stage == "write":
            return error(stage, f"cannot write the output: {write_error_reason(exc, output_dir)}")
        return error(stage, f"{type(exc).__name__}: {exc}")
    finally:
        for tmp, fh in files.values():
            if not fh.closed:
                fh.close()
            Path(tmp).unlink(missing_ok=True)
    health = {f"health_{k}": int(v) if isinstance(v, bool) else v for k, v in item["stream"].health.items()}
    return {**row, "seconds": item["stream"].n / rate, **scores, **health}


def write_streams(writer: Any, streams: list[dict[str, Any]], rank: int) -> None:
    """:func:`write_streamed_item` for each long item of a batch, after the writer's queued batches
    (its part file has one writer at a time); one record each."""
    while writer._batches:
        writer._batches.popleft().result()
    for item in streams:
        row = writer._row(item["id"], item["path"], item["length"], rank)
        rec = write_streamed_item(item, writer.output_dir, writer._rate, writer.write_audio, rank, row)
        if not rec.get("error"):
            writer._audio_seconds += rec["seconds"]
        writer._append([rec])
