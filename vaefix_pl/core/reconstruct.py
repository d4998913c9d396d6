"""The reconstruction pipeline as one tensor-only module: waveform -> log-mel -> VAE -> vocoder -> waveform.

Length policy (why): the VAE's GroupNorm and mid-block attention see every frame, padding included,
so an item padded to its batch-mates' length would change its result. Every item is therefore
brought to a *canonical* length that depends on the item alone: its frames rounded up to a multiple
of ``pad_frames_to`` (default 1024 = 10.24 s, the VAE's ``sample_size`` and the window upstream
AudioLDM2 crops/pads every clip to; 4 is the least the VAE accepts). Items sharing a canonical length
run as one sub-batch; nothing of one item reaches another. With the default, every clip up to
10.24 s is exactly the input upstream would build (silence-padded to 1024 frames), and a batch of
equal-length or duration-sorted clips is one sub-batch.

Framing: the padded waveform has ``L * 160`` samples; the front-end makes ``L`` (``"hifigan"``) or
``L + 1`` (``"tacotron"``, whose last frame is dropped as upstream crops 1025 -> 1024) frames, the
vocoder returns ``L * 160`` samples and each item is cut back to its own length.

Long items (``window_seconds``): an item longer than the window (default off here; 10.24 s in
:class:`~vaefix_pl.lightning.module.ReconstructionModule`) is cut into overlapping windows
(:mod:`vaefix_pl.core.windowing`), so memory is bounded by the window sub-batch, not by the file length.
Two passes, both over sub-batches of at most ``max_windows`` windows:

1. each window's log-mel is cut from the whole item's log-mel (computed per window from the samples
   around it, so window edges see real audio), encoded and decoded; the window mels, decoded mels
   and latents are overlap-added with equal-gain weights (a linear blend over the overlap) into the
   item's ``mel`` (exactly the whole item's log-mel), ``mel_hat`` and ``latent``;
2. the stitched decoded mel (after repair and ``mel_transform``, both per item) is vocoded window by
   window and the waveforms are joined with the ``crossfade`` weights.

Pass 2 is :meth:`Reconstructor.vocode`, so ``vocode(out.mel_hat)`` reproduces ``out.waveform`` for
windowed items as for short ones (the repair chain's mel step relies on it). The level step stays one
gain per item over the whole item.

CUDA out of memory: a sub-batch (of items or windows) that runs out of memory is retried in halves,
down to one item or window, with the CUDA cache freed in between; the size that worked is kept for the
rest of the run and logged. One item or window that does not fit raises :class:`ItemOutOfMemoryError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from vaefix_pl.core.config import ReconstructorConfig
from vaefix_pl.core.frontend import LogMelFrontend, normalize_level, valid_mask
from vaefix_pl.core.geometry import AUDIOLDM_16K, Geometry
from vaefix_pl.core.health import mel_health, repair_mel, repair_waveform
from vaefix_pl.core.lengths import full_lengths
from vaefix_pl.core.models import DEFAULT_SOURCE, load_audioldm2
from vaefix_pl.core.output import ItemOutOfMemoryError, ReconstructionOutput, _autocast, _scale_rows
from vaefix_pl.core.windowing import (
    MEL_CONTEXT,
    WindowPlan,
    crossfade_weights,
    gather_window_samples,
    overlap_add,
    plan_windows,
    planned_frames,
    window_geometry,
)

log = logging.getLogger(__name__)

MelTransform = Callable[[Tensor, Tensor], Tensor]


class Reconstructor(nn.Module):
    """AudioLDM2 reconstruction: ``rec(waveform (B, N), lengths (B,)) -> ReconstructionOutput``.

    Args:
        vae: diffusers ``AutoencoderKL`` (frozen).
        vocoder: ``(B, T, 64)`` log-mel -> ``(B, T * 160)`` waveform (transformers ``SpeechT5HifiGan``).
        scaling_factor: the VAE config's ``scaling_factor`` (read from ``vae.config`` when ``None``).
        framing: ``"tacotron"`` (AudioLDM2's inference framing) or ``"hifigan"``.
        latent_mode: ``"mode"`` (deterministic, default) or ``"sample"`` (seeded per item).
        seed: seed of the per-item latent noise for ``latent_mode="sample"``.
        precision: ``"fp32"`` (default), ``"bf16"`` (autocast) or ``"fp16"`` (vocoder only; the VAE
            stays float32 as ``force_upcast`` intends).
        pad_frames_to: canonical-length multiple in frames (see the module docstring).
        window_seconds: items longer than this run in overlapping windows of this length (rounded up to
            a multiple of 4 frames); ``None`` (default): every item runs whole.
        window_overlap_seconds: overlap of neighbouring windows (rounded up to 4 frames; at most half
            the window).
        max_windows: most items or windows run through the models at once (``None``: a batch's item
            count for windows, a whole length group for short items, as before).
        crossfade: ``"equal_gain"`` (default) or ``"equal_power"``; see :mod:`vaefix_pl.core.windowing`.
        geometry: the models' :class:`~vaefix_pl.core.geometry.Geometry` (``None``: ``audioldm_16k``); rate,
            hop, mel bins (64 -> 256 at 48 kHz) and VAE down factor (4 -> 8) below follow it.
    """

    def __init__(
        self,
        vae: nn.Module,
        vocoder: nn.Module,
        scaling_factor: float | None = None,
        config: ReconstructorConfig | None = None,
        geometry: Geometry | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        config = config or ReconstructorConfig()
        if settings:
            config = replace(config, **settings)
        self.config = config
        self.vae = vae
        self.vocoder = vocoder
        if scaling_factor is None:
            scaling_factor = float(vae.config.scaling_factor)
        self.scaling_factor = float(scaling_factor)
        g = geometry or AUDIOLDM_16K
        self.geometry = replace(g, scaling_factor=self.scaling_factor)
        self.sample_rate, self.hop, self.n_mels, self.down = g.sample_rate, g.hop, g.n_mels, g.vae_down
        if config.pad_frames_to % self.down:
            raise ValueError(
                f"pad_frames_to must be a multiple of {self.down} for {g.name}, got {config.pad_frames_to}"
            )
        self.frontend = LogMelFrontend(config.framing, g)
        self.framing = config.framing
        self.latent_mode = config.latent_mode
        self.seed = int(config.seed)
        self.precision = config.precision
        self.pad_frames_to = int(config.pad_frames_to)
        self.window_seconds = None if config.window_seconds is None else float(config.window_seconds)
        self.window_overlap_seconds = float(config.window_overlap_seconds)
        self.window_frames: int | None = None
        self.overlap_frames = 0
        if self.window_seconds is not None:
            self.window_frames, self.overlap_frames = window_geometry(
                self.window_seconds, self.window_overlap_seconds, self.sample_rate, self.hop, self.down
            )
        self.max_windows = None if config.max_windows is None else int(config.max_windows)
        self.crossfade = config.crossfade
        #: Sub-batch size that fit after a CUDA out-of-memory retry (kept for the rest of the run).
        self.oom_cap: int | None = None
        self._channels_last = False

    @classmethod
    def from_config(
        cls, config: ReconstructorConfig, device: torch.device | str | None = None
    ) -> Reconstructor:
        """Load ``config.model`` with :func:`vaefix_pl.load_audioldm2` and wrap it."""
        models = load_audioldm2(
            config.model, precision=config.precision, device=device, allow_download=config.allow_download
        )
        rec = cls(
            models.vae,
            models.vocoder,
            models.scaling_factor,
            replace(config, precision=models.precision),
            geometry=models.geometry,
        )
        return rec.to(device) if device is not None else rec

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike = DEFAULT_SOURCE,
        *,
        device: torch.device | str | None = None,
        **settings: Any,
    ) -> Reconstructor:
        """:meth:`from_config` with ``model=source`` and any :class:`ReconstructorConfig` field as a keyword."""
        return cls.from_config(ReconstructorConfig(model=str(source), **settings), device)

    def optimize(
        self,
        channels_last: bool = False,
        vocoder_channels_last: bool = True,
        cudnn_benchmark: bool | None = None,
        compile: bool | str = False,
        freeze: bool = False,
        pad_narrow_convs: bool = False,
        attention_math: bool = False,
        polyphase_dilated: bool = False,
        cudnn_benchmark_limit: int | None = None,
        narrow_convs: bool | dict[tuple[int, int], str] = False,
        batch_size: int | None = None,
    ) -> Reconstructor:
        """Inference speed settings for fixed-length GPU work (each measured in ``docs/PERFORMANCE.md``).

        :data:`SPEED_PRESETS` names the combinations ``ReconstructionModule(speed=...)`` uses.

        Args:
            channels_last: store the VAE's 2-D activations NHWC.
            vocoder_channels_last: run the vocoder's 1-D convolutions as channels-last ``(1, k)``
                2-D convolutions (:mod:`vaefix_pl.core.speed`): same math, no NCHW<->NHWC transposes.
            cudnn_benchmark: let cuDNN time its algorithms per shape. ``None`` (default): the policy of
                :func:`vaefix_pl.core.autotune.want_cudnn_benchmark` for ``batch_size`` (on CUDA only for
                model calls of at most 8 items: it pays there and costs about a minute at batch 64);
                ``True``/``False``: the caller's choice wins. Off by the policy leaves torch's flag as is.
            compile: ``True`` or a ``torch.compile`` mode: compile the VAE encoder/decoder and the
                vocoder in place with static shapes, every call padded to ``batch_size`` rows; with a
                compile cache active, as AOTInductor packages reused by later processes (:mod:`~vaefix_pl.core.aoti`).
            freeze: with ``compile``, let Inductor treat the frozen weights as constants (folds the
                per-call bf16 casts of the weights).
            pad_narrow_convs: run the 1-channel convolutions (VAE ``conv_in``/``conv_out``, vocoder
                ``conv_post``) with zero-padded channels so they get tensor-core kernels (exact).
            attention_math: the VAE's mid-block attention as plain matmuls + softmax (diffusers' ``AttnProcessor``).
            polyphase_dilated: dilated vocoder convs as undilated ones on a polyphase view (exact).
            narrow_convs: the vocoder's narrow resblock convs in the exact forms that
                :data:`vaefix_pl.core.speed.NARROW_CONV_FORMS` lists per precision (needs ``vocoder_channels_last``).
            cudnn_benchmark_limit: how many cuDNN algorithms the benchmark tries per shape (torch's
                default 10; 0 = all of them: slower first batch, sometimes faster kernels).
            batch_size: items per model call (data batch; capped by ``max_windows``) for the
                ``cudnn_benchmark=None`` policy (with neither known it leaves autotuning off) and the
                row count compiled calls are padded to.
        """
        from vaefix_pl.core.speed import apply_rewrites

        if apply_rewrites(
            self.vae,
            self.vocoder,
            self.precision,
            channels_last=channels_last,
            vocoder_channels_last=vocoder_channels_last,
            polyphase_dilated=polyphase_dilated,
            narrow_convs=narrow_convs,
            pad_narrow_convs=pad_narrow_convs,
            attention_math=attention_math,
            already_channels_last=self._channels_last,
        ):
            self._channels_last = True
        if self._autotune_decision(cudnn_benchmark, batch_size):
            torch.backends.cudnn.benchmark = True
        elif cudnn_benchmark is False:
            torch.backends.cudnn.benchmark = False
        if cudnn_benchmark_limit is not None:
            torch.backends.cudnn.benchmark_limit = int(cudnn_benchmark_limit)
        if compile:  # AOTInductor packages per shape, else torch.compile (vaefix_pl.core.aoti)
            from vaefix_pl.core.aoti import compile_parts

            parts = {"encoder": self.vae.encoder, "decoder": self.vae.decoder, "vocoder": self.vocoder}
            compile_parts(parts, None if compile is True else str(compile), freeze, batch_size)
        return self

    def _autotune_decision(self, requested: bool | None, batch_size: int | None) -> bool:
        """Whether ``optimize`` turns cuDNN autotuning on (see its ``cudnn_benchmark``)."""
        from vaefix_pl.core.autotune import want_cudnn_benchmark

        calls = [n for n in (batch_size, self.max_windows) if n is not None]
        if requested is None and not calls:
            return False
        device = next(iter(self.parameters()), torch.empty(0)).device
        return want_cudnn_benchmark(min(calls) if calls else 1, device, requested)

    def compile_models(self, mode: str | None = None) -> Reconstructor:
        """Shorthand for ``optimize(compile=mode or True)``."""
        return self.optimize(compile=mode or True)

    def extra_repr(self) -> str:
        return (
            f"framing={self.framing!r}, latent_mode={self.latent_mode!r}, precision={self.precision!r}, "
            f"pad_frames_to={self.pad_frames_to}, scaling_factor={self.scaling_factor:.6g}, "
            f"window_frames={self.window_frames}, overlap_frames={self.overlap_frames}, "
            f"max_windows={self.max_windows}, crossfade={self.crossfade!r}"
        )

    def settings(self) -> dict:
        """Plain-type settings, for run summaries: the config's reconstruction fields (as applied) and the
        scaling factor and window geometry derived from them."""
        skip = {"model", "allow_download", "speed"}  # where the models came from / how they run, not what
        out = {k: getattr(self, k) for k in ReconstructorConfig.names() if k not in skip}
        return {
            **out,
            "scaling_factor": self.scaling_factor,
            "geometry": self.geometry.name,
            "sample_rate": self.sample_rate,
            "window_frames": self.window_frames,
            "overlap_frames": self.overlap_frames,
        }

    # ----------------------------------------------------------------------------------- lengths
    def covered_frames(self, lengths: Tensor) -> Tensor:
        """``(B,)`` frames whose vocoder output covers each item: ``max(1, ceil(N / hop))``."""
        return ((lengths + self.hop - 1) // self.hop).clamp(min=1)

    def windowed(self, lengths: Tensor) -> Tensor:
        """``(B,)`` bool: items longer than the window, which run in overlapping windows."""
        if self.window_frames is None:
            return torch.zeros_like(lengths, dtype=torch.bool)
        return self.covered_frames(lengths) > self.window_frames

    def canonical_frames(self, lengths: Tensor) -> Tensor:
        """``(B,)`` canonical frame count of each item (a function of its own length only).

        Windowed items: the frames their windows span (see :func:`vaefix_pl.core.windowing.planned_frames`).
        """
        m = self.pad_frames_to
        frames = self.covered_frames(lengths)
        canon = (frames + m - 1) // m * m
        if self.window_frames is not None:
            spanned = planned_frames(frames, self.window_frames, self._hop_frames)
            canon = torch.where(frames > self.window_frames, spanned, canon)
        return canon

    @property
    def _hop_frames(self) -> int:
        assert self.window_frames is not None
        return self.window_frames - self.overlap_frames

    def _plan(self, lengths: Tensor) -> WindowPlan:
        assert self.window_frames is not None
        items = torch.nonzero(self.windowed(lengths)).flatten()
        return plan_windows(self.covered_frames(lengths), self.window_frames, self._hop_frames, items)

    def _groups(self, lengths: Tensor) -> Iterator[tuple[int, Tensor]]:
        """``(canonical frames, rows)`` of the items that run whole (not windowed), by canonical length.

        Planned on the host (``lengths`` is copied there if needed, ``rows`` are CPU indices): the
        plan decides sub-batch shapes, and deciding it from device tensors would stall the host until
        the GPU caught up, leaving the GPU idle while the next kernels are launched.
        """
        lengths = lengths.detach().cpu()
        canon = self.canonical_frames(lengths)
        whole = ~self.windowed(lengths)
        for value in torch.unique(canon[whole]).tolist():
            yield int(value), torch.nonzero((canon == value) & whole).flatten()

    @staticmethod
    def _rows(idx: Tensor, device: torch.device) -> slice | Tensor:
        """CPU row indices -> a slice when they are consecutive (no gather/scatter copies), else a
        device index tensor (copied without waiting for the device)."""
        if len(idx) and bool((idx.diff() == 1).all()):
            return slice(int(idx[0]), int(idx[-1]) + 1)
        return idx.to(device, non_blocking=True)

    # ------------------------------------------------------------------------- bounded sub-batches
    def _run_chunks(
        self,
        n: int,
        cap: int,
        run: Callable[[int, int], None],
        rows: Callable[[int, int], list[int]],
        unit: str,
    ) -> None:
        """Call ``run(a, b)`` over ``[0, n)`` in chunks of at most ``cap`` (and :attr:`oom_cap`).

        On ``torch.cuda.OutOfMemoryError`` the failed chunk is retried in halves (CUDA cache freed in
        between) down to one; the size that worked becomes :attr:`oom_cap`. ``run`` must write its
        results only after all its model calls, so that a retried chunk is never counted twice.
        """
        cap = max(1, min(cap, n, self.oom_cap or n))
        start = 0
        while start < n:
            size = min(cap, n - start)
            failed = False
            try:
                run(start, start + size)
            except torch.cuda.OutOfMemoryError:
                failed = True  # handled outside the except block: its traceback pins the chunk's tensors
            if not failed:
                start += size
                continue
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            where = rows(start, start + size)
            if size == 1:
                raise ItemOutOfMemoryError(
                    f"CUDA out of memory on a single {unit} (batch row {where}) even after halving the "
                    "sub-batch down to 1: use a shorter window (window_seconds, e.g. 5.12), "
                    "precision 'bf16', or a GPU with more free memory",
                    rows=where,
                )
            cap = size // 2
            self.oom_cap = cap
            log.warning(
                "CUDA out of memory on a sub-batch of %d %ss; retrying with %d (kept for the rest of the "
                "run). To avoid the retries, pass --data.batch_size %d (or --model.max_windows %d for "
                "long files).",
                size, unit, cap, cap, cap,
            )  # fmt: skip

    def _cap(self, default: int) -> int:
        return default if self.max_windows is None else self.max_windows

    # ------------------------------------------------------------------------------ model steps
    def _dtype(self, part: str) -> torch.dtype | None:
        if self.precision == "bf16":
            return torch.bfloat16
        if self.precision == "fp16" and part == "vocoder":
            return torch.float16
        return None  # float32; the VAE never runs in float16

    def encode(self, mel: Tensor, seeds: Tensor | None = None) -> Tensor:
        """``(B, 1, T, 64)`` -> scaled latent ``(B, C, T/4, 16)`` (posterior mode, or a seeded sample)."""
        mel = mel.float()
        if self._channels_last:
            mel = mel.contiguous(memory_format=torch.channels_last)
        with _autocast(mel.device.type, self._dtype("vae")):
            dist = self.vae.encode(mel).latent_dist
            if self.latent_mode == "mode":
                z = dist.mode()
            else:
                # Noise drawn per item from its own generator, so an item's sample does not depend on
                # its batch-mates (a batch-wide generator would hand out noise by batch position).
                seeds = seeds if seeds is not None else torch.full((mel.shape[0],), self.seed)
                eps = torch.stack(
                    [
                        torch.randn(
                            dist.mean.shape[1:],
                            generator=torch.Generator(device=mel.device).manual_seed(int(s)),
                            device=mel.device,
                            dtype=dist.mean.dtype,
                        )
                        for s in seeds.tolist()
                    ]
                )
                z = dist.mean + dist.std * eps
        return z.float() * self.scaling_factor

    def decode(self, latent: Tensor) -> Tensor:
        """Scaled latent ``(B, C, T/4, 16)`` -> raw decoded log-mel ``(B, 1, T, 64)`` float32 (no repair)."""
        z = latent / self.scaling_factor
        if self._channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        with _autocast(latent.device.type, self._dtype("vae")):
            mel = self.vae.decode(z).sample
        return mel.float().contiguous()

    def _vocoder(self, mel: Tensor) -> Tensor:
        """``(B, 1, T, 64)`` -> ``(B, T * 160)`` float32 (non-finite values not yet repaired)."""
        with _autocast(mel.device.type, self._dtype("vocoder")):
            wav = self.vocoder(mel[:, 0])
        return wav.float()

    def _vocode_raw(self, mel: Tensor, lengths: Tensor, n: int) -> Tensor:
        """``(B, 1, T, 64)`` -> ``(B, n)`` float32 vocoder output before repair and masking.

        Whole items per canonical length group; windowed items window by window, joined with the
        ``crossfade`` weights (sub-batches of at most ``max_windows``).
        """
        out = torch.zeros(mel.shape[0], n, device=mel.device, dtype=torch.float32)
        host = lengths.detach().cpu()
        for frames, idx in self._groups(host):

            def run(a: int, b: int, idx: Tensor = idx, frames: int = frames) -> None:
                rows = self._rows(idx[a:b], mel.device)
                wav = self._vocoder(mel[rows, :, :frames])
                take = min(n, wav.shape[-1])
                out[rows, :take] = wav[:, :take]

            self._run_chunks(len(idx), self._cap(len(idx)), run, lambda a, b, i=idx: i[a:b].tolist(), "item")
        if self.window_frames is None or not bool(self.windowed(host).any()):
            return out
        lengths = lengths.to(mel.device)
        plan, w = self._plan(lengths), self.window_frames
        steps = torch.arange(w, device=mel.device)

        def run_windows(a: int, b: int) -> None:
            p = plan.select(slice(a, b))
            windows = mel[p.item[:, None], :, p.start[:, None] + steps[None, :]].transpose(
                1, 2
            )  # (m, 1, w, 64)
            wav = self._vocoder(windows)[:, : w * self.hop]
            weights = crossfade_weights(p, w * self.hop, self.overlap_frames * self.hop, self.crossfade)
            overlap_add(out, wav, p.item, p.start * self.hop, weights, dim=-1)

        self._run_chunks(
            len(plan),
            self._cap(mel.shape[0]),
            run_windows,
            lambda a, b: plan.item[a:b].unique().tolist(),
            "window",
        )
        return out

    def vocode(self, mel: Tensor, lengths: Tensor, gain: Tensor | None = None) -> Tensor:
        """Run the vocoder on a (repaired or post-processed) ``(B, 1, T, 64)`` mel, batch-independently.

        Each item is vocoded at its canonical length (windowed items window by window, as in
        :meth:`forward`), cut to ``lengths`` and divided by ``gain`` (when given). Returns
        ``(B, max(lengths))`` float32, zero beyond each item's length.
        """
        n = int(lengths.max())
        out = repair_waveform(self._vocode_raw(mel, lengths, n)) * valid_mask(lengths, n)
        if gain is not None:
            out = (out.double() / gain[:, None]).float()
        return out

    # ------------------------------------------------------------------------------ full pipeline
    @torch.inference_mode()
    def forward(
        self, waveform: Tensor, lengths: Tensor | None = None, mel_transform: MelTransform | None = None
    ) -> ReconstructionOutput:
        """Reconstruct ``(B, N)`` waveforms at 16 kHz with per-item ``lengths`` ``(B,)``.

        ``mel_transform(mel_hat (G, 1, L, 64), frames (G,)) -> mel`` optionally changes the decoded
        mel before the vocoder (e.g. a post-processing chain's mel step), per group of items of the
        same canonical length ``L`` (windowed items: on the whole stitched mel); by default the
        decoded mel only gets non-finite repair (no renormalisation).
        """
        if waveform.ndim != 2 or not waveform.is_floating_point():
            raise ValueError(
                f"waveform must be a float (B, N) tensor, got {waveform.dtype} {tuple(waveform.shape)}"
            )
        b, n = waveform.shape
        device = waveform.device
        # Sub-batch planning runs on a host copy of the lengths (pass them on the CPU, as
        # ReconstructionModule does, and this call never waits for the device).
        host = full_lengths(waveform, None if lengths is None else torch.as_tensor(lengths).cpu(), "cpu")
        lengths = host.to(device, non_blocking=True)

        normed, gain = normalize_level(waveform.float(), lengths)
        frames_host = self.covered_frames(host)
        canon_host = self.canonical_frames(host)
        frames = frames_host.to(device, non_blocking=True)
        canon = canon_host.to(device, non_blocking=True)
        t_max = int(canon_host.max())
        c = int(self.vae.config.latent_channels)
        floor, d = self.geometry.log_floor_value, self.down
        mel = torch.full((b, 1, t_max, self.n_mels), floor, device=device)
        mel_hat_raw = torch.full_like(mel, floor)
        latent = torch.zeros(b, c, t_max // d, self.n_mels // d, device=device)

        # 1a. items that run whole, one sub-batch per canonical length
        for frames_g, idx in self._groups(host):

            def run(a: int, b: int, idx: Tensor = idx, frames_g: int = frames_g) -> None:
                rows = self._rows(idx[a:b], device)
                samples = frames_g * self.hop
                x = normed[rows, :samples]
                if x.shape[1] < samples:
                    x = torch.nn.functional.pad(x, (0, samples - x.shape[1]))
                mel_g = self.frontend(x)[:, :, :frames_g]
                z = self.encode(mel_g)
                mh_raw = self.decode(z)
                mel[rows, :, :frames_g] = mel_g
                mel_hat_raw[rows, :, :frames_g] = mh_raw
                latent[rows, :, : z.shape[2]] = z

            self._run_chunks(len(idx), self._cap(len(idx)), run, lambda a, b, i=idx: i[a:b].tolist(), "item")

        # 1b. windowed items: windows of all of them, overlap-added (equal gain) into mel/mel_hat/latent
        if self.window_frames is not None and bool(self.windowed(host).any()):
            w, o = self.window_frames, self.overlap_frames
            plan = self._plan(lengths)
            for row in plan.item.unique().tolist():
                mel[row, :, : int(canon_host[row])] = 0.0
                mel_hat_raw[row, :, : int(canon_host[row])] = 0.0

            def run_windows(a: int, b: int) -> None:
                p = plan.select(slice(a, b))
                x = gather_window_samples(normed, lengths, p, w, canon, hop=self.hop)
                mel_w = self.frontend(x)[:, :, MEL_CONTEXT : MEL_CONTEXT + w]
                z = self.encode(mel_w)
                mh_raw = self.decode(z)
                weights = crossfade_weights(p, w, o, "equal_gain")
                overlap_add(mel, mel_w, p.item, p.start, weights, dim=1)
                overlap_add(mel_hat_raw, mh_raw, p.item, p.start, weights, dim=1)
                weights = crossfade_weights(p, w // d, o // d, "equal_gain")
                overlap_add(latent, z, p.item, p.start // d, weights, dim=1)

            self._run_chunks(
                len(plan), self._cap(b), run_windows, lambda a, b: plan.item[a:b].unique().tolist(), "window"
            )

        # 2. repair, optional per-item mel step, vocoder
        mel_voc = repair_mel(mel_hat_raw)
        if mel_transform is not None:
            for value in torch.unique(canon_host).tolist():
                rows = self._rows(torch.nonzero(canon_host == value).flatten(), device)
                mel_voc[rows, :, :value] = mel_transform(mel_voc[rows, :, :value], frames[rows])
        wav_raw = self._vocode_raw(mel_voc, host, n)

        mask = valid_mask(lengths, n)
        health = {
            f"mel_{k}": v for k, v in mel_health(mel, frames).items() if k in ("min", "max", "mean", "std")
        }
        health.update({f"mel_hat_{k}": v for k, v in mel_health(mel_hat_raw, frames).items()})
        # Counted directly rather than with tensor_health: its float64 statistics of a long item's
        # waveform would cost ~10 waveform copies of memory for two integers.
        health["latent_nonfinite"] = (~torch.isfinite(latent)).flatten(1).sum(1)
        health["output_nonfinite"] = (~torch.isfinite(wav_raw) & mask).sum(1)
        wav = repair_waveform(wav_raw).mul_(mask)
        del wav_raw
        health["output_peak"] = wav.abs().amax(dim=1).double()
        inv = 1.0 / gain[:, None]
        return ReconstructionOutput(
            waveform=_scale_rows(wav, inv),
            reference=_scale_rows(normed, inv).mul_(mask),
            mel=mel,
            mel_hat=mel_voc,
            latent=torch.nan_to_num(latent),
            lengths=lengths,
            frames=frames,
            canonical_frames=canon,
            gain=gain,
            health=health,
        )
