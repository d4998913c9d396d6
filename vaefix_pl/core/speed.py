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

from collections.abc import Callable

import torch
from torch import Tensor, nn


class Conv1dAsConv2d(nn.Module):
    """A ``Conv1d`` (or ``ConvTranspose1d``) computed as its channels-last ``(1, k)`` 2-D twin:
    ``(B, C, L) -> (B, C', L')``, same weights, same result."""

    def __init__(self, conv: nn.Conv1d | nn.ConvTranspose1d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only zero padding with explicit sizes is supported")
        transposed = isinstance(conv, nn.ConvTranspose1d)
        extra = {"output_padding": (0, conv.output_padding[0])} if transposed else {}
        self.conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(
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
            **extra,
        )
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight[:, :, None, :])
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)
        self.conv.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.unsqueeze(2)).squeeze(2)


#: Kept as a name for the transposed case (same class).
ConvTranspose1dAsConv2d = Conv1dAsConv2d


def conv1d_channels_last(module: nn.Module) -> nn.Module:
    """Replace every ``Conv1d``/``ConvTranspose1d`` inside ``module`` (in place) by its channels-last 2-D twin.

    Parametrized (weight-norm) convolutions are refused: remove weight norm first. The state-dict
    keys change (``...conv.weight``), so apply this to a loaded, frozen model only.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Conv1d, nn.ConvTranspose1d)):
            if hasattr(child, "parametrizations") or hasattr(child, "weight_g"):
                raise ValueError(f"{name}: remove weight norm before converting")
            twin = Conv1dAsConv2d(child)
            twin.train(child.training)
            twin.requires_grad_(any(p.requires_grad for p in child.parameters()))
            setattr(module, name, twin)
        else:
            conv1d_channels_last(child)
    return module


class ChannelPaddedConv2d(nn.Module):
    """A ``Conv2d`` with fewer than ``multiple`` input or output channels, run with both padded by zeros.

    The VAE's ``conv_in`` (1 -> 128), ``conv_out`` (128 -> 1) and the vocoder's ``conv_post`` (32 -> 1)
    are too narrow for cuDNN's tensor-core kernels: on an H100 they fell back to a generic sm80 kernel
    plus layout conversions, about 10 % of the fp32 pipeline for almost no FLOPs. Zero channels keep
    the result exact.
    """

    def __init__(self, conv: nn.Conv2d, multiple: int = 8, channels_last: bool = True) -> None:
        super().__init__()
        self.channels_last = channels_last
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only ungrouped, explicitly zero-padded convolutions are supported")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        cin = -(-conv.in_channels // multiple) * multiple
        cout = -(-conv.out_channels // multiple) * multiple
        self.conv = nn.Conv2d(
            cin, cout, conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
            bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype,
        )  # fmt: skip
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[: conv.out_channels, : conv.in_channels] = conv.weight
            if conv.bias is not None:
                self.conv.bias.zero_()
                self.conv.bias[: conv.out_channels] = conv.bias
        if channels_last:
            self.conv.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] < self.conv.in_channels:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, self.conv.in_channels - x.shape[1]))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        return self.conv(x)[:, : self.out_channels]


def pad_narrow_convs(module: nn.Module, multiple: int = 8, channels_last: bool = True) -> nn.Module:
    """Replace (in place) every ``Conv2d`` with fewer than ``multiple`` in/out channels by :class:`ChannelPaddedConv2d`.

    ``channels_last``: the layout the surrounding activations use (the padded input is made to match).
    """
    for name, child in list(module.named_children()):
        if isinstance(child, ChannelPaddedConv2d):
            continue
        if (
            type(child) is nn.Conv2d
            and child.groups == 1
            and (child.in_channels < multiple or child.out_channels < multiple)
        ):
            setattr(module, name, ChannelPaddedConv2d(child, multiple, channels_last))
        else:
            pad_narrow_convs(child, multiple, channels_last)
    return module


class PolyphaseConv1d(nn.Module):
    """A dilated ``Conv1d`` (stride 1, 'same' zero padding) run as an undilated ``(k, 1)`` 2-D conv on
    the polyphase view of its input: ``(B, C, L) -> (B, C', L)``, same weights, same result.

    With ``t = q d + r``, a dilation-``d`` conv is an ordinary conv along ``q`` for each phase ``r``.
    On channels-last memory ``(B, L, C)`` (the layout of :class:`Conv1dAsConv2d`), the phases are a
    free view ``(B, L/d, d, C)`` = NHWC of ``(B, C, L/d, d)``; lengths that are not a multiple of ``d``
    get zeros appended (which is what the conv's own zero padding would read there). Written by hand
    because cuDNN runs dilated convs on slower kernels than undilated ones of the same size (measured
    per shape by ``benchmarks/conv_shapes.py``; applied only where that measured faster).
    """

    def __init__(self, conv: nn.Conv1d | Conv1dAsConv2d) -> None:
        super().__init__()
        inner = conv.conv if isinstance(conv, Conv1dAsConv2d) else conv
        k = inner.kernel_size[-1]
        d = inner.dilation[-1]
        pad = inner.padding[-1]
        stride = inner.stride[-1]
        if isinstance(inner, (nn.ConvTranspose1d, nn.ConvTranspose2d)) or stride != 1 or inner.groups != 1:
            raise ValueError("only ungrouped, stride-1 convolutions are supported")
        if d < 2 or k % 2 == 0 or pad != d * (k - 1) // 2 or inner.padding_mode != "zeros":
            raise ValueError(f"needs a dilated odd-kernel 'same' conv, got k={k}, d={d}, padding={pad}")
        self.dilation = d
        self.conv = nn.Conv2d(
            inner.in_channels, inner.out_channels, (k, 1), padding=((k - 1) // 2, 0),
            bias=inner.bias is not None, device=inner.weight.device, dtype=inner.weight.dtype,
        )  # fmt: skip
        with torch.no_grad():
            self.conv.weight.copy_(inner.weight.reshape(inner.out_channels, inner.in_channels, k)[..., None])
            if inner.bias is not None:
                self.conv.bias.copy_(inner.bias)
        self.conv.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        b, c, n = x.shape
        d = self.dilation
        q = -(-n // d)
        xt = x.transpose(1, 2)  # (B, L, C): a view when x is channels-last
        if q * d != n:
            xt = nn.functional.pad(xt, (0, 0, 0, q * d - n))
        y = self.conv(xt.reshape(b, q, d, c).permute(0, 3, 1, 2))  # (B, C', L/d, d), NHWC
        return y.permute(0, 2, 3, 1).reshape(b, q * d, -1)[:, :n].transpose(1, 2)


def polyphase_dilated_convs(module: nn.Module) -> nn.Module:
    """Replace (in place) every dilated stride-1 ``Conv1d`` (plain or :class:`Conv1dAsConv2d`) inside
    ``module`` by :class:`PolyphaseConv1d`."""
    for name, child in list(module.named_children()):
        if isinstance(child, Conv1dAsConv2d) or type(child) is nn.Conv1d:
            inner = child.conv if isinstance(child, Conv1dAsConv2d) else child
            dilated = inner.dilation[-1] > 1 and inner.stride[-1] == 1 and inner.groups == 1
            if dilated and type(inner) is not nn.ConvTranspose2d:
                setattr(module, name, PolyphaseConv1d(child))
        elif not isinstance(child, PolyphaseConv1d):
            polyphase_dilated_convs(child)
    return module


def _same_conv(conv: nn.Conv1d | Conv1dAsConv2d, factor: int) -> tuple[nn.Module, int, int]:
    """``(inner conv, kernel, padding)`` of an undilated, ungrouped, stride-1 odd-kernel 'same' conv,
    or ``ValueError`` (what :class:`FoldedConv1d` and :class:`PhaseConv1d` can rewrite)."""
    inner = conv.conv if isinstance(conv, Conv1dAsConv2d) else conv
    if isinstance(inner, (nn.ConvTranspose1d, nn.ConvTranspose2d)) or inner.groups != 1:
        raise ValueError("only ungrouped convolutions are supported")
    k, d, pad, stride = inner.kernel_size[-1], inner.dilation[-1], inner.padding[-1], inner.stride[-1]
    if d != 1 or stride != 1 or k % 2 == 0 or pad != (k - 1) // 2 or inner.padding_mode != "zeros":
        raise ValueError(f"needs an undilated odd-kernel stride-1 'same' conv, got k={k}, d={d}")
    if factor < 2:
        raise ValueError(f"factor must be >= 2, got {factor}")
    return inner, k, pad


def folded_taps(k: int, pad: int, factor: int) -> tuple[int, int]:
    """``(left, right)`` block offsets a time-folded 'same' conv reads: output block ``q`` needs input
    blocks ``q - left .. q + right`` (kernel ``left + right + 1`` on the folded axis)."""
    return -((-pad) // factor), (factor - 1 + k - 1 - pad) // factor


class FoldedConv1d(nn.Module):
    """An undilated stride-1 ``Conv1d`` run on the time-folded view of its input:
    ``(B, C, L) -> (B, C', L)``, same weights, same result.

    With ``t = F q + r``, ``F`` consecutive samples become the channels of one position: a
    ``(B, C, L)`` channels-last tensor (memory ``(B, L, C)``) *is* ``(B, L/F, F C)``, i.e. the NHWC
    memory of ``(B, F C, 1, L/F)``, with no copy. The conv becomes a ``(1, k')`` conv from ``F C`` to
    ``F C'`` channels whose weight is block-Toeplitz in the phases: phase ``r`` of output block ``q``
    takes tap ``j`` of the original from input phase ``s = (r + j - p) mod F`` of block
    ``q + floor((r + j - p) / F)``. That costs ``F k' / k`` times the FLOPs (zeros in the folded
    weight), but 32- and 64-channel convolutions over 80k-160k samples are memory-bound in cuDNN
    (84-230 TFLOP/s bf16 on an H100 against 600-780 at 256-512 channels), and ``F C`` channels run
    near the wide rate. Written by hand: no library folds time into channels for a 1-D conv. Applied
    only to the shapes ``benchmarks/conv_shapes.py`` measured faster.
    """

    def __init__(self, conv: nn.Conv1d | Conv1dAsConv2d, factor: int) -> None:
        super().__init__()
        inner, k, pad = _same_conv(conv, factor)
        f, cin, cout = factor, inner.in_channels, inner.out_channels
        left, right = folded_taps(k, pad, f)
        assert left == right  # floor((p + F - 1) / F) == ceil(p / F): a 'same' conv stays symmetric
        self.factor, self.reach = f, left
        w = inner.weight.detach().reshape(cout, cin, k)
        folded = torch.zeros(f, cout, f, cin, left + right + 1, dtype=w.dtype, device=w.device)
        for r in range(f):
            for j in range(k):
                o = r + j - pad
                folded[r, :, o % f, :, o // f + left] = w[:, :, j]
        self.conv = nn.Conv2d(
            f * cin, f * cout, (1, left + right + 1), padding=(0, left),
            bias=False, device=w.device, dtype=w.dtype,
        )  # fmt: skip
        with torch.no_grad():
            self.conv.weight.copy_(folded.reshape(f * cout, f * cin, 1, -1))
        self.conv.to(memory_format=torch.channels_last)
        self.bias = _own_bias(inner)

    def forward(self, x: Tensor) -> Tensor:
        return _add_bias(folded_conv1d(x, self.conv.weight, None, self.factor, self.reach), self.bias)


def _own_bias(conv: nn.Conv2d) -> nn.Parameter | None:
    """A copy of ``conv``'s ``(C',)`` bias, added outside the custom op (:func:`_add_bias`)."""
    return (
        None
        if conv.bias is None
        else nn.Parameter(conv.bias.detach().clone(), requires_grad=conv.bias.requires_grad)
    )


def _add_bias(y: Tensor, bias: Tensor | None) -> Tensor:
    """``(B, C', L) + (C',)``, outside the custom op: compiled, Inductor fuses it into the next
    element-wise kernel; inside, cuDNN's output would get its own full read-write pass."""
    return y if bias is None else y + _like(bias, y)[:, None]


def _like(w: Tensor, x: Tensor) -> Tensor:
    """``w`` in ``x``'s dtype: autocast does not reach into a custom op, so the op casts its weights to
    the activations' dtype itself (under bf16 autocast the vocoder's activations are bf16 by then)."""
    return w if w.dtype == x.dtype else w.to(x.dtype)


def _from_phases(y: Tensor, f: int, n: int) -> Tensor:
    """Phase-major conv output ``(B, F C', L/F)`` -> ``(B, C', n)`` with strides ``(n C', 1, C')``."""
    y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2] * f, -1)  # (B, L, C')
    if y.shape[1] != n:
        y = y[:, :n].contiguous()
    return y.transpose(1, 2)


def _fake_out(x: Tensor, weight: Tensor, factor: int) -> Tensor:
    """The empty ``(B, C', L)`` channels-last output a phase-major op returns (for ``register_fake``)."""
    b, _, n = x.shape
    cout = weight.shape[0] // factor
    return x.new_empty_strided((b, cout, n), (n * cout, 1, cout))


def _folded_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, factor: int, reach: int) -> Tensor:
    """``(B, C, L)`` -> ``(B, C', L)`` with strides ``(L C', 1, C')``; ``weight`` ``(F C', F C, 1, 2 reach + 1)``."""
    b, c, n = x.shape
    f = factor
    q = -(-n // f)
    xt = x.transpose(1, 2)  # (B, L, C): a view when x is channels-last
    if q * f != n:
        xt = nn.functional.pad(xt, (0, 0, 0, q * f - n))
    xf = xt.reshape(b, q, f * c).transpose(1, 2).unsqueeze(2)  # (B, F C, 1, L/F), NHWC memory
    weight, bias = _like(weight, x), None if bias is None else _like(bias, x)
    return _from_phases(nn.functional.conv2d(xf, weight, bias, padding=(0, reach)).squeeze(2), f, n)


def _phase_major_op(name: str, impl: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``impl(x, weight, bias, factor, k)`` as the custom op ``vaefix::<name>``, with its fake (meta) kernel.

    A custom op, so that torch.compile keeps it whole and hands it its input with the eager strides
    (channels-last): the fold is then a free view. Traced as plain view/conv ops, Inductor is free to
    pick another layout for the producer and copy it; the one bf16 run traced that way lost (not profiled).
    """
    op = torch.library.custom_op(f"vaefix::{name}", impl, mutates_args=())
    op.register_fake(lambda x, weight, bias, factor, k: _fake_out(x, weight, factor))
    return op


#: Functional form of :class:`FoldedConv1d` (a ``torch.library`` custom op).
folded_conv1d = _phase_major_op("folded_conv1d", _folded_conv1d)


class PhaseConv1d(nn.Module):
    """An undilated stride-1 ``Conv1d`` run as a stride-``F`` conv whose ``F C'`` outputs are the ``F``
    output phases: ``(B, C, L) -> (B, C', L)``, same weights, same result.

    Output block ``q`` (samples ``F q .. F q + F - 1``) reads input samples ``F q - p .. F q + F - 2 + k - p``;
    phase ``r`` uses taps ``r .. r + k - 1`` of that window (kernel ``F + k - 1``, the original kernel
    shifted by ``r``). The input is read in place as the ``(1, F + k - 1)`` stride-``(1, F)`` conv of the
    channels-last ``(B, C, 1, L)`` view, and the NHWC output ``(B, F C', 1, L/F)`` is, in memory,
    ``(B, L/F, F, C')`` = the channels-last ``(B, C', L)`` result: no copies on either side. It costs
    ``(F + k - 1) / k`` times the FLOPs (fewer than :class:`FoldedConv1d`'s ``F k' / k``), with ``F C'``
    output channels for cuDNN's tiles. Written by hand (no library splits a conv's output phases);
    applied only to the shapes ``benchmarks/conv_shapes.py`` measured faster.
    """

    def __init__(self, conv: nn.Conv1d | Conv1dAsConv2d, factor: int) -> None:
        super().__init__()
        inner, k, pad = _same_conv(conv, factor)
        f, cin, cout = factor, inner.in_channels, inner.out_channels
        self.factor, self.pad = f, pad
        w = inner.weight.detach().reshape(cout, cin, k)
        phased = torch.zeros(f, cout, cin, f + k - 1, dtype=w.dtype, device=w.device)
        for r in range(f):
            phased[r, :, :, r : r + k] = w
        self.conv = nn.Conv2d(
            cin, f * cout, (1, f + k - 1), stride=(1, f), padding=(0, pad),
            bias=False, device=w.device, dtype=w.dtype,
        )  # fmt: skip
        with torch.no_grad():
            self.conv.weight.copy_(phased.reshape(f * cout, cin, 1, f + k - 1))
        self.conv.to(memory_format=torch.channels_last)
        self.bias = _own_bias(inner)

    def forward(self, x: Tensor) -> Tensor:
        return _add_bias(phase_conv1d(x, self.conv.weight, None, self.factor, self.pad), self.bias)


def _phase_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, factor: int, pad: int) -> Tensor:
    """``(B, C, L)`` -> ``(B, C', L)`` with strides ``(L C', 1, C')``; ``weight`` ``(F C', C, 1, F + k - 1)``."""
    b, c, n = x.shape
    f = factor
    q = -(-n // f)
    x4 = x.unsqueeze(2)  # (B, C, 1, L): NHWC when x is channels-last
    if q * f != n:  # whole output blocks: zeros past the end (what the conv's padding reads there)
        x4 = nn.functional.pad(x4, (0, q * f - n)).contiguous(memory_format=torch.channels_last)
    weight, bias = _like(weight, x), None if bias is None else _like(bias, x)
    return _from_phases(
        nn.functional.conv2d(x4, weight, bias, stride=(1, f), padding=(0, pad)).squeeze(2), f, n
    )


#: Functional form of :class:`PhaseConv1d` (a ``torch.library`` custom op, as :func:`folded_conv1d`).
phase_conv1d = _phase_major_op("phase_conv1d", _phase_conv1d)


#: Forms of the narrow undilated convolutions: ``"foldF"`` (:class:`FoldedConv1d`) or ``"phaseF"``
#: (:class:`PhaseConv1d`), by their conv_shapes.py names ``foldF``/``poutF``.
NARROW_FORMS = ("fold2", "fold4", "phase2", "phase4")

#: ``(channels, kernel) -> form`` for :func:`rewrite_narrow_convs`, per compute dtype ("bf16";
#: "fp32" is fp32 with cuDNN's default TF32 convolutions): the forms that beat the plain conv by 5 %
#: under cuDNN's heuristic at batch 64 on an H200 with cuDNN 9.19 (``benchmarks/narrow_rule.py`` over
#: ``benchmarks/results/2026-12-01_h200_conv_shapes_b64_narrow_heuristic.json``); fp32 also (256, 11)
#: as ``phase2``, measured in the pipeline. Both tables were also measured in the compiled pipeline
#: (docs/PERFORMANCE.md, "Ninth session"). Shapes not listed run as plain convs.
NARROW_CONV_FORMS: dict[str, dict[tuple[int, int], str]] = {
    "bf16": {
        (64, 3): "phase2", (64, 7): "phase2", (64, 11): "phase2",
        (32, 3): "phase2", (32, 7): "fold4", (32, 11): "fold4",
    },
    "fp32": {
        (256, 11): "phase2", (128, 3): "phase2", (128, 7): "phase2",
        (64, 7): "phase4", (64, 11): "phase4", (32, 7): "fold2", (32, 11): "fold2",
    },
}  # fmt: skip


def rewrite_narrow_convs(module: nn.Module, form_for) -> nn.Module:
    """Replace (in place) undilated stride-1 'same' :class:`Conv1dAsConv2d` convolutions by
    :class:`FoldedConv1d` / :class:`PhaseConv1d` where ``form_for(in_channels, out_channels, kernel)``
    returns a form of :data:`NARROW_FORMS` (``None``: leave it)."""
    for name, child in list(module.named_children()):
        if isinstance(child, Conv1dAsConv2d) and type(child.conv) is nn.Conv2d:
            inner = child.conv
            k, d, s = inner.kernel_size[-1], inner.dilation[-1], inner.stride[-1]
            if d == 1 and s == 1 and k % 2 == 1 and inner.padding[-1] == (k - 1) // 2 and inner.groups == 1:
                form = form_for(inner.in_channels, inner.out_channels, k)
                if form:
                    if form not in NARROW_FORMS:
                        raise ValueError(f"unknown form {form!r}; expected one of {NARROW_FORMS}")
                    cls = FoldedConv1d if form.startswith("fold") else PhaseConv1d
                    setattr(module, name, cls(child, int(form[-1])))
        elif not isinstance(child, (FoldedConv1d, PhaseConv1d, PolyphaseConv1d)):
            rewrite_narrow_convs(child, form_for)
    return module


def apply_rewrites(
    vae,
    vocoder,
    precision,
    *,  # seven flags of one type: by name only, so that a reordering cannot swap them silently
    channels_last,
    vocoder_channels_last,
    polyphase_dilated,
    narrow_convs,
    pad_narrow_convs,
    attention_math,
    already_channels_last=False,
) -> bool:
    """The module rewrites of :meth:`~vaefix_pl.core.reconstruct.Reconstructor.optimize` (see its
    arguments), in place. Returns whether the VAE is channels-last afterwards."""
    channels_last_done = already_channels_last
    if channels_last:
        vae.to(memory_format=torch.channels_last)
        channels_last_done = True
    if vocoder_channels_last:
        conv1d_channels_last(vocoder)
    if polyphase_dilated:
        polyphase_dilated_convs(vocoder)
    if narrow_convs and precision != "fp16":
        table = narrow_convs if isinstance(narrow_convs, dict) else NARROW_CONV_FORMS[precision]
        rewrite_narrow_convs(vocoder, lambda cin, cout, k: table.get((cin, k)) if cin == cout else None)
    if pad_narrow_convs:
        from vaefix_pl.core.speed import pad_narrow_convs as pad  # the flag shadows the function

        pad(vae, channels_last=channels_last_done)
        pad(vocoder)  # conv_post, once the vocoder runs as (channels-last) 2-D convolutions
    if attention_math:
        if hasattr(vae, "set_attention_math"):  # vaefix_pl.core.nets.AutoencoderKL
            vae.set_attention_math(True)
        else:  # diffusers' AutoencoderKL (the from_pretrained fallback)
            from diffusers.models.attention_processor import AttnProcessor

            vae.set_attn_processor(AttnProcessor())
    return channels_last_done
