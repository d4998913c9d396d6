"""Inference-only speed rewrites of the frozen models (same math, measured in docs/PERFORMANCE.md).

The HiFi-GAN vocoder is ~100 ``Conv1d``/``ConvTranspose1d`` calls. cuDNN's fast tensor-core kernels
on Hopper are NHWC, so for every NCL ``Conv1d`` it transposes the input, the weights and the output
(NCHW<->NHWC): an H100 profile of the stock vocoder spent more time in those transposes than in the
convolutions. Here each one is replaced by the equivalent ``(1, k)`` ``Conv2d`` on channels-last
activations: a ``(B, C, L)`` tensor with strides ``(L*C, 1, C)`` *is* NHWC once viewed as
``(B, C, 1, L)``, the element-wise ops between convolutions preserve those strides, and the
transformers forward (``spectrogram.transpose(2, 1)``) already produces them. Written by hand
because no library offers a 1-D channels-last convolution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Conv1dAsConv2d(nn.Module):
    """A ``Conv1d`` computed as a channels-last ``(1, k)`` ``Conv2d``: ``(B, C, L) -> (B, C', L')``."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only zero padding with explicit sizes is supported")
        self.conv = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            (1, conv.kernel_size[0]),
            stride=(1, conv.stride[0]),
            padding=(0, conv.padding[0]),
            dilation=(1, conv.dilation[0]),
            groups=conv.groups,
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight[:, :, None, :])
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)
        self.conv.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.unsqueeze(2)).squeeze(2)


class ConvTranspose1dAsConv2d(nn.Module):
    """A ``ConvTranspose1d`` computed as a channels-last ``(1, k)`` ``ConvTranspose2d``."""

    def __init__(self, conv: nn.ConvTranspose1d) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(
            conv.in_channels,
            conv.out_channels,
            (1, conv.kernel_size[0]),
            stride=(1, conv.stride[0]),
            padding=(0, conv.padding[0]),
            output_padding=(0, conv.output_padding[0]),
            dilation=(1, conv.dilation[0]),
            groups=conv.groups,
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight[:, :, None, :])
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)
        self.conv.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.unsqueeze(2)).squeeze(2)


def conv1d_channels_last(module: nn.Module) -> nn.Module:
    """Replace every ``Conv1d``/``ConvTranspose1d`` inside ``module`` (in place) by its channels-last 2-D twin.

    Parametrized (weight-norm) convolutions are refused: remove weight norm first. The state-dict
    keys change (``...conv.weight``), so apply this to a loaded, frozen model only.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Conv1d, nn.ConvTranspose1d)):
            if hasattr(child, "parametrizations") or hasattr(child, "weight_g"):
                raise ValueError(f"{name}: remove weight norm before converting")
            twin = Conv1dAsConv2d(child) if isinstance(child, nn.Conv1d) else ConvTranspose1dAsConv2d(child)
            twin.train(child.training)
            twin.requires_grad_(any(p.requires_grad for p in child.parameters()))
            setattr(module, name, twin)
        else:
            conv1d_channels_last(child)
    return module
