"""The 48 kHz vocoder with Generator_HiFiRes padding, against the upstream generator written in the tests."""

from __future__ import annotations

import pytest
import torch
from original_models import Generator
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from vaefix_pl.core.hifires import (
    HiFiResVocoder,
    build_vocoder,
    load_vocoder,
    upsample_padding,
    vocoder_class_for,
)
from vaefix_pl.testing import TINY_48K_VOCODER_CONFIG, geometry_configs


def _tiny48(seed: int = 0) -> HiFiResVocoder:
    _, cfg = geometry_configs("audioldm_48k", "tiny")
    torch.manual_seed(seed)
    voc = build_vocoder(cfg)
    voc.apply(voc._init_weights)
    return voc.double().eval()


def _reference_from(voc: SpeechT5HifiGan, hifires: bool) -> Generator:
    c = voc.config
    ref = Generator(
        c.model_in_dim,
        c.upsample_rates,
        c.upsample_kernel_sizes,
        c.upsample_initial_channel,
        c.resblock_kernel_sizes,
        c.resblock_dilation_sizes,
        hifires=hifires,
    )
    sd = {
        k.replace("upsampler.", "ups."): v for k, v in voc.state_dict().items() if k not in ("mean", "scale")
    }
    ref.load_state_dict(sd, strict=True)
    return ref.double().eval()


@pytest.mark.parametrize("frames", [1, 2, 7, 8, 33])
def test_output_length_is_exactly_frames_times_hop(frames):
    voc = _tiny48()
    with torch.no_grad():
        y = voc(torch.randn(2, frames, 256, dtype=torch.float64))
    assert y.shape == (2, frames * 480)


@pytest.mark.parametrize("frames", [7, 8])
def test_equals_generator_hifires_reference(frames):
    voc = _tiny48(seed=1)
    ref = _reference_from(voc, hifires=True)
    mel = torch.randn(3, frames, 256, dtype=torch.float64)
    with torch.no_grad():
        ours = voc(mel)
        theirs = ref(mel.transpose(1, 2))[:, 0]
    assert ours.shape == theirs.shape == (3, frames * 480)
    assert (ours - theirs).abs().max().item() < 1e-6
    assert ours.abs().max().item() > 1e-3  # a real signal, not near-silence


def test_stock_speecht5_padding_is_longer_and_delayed():
    """Same weights in the stock class: 480 T + 16 samples; past the edges it is HiFiRes delayed by 16."""
    voc = _tiny48(seed=2)
    stock = SpeechT5HifiGan(SpeechT5HifiGanConfig(**{**voc.config.to_dict(), "upsample_padding": None}))
    stock.load_state_dict(voc.state_dict())
    stock = stock.double().eval()
    # the stock class is the upstream 16 kHz-style Generator with (k-u)//2 padding
    ref = _reference_from(voc, hifires=False)
    t = 40
    mel = torch.randn(1, t, 256, dtype=torch.float64)
    with torch.no_grad():
        a, b, r = voc(mel)[0], stock(mel)[0], ref(mel.transpose(1, 2))[0, 0]
    assert b.shape[0] == t * 480 + 16
    assert (b - r).abs().max().item() < 1e-9
    interior = slice(2000, t * 480 - 2000)
    shifted = b[16 : 16 + t * 480]
    assert (shifted[interior] - a[interior]).abs().max().item() < 1e-9
    assert (shifted - a).abs().max().item() > 1e-6  # the edges do differ


def test_kernel_must_be_twice_the_rate():
    cfg = {**TINY_48K_VOCODER_CONFIG, "upsample_kernel_sizes": [12, 11, 8, 4, 4]}
    with pytest.raises(ValueError, match="upsample_kernel_sizes"):
        build_vocoder(cfg)


def test_padding_key_selects_the_class(tmp_path):
    assert vocoder_class_for({"upsample_padding": "hifires"}) is HiFiResVocoder
    assert vocoder_class_for({}) is SpeechT5HifiGan
    assert upsample_padding({"upsample_padding": None}) == "speecht5"
    with pytest.raises(ValueError, match="upsample_padding"):
        upsample_padding({"upsample_padding": "same"})
    voc = _tiny48(seed=3).float()
    voc.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_vocoder(tmp_path)
    assert isinstance(loaded, HiFiResVocoder)
    mel = torch.randn(1, 9, 256)
    with torch.no_grad():
        assert torch.equal(loaded(mel), voc(mel))
    # the state-dict keys are SpeechT5HifiGan's, so the stock class loads the same file (wrong padding)
    assert set(SpeechT5HifiGan.from_pretrained(tmp_path).state_dict()) == set(voc.state_dict())
