"""AudioLDM2-shaped models built by the project itself, for tests, demos and benchmarks.

No weights can be downloaded here, so tests load small models of AudioLDM2's exact geometry
(1 input channel, 64 mel bins, VAE down factor 4, vocoder hop 160 at 16 kHz) written in diffusers
format by :func:`write_tiny_audioldm2`, through the real loader. :func:`full_size_configs` gives the
real architectures (``shared/reference/audioldm2.md`` sections 3-4) for cost and speed measurements
with random weights. Outputs of random weights are not meaningful audio.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from vaefix_pl.core.models import FULL_VAE_CONFIG, FULL_VOCODER_CONFIG

# Same geometry, a few thousand times cheaper. The scaling factor differs from the real one on
# purpose, so tests catch code that hard-codes 0.411 instead of reading it from the config.
TINY_VAE_CONFIG: dict[str, Any] = {
    **FULL_VAE_CONFIG,
    "block_out_channels": [8, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "scaling_factor": 0.75,
}
TINY_VOCODER_CONFIG: dict[str, Any] = {
    **FULL_VOCODER_CONFIG,
    "upsample_initial_channel": 32,
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3]],
    # Wider init than the real 0.01 so the tiny random vocoder's output reaches a peak near 0.1-0.2
    # (with 0.01 it is about 1e-8, which would make every downstream test work on near-silence).
    "initializer_range": 0.1,
}


def full_size_configs() -> tuple[dict[str, Any], dict[str, Any]]:
    """``(vae_config, vocoder_config)`` of the full-size AudioLDM2 architectures."""
    return copy.deepcopy(FULL_VAE_CONFIG), copy.deepcopy(FULL_VOCODER_CONFIG)


def tiny_configs() -> tuple[dict[str, Any], dict[str, Any]]:
    """``(vae_config, vocoder_config)`` of the tiny AudioLDM2-shaped test models."""
    return copy.deepcopy(TINY_VAE_CONFIG), copy.deepcopy(TINY_VOCODER_CONFIG)


def build_models(
    vae_config: dict[str, Any], vocoder_config: dict[str, Any], seed: int = 0
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Build ``(AutoencoderKL, SpeechT5HifiGan)`` with deterministic random weights (float32, eval)."""
    from diffusers import AutoencoderKL
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**vae_config)
        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**vocoder_config))
        # transformers initialises lazily in post_init; make sure the weights are materialised now.
        vocoder.apply(vocoder._init_weights)
    return vae.eval(), vocoder.eval()


def write_audioldm2_folder(
    path: str | os.PathLike,
    vae_config: dict[str, Any],
    vocoder_config: dict[str, Any],
    seed: int = 0,
) -> Path:
    """Write a diffusers-format folder (``vae/``, ``vocoder/``: config.json + safetensors)."""
    out = Path(path)
    vae, vocoder = build_models(vae_config, vocoder_config, seed=seed)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    vocoder.save_pretrained(out / "vocoder", safe_serialization=True)
    return out


def write_tiny_audioldm2(path: str | os.PathLike, seed: int = 0, **vae_overrides: Any) -> Path:
    """Write tiny AudioLDM2-compatible models (64 mels, down factor 4, hop 160, 16 kHz) to ``path``.

    Deterministic from ``seed``. Keyword arguments override VAE config fields (e.g. ``scaling_factor``).
    """
    vae_cfg, voc_cfg = tiny_configs()
    vae_cfg.update(vae_overrides)
    return write_audioldm2_folder(path, vae_cfg, voc_cfg, seed=seed)
