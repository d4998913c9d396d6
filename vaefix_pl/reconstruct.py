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
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vaefix_pl.frontend import HOP, LOG_MEL_FLOOR, Framing, LogMelFrontend, normalize_level, valid_mask
from vaefix_pl.health import mel_health, repair_mel, repair_waveform, tensor_health
from vaefix_pl.models import DEFAULT_SOURCE, load_audioldm2, normalize_precision

LATENT_MODES = ("mode", "sample")
MelTransform = Callable[[Tensor, Tensor], Tensor]


@dataclass
class ReconstructionOutput:
    """What :class:`Reconstructor` returns for a batch (all tensors on the input's device).

    Attributes:
        waveform: ``(B, N)`` float32 reconstruction at the input's level, zero beyond ``lengths``.
        reference: ``(B, N)`` float32 input as the model saw it (DC removed), at the input's level.
        mel: ``(B, 1, T, 64)`` log-mel of the level-normalised input (the VAE's input).
        mel_hat: ``(B, 1, T, 64)`` decoded log-mel after non-finite repair (the vocoder's input).
        latent: ``(B, C, T/4, 16)`` scaled latent (``scaling_factor`` applied).
        lengths: ``(B,)`` valid samples; ``frames``: ``(B,)`` frames that cover them, ``ceil(N/160)``.
        canonical_frames: ``(B,)`` frames each item was padded to; beyond them ``mel``/``mel_hat`` hold
            the floor and ``latent`` zeros.
        gain: ``(B,)`` float64 level gain (``normalised = (x - mean) * gain``).
        health: ``(B,)`` tensors: ``mel_*``, ``mel_hat_*`` (before repair), ``latent_nonfinite``,
            ``output_nonfinite`` (before repair), ``output_peak``.
    """

    waveform: Tensor
    reference: Tensor
    mel: Tensor
    mel_hat: Tensor
    latent: Tensor
    lengths: Tensor
    frames: Tensor
    canonical_frames: Tensor
    gain: Tensor
    health: dict[str, Tensor] = field(default_factory=dict)


def _autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """An autocast region that overrides any outer one (e.g. a Trainer's ``16-mixed``)."""
    if dtype is None:
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=dtype)


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
    """

    def __init__(
        self,
        vae: nn.Module,
        vocoder: nn.Module,
        scaling_factor: float | None = None,
        framing: Framing = "tacotron",
        latent_mode: str = "mode",
        seed: int = 0,
        precision: str = "fp32",
        pad_frames_to: int = 1024,
    ) -> None:
        super().__init__()
        if latent_mode not in LATENT_MODES:
            raise ValueError(f"latent_mode must be one of {LATENT_MODES}, got {latent_mode!r}")
        if pad_frames_to < 4 or pad_frames_to % 4:
            raise ValueError(
                f"pad_frames_to must be a positive multiple of 4 (VAE down factor), got {pad_frames_to}"
            )
        self.vae = vae
        self.vocoder = vocoder
        if scaling_factor is None:
            scaling_factor = float(vae.config.scaling_factor)
        self.scaling_factor = float(scaling_factor)
        self.frontend = LogMelFrontend(framing)
        self.framing = framing
        self.latent_mode = latent_mode
        self.seed = int(seed)
        self.precision = normalize_precision(precision)
        self.pad_frames_to = int(pad_frames_to)
        self._channels_last = False

    @classmethod
    def from_pretrained(
        cls,
        source: str = DEFAULT_SOURCE,
        *,
        precision: str = "fp32",
        device: torch.device | str | None = None,
        allow_download: bool = False,
        **kwargs,
    ) -> Reconstructor:
        """Load the models with :func:`vaefix_pl.load_audioldm2` and wrap them."""
        models = load_audioldm2(source, precision=precision, device=device, allow_download=allow_download)
        rec = cls(models.vae, models.vocoder, models.scaling_factor, precision=models.precision, **kwargs)
        return rec.to(device) if device is not None else rec

    def optimize(
        self,
        channels_last: bool = False,
        vocoder_channels_last: bool = True,
        cudnn_benchmark: bool = True,
        compile: bool | str = False,
        freeze: bool = False,
        pad_narrow_convs: bool = False,
        attention_math: bool = False,
    ) -> Reconstructor:
        """Inference speed settings for fixed-length GPU work (each measured in ``docs/PERFORMANCE.md``).

        Args:
            channels_last: store the VAE's 2-D activations NHWC.
            vocoder_channels_last: run the vocoder's 1-D convolutions as channels-last ``(1, k)``
                2-D convolutions (:mod:`vaefix_pl.speed`): same math, no NCHW<->NHWC transposes.
            cudnn_benchmark: let cuDNN time its algorithms per shape (pays off when clip lengths
                repeat, as with ``pad_frames_to=1024``).
            compile: ``True`` or a ``torch.compile`` mode: compile the VAE encoder/decoder and the
                vocoder in place with static shapes (fuses GroupNorm+SiLU and the element-wise chains).
            freeze: with ``compile``, let Inductor treat the frozen weights as constants (folds the
                per-call bf16 casts of the weights).
            pad_narrow_convs: run the 1-channel convolutions (VAE ``conv_in``/``conv_out``, vocoder
                ``conv_post``) with zero-padded channels so they get tensor-core kernels (exact).
            attention_math: compute the VAE's single-head (dim 512) mid-block attention with diffusers'
                plain ``AttnProcessor`` (batched matmuls + softmax): SDPA has no flash kernel for head
                dim 512 and its memory-efficient float32 kernel does not use tensor cores.
        """
        if channels_last:
            self.vae.to(memory_format=torch.channels_last)
            self._channels_last = True
        if vocoder_channels_last:
            from vaefix_pl.speed import conv1d_channels_last

            conv1d_channels_last(self.vocoder)
        if pad_narrow_convs:
            from vaefix_pl.speed import pad_narrow_convs as pad

            pad(self.vae, channels_last=self._channels_last)
            pad(self.vocoder)  # conv_post, once the vocoder runs as (channels-last) 2-D convolutions
        if attention_math:
            from diffusers.models.attention_processor import AttnProcessor

            self.vae.set_attn_processor(AttnProcessor())
        if cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if compile:
            if freeze:
                import torch._inductor.config as inductor_config

                inductor_config.freezing = True
            mode = None if compile is True else str(compile)
            for part in (self.vae.encoder, self.vae.decoder, self.vocoder):
                part.compile(mode=mode, dynamic=False)
        return self

    def compile_models(self, mode: str | None = None) -> Reconstructor:
        """Shorthand for ``optimize(compile=mode or True)``."""
        return self.optimize(compile=mode or True)

    def extra_repr(self) -> str:
        return (
            f"framing={self.framing!r}, latent_mode={self.latent_mode!r}, precision={self.precision!r}, "
            f"pad_frames_to={self.pad_frames_to}, scaling_factor={self.scaling_factor:.6g}"
        )

    def settings(self) -> dict:
        """Plain-type settings, for run summaries."""
        return {
            "framing": self.framing,
            "latent_mode": self.latent_mode,
            "seed": self.seed,
            "precision": self.precision,
            "pad_frames_to": self.pad_frames_to,
            "scaling_factor": self.scaling_factor,
        }

    # ----------------------------------------------------------------------------------- lengths
    def covered_frames(self, lengths: Tensor) -> Tensor:
        """``(B,)`` frames whose vocoder output covers each item: ``max(1, ceil(N / 160))``."""
        return ((lengths + HOP - 1) // HOP).clamp(min=1)

    def canonical_frames(self, lengths: Tensor) -> Tensor:
        """``(B,)`` canonical frame count of each item (a function of its own length only)."""
        m = self.pad_frames_to
        return (self.covered_frames(lengths) + m - 1) // m * m

    def _groups(self, lengths: Tensor) -> Iterator[tuple[int, Tensor]]:
        canon = self.canonical_frames(lengths)
        for value in torch.unique(canon).tolist():
            yield int(value), torch.nonzero(canon == value).flatten()

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

    def vocode(self, mel: Tensor, lengths: Tensor, gain: Tensor | None = None) -> Tensor:
        """Run the vocoder on a (repaired or post-processed) ``(B, 1, T, 64)`` mel, batch-independently.

        Each item is vocoded at its canonical length, cut to ``lengths`` and divided by ``gain``
        (when given). Returns ``(B, max(lengths))`` float32, zero beyond each item's length.
        """
        n = int(lengths.max())
        out = torch.zeros(mel.shape[0], n, device=mel.device, dtype=torch.float32)
        for frames, idx in self._groups(lengths):
            wav = repair_waveform(self._vocoder(mel[idx, :, :frames]))
            take = min(n, wav.shape[-1])
            out[idx, :take] = wav[:, :take]
        out = out * valid_mask(lengths, n)
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
        mel before the vocoder (e.g. a post-processing chain's mel step); by default the decoded mel
        only gets non-finite repair (no renormalisation).
        """
        if waveform.ndim != 2 or not waveform.is_floating_point():
            raise ValueError(
                f"waveform must be a float (B, N) tensor, got {waveform.dtype} {tuple(waveform.shape)}"
            )
        b, n = waveform.shape
        device = waveform.device
        if lengths is None:
            lengths = torch.full((b,), n, dtype=torch.long, device=device)
        lengths = lengths.to(device=device, dtype=torch.long)
        if lengths.shape != (b,) or bool((lengths < 0).any()) or bool((lengths > n).any()):
            raise ValueError(f"lengths must be (B,) = ({b},) values in [0, {n}], got {lengths.tolist()}")

        normed, gain = normalize_level(waveform.float(), lengths)
        frames = self.covered_frames(lengths)
        canon = self.canonical_frames(lengths)
        t_max = int(canon.max())
        c = int(self.vae.config.latent_channels)
        mel = torch.full((b, 1, t_max, 64), LOG_MEL_FLOOR, device=device)
        mel_hat_raw = torch.full_like(mel, LOG_MEL_FLOOR)
        mel_voc = torch.full_like(mel, LOG_MEL_FLOOR)
        latent = torch.zeros(b, c, t_max // 4, 16, device=device)
        wav_raw = torch.zeros(b, n, device=device)

        for frames_g, idx in self._groups(lengths):
            samples = frames_g * HOP
            x = normed[idx, :samples]
            if x.shape[1] < samples:
                x = torch.nn.functional.pad(x, (0, samples - x.shape[1]))
            mel_g = self.frontend(x)[:, :, :frames_g]
            z = self.encode(mel_g)
            mh_raw = self.decode(z)
            mh = repair_mel(mh_raw)
            if mel_transform is not None:
                mh = mel_transform(mh, frames[idx])
            wav = self._vocoder(mh)
            take = min(n, wav.shape[-1])
            mel[idx, :, :frames_g] = mel_g
            mel_hat_raw[idx, :, :frames_g] = mh_raw
            mel_voc[idx, :, :frames_g] = mh
            latent[idx, :, : z.shape[2]] = z
            wav_raw[idx, :take] = wav[:, :take]

        mask = valid_mask(lengths, n)
        health = {
            f"mel_{k}": v for k, v in mel_health(mel, frames).items() if k in ("min", "max", "mean", "std")
        }
        health.update({f"mel_hat_{k}": v for k, v in mel_health(mel_hat_raw, frames).items()})
        health["latent_nonfinite"] = tensor_health(latent, torch.ones_like(latent, dtype=torch.bool))[
            "nonfinite"
        ]
        health["output_nonfinite"] = tensor_health(wav_raw, mask)["nonfinite"]
        wav = repair_waveform(wav_raw) * mask
        health["output_peak"] = wav.abs().amax(dim=1).double()
        inv = 1.0 / gain[:, None]
        return ReconstructionOutput(
            waveform=(wav.double() * inv).float(),
            reference=(normed.double() * inv).float() * mask,
            mel=mel,
            mel_hat=mel_voc,
            latent=torch.nan_to_num(latent),
            lengths=lengths,
            frames=frames,
            canonical_frames=canon,
            gain=gain,
            health=health,
        )
