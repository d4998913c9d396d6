"""``ReconstructionModule``: the frozen AudioLDM2 VAE + vocoder in a LightningModule's ``predict_step``.

Thin by design: the pipeline is :class:`~vaefix_pl.core.reconstruct.Reconstructor`, the repair chain
:class:`~vaefix_pl.repair.chain.PostProcessChain`, the scores :mod:`vaefix_pl.metrics`; this class only
wires them to Lightning. ``predict_step`` runs no collectives (ranks may get one batch less) and does
no I/O: :class:`~vaefix_pl.lightning.writer.ReconstructionWriter` writes what it returns.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from vaefix_pl.core.models import DEFAULT_SOURCE, normalize_precision
from vaefix_pl.core.reconstruct import SPEED_PRESETS, ItemOutOfMemoryError, Reconstructor

SPEEDS = tuple(SPEED_PRESETS)


class ReconstructionModule(L.LightningModule):
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
        speed: on CUDA, ``"auto"`` (default) runs the vocoder's convolutions channels-last and lets
            cuDNN pick algorithms per shape (same math); ``"compile"`` adds ``torch.compile`` with
            static shapes and frozen weights, an NHWC VAE, zero-padded 1-channel convs, matmul
            attention and polyphase dilated convs (fastest for fixed-length clips, e.g.
            ``seconds: 10.24``; the first batch compiles for one to two minutes); ``"none"`` runs the
            stock modules. Ignored on the CPU. Settings: ``vaefix_pl.core.reconstruct.SPEED_PRESETS``;
            measured in ``docs/PERFORMANCE.md``.
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
        model: str = DEFAULT_SOURCE,
        precision: str = "fp32",
        framing: str = "tacotron",
        latent_mode: str = "mode",
        seed: int = 0,
        pad_frames_to: int = 1024,
        allow_download: bool = False,
        postprocess: dict[str, Any] | None = None,
        metrics: list[str] | None = None,
        perceptual: list[str] | None = None,
        speed: str = "auto",
        return_mels: bool = False,
        window_seconds: float | None = 10.24,
        window_overlap_seconds: float = 1.0,
        max_windows: int | None = None,
        crossfade: str = "equal_gain",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_source = model
        self.precision_name = normalize_precision(precision)
        if speed not in SPEEDS:
            raise ValueError(f"speed must be one of {SPEEDS}, got {speed!r}")
        from vaefix_pl.metrics import DEFAULT_METRICS, available_metrics, split_metric_names

        requested = list(DEFAULT_METRICS if metrics is None else metrics) + list(perceptual or [])
        unknown = sorted(set(requested) - set(available_metrics("all")))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; available: {available_metrics('all')}")
        fast, slow = split_metric_names(requested)
        self.metric_names = list(dict.fromkeys(fast))
        self.perceptual_metrics = list(dict.fromkeys(slow))
        self.reconstructor: Reconstructor | None = None
        self._optimized = False
        self.chain = None
        if postprocess is not None:
            from vaefix_pl.repair.chain import PostProcessChain

            self.chain = PostProcessChain(**postprocess)

    # Models are loaded per process when the Trainer sets up (every DDP rank loads its own copy).
    def configure_model(self) -> None:
        if self.reconstructor is not None:
            return
        hp = self.hparams
        self.reconstructor = Reconstructor.from_pretrained(
            hp.model,
            precision=hp.precision,
            allow_download=hp.allow_download,
            framing=hp.framing,
            latent_mode=hp.latent_mode,
            seed=hp.seed,
            pad_frames_to=hp.pad_frames_to,
            window_seconds=hp.window_seconds,
            window_overlap_seconds=hp.window_overlap_seconds,
            max_windows=hp.max_windows,
            crossfade=hp.crossfade,
        )

    def on_predict_start(self) -> None:
        # Speed rewrites need the final device, which the Trainer sets after configure_model().
        if self._optimized or self.reconstructor is None or self.device.type != "cuda":
            return
        if self.hparams.speed != "none":
            self.reconstructor.optimize(**SPEED_PRESETS[self.hparams.speed])
        self._optimized = True

    @classmethod
    def from_reconstructor(cls, reconstructor: Reconstructor, **kwargs: Any) -> ReconstructionModule:
        """Wrap an already built :class:`Reconstructor` (e.g. custom or in-memory models)."""
        settings = reconstructor.settings()
        kwargs.setdefault("precision", settings["precision"])
        kwargs.setdefault("framing", settings["framing"])
        kwargs.setdefault("latent_mode", settings["latent_mode"])
        kwargs.setdefault("pad_frames_to", settings["pad_frames_to"])
        for key in ("window_seconds", "window_overlap_seconds", "max_windows", "crossfade"):
            kwargs.setdefault(key, settings[key])
        kwargs.setdefault("speed", "none")  # the caller decides how the given reconstructor is optimized
        module = cls(model=kwargs.pop("model", "<in-memory>"), **kwargs)
        module.reconstructor = reconstructor
        return module

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

        return compute_metrics(reference, estimate, lengths, self.metric_names)

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
        if len(batch["ids"]) == 0:  # every item of this batch failed to load
            return result
        host = batch.get("host_lengths")
        try:
            out = self(batch["waveform"], batch["lengths"], None if host is None else torch.tensor(host))
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
