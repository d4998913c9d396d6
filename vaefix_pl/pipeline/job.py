"""``ReconstructionJob``: reconstruct and score one batch, the logic of ``ReconstructionModule`` without Lightning.

``vaefix_pl.lightning.module.ReconstructionModule`` is this class with the ``LightningModule`` base;
``vaefix_pl.pipeline.local`` runs it in a plain loop (single device, no Lightning import).

Thin by design: the pipeline is :class:`~vaefix_pl.core.reconstruct.Reconstructor`, the repair chain
:class:`~vaefix_pl.repair.chain.PostProcessChain`, the scores :mod:`vaefix_pl.metrics`; this class only
wires them together. ``predict_step`` runs no collectives (ranks may get one batch less) and does
no I/O: :class:`~vaefix_pl.pipeline.writer.RunWriter` writes what it returns.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import fields, replace
from typing import Any, get_type_hints

import torch
from torch import Tensor

from vaefix_pl.core.config import Hparams, ReconstructorConfig, speed_settings
from vaefix_pl.core.output import ItemOutOfMemoryError
from vaefix_pl.core.reconstruct import Reconstructor

log = logging.getLogger(__name__)


#: The module's defaults where they differ from ReconstructorConfig's: long items run in 10.24 s windows.
MODULE_DEFAULTS: dict[str, Any] = {"window_seconds": 10.24}


class ReconstructionJob:
    """Reconstruct audio through AudioLDM2's frozen VAE + HiFi-GAN and score it, in ``predict_step``.

    Args:
        model: local diffusers-format folder or hub id (offline: local folder or HF cache).
        precision: ``"fp32"`` (default, TF32 allowed on CUDA), ``"bf16"`` or ``"fp16"`` (VAE kept fp32).
        framing: ``"tacotron"`` (AudioLDM2's) or ``"hifigan"``.
        latent_mode: ``"mode"`` (deterministic) or ``"sample"`` (seeded by ``seed``).
        pad_frames_to: canonical-length multiple in frames (1024 = upstream's 10.24 s window).
        allow_download: let the loader fetch missing weights from the hub.
        postprocess: ``PostProcessChain`` keyword arguments (``None``: no repair chain; ``{}``: the
            chain with its defaults). When set, ``<id>.post.wav`` is produced and scored too.
        metrics: metric names (``vaefix_pl.metrics.available_metrics("all")``; ``None``: the default
            on-device set; ``[]``: none). Perceptual names in this list join ``perceptual``.
        perceptual: CPU metrics scored by the writer's worker pool (``pesq``, ``stoi``, ``estoi``).
        speed: on CUDA, ``"auto"`` (default) runs the vocoder's convolutions channels-last, plus in
            fp32 the matmul attention, polyphase dilated and narrow-conv forms (same math);
            ``"compile"`` adds ``torch.compile`` with static shapes, an NHWC VAE and zero-padded
            1-channel convs, in every precision (fastest for fixed-length clips, e.g.
            ``seconds: 10.24``; a machine's first run compiles for about a minute, later runs load
            the result from the cache); ``"none"`` runs the stock modules. Ignored on the CPU.
            Settings: ``vaefix_pl.core.config.speed_settings``; measured in ``docs/PERFORMANCE.md``.
        return_mels: also return ``mels`` = ``{"mel", "mel_hat": (B, 1, T, 64), "frames", "canonical_frames",
            "gain": (B,)}`` from ``predict_step`` (for mel export and diagnosis). For items longer than
            the window, ``mel`` is the whole item's log-mel and ``mel_hat`` the windows' decoded mels
            blended over each overlap (see :class:`~vaefix_pl.core.reconstruct.ReconstructionOutput`).
        window_seconds: items longer than this (with ``AudioDataModule(seconds=None)``) run in
            overlapping windows of this length, joined by a crossfade: memory is bounded by the window
            sub-batch, not by the file length (:mod:`vaefix_pl.core.windowing`). ``None``: every item whole.
        window_overlap_seconds: overlap of neighbouring windows (rounded up to 40 ms; at most half the
            window).
        max_windows: most windows (and short items) run through the models at once; ``None``: the
            batch's item count.
        crossfade: ``"equal_gain"`` (default: the overlapping windows' waveforms are the same signal,
            measured correlation 1.000 with HiFi-GAN and Griffin-Lim) or ``"equal_power"``.

    CUDA out of memory inside the models: the sub-batch is retried in halves down to one item (see
    :class:`~vaefix_pl.core.reconstruct.Reconstructor`) with a warning naming the size that fit; one item that
    does not fit raises :class:`~vaefix_pl.core.reconstruct.ItemOutOfMemoryError` naming its id.
    """

    def __init__(
        self,
        postprocess: dict[str, Any] | None = None,
        metrics: list[str] | None = None,
        perceptual: list[str] | None = None,
        return_mels: bool = False,
        **settings: Any,
    ) -> None:
        # the pipeline settings are ReconstructorConfig's fields; __signature__ (below) shows them flat to
        # LightningCLI / YAML (`model: {model: ..., precision: ...}`) with this module's defaults
        super().__init__()  # LightningModule's, in ReconstructionModule
        self.config = ReconstructorConfig(**{**MODULE_DEFAULTS, **settings})
        # Lightning's save_hyperparameters() reads __init__'s frame, which holds **settings, not the fields
        self._store_hparams(
            {
                **self.config.to_dict(),
                "postprocess": postprocess,
                "metrics": metrics,
                "perceptual": perceptual,
                "return_mels": return_mels,
            }
        )
        self.model_source = self.config.model
        self.precision_name = self.config.precision
        from vaefix_pl.metrics import DEFAULT_METRICS, available_metrics, split_metric_names

        requested = list(DEFAULT_METRICS if metrics is None else metrics) + list(perceptual or [])
        unknown = sorted(set(requested) - set(available_metrics("all")))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; available: {available_metrics('all')}")
        fast, slow = split_metric_names(requested)
        self.metric_names = list(dict.fromkeys(fast))
        self.perceptual_metrics = list(dict.fromkeys(slow))
        self.reconstructor: Reconstructor | None = None
        self._trainer: Any = None  # what runs the job: a Lightning Trainer or pipeline.local.LocalTrainer
        self._optimized = False
        self._compile_cache: Any = None
        self.chain = None
        if postprocess is not None:
            from vaefix_pl.repair.chain import PostProcessChain

            self.chain = PostProcessChain(**postprocess)

    def _store_hparams(self, hparams: dict[str, Any]) -> None:
        self.hparams = Hparams(hparams)

    def _run_device(self) -> torch.device:
        """The device the models run on (the LightningModule's own ``device`` in ReconstructionModule)."""
        if self.reconstructor is None:
            return torch.device("cpu")
        return next(self.reconstructor.parameters()).device

    # The hooks keep Lightning's names: Lightning calls them in ReconstructionModule, pipeline.local here.
    # Models are loaded per process when the Trainer sets up (every DDP rank loads its own copy).
    def configure_model(self) -> None:
        if self.reconstructor is not None:
            return
        # the Trainer's device: weights are read straight onto it (no CPU copy first) and its
        # precision policy (TF32 for fp32 on CUDA) applies
        device = self._trainer.strategy.root_device if self._trainer is not None else None
        self.reconstructor = Reconstructor.from_config(self.config, device)
        postprocess = self.hparams.postprocess
        if self.chain is not None and "sample_rate" not in (postprocess or {}):
            # the repair chain (its band-pass) runs at the model's rate unless it was given one
            from vaefix_pl.repair.chain import PostProcessChain

            self.chain = PostProcessChain(**{**(postprocess or {}), "sample_rate": self.sample_rate})
        self._defer_long_items()

    def _streams(self) -> bool:
        """Whether long items run in segments (not with a repair chain, ``return_mels`` or perceptual
        metrics: they need the whole item)."""
        return not (self.chain is not None or self.hparams.return_mels or self.perceptual_metrics)

    def _defer_long_items(self) -> None:
        """Let the data leave the files this job streams unread (:attr:`AudioDataset.stream_above`): the
        writer reads them block by block while their segments run, so none is ever held whole."""
        from vaefix_pl.core.stream import stream_threshold

        dataset = getattr(getattr(self._trainer, "datamodule", None), "dataset", None)
        if dataset is not None and hasattr(dataset, "stream_above") and self._streams():
            dataset.stream_above = stream_threshold(self.reconstructor)

    def on_predict_start(self) -> None:
        if self.reconstructor is not None:  # the dataset is sent to loader workers when iterated, after this
            self._defer_long_items()
        # Speed rewrites need the final device, which the Trainer sets after configure_model().
        if self._optimized or self.reconstructor is None or self._run_device().type != "cuda":
            return
        if self.hparams.speed != "none":
            preset = speed_settings(self.hparams.speed, self.config.precision)
            batch = self._call_batch_size()
            if preset.get("compile"):
                self._compile_cache = self._activate_compile_cache(preset, batch)
                cache, trainer = self._compile_cache, self._trainer
                if cache is not None and not cache.sealed and getattr(trainer, "is_global_zero", True):
                    log.warning(
                        "speed 'compile': compiling the models for this GPU and these settings (about a "
                        "minute, once); later runs load them from %s ('vaefix cache info|clear')",
                        cache.path,
                    )
            self.reconstructor.optimize(**preset, batch_size=batch)
        self._optimized = True

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        # The first compiled batch has written its artefacts: checksum them now, so a run killed later
        # leaves a usable cache (artefacts of later shapes are added at exit).
        if self._compile_cache is not None:
            cache, self._compile_cache = self._compile_cache, None
            try:
                cache.seal()
            except OSError as exc:
                log.warning("compile cache %s not sealed (%s): the next run recompiles", cache.path, exc)

    def _call_batch_size(self) -> int | None:
        """Items per model call: the predict loader's batch size, capped by ``max_windows``."""
        trainer = self._trainer
        batch = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        if not isinstance(batch, int) and trainer is not None:
            loaders = trainer.predict_dataloaders
            loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
            batch = getattr(loader, "batch_size", None)
        calls = [n for n in (batch, self.config.max_windows) if isinstance(n, int)]
        return min(calls) if calls else None

    def _activate_compile_cache(self, preset: dict[str, Any], batch: int | None) -> Any:
        """The persistent compile cache of this model folder, device, precision and shapes, active
        (:mod:`vaefix_pl.core.compile_cache`); ``None`` for models not loaded from a folder."""
        from vaefix_pl.core.compile_cache import compile_cache_for
        from vaefix_pl.core.models import ModelNotFoundError, resolve_source

        try:
            folder = resolve_source(self.config.model)
        except (ModelNotFoundError, OSError, ValueError):
            return None  # in-memory models: nothing to key the cache on
        c = self.config
        settings = {**preset, "speed": c.speed, "batch_size": batch, "pad_frames_to": c.pad_frames_to}
        settings.update(framing=c.framing, window_seconds=c.window_seconds, max_windows=c.max_windows)
        if settings.get("narrow_convs") is True:  # the forms themselves: a changed table is a new key
            from vaefix_pl.core.speed import NARROW_CONV_FORMS

            forms = NARROW_CONV_FORMS.get(self.reconstructor.precision, {})
            settings["narrow_convs"] = {f"{ch}x{k}": form for (ch, k), form in sorted(forms.items())}
        try:
            cache = compile_cache_for(folder, self._run_device(), self.reconstructor.precision, settings)
            return cache.activate(seal_at_exit=True)
        except OSError as exc:  # an unwritable cache folder costs the reuse, never the run
            log.warning("compile cache not used (%s); set VAEFIX_CACHE_DIR to a writable folder", exc)
            return None

    @classmethod
    def from_reconstructor(cls, reconstructor: Reconstructor, **kwargs: Any) -> ReconstructionJob:
        """Wrap an already built :class:`Reconstructor` (e.g. custom or in-memory models)."""
        # the reconstructor's own settings, unless given; where the models came from is not known
        config = replace(reconstructor.config, model="<in-memory>", allow_download=False, speed="none")
        kwargs = {**config.to_dict(), **kwargs}  # speed "none": the caller decides how it is optimized
        module = cls(**kwargs)
        module.reconstructor = reconstructor
        return module

    @property
    def sample_rate(self) -> int | None:
        """The loaded model's rate in Hz (inputs are resampled to it, outputs written at it);
        ``None`` before :meth:`configure_model`."""
        return None if self.reconstructor is None else int(self.reconstructor.sample_rate)

    def settings(self) -> dict[str, Any]:
        """Everything that determines the outputs, for ``summary.json``."""
        out = {k: v for k, v in dict(self.hparams).items()}
        if self.reconstructor is not None:
            out["reconstructor"] = self.reconstructor.settings()
        if self.chain is not None:
            out["postprocess"] = self.chain.describe()
        return out

    def _score(self, reference: Tensor, estimate: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        if not self.metric_names:
            return {}
        from vaefix_pl.metrics import compute_metrics

        rate = self.sample_rate or 16000
        return compute_metrics(reference, estimate, lengths, self.metric_names, sample_rate=rate)

    def forward(
        self, waveform: Tensor, lengths: Tensor, host_lengths: Tensor | None = None
    ) -> dict[str, Any]:
        """``host_lengths``: the same lengths on the CPU, if at hand: the reconstructor plans its
        sub-batches from them without waiting for the device."""
        assert self.reconstructor is not None, "call configure_model() (the Trainer does) first"
        out = self.reconstructor(waveform, host_lengths if host_lengths is not None else lengths)
        lengths = out.lengths
        score_lengths = host_lengths if host_lengths is not None else lengths
        audio = {"original": out.reference, "recon": out.waveform}
        scores = {"recon": self._score(out.reference, out.waveform, score_lengths)}
        if self.chain is not None:
            post_in = out.waveform
            if getattr(self.chain, "mel_mode", None):
                mel = self.chain.process_mel(out.mel_hat, out.frames)
                if not torch.equal(mel, out.mel_hat):  # "guard" on a healthy mel changes nothing
                    post_in = self.reconstructor.vocode(mel, lengths, out.gain)
            audio["post"] = self.chain(post_in, lengths)
            scores["post"] = self._score(out.reference, audio["post"], score_lengths)
        return {"audio": audio, "metrics": scores, "health": out.health, "output": out}

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        result: dict[str, Any] = {
            "ids": batch["ids"],
            "paths": batch["paths"],
            "lengths": batch["lengths"],
            "errors": batch["errors"],
            "audio": {},
            "metrics": {},
            "health": {},
        }
        if len(batch["ids"]) == 0 and not batch.get("deferred"):  # every item failed to load
            return result
        batch, result["streams"] = self._split_streams(batch)
        for k in ("ids", "paths", "lengths"):
            result[k] = batch[k]
        if len(batch["ids"]) == 0:  # only long items: the writer runs their streams
            return result
        host = batch.get("host_lengths")
        try:
            out = self.forward(
                batch["waveform"], batch["lengths"], None if host is None else torch.tensor(host)
            )
        except ItemOutOfMemoryError as exc:
            ids = [batch["ids"][i] for i in exc.rows]
            raise ItemOutOfMemoryError(f"items {ids}: {exc}", rows=exc.rows) from exc
        rec = out.pop("output")
        result.update(out)
        if self.hparams.return_mels:
            result["mels"] = {
                "mel": rec.mel,
                "mel_hat": rec.mel_hat,
                "frames": rec.frames,
                "canonical_frames": rec.canonical_frames,
                "gain": rec.gain,
            }
        return result

    def _split_streams(self, batch: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """``(the batch without its long items, one stream per long item)``.

        An item with more windows than one segment (:func:`~vaefix_pl.core.stream.streams_item`) is
        not reconstructed here: its :class:`~vaefix_pl.core.stream.ItemStream` goes to the writer,
        which runs it segment by segment into its WAV files and scores it from them
        (:mod:`vaefix_pl.pipeline.streamed`), so host memory does not grow with it. Not with a repair
        chain, ``return_mels`` or perceptual metrics: those need the whole item (it then runs whole).
        """
        from vaefix_pl.core.stream import ItemStream, streams_item

        rec = self.reconstructor
        assert rec is not None
        if not batch.get("deferred") and not self._streams():  # the common case: nothing to split
            return batch, []
        host = batch.get("host_lengths")
        host = list(host) if host is not None else torch.as_tensor(batch["lengths"]).tolist()
        rows = [i for i, n in enumerate(host) if streams_item(rec, int(n))] if self._streams() else []
        names = list(self.metric_names)
        rows_total = len(host) + len(batch.get("deferred") or ())
        streams = [
            {"id": d["id"], "path": d["path"], "length": int(d["audio"].expected), "metrics": names,
             "stream": ItemStream(rec, d["audio"], batch_rows=rows_total)}
            for d in batch.get("deferred") or ()
        ]  # fmt: skip
        streams += [
            {"id": batch["ids"][i], "path": batch["paths"][i], "length": int(host[i]), "metrics": names,
             "stream": ItemStream(rec, batch["waveform"][i, : int(host[i])], batch_rows=rows_total)}
            for i in rows
        ]  # fmt: skip
        if not rows:
            return batch, streams
        streamed = set(rows)
        keep = [i for i in range(len(host)) if i not in streamed]
        idx = torch.tensor(keep, dtype=torch.long)
        lengths = torch.as_tensor(batch["lengths"])
        rest = dict(batch)
        rest.update(
            waveform=batch["waveform"][idx.to(batch["waveform"].device)],
            lengths=lengths[idx.to(lengths.device)],
            host_lengths=[host[i] for i in keep],
            ids=[batch["ids"][i] for i in keep],
            paths=[batch["paths"][i] for i in keep],
        )
        return rest, streams


def _job_signature() -> inspect.Signature:
    """``__init__``'s signature as LightningCLI reads it: the module's own arguments, then every
    :class:`ReconstructorConfig` field (with :data:`MODULE_DEFAULTS`), flat."""
    own = list(inspect.signature(ReconstructionJob.__init__).parameters.values())
    hints = get_type_hints(ReconstructorConfig)
    pipeline = [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=MODULE_DEFAULTS.get(f.name, f.default),
            annotation=hints[f.name],
        )
        for f in fields(ReconstructorConfig)
    ]
    own_hints = get_type_hints(ReconstructionJob.__init__)
    mine = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=own_hints.get(p.name, p.annotation))
        for p in own[1:]
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    return inspect.Signature([own[0], *pipeline, *mine])


ReconstructionJob.__init__.__signature__ = _job_signature()  # type: ignore[attr-defined]
