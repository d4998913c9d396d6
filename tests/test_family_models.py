"""Tiny diffusers models of every geometry: configs match, and log-mel -> VAE -> vocoder keeps the length."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL

from vaefix_pl.core.geometry import match_geometry
from vaefix_pl.core.hifires import HiFiResVocoder, load_vocoder
from vaefix_pl.core.melspec import log_mel
from vaefix_pl.testing import write_tiny_geometry


@pytest.mark.parametrize("name", ["audioldm_16k", "audioldm_48k"])
def test_tiny_geometry_folder_reconstructs_at_model_rate(tmp_path, name):
    folder = write_tiny_geometry(tmp_path / name, name, seed=0)
    vae_cfg = json.loads((folder / "vae/config.json").read_text())
    voc_cfg = json.loads((folder / "vocoder/config.json").read_text())
    g = match_geometry(vae_cfg, voc_cfg)
    assert g.name == name and g.scaling_factor == vae_cfg["scaling_factor"]
    vae = AutoencoderKL.from_pretrained(
        str(folder / "vae"), use_safetensors=True, local_files_only=True
    ).eval()
    voc = load_vocoder(folder / "vocoder")
    assert isinstance(voc, HiFiResVocoder) == (name == "audioldm_48k")

    frames = 4 * g.vae_down  # a whole number of latent frames
    n = (frames - 1) * g.hop  # "tacotron" framing: n // hop + 1 frames
    wave = 0.5 * torch.sin(torch.arange(2 * n, dtype=torch.float32).reshape(2, n) * 0.01)
    mel = log_mel(wave, g)
    assert mel.shape == (2, 1, frames, g.n_mels)
    with torch.no_grad():
        z = vae.encode(mel).latent_dist.mode() * g.scaling_factor
        assert z.shape == (2, g.latent_channels, frames // g.vae_down, g.n_mels // g.vae_down)
        out_mel = vae.decode(z / g.scaling_factor).sample
        audio = voc(out_mel[:, 0])
    extra = 32 if name == "audioldm_16k" else 0  # SpeechT5 padding at 16 kHz: T * 160 + 32
    assert audio.shape == (2, frames * g.hop + extra)
    assert torch.isfinite(audio).all()
