"""Inference speed rewrites keep the math: the channels-last vocoder and Reconstructor.optimize()."""

from __future__ import annotations

import copy

import pytest
import torch
from signals import formant_pulses, harmonic

from vaefix_pl.reconstruct import Reconstructor
from vaefix_pl.speed import conv1d_channels_last
from vaefix_pl.testing import build_models, tiny_configs


def test_channels_last_vocoder_is_the_same_function():
    _, vocoder = build_models(*tiny_configs(), seed=3)
    fast = conv1d_channels_last(copy.deepcopy(vocoder))
    assert not any(isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)) for m in fast.modules())
    mel = torch.randn(3, 137, 64) * 2 - 5
    with torch.no_grad():
        ref, out = vocoder(mel), fast(mel)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_weight_normed_vocoder_is_refused():
    _, vocoder = build_models(*tiny_configs())
    vocoder.apply_weight_norm()
    with pytest.raises(ValueError, match="weight norm"):
        conv1d_channels_last(vocoder)


@pytest.mark.parametrize("vae_channels_last, tolerance", [(False, 1e-5), (True, 2e-3)])
def test_optimize_keeps_the_pipeline_output(tiny_model_dir, vae_channels_last, tolerance):
    """The vocoder rewrite is exact; an NHWC VAE changes the convolution algorithm (on the CPU oneDNN's
    NHWC kernels are measurably less accurate: 2e-4 vs 5e-6 relative to float64 on the tiny VAE)."""
    plain = Reconstructor.from_pretrained(str(tiny_model_dir))
    fast = Reconstructor.from_pretrained(str(tiny_model_dir)).optimize(
        channels_last=vae_channels_last, vocoder_channels_last=True, cudnn_benchmark=False
    )
    x = torch.stack([torch.from_numpy(harmonic(20000)), torch.from_numpy(formant_pulses(20000))]).float()
    a, b = plain(x), fast(x)
    assert (a.waveform - b.waveform).norm() / a.waveform.norm() < tolerance
    assert (a.mel_hat - b.mel_hat).norm() / a.mel_hat.norm() < tolerance


def test_narrow_conv_padding_and_math_attention_keep_the_output(tiny_model_dir):
    from vaefix_pl.speed import ChannelPaddedConv2d

    plain = Reconstructor.from_pretrained(str(tiny_model_dir))
    fast = Reconstructor.from_pretrained(str(tiny_model_dir)).optimize(
        vocoder_channels_last=True, cudnn_benchmark=False, pad_narrow_convs=True, attention_math=True
    )
    assert isinstance(fast.vae.encoder.conv_in, ChannelPaddedConv2d)
    assert isinstance(fast.vae.decoder.conv_out, ChannelPaddedConv2d)
    assert isinstance(fast.vocoder.conv_post.conv, ChannelPaddedConv2d)
    x = torch.from_numpy(formant_pulses(30000, seed=2)).float()[None]
    a, b = plain(x), fast(x)
    assert (a.waveform - b.waveform).norm() / a.waveform.norm() < 1e-4
    assert (a.mel_hat - b.mel_hat).norm() / a.mel_hat.norm() < 1e-4
