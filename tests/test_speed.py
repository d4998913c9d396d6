"""Inference speed rewrites keep the math: the channels-last vocoder and Reconstructor.optimize()."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from signals import formant_pulses, harmonic

from vaefix_pl.core.reconstruct import Reconstructor
from vaefix_pl.core.speed import conv1d_channels_last
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
    from vaefix_pl.core.speed import ChannelPaddedConv2d, PolyphaseConv1d

    plain = Reconstructor.from_pretrained(str(tiny_model_dir))
    fast = Reconstructor.from_pretrained(str(tiny_model_dir)).optimize(
        vocoder_channels_last=True,
        cudnn_benchmark=False,
        pad_narrow_convs=True,
        attention_math=True,
        polyphase_dilated=True,
    )
    assert any(isinstance(m, PolyphaseConv1d) for m in fast.vocoder.modules())
    assert isinstance(fast.vae.encoder.conv_in, ChannelPaddedConv2d)
    assert isinstance(fast.vae.decoder.conv_out, ChannelPaddedConv2d)
    assert isinstance(fast.vocoder.conv_post.conv, ChannelPaddedConv2d)
    x = torch.from_numpy(formant_pulses(30000, seed=2)).float()[None]
    a, b = plain(x), fast(x)
    assert (a.waveform - b.waveform).norm() / a.waveform.norm() < 1e-4
    assert (a.mel_hat - b.mel_hat).norm() / a.mel_hat.norm() < 1e-4


def _assert_same_vocoder(vocoder, fast) -> None:
    """Same output on log-mels of 45 and 61 frames (odd and even stage lengths)."""
    for frames in (45, 61):
        mel = torch.randn(2, frames, 64) * 2 - 5
        with torch.no_grad():
            ref, out = vocoder(mel), fast(mel)
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("channels_last_first", [False, True])
def test_polyphase_dilated_convs_are_the_same_function(channels_last_first):
    """Polyphase rewrite of the dilated resblock convs (dilations 3 and 5; lengths that are and are not
    multiples of them), against the stock vocoder."""
    from vaefix_pl.core.speed import PolyphaseConv1d, polyphase_dilated_convs

    _, vocoder = build_models(*tiny_configs(), seed=5)
    fast = copy.deepcopy(vocoder)
    if channels_last_first:
        conv1d_channels_last(fast)
    polyphase_dilated_convs(fast)
    poly = [m for m in fast.modules() if isinstance(m, PolyphaseConv1d)]
    dilated = [m for m in vocoder.modules() if isinstance(m, torch.nn.Conv1d) and m.dilation[0] > 1]
    assert len(poly) == len(dilated) > 0
    _assert_same_vocoder(vocoder, fast)


def test_polyphase_conv_matches_conv1d_on_signals():
    from vaefix_pl.core.speed import PolyphaseConv1d

    torch.manual_seed(0)
    for k, d, n in ((3, 3, 300), (7, 5, 301), (11, 5, 163), (11, 3, 10)):
        conv = torch.nn.Conv1d(6, 5, k, dilation=d, padding=d * (k - 1) // 2)
        x = torch.stack([torch.from_numpy(harmonic(n)), torch.from_numpy(formant_pulses(n))]).float()
        x = x[:, None, :].repeat(1, 6, 1) * torch.linspace(0.5, 1.5, 6)[None, :, None]
        with torch.no_grad():
            assert torch.allclose(PolyphaseConv1d(conv)(x), conv(x), atol=1e-6)
    with pytest.raises(ValueError, match="dilated"):
        PolyphaseConv1d(torch.nn.Conv1d(2, 2, 3, padding=1))


@pytest.mark.parametrize("form", ["fold2", "fold4", "phase2", "phase4"])
def test_narrow_conv_forms_are_the_same_function(form):
    """Time-folding of the undilated resblock convs (odd and even stage lengths), with the polyphase
    rewrite of the dilated ones, against the stock vocoder."""
    from vaefix_pl.core.speed import FoldedConv1d, PhaseConv1d, polyphase_dilated_convs, rewrite_narrow_convs

    _, vocoder = build_models(*tiny_configs(), seed=7)
    fast = copy.deepcopy(vocoder)
    conv1d_channels_last(fast)
    polyphase_dilated_convs(fast)
    seen = []
    rewrite_narrow_convs(fast, lambda cin, cout, k: seen.append((cin, cout, k)) or form)
    cls = FoldedConv1d if form.startswith("fold") else PhaseConv1d
    folded = [m for m in fast.modules() if isinstance(m, cls)]
    undilated = [
        m for m in vocoder.modules()
        if type(m) is torch.nn.Conv1d and m.dilation[0] == 1 and m.kernel_size[0] % 2 == 1
        and m.padding[0] == (m.kernel_size[0] - 1) // 2
    ]  # fmt: skip
    assert len(folded) == len(undilated) == len(seen) > 0
    _assert_same_vocoder(vocoder, fast)


def test_narrow_rule_keeps_only_measured_wins():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from narrow_rule import narrow_rule_from_rows

    def row(c, k, d, variant, ms, dtype="bfloat16"):
        return {"dtype": dtype, "C": c, "k": k, "d": d, "variant": variant, "ms": ms}

    rows = [
        row(32, 3, 1, "w", 1.0), row(32, 3, 1, "fold2", 0.7), row(32, 3, 1, "pout4", 0.6),  # pout4 best
        row(64, 7, 1, "w", 1.0), row(64, 7, 1, "fold2", 0.97),  # < 5 % better: unfolded
        row(128, 3, 1, "w", 1.0), row(128, 3, 1, "fold2", 1.4),  # slower: unfolded
        row(32, 11, 3, "w", 5.0), row(32, 11, 1, "fold2", 0.1),  # dilated rows ignored; no plain row
        row(32, 3, 1, "w", 0.5, "float32"), row(32, 3, 1, "fold2", 0.4, "float32"),
    ]  # fmt: skip
    assert narrow_rule_from_rows(rows, "bfloat16") == {(32, 3): "phase4"}
    assert narrow_rule_from_rows(rows, "float32") == {(32, 3): "fold2"}


def test_folded_taps_reach_by_hand():
    from vaefix_pl.core.speed import folded_taps

    # k=11 (pad 5) folded by 2 reads blocks q-3..q+3, by 4 q-2..q+2; k=7 by 4 q-1..q+1; k=5 (pad 2) by 3:
    # offsets r + j - 2 run over -2..4, i.e. blocks q-1..q+1; k=3 by 8: offsets -1..8, blocks q-1..q+1
    assert folded_taps(11, 5, 2) == (3, 3) and folded_taps(11, 5, 4) == (2, 2)
    assert (
        folded_taps(7, 3, 4) == (1, 1) and folded_taps(5, 2, 3) == (1, 1) and folded_taps(3, 1, 8) == (1, 1)
    )


@pytest.mark.parametrize("form", ["fold", "phase"])
def test_narrow_conv_form_matches_conv1d_on_signals(form):
    """Odd and even lengths, lengths that are not multiples of the factor, a batch shorter than one
    folded block, with and without bias; channels-last and contiguous inputs; bf16 activations."""
    from vaefix_pl.core.speed import Conv1dAsConv2d, FoldedConv1d, PhaseConv1d

    cls = FoldedConv1d if form == "fold" else PhaseConv1d
    torch.manual_seed(2)
    cases = ((3, 2, 300, True), (7, 4, 301, False), (11, 2, 163, True), (11, 4, 10, True), (5, 3, 97, True))
    for k, f, n, bias in cases:
        conv = torch.nn.Conv1d(6, 5, k, padding=(k - 1) // 2, bias=bias)
        x = torch.stack([torch.from_numpy(harmonic(n)), torch.from_numpy(formant_pulses(n))]).float()
        x = x[:, None, :].repeat(1, 6, 1) * torch.linspace(0.5, 1.5, 6)[None, :, None]
        x = x.transpose(1, 2).contiguous().transpose(1, 2)  # channels-last, as the rewritten vocoder runs
        with torch.no_grad():
            ref = conv(x)
            out = cls(Conv1dAsConv2d(conv), f)(x)
            assert out.shape == (2, 5, n) and out.stride() == (5 * n, 1, 5)
            assert torch.allclose(out, ref, atol=1e-5)
            assert torch.allclose(cls(conv, f)(x.contiguous()), ref, atol=1e-5)
            # bf16 activations with float32 weights (what autocast hands the op): the op casts its weights
            low = cls(conv, f)(x.bfloat16())
            assert low.dtype == torch.bfloat16
            assert (low.float() - ref).norm() / ref.norm() < 2e-2
    with pytest.raises(ValueError, match="undilated"):
        cls(torch.nn.Conv1d(2, 2, 3, padding=3, dilation=3), 2)
    with pytest.raises(ValueError, match="factor"):
        cls(torch.nn.Conv1d(2, 2, 3, padding=1), 1)


@pytest.mark.parametrize("form", ["fold", "phase"])
def test_narrow_conv_bias_is_added_outside_the_custom_op(form):
    """The op gets no bias; the add follows it in the traced graph, where Inductor can fuse it into the
    next element-wise kernel (inside the op it was an extra pass over the output)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from vaefix_pl.core.speed import Conv1dAsConv2d, FoldedConv1d, PhaseConv1d

    cls, op = (FoldedConv1d, "folded_conv1d") if form == "fold" else (PhaseConv1d, "phase_conv1d")
    m = cls(Conv1dAsConv2d(torch.nn.Conv1d(4, 4, 3, padding=1)), 2)
    x = torch.randn(2, 4, 16).transpose(1, 2).contiguous().transpose(1, 2)
    with torch.no_grad():
        gm = make_fx(m)(x)
    nodes = list(gm.graph.nodes)
    calls = [i for i, n in enumerate(nodes) if n.target is getattr(torch.ops.vaefix, op).default]
    assert len(calls) == 1 and nodes[calls[0]].args[2] is None
    assert any(n.target is torch.ops.aten.add.Tensor for n in nodes[calls[0] :])


def test_optimize_narrow_convs_keeps_the_pipeline_output(tiny_model_dir):
    """optimize(narrow_convs=...) through the real pipeline (tiny models, every undilated resblock conv
    rewritten), against the stock modules."""
    from vaefix_pl.core.speed import FoldedConv1d, PhaseConv1d

    plain = Reconstructor.from_pretrained(str(tiny_model_dir))
    fast = Reconstructor.from_pretrained(str(tiny_model_dir))
    table = {(m.in_channels, m.kernel_size[0]): ("phase2" if i % 2 else "fold4")
             for i, m in enumerate(fast.vocoder.modules()) if type(m) is torch.nn.Conv1d}  # fmt: skip
    fast.optimize(
        vocoder_channels_last=True, cudnn_benchmark=False, polyphase_dilated=True, narrow_convs=table
    )
    assert any(isinstance(m, PhaseConv1d) for m in fast.vocoder.modules())
    assert any(isinstance(m, FoldedConv1d) for m in fast.vocoder.modules())
    x = torch.from_numpy(formant_pulses(30000, seed=4)).float()[None]
    a, b = plain(x), fast(x)
    assert (a.waveform - b.waveform).norm() / a.waveform.norm() < 1e-4


def test_the_fp32_auto_settings_keep_the_pipeline_output(tiny_model_dir):
    """What `speed: auto` applies to an fp32 model (matmul attention, polyphase and narrow-conv forms,
    by `speed_settings`), through the real pipeline against the stock modules."""
    from vaefix_pl.core.config import speed_settings
    from vaefix_pl.core.speed import PolyphaseConv1d

    settings = speed_settings("auto", "fp32")
    assert settings["attention_math"] and settings["polyphase_dilated"] and settings["narrow_convs"]
    plain = Reconstructor.from_pretrained(str(tiny_model_dir))
    fast = Reconstructor.from_pretrained(str(tiny_model_dir)).optimize(**settings)
    assert any(isinstance(m, PolyphaseConv1d) for m in fast.vocoder.modules())
    x = torch.from_numpy(formant_pulses(30000, seed=5)).float()[None]
    a, b = plain(x), fast(x)
    assert (a.waveform - b.waveform).norm() / a.waveform.norm() < 1e-4
    assert (a.mel_hat - b.mel_hat).norm() / a.mel_hat.norm() < 1e-4
