"""The vocoder contract: the :class:`Vocoder` protocol (``(B, T, 64)`` natural-log mel -> ``(B, T * 160)`` waveform at 16 kHz), :func:`check_vocoder` (probe mels through it, clear errors) and :class:`VocoderAdapter` for models with other layouts."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from vaefix_pl.core.errors import ModelError, exception_line
from vaefix_pl.core.frontend import (
    HOP,
    N_MELS,
    SAMPLE_RATE,
    Framing,
    LogMelFrontend,
    normalize_level,
)
from vaefix_pl.core.probes import PROBE_NAMES, probe_signals


class VocoderError(ModelError, ValueError):
    """A vocoder cannot be built or loaded, or does not fit AudioLDM2's mel (shape, hop, sample rate or
    input size); the message (one line) says how. A :class:`ModelError`: the CLI exits with code 3."""


@runtime_checkable
class Vocoder(Protocol):
    """``vocoder(mel (B, T, 64) natural-log mel) -> (B, T*160)`` float waveform at 16 kHz."""

    def __call__(self, mel: Tensor) -> Tensor: ...


VocoderLike = nn.Module | Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------------------- checks
def _lookup(obj: Any, names: tuple[str, ...]) -> Any:
    """First of ``names`` found on ``obj`` or on ``obj.config`` (object or mapping); ``None`` if absent."""
    sources = [obj]
    config = getattr(obj, "config", None)
    if config is not None:
        sources.append(config)
    for src in sources:
        for name in names:
            value = src.get(name) if isinstance(src, Mapping) else getattr(src, name, None)
            if value is not None and not callable(value):
                return value
    return None


def advertised_settings(vocoder: Any) -> dict[str, Any]:
    """What a vocoder says about itself: ``sampling_rate``, ``hop_length``, ``model_in_dim``, ``normalize_before``.

    Read from the object (an adapter forwards its inner module's) or its ``config``; missing ones are
    left out. ``hop_length`` falls back to the product of ``upsample_rates`` (HiFi-GAN configs).
    """
    inner = getattr(vocoder, "inner", None)
    out: dict[str, Any] = {}
    for target in (inner, vocoder):
        if target is None:
            continue
        sr = _lookup(target, ("sampling_rate", "sample_rate", "sr"))
        hop = _lookup(target, ("hop_length", "hop_size", "hop"))
        if hop is None:
            rates = _lookup(target, ("upsample_rates",))
            if rates is not None:
                hop = math.prod(int(r) for r in rates)
        dim = _lookup(target, ("model_in_dim", "n_mels", "num_mels"))
        norm = _lookup(target, ("normalize_before",))
        for key, value in (
            ("sampling_rate", sr),
            ("hop_length", hop),
            ("model_in_dim", dim),
            ("normalize_before", norm),
        ):
            if value is not None:
                out[key] = value
    return out


def _first_param(module: Any) -> Tensor | None:
    if isinstance(module, nn.Module):
        for t in module.parameters():
            return t
        for t in module.buffers():
            return t
    return None


def _probe_mel(frames: int, batch: int, framing: Framing, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(batch, frames, 64)`` log-mel of real probe signals (chirp, speech-like, ...) at the trained level."""
    seconds = (frames + 8) * HOP / SAMPLE_RATE
    signals = probe_signals(seconds=seconds)
    names = [PROBE_NAMES[(2 + i) % len(PROBE_NAMES)] for i in range(batch)]  # chirp, speech_like, ...
    x = torch.stack([torch.from_numpy(signals[n]) for n in names]).double()
    x, _ = normalize_level(x)
    mel = LogMelFrontend(framing).double()(x)[:, 0, :frames]
    return mel.to(device=device, dtype=dtype)


def _run(vocoder: VocoderLike, mel: Tensor, name: str) -> Tensor:
    try:
        with torch.no_grad():
            out = vocoder(mel)
    except Exception as exc:  # noqa: BLE001 - re-raised with what the vocoder was given
        raise VocoderError(
            f"{name} failed on a {tuple(mel.shape)} log-mel probe (B, T, {N_MELS}): {exception_line(exc)}. "
            f"A vocoder takes (B, T, {N_MELS}) natural-log mel (time before mel bins; wrap a (B, {N_MELS}, T) "
            f"model with as_vocoder(model, input_layout='bct')) and returns (B, T*{HOP}) samples."
        ) from exc
    if not isinstance(out, Tensor):
        raise VocoderError(f"{name} returned {type(out).__name__}, expected a (B, T*{HOP}) tensor")
    return out


def check_vocoder(
    vocoder: VocoderLike,
    frames: int = 24,
    batch: int = 2,
    framing: Framing = "tacotron",
    device: torch.device | str | None = None,
    name: str = "vocoder",
    strict: bool = True,
) -> None:
    """Raise :class:`VocoderError` unless ``vocoder`` maps ``(B, T, 64)`` log-mel to ``(B, T*160)`` at 16 kHz.

    ``strict=False`` checks the vocoder as :func:`vocode` runs it (through :func:`as_vocoder`: a
    ``(B, 1, N)`` output or a tail of fewer than 160 samples is accepted and fixed).

    Checks advertised attributes first (``sampling_rate``, ``hop_length`` / ``upsample_rates``,
    ``model_in_dim``, ``normalize_before``), then runs two probe mels (``frames`` and ``frames + 8``
    frames of real probe signals) in eval mode without gradients (the module's train/eval mode is
    restored) and checks batch size, rank, samples per frame (the hop), a constant offset, dtype and
    finiteness.
    """
    adv = advertised_settings(vocoder)
    if "sampling_rate" in adv and int(adv["sampling_rate"]) != SAMPLE_RATE:
        raise VocoderError(
            f"{name} advertises sampling_rate={adv['sampling_rate']} Hz; AudioLDM2's mel and vocoder run at "
            f"{SAMPLE_RATE} Hz (hop {HOP} = 10 ms): use a vocoder trained at {SAMPLE_RATE} Hz"
        )
    if "hop_length" in adv and int(adv["hop_length"]) != HOP:
        raise VocoderError(
            f"{name} advertises a hop of {adv['hop_length']} samples per frame (hop_length / product of "
            f"upsample_rates); AudioLDM2's mel has {HOP} ({HOP / SAMPLE_RATE * 1000:g} ms at {SAMPLE_RATE} Hz)"
        )
    if "model_in_dim" in adv and int(adv["model_in_dim"]) != N_MELS:
        raise VocoderError(
            f"{name} advertises {adv['model_in_dim']} input mel bins (model_in_dim / n_mels); AudioLDM2's "
            f"mel has {N_MELS}"
        )
    if adv.get("normalize_before"):
        raise VocoderError(
            f"{name} has normalize_before=True: it would standardise the mel with its own mean/scale, but "
            f"AudioLDM2's vocoder takes the raw log-mel (set normalize_before false in its config)"
        )

    param = _first_param(vocoder)
    dev = torch.device(device) if device is not None else (param.device if param is not None else "cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = vocoder.training if isinstance(vocoder, nn.Module) else None
    if isinstance(vocoder, nn.Module):
        vocoder.eval()
    runner = vocoder if strict else as_vocoder(vocoder)
    try:
        sizes = (frames, frames + 8)
        outs = [_run(runner, _probe_mel(t, batch, framing, dev, dtype), name) for t in sizes]
    finally:
        if isinstance(vocoder, nn.Module) and was_training:
            vocoder.train()
    for t, out in zip(sizes, outs):
        if out.ndim == 3 and out.shape[0] == batch and out.shape[1] == 1:
            raise VocoderError(
                f"{name} returned shape {tuple(out.shape)} = (B, 1, N) for a ({batch}, {t}, {N_MELS}) mel; "
                f"the protocol is (B, N): wrap it with as_vocoder(model) (squeezes the channel)"
            )
        if out.ndim != 2 or out.shape[0] != batch:
            raise VocoderError(
                f"{name} returned shape {tuple(out.shape)} for a ({batch}, {t}, {N_MELS}) mel; expected "
                f"({batch}, {t * HOP}) = (B, T*{HOP})"
            )
        if not out.is_floating_point():
            raise VocoderError(f"{name} returned {out.dtype} samples; expected a float waveform")
        if not bool(torch.isfinite(out).all()):
            raise VocoderError(f"{name} returned non-finite samples on a healthy probe mel")
    n1, n2 = outs[0].shape[1], outs[1].shape[1]
    if n1 != sizes[0] * HOP or n2 != sizes[1] * HOP:
        per_frame = (n2 - n1) / (sizes[1] - sizes[0])
        offset = n1 - per_frame * sizes[0]
        if per_frame != HOP:
            raise VocoderError(
                f"{name} makes {per_frame:g} samples per frame ({n1} samples for {sizes[0]} frames, {n2} for "
                f"{sizes[1]}): its hop is {per_frame:g}, AudioLDM2's mel has hop {HOP} at {SAMPLE_RATE} Hz. "
                f"A vocoder for another hop or sample rate does not fit this mel."
            )
        raise VocoderError(
            f"{name} returns T*{HOP} {offset:+g} samples ({n1} for {sizes[0]} frames); expected exactly "
            f"T*{HOP} (output sample n belongs to frame n // {HOP})"
            + (": as_vocoder(model) trims a tail shorter than a hop" if 0 < offset < HOP else "")
        )


# ---------------------------------------------------------------------------------------- adapters
class VocoderAdapter(nn.Module):
    """Make a module or callable follow the protocol: ``(B, T, 64) -> (B, T*160)``.

    Args:
        inner: the model (an ``nn.Module`` is registered as the submodule ``inner``, so ``.to()``,
            ``.parameters()`` and ``state_dict()`` (keys ``inner.*``) reach it; a plain callable is kept as is).
        input_layout: ``"btc"`` (``(B, T, 64)``, the protocol's) or ``"bct"`` (``(B, 64, T)``, e.g. the
            original HiFi-GAN repository's ``Generator``).
        squeeze: turn a ``(B, 1, N)`` output into ``(B, N)``.
        trim: cut an output of ``T*160 + c`` samples (``0 < c < 160``) to ``T*160``. Transposed-convolution
            HiFi-GANs make such a tail: AudioLDM2's ``SpeechT5HifiGan`` (kernels 16/16/8/4/4, strides
            5/4/2/2/2, padding ``(k - s) // 2``) returns ``T*160 + 32`` samples; the extra samples are at the
            end, so sample ``n`` still belongs to frame ``n // 160``.
    """

    def __init__(
        self, inner: VocoderLike, input_layout: str = "btc", squeeze: bool = True, trim: bool = True
    ) -> None:
        super().__init__()
        if input_layout not in ("btc", "bct"):
            raise ValueError(
                f"input_layout must be 'btc' (B, T, 64) or 'bct' (B, 64, T), got {input_layout!r}"
            )
        if isinstance(inner, nn.Module):
            self.inner = inner
        else:
            self._callable = inner
        self.input_layout = input_layout
        self.squeeze = squeeze
        self.trim = trim

    @property
    def config(self) -> Any:
        """The inner model's ``config`` (HF models), so :func:`advertised_settings` sees through the adapter."""
        inner = self._modules.get("inner", getattr(self, "_callable", None))
        return getattr(inner, "config", None)

    def extra_repr(self) -> str:
        return f"input_layout={self.input_layout!r}, squeeze={self.squeeze}, trim={self.trim}"

    def forward(self, mel: Tensor) -> Tensor:
        """``(B, T, 64)`` natural-log mel -> ``(B, T*160)`` waveform."""
        x = mel.transpose(1, 2) if self.input_layout == "bct" else mel
        fn = self._modules["inner"] if "inner" in self._modules else self._callable
        out = fn(x)
        if self.squeeze and isinstance(out, Tensor) and out.ndim == 3 and out.shape[1] == 1:
            out = out[:, 0]
        if self.trim and isinstance(out, Tensor) and out.ndim == 2:
            want = mel.shape[1] * HOP
            if want < out.shape[1] < want + HOP:
                out = out[:, :want]
        return out


def as_vocoder(
    model: VocoderLike, input_layout: str = "btc", squeeze: bool = True, trim: bool = True
) -> VocoderLike:
    """``model`` wrapped in a :class:`VocoderAdapter` (returned as is when it already is one or nothing is asked)."""
    if isinstance(model, VocoderAdapter) or (input_layout == "btc" and not squeeze and not trim):
        return model
    return VocoderAdapter(model, input_layout=input_layout, squeeze=squeeze, trim=trim)


def vocode(vocoder: VocoderLike, mel: Tensor, name: str = "vocoder") -> Tensor:
    """Run any vocoder on ``(B, T, 64)`` and return exactly ``(B, T*160)`` float32.

    Tolerates what :class:`VocoderAdapter` fixes (a ``(B, 1, N)`` output, a tail of fewer than 160
    samples); anything else raises :class:`VocoderError`.
    """
    out = as_vocoder(vocoder)(mel)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape != (mel.shape[0], mel.shape[1] * HOP):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise VocoderError(
            f"{name} returned {shape} for a {tuple(mel.shape)} mel; expected ({mel.shape[0]}, {mel.shape[1] * HOP})"
        )
    return out.float()
