""":func:`load_hifigan`: AudioLDM2's HiFi-GAN (transformers ``SpeechT5HifiGan``) from a model folder or the HF cache."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from vaefix_pl.core.frontend import (
    HOP,
    N_MELS,
    SAMPLE_RATE,
)
from vaefix_pl.core.models import DEFAULT_SOURCE, VOCODER_WEIGHTS, resolve_source
from vaefix_pl.vocoders.base import VocoderAdapter, VocoderError


def _vocoder_folder(source: str | os.PathLike, allow_download: bool) -> Path:
    """``<folder>`` holding the vocoder's ``config.json`` + ``model.safetensors`` for ``source``."""
    path = Path(source).expanduser()
    if (path / "config.json").is_file() and not (path / "vocoder").is_dir():
        return path
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
