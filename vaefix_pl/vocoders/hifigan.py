"""Pluggable vocoders: anything that maps a ``(B, T, 64)`` natural-log mel to a ``(B, T*160)`` waveform.

The protocol (:class:`Vocoder`) is deliberately small: an ``nn.Module`` or any callable taking the
AudioLDM2 log-mel (``log(clamp(mel, 1e-5))``, 64 Slaney bands, hop 160 at 16 kHz, the VAE's output
squeezed on dim 1) and returning ``(B, T*160)`` float samples at 16 kHz, output sample ``n`` belonging to
frame ``n // 160``. Optional attributes, read on the object or its ``config``, are checked when present:
``sampling_rate`` (or ``sample_rate``) must be 16000, ``hop_length`` (or the product of
``upsample_rates``) 160, ``model_in_dim`` (or ``n_mels`` / ``num_mels``) 64, ``normalize_before`` false.

Adapters:

* :func:`load_hifigan`: transformers ``SpeechT5HifiGan`` from a model folder (``<folder>/vocoder`` of a
  diffusers-format AudioLDM2 folder, a vocoder folder itself, or a hub id in the local HF cache). The
  default vocoder and the fixed baseline.
* :class:`GriffinLimVocoder`: weight-free floor. torchaudio ``InverseMelScale`` (with exactly the
  front-end's Slaney basis, :func:`vaefix_pl.core.frontend.slaney_mel_basis`) + ``GriffinLim`` (n_fft 1024, hop
  160, periodic Hann, magnitude), its output placed on the same timeline as the HiFi-GAN's for the
  chosen framing (see the class docstring).
* :func:`load_user_vocoder` / :func:`vocoder_from_config`: a user's module from ``class_path`` +
  ``init_args`` (nested ``class_path`` dicts are instantiated too) + a checkpoint (Lightning ``.ckpt``,
  plain state dict ``.pt``/``.pth``/``.bin``, or ``.safetensors``), with prefix stripping; YAML works.

:func:`check_vocoder` runs a probe mel through any of them and raises :class:`VocoderError` with a clear
message for a wrong output shape, hop, sample rate or input size.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torchaudio
from torch import Tensor, nn

from vaefix_pl.core.frontend import (
    FRAMINGS,
    HOP,
    N_FFT,
    N_MELS,
    SAMPLE_RATE,
    Framing,
    LogMelFrontend,
    slaney_mel_basis,
)

__all__ = [
    "GriffinLimVocoder",
    "Vocoder",
    "VocoderAdapter",
    "VocoderError",
    "advertised_settings",
    "as_vocoder",
    "check_vocoder",
    "instantiate_class",
    "load_checkpoint_state",
    "load_hifigan",
    "load_user_vocoder",
    "load_vocoder",
    "strip_state_prefix",
    "vocode",
    "vocoder_from_config",
]

GRIFFIN_LIM_NAMES = ("griffinlim", "griffin-lim", "griffin_lim", "gl")
HIFIGAN_NAMES = ("hifigan", "hifi-gan", "speecht5hifigan", "default")


class VocoderError(ValueError):
    """A vocoder does not fit AudioLDM2's mel (shape, hop, sample rate or input size); the message says how."""


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
    from vaefix_pl.core.frontend import normalize_level
    from vaefix_pl.core.probes import PROBE_NAMES, probe_signals

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
            f"{name} failed on a {tuple(mel.shape)} log-mel probe (B, T, {N_MELS}): {type(exc).__name__}: {exc}. "
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


def _vocoder_folder(source: str | os.PathLike, allow_download: bool) -> Path:
    """``<folder>`` holding the vocoder's ``config.json`` + ``model.safetensors`` for ``source``."""
    path = Path(source).expanduser()
    if (path / "config.json").is_file() and not (path / "vocoder").is_dir():
        return path
    from vaefix_pl.core.models import resolve_source

    return resolve_source(source, allow_download=allow_download) / "vocoder"


def load_hifigan(
    source: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    trainable: bool = False,
    allow_download: bool = False,
) -> nn.Module:
    """AudioLDM2's HiFi-GAN (transformers ``SpeechT5HifiGan``), float32: ``(B, T, 64) -> (B, T*160)``.

    Returned inside a :class:`VocoderAdapter` (the model is ``.inner``) that trims the 32 extra samples
    the model's transposed convolutions make (its raw output has ``T*160 + 32``).

    Args:
        source: diffusers-format AudioLDM2 folder (its ``vocoder/`` is used), a vocoder folder
            (``config.json`` + ``model.safetensors``) or a hub id in the local HF cache
            (default ``cvssp/audioldm2``).
        trainable: ``False`` (default): frozen (``eval()``, no gradients), the fixed baseline.
            ``True``: ``train()`` mode with gradients, the starting point of a fine-tuning run.

    Raises :class:`VocoderError` when the config does not fit AudioLDM2's mel.
    """
    from transformers import SpeechT5HifiGan

    from vaefix_pl.core.models import DEFAULT_SOURCE, VOCODER_WEIGHTS

    folder = _vocoder_folder(source or DEFAULT_SOURCE, allow_download)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise VocoderError(f"{cfg_path} is missing: not a SpeechT5HifiGan folder")
    if not (folder / VOCODER_WEIGHTS).is_file():
        raise VocoderError(f"{folder / VOCODER_WEIGHTS} is missing (only safetensors weights are loaded)")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    for key, want in (("model_in_dim", N_MELS), ("sampling_rate", SAMPLE_RATE)):
        if cfg.get(key) != want:
            raise VocoderError(f"{cfg_path}: {key} is {cfg.get(key)!r}, expected {want}")
    if math.prod(cfg.get("upsample_rates") or [0]) != HOP:
        raise VocoderError(f"{cfg_path}: upsample_rates {cfg.get('upsample_rates')} do not multiply to {HOP}")
    if cfg.get("normalize_before", True):
        raise VocoderError(
            f"{cfg_path}: normalize_before is {cfg.get('normalize_before', 'missing (defaults to true)')}; "
            f"AudioLDM2's vocoder takes the raw log-mel (false)"
        )
    model = SpeechT5HifiGan.from_pretrained(str(folder), use_safetensors=True, local_files_only=True).float()
    model.requires_grad_(trainable)
    vocoder = VocoderAdapter(model).train(trainable)  # trims the T*160 + 32 samples of its transposed convs
    return vocoder.to(device) if device is not None else vocoder


class GriffinLimVocoder(nn.Module):
    """Weight-free vocoder: ``(B, T, 64)`` natural-log mel -> ``(B, T*160)`` waveform by Griffin-Lim.

    Exactly our mel definition inverted: ``exp`` of the log-mel (floor ``1e-5`` stays ``1e-5``), torchaudio
    ``InverseMelScale`` (non-negative least squares via ``lstsq`` + ReLU) whose filter bank is replaced by
    the front-end's own Slaney basis (:func:`vaefix_pl.core.frontend.slaney_mel_basis`, magnitude not power),
    then torchaudio's fast Griffin-Lim (n_fft = win = 1024, hop 160, periodic Hann, ``power=1``).

    Timeline: torchaudio's Griffin-Lim centres STFT frame ``j`` on output sample ``160 j``. Frame ``k`` of
    the mel is centred on input sample ``160 k`` (``"tacotron"``) or ``160 k + 80`` (``"hifigan"``), so the
    mel is edge-padded by ``pre`` frames in front (0 / 1) and one frame behind, and the output is cut at
    ``160 pre - offset`` (0 / 80) for ``T*160`` samples: output sample ``n`` lies on the input's sample
    ``n``, the same timeline as :class:`~vaefix_pl.core.reconstruct.Reconstructor`'s vocoder output (sample
    ``n`` from frame ``n // 160``).

    Args:
        framing: the framing the mel was made with.
        n_iter: Griffin-Lim iterations; ``momentum``: fast Griffin-Lim momentum.
        rand_init: random initial phase (``False``: zero phase, deterministic).
    """

    sampling_rate = SAMPLE_RATE
    hop_length = HOP
    model_in_dim = N_MELS

    def __init__(
        self, framing: Framing = "tacotron", n_iter: int = 32, momentum: float = 0.99, rand_init: bool = False
    ) -> None:
        super().__init__()
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
        self.framing = framing
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=N_FFT // 2 + 1, n_mels=N_MELS, sample_rate=SAMPLE_RATE, f_min=0.0, f_max=SAMPLE_RATE / 2,
            norm="slaney", mel_scale="slaney", driver="gels",
        )  # fmt: skip
        # The front-end's own basis, built in float64 (torchaudio's float32 grid differs by ~1e-7).
        self.inverse_mel.fb = slaney_mel_basis(torch.float32).T.contiguous()  # (513, 64)
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=N_FFT, n_iter=n_iter, win_length=N_FFT, hop_length=HOP,
            window_fn=torch.hann_window, power=1.0, momentum=momentum, rand_init=rand_init,
        )  # fmt: skip
        self._pre, self._offset = (0, 0) if framing == "tacotron" else (1, HOP // 2)

    def extra_repr(self) -> str:
        gl = self.griffin_lim
        return (
            f"framing={self.framing!r}, n_iter={gl.n_iter}, momentum={gl.momentum}, rand_init={gl.rand_init}"
        )

    def magnitude(self, mel: Tensor) -> Tensor:
        """``(B, T, 64)`` log-mel -> ``(B, 513, T)`` non-negative STFT magnitude estimate."""
        return self.inverse_mel(torch.exp(mel.float()).transpose(1, 2))

    def forward(self, mel: Tensor) -> Tensor:
        """``(B, T, 64)`` natural-log mel -> ``(B, T*160)`` float32 waveform (see the class docstring)."""
        if mel.ndim != 3 or mel.shape[-1] != N_MELS:
            raise ValueError(f"mel must be (B, T, {N_MELS}), got shape {tuple(mel.shape)}")
        t = mel.shape[1]
        with torch.autocast(mel.device.type, enabled=False):
            padded = torch.cat([mel[:, :1]] * self._pre + [mel, mel[:, -1:]], dim=1).float()
            mag = self.magnitude(padded)
            gl = self.griffin_lim
            y = torchaudio.functional.griffinlim(
                mag, gl.window.to(mag), N_FFT, HOP, N_FFT, 1.0, gl.n_iter, gl.momentum,
                (padded.shape[1] - 1) * HOP, gl.rand_init,
            )  # fmt: skip
        start = HOP * self._pre - self._offset
        return y[:, start : start + t * HOP]


# ---------------------------------------------------------------------------------------- user modules
def _import(class_path: str) -> Any:
    module_name, _, attr = class_path.rpartition(".")
    if not module_name:
        raise VocoderError(f"class_path must be 'package.module.Class', got {class_path!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise VocoderError(f"cannot import {class_path!r}: {exc}") from exc


def instantiate_class(class_path: str, init_args: Mapping[str, Any] | None = None) -> Any:
    """``Class(**init_args)``; values that are ``{"class_path": ..., "init_args": ...}`` are built first.

    The same shape as LightningCLI / jsonargparse YAML, e.g. a transformers model with its config::

        class_path: transformers.SpeechT5HifiGan
        init_args:
          config:
            class_path: transformers.SpeechT5HifiGanConfig
            init_args: {model_in_dim: 64, upsample_rates: [5, 4, 2, 2, 2], normalize_before: false}
    """

    def build(value: Any) -> Any:
        if isinstance(value, Mapping) and "class_path" in value:
            return instantiate_class(value["class_path"], value.get("init_args"))
        if isinstance(value, Mapping):
            return {k: build(v) for k, v in value.items()}
        if isinstance(value, list):
            return [build(v) for v in value]
        return value

    cls = _import(class_path)
    return cls(**{k: build(v) for k, v in dict(init_args or {}).items()})


def load_checkpoint_state(
    path: str | os.PathLike, key: str | None = None, trust_checkpoint: bool = False
) -> dict[str, Tensor]:
    """Tensors of a checkpoint: ``.safetensors``, a Lightning ``.ckpt`` (its ``state_dict``) or a plain state dict.

    ``key`` picks a sub-dict (e.g. ``"generator"`` in the original HiFi-GAN's ``g_*`` checkpoints); by
    default ``state_dict`` is used when present. Pickled checkpoints load with ``weights_only=True``
    unless ``trust_checkpoint`` (only for files you trust: unpickling runs code).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise VocoderError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(p))
    else:
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=not trust_checkpoint)
        except Exception as exc:  # noqa: BLE001
            hint = "" if trust_checkpoint else " (if you trust the file, pass trust_checkpoint=True)"
            raise VocoderError(f"cannot load checkpoint {p}: {exc}{hint}") from exc
    if key is not None:
        if not isinstance(state, Mapping) or key not in state:
            have = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise VocoderError(f"checkpoint {p} has no key {key!r} (has {have})")
        state = state[key]
    elif isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise VocoderError(f"checkpoint {p} is not a state dict of tensors (pass key= to pick one)")
    return dict(state)


def strip_state_prefix(
    state: Mapping[str, Tensor], model_keys: list[str] | set[str], prefix: str | None = None
) -> dict[str, Tensor]:
    """Keys of ``state`` with ``prefix`` removed (only keys that have it are kept).

    ``prefix=None`` finds it: the leading part (e.g. ``"vocoder."``, ``"model.generator."``, DDP's
    ``"module."``, ``torch.compile``'s ``"_orig_mod."``) that makes the most keys match ``model_keys``.
    """
    if prefix is None:
        wanted = set(model_keys)
        if not wanted or wanted <= set(state):
            return dict(state)
        counts: dict[str, int] = {}
        for k in state:
            for mk in wanted:
                if k.endswith(mk) and len(k) > len(mk) and k[-len(mk) - 1] == ".":
                    cand = k[: -len(mk)]
                    counts[cand] = counts.get(cand, 0) + 1
        if not counts:
            return dict(state)
        prefix = max(counts, key=lambda c: (counts[c], -len(c)))
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _attribute(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def load_user_vocoder(
    class_path: str,
    init_args: Mapping[str, Any] | None = None,
    ckpt_path: str | os.PathLike | None = None,
    *,
    prefix: str | None = None,
    key: str | None = None,
    strict: bool = True,
    attribute: str | None = None,
    input_layout: str = "btc",
    trust_checkpoint: bool = False,
    check: bool = True,
    framing: Framing = "tacotron",
) -> VocoderLike:
    """Build a user's vocoder from ``class_path`` + ``init_args``, load ``ckpt_path``, return it frozen.

    Args:
        prefix: strip this from the checkpoint's keys (``None``: detected, see :func:`strip_state_prefix`).
        key: sub-dict of the checkpoint holding the weights (default: ``state_dict`` when present).
        attribute: dotted attribute of the built object that is the vocoder (e.g. ``"vocoder"`` when
            ``class_path`` is a whole LightningModule whose checkpoint is loaded as is).
        input_layout: ``"bct"`` for modules that take ``(B, 64, T)``.
        check: run :func:`check_vocoder` on the result.
    """
    obj = instantiate_class(class_path, init_args)
    if ckpt_path is not None:
        if not isinstance(obj, nn.Module):
            raise VocoderError(f"{class_path} is not an nn.Module: cannot load {ckpt_path} into it")
        state = load_checkpoint_state(ckpt_path, key=key, trust_checkpoint=trust_checkpoint)
        own = list(obj.state_dict())
        state = strip_state_prefix(state, own, prefix)
        result = obj.load_state_dict(state, strict=strict)
        if not strict and (result.missing_keys or result.unexpected_keys):
            import warnings

            warnings.warn(
                f"{class_path} from {ckpt_path}: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}",
                stacklevel=2,
            )
    if attribute:
        obj = _attribute(obj, attribute)
    if isinstance(obj, nn.Module):
        obj.eval()
        obj.requires_grad_(False)
    vocoder = as_vocoder(obj, input_layout=input_layout, squeeze=True)
    if isinstance(vocoder, nn.Module):
        vocoder.eval()
    if check:
        check_vocoder(vocoder, framing=framing, name=class_path)
    return vocoder


_CONFIG_KEYS = {
    "class_path", "init_args", "ckpt_path", "checkpoint", "checkpoint_path", "prefix", "key", "strict",
    "attribute", "input_layout", "trust_checkpoint",
}  # fmt: skip


def vocoder_from_config(
    config: Mapping[str, Any] | str | os.PathLike, framing: Framing = "tacotron", check: bool = True
) -> VocoderLike:
    """A user's vocoder from a mapping or a YAML/JSON file::

        class_path: my_package.vocoders.BigVGAN      # any importable nn.Module
        init_args: {channels: 512}                    # nested class_path dicts are built too
        ckpt_path: runs/ft/last.ckpt                  # Lightning .ckpt, plain .pt state dict or .safetensors
        prefix: vocoder.                              # optional: stripped from the checkpoint keys (auto)
        input_layout: btc                             # or bct for (B, 64, T) models

    Relative ``ckpt_path`` values in a file resolve against the file's folder.
    """
    base: Path | None = None
    if not isinstance(config, Mapping):
        path = Path(config).expanduser()
        text = path.read_text(encoding="utf-8")
        import yaml

        config = yaml.safe_load(text)
        base = path.parent
        if not isinstance(config, Mapping):
            raise VocoderError(f"{path} must hold a mapping with class_path (and init_args, ckpt_path)")
    unknown = set(config) - _CONFIG_KEYS
    if unknown or "class_path" not in config:
        raise VocoderError(
            f"vocoder config needs class_path and takes {sorted(_CONFIG_KEYS)}; got {sorted(config)}"
        )
    ckpt = config.get("ckpt_path") or config.get("checkpoint") or config.get("checkpoint_path")
    if ckpt is not None and base is not None and not Path(ckpt).expanduser().is_absolute():
        ckpt = base / ckpt
    return load_user_vocoder(
        config["class_path"],
        config.get("init_args"),
        ckpt,
        prefix=config.get("prefix"),
        key=config.get("key"),
        strict=bool(config.get("strict", True)),
        attribute=config.get("attribute"),
        input_layout=config.get("input_layout", "btc"),
        trust_checkpoint=bool(config.get("trust_checkpoint", False)),
        check=check,
        framing=framing,
    )


def load_vocoder(
    spec: Any = None,
    source: str | os.PathLike | None = None,
    framing: Framing = "tacotron",
    device: torch.device | str | None = None,
    allow_download: bool = False,
) -> VocoderLike:
    """Any vocoder spec -> a frozen vocoder following the protocol.

    ``spec``: ``None`` / ``"hifigan"`` (the HiFi-GAN of ``source``), ``"griffinlim"`` (weight-free,
    for ``framing``), a folder (a HiFi-GAN: AudioLDM2 folder or vocoder folder), a ``.yaml``/``.yml``/
    ``.json`` file or a mapping with ``class_path`` (:func:`vocoder_from_config`), or an ``nn.Module`` /
    callable (returned as is, moved to ``device`` when it is a module).
    """
    if spec is None or (isinstance(spec, str) and spec.lower() in HIFIGAN_NAMES):
        voc: VocoderLike = load_hifigan(source, allow_download=allow_download)
    elif isinstance(spec, str) and spec.lower() in GRIFFIN_LIM_NAMES:
        voc = GriffinLimVocoder(framing)
    elif isinstance(spec, Mapping):
        voc = vocoder_from_config(spec, framing=framing)
    elif isinstance(spec, (str, os.PathLike)):
        path = Path(spec).expanduser()
        if path.suffix.lower() in (".yaml", ".yml", ".json") and path.is_file():
            voc = vocoder_from_config(path, framing=framing)
        else:
            voc = load_hifigan(path, allow_download=allow_download)
    elif isinstance(spec, nn.Module) or callable(spec):
        voc = spec
    else:
        raise VocoderError(f"cannot make a vocoder from {type(spec).__name__} {spec!r}")
    if device is not None and isinstance(voc, nn.Module):
        voc = voc.to(device)
    return voc
