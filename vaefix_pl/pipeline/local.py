"""Run a job on one device in a plain loop: the hooks ``trainer.predict`` calls, in its order, without Lightning.

``vaefix reconstruct`` on one device uses this: importing Lightning (and, through it, torchmetrics and
transformers' auto classes) costs several seconds per process, which a one-clip run would spend
before its first reconstruction (docs/STARTUP.md). The job, data and writer are the same classes
the Lightning path runs (:class:`~vaefix_pl.pipeline.job.ReconstructionJob`,
:class:`~vaefix_pl.data.inputs.AudioInputs`, :class:`~vaefix_pl.pipeline.writer.RunWriter`), called
through the same hooks, so both paths write the same files. Several devices: one such process per
device, started together by :mod:`vaefix_pl.pipeline.launch`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch

from vaefix_pl.core.errors import SettingsError
from vaefix_pl.core.frontend import SAMPLE_RATE


def mark(phase: str, device: torch.device | None = None) -> None:
    """Append ``<phase> <unix time>`` to the file named by ``VAEFIX_TIMELINE`` (start-up benchmarks:
    benchmarks/cli_wall.py subtracts its own start time); nothing without it. With a CUDA ``device``
    the mark waits for the device's queued work first (only when the timeline is on)."""
    path = os.environ.get("VAEFIX_TIMELINE")
    if path:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{phase} {time.time():.4f}\n")


class OneProcess:
    """The strategy of a single process: no collectives; ``root_device`` is where the job runs."""

    def __init__(self, device: torch.device) -> None:
        self.root_device = device

    def barrier(self, name: str | None = None) -> None:  # noqa: D102 (Lightning's Strategy API)
        return None

    def broadcast(self, obj: Any, src: int = 0) -> Any:  # noqa: D102 (Lightning's Strategy API)
        return obj


class GroupStrategy(OneProcess):
    """One rank of a launched run (:mod:`vaefix_pl.pipeline.launch`): the writer's collectives over a
    gloo process group. Only small Python objects cross it (the run id, barriers, timing), so gloo
    on the loopback interface is enough and GPUs need no NCCL set-up."""

    def __init__(self, device: torch.device, rank: int, world: int, timeout_s: float = 24 * 3600) -> None:
        import datetime

        import torch.distributed as dist

        super().__init__(device)
        if not dist.is_initialized():
            # the timeout bounds a wait at a barrier; a rank that dies is caught by the launcher first
            dist.init_process_group(
                "gloo", init_method="env://", rank=rank, world_size=world,
                timeout=datetime.timedelta(seconds=timeout_s),
            )  # fmt: skip

    def barrier(self, name: str | None = None) -> None:  # noqa: D102 (Lightning's Strategy API)
        import torch.distributed as dist

        dist.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:  # noqa: D102 (Lightning's Strategy API)
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def close(self) -> None:
        """Leave the process group (once every rank is done with it)."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class LocalTrainer:
    """What the job, data and writer read from a Lightning ``Trainer``: one process, one device, rank
    ``rank`` of ``world`` (``world`` > 1: a launched run, collectives through :class:`GroupStrategy`)."""

    def __init__(
        self, device: torch.device, datamodule: Any, module: Any, rank: int = 0, world: int = 1
    ) -> None:
        self.strategy = GroupStrategy(device, rank, world) if world > 1 else OneProcess(device)
        self.global_rank = self.local_rank = rank
        self.world_size = world
        self.is_global_zero = rank == 0
        self.datamodule = datamodule
        self.lightning_module = module
        self.predict_dataloaders: Any = None


def resolve_device(accelerator: str | None = None, local_rank: int = 0) -> torch.device:
    """``cpu``; ``gpu``/``cuda`` (an error without CUDA); ``auto``/``None``: CUDA if available, else the CPU.

    The CUDA index is ``local_rank`` modulo the visible GPUs: 0 under ``vaefix``'s launcher (each rank
    sees its own GPU alone), ``LOCAL_RANK`` under ``torchrun`` (every rank sees every GPU)."""
    name = (accelerator or "auto").lower()
    if name == "cpu":
        return torch.device("cpu")
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise SettingsError(f"--accelerator {accelerator}: no CUDA device is available on this machine")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    raise SettingsError(f"--accelerator must be cpu, gpu or auto for a one-device run, got {accelerator!r}")


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def throughput_postfix(clips: int, audio_s: float, t0: float) -> dict[str, str]:
    """A progress bar's ``clips/s`` and ``xRT`` (audio seconds per wall second) since ``t0`` (perf_counter)."""
    elapsed = max(time.perf_counter() - t0, 1e-9)
    return {"clips/s": f"{clips / elapsed:.1f}", "xRT": f"{audio_s / elapsed:.0f}"}


class _Progress:
    """One tqdm bar on stderr with clips/s and x real time, like the Lightning path's bar."""

    def __init__(self, total: int | None, sample_rate: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="Reconstructing", unit="batch", file=sys.stderr, dynamic_ncols=True)
        self.rate, self.t0, self.clips, self.audio_s = sample_rate, time.perf_counter(), 0, 0.0

    def update(self, batch: dict[str, Any]) -> None:
        self.clips += len(batch["ids"])
        self.audio_s += float(sum(batch.get("host_lengths") or batch["lengths"].tolist())) / self.rate
        self.bar.set_postfix(throughput_postfix(self.clips, self.audio_s, self.t0), refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def predict_local(
    job: Any,
    data: Any,
    writer: Any,
    device: torch.device,
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
) -> None:
    """``trainer.predict(job, datamodule=data)`` with ``writer`` as its callback, on ``device``, one process.

    Hook order as Lightning's: data ``setup``, writer ``setup``, ``configure_model``, the loader, writer
    then job ``on_predict_start``, per batch ``predict_step`` (under ``torch.inference_mode``) and writer
    then job ``on_predict_batch_end``, writer ``on_predict_end`` (the loop and its start/end hooks are
    skipped when the loader is empty); ``on_exception`` on an error; ``teardown`` always. ``rank`` of
    ``world`` > 1: one rank of a launched run (:mod:`vaefix_pl.pipeline.launch`); only rank 0 shows
    progress.
    """
    trainer = LocalTrainer(device, data, job, rank, world)
    progress = progress and rank == 0
    data.trainer = trainer
    job._trainer = trainer
    data.setup("predict")
    writer.setup(trainer, job, "predict")
    mark("inputs_found")
    bar = None
    try:
        job.configure_model()
        mark("model_loaded")
        loader = data.predict_dataloader()
        trainer.predict_dataloaders = loader
        if len(loader) == 0:  # as Lightning: no batch left (a rerun with every input complete), no loop
            return
        writer.on_predict_start(trainer, job)
        job.on_predict_start()
        mark("loop_started")
        if progress:
            bar = _Progress(len(loader), int(getattr(job, "sample_rate", None) or SAMPLE_RATE))
        with torch.inference_mode():
            for i, batch in enumerate(loader):
                if i == 0:
                    mark("first_batch_loaded")
                batch = _to_device(batch, device)
                out = job.predict_step(batch, i)
                if i == 0:
                    mark("first_step_done", device)  # reconstructed and scored on the device
                writer.write_on_batch_end(trainer, job, out, None, batch, i, 0)
                job.on_predict_batch_end(out, batch, i)
                if i == 0:
                    mark("first_batch_done")
                if bar is not None:
                    bar.update(batch)
        if bar is not None:
            bar.close()
            bar = None
        mark("loop_done")
        writer.on_predict_end(trainer, job)
        mark("tables_written")
    except BaseException as exc:
        if bar is not None:
            bar.close()
        writer.on_exception(trainer, job, exc)
        raise
    finally:
        writer.teardown(trainer, job, "predict")
        if isinstance(trainer.strategy, GroupStrategy):
            trainer.strategy.close()
