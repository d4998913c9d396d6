"""Fixed-decoder baseline for vocoder fine-tuning: :class:`FixedDecoderBaseline`, a Lightning callback that
scores the user's current vocoder and the frozen AudioLDM2 HiFi-GAN on the same held-out decoded mels
(:mod:`vaefix_pl.export`) and logs both and the delta. Export layout and alignment: :mod:`vaefix_pl.export.layout`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from vaefix_pl.core.frontend import SAMPLE_RATE
from vaefix_pl.core.metric_names import BASELINE_METRICS, BASELINE_PERCEPTUAL
from vaefix_pl.core.utils import jsonable
from vaefix_pl.data.audio import write_wav
from vaefix_pl.export.dataset import DecodedMelDataset
from vaefix_pl.metrics import available_metrics, compute_metrics, perceptual_scores
from vaefix_pl.runs.files import atomic_write_bytes
from vaefix_pl.vocoders.base import check_vocoder, vocode
from vaefix_pl.vocoders.loading import load_vocoder

log = logging.getLogger(__name__)


# ============================================================================== baseline callback
#: The perceptual metrics the callback adds when installed (``core.metric_names.BASELINE_PERCEPTUAL``).
PERCEPTUAL = BASELINE_PERCEPTUAL


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
