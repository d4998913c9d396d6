"""The two frozen networks in plain torch: diffusers' ``AutoencoderKL`` and transformers' ``SpeechT5HifiGan``.

Same parameter and buffer names, same arithmetic in the same order, so a diffusers
``diffusion_pytorch_model.safetensors`` / transformers ``model.safetensors`` loads with
``load_state_dict(strict=True)`` and the outputs match those classes (``tests/test_nets.py`` checks
both against the libraries). Written here because importing diffusers and transformers costs more
start-up time than the whole reconstruction of a clip (docs/STARTUP.md); loading needs only torch and
safetensors. Only the inference path AudioLDM-family checkpoints use: ``DownEncoderBlock2D`` /
``UpDecoderBlock2D`` VAEs, no tiling or slicing, no training helpers. A config outside that raises
:class:`UnsupportedConfig` (the loader then falls back to the libraries' own classes).

The vocoder's transposed-conv padding is a config option, ``"upsample_padding"``: ``"speecht5"``
(transformers' rule, the default) or ``"hifires"`` (``Generator_HiFiRes`` of the 48 kHz AudioLDM
vocoder; see :mod:`vaefix_pl.core.hifires`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class UnsupportedConfig(ValueError):
    """The config asks for a part these classes do not implement (use diffusers/transformers instead)."""


class Config(dict):
    """A ``config.json`` as a dict with attribute access (``config.scaling_factor``), like the libraries' configs."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def to_dict(self) -> dict[str, Any]:
        return dict(self)


def _config(
    defaults: Mapping[str, Any], config: Mapping[str, Any] | None, kwargs: Mapping[str, Any]
) -> Config:
    return Config({**defaults, **dict(config or {}), **kwargs})


class _Frozen(nn.Module):
    """``dtype``/``device`` of the first parameter, as the libraries' model classes report them."""

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


# ----------------------------------------------------------------------------------------------------
# VAE (diffusers models/autoencoders/autoencoder_kl.py, vae.py, unets/unet_2d_blocks.py, resnet.py,
# downsampling.py, upsampling.py, attention_processor.py)
# ----------------------------------------------------------------------------------------------------

#: diffusers ``AutoencoderKL.__init__`` defaults (a config.json lists every field; these fill gaps).
VAE_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"],
    "block_out_channels": [64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "force_upcast": True,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}
_ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU, "relu": nn.ReLU}
_EPS = 1e-6  # diffusers' Encoder/Decoder pass resnet_eps=1e-6 to every GroupNorm of the VAE


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise UnsupportedConfig(f"vae config act_fn {name!r} is not one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class ResnetBlock2D(nn.Module):
    """diffusers ``ResnetBlock2D`` without time embedding: ``(B, C, H, W) -> (B, C', H, W)``."""

    def __init__(self, cin: int, cout: int, groups: int, act_fn: str) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=_EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=_EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nonlinearity = _activation(act_fn)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = self.conv2(self.nonlinearity(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / 1.0  # output_scale_factor 1, kept so the rounding is diffusers'


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv after a ``(0, 1, 0, 1)`` zero pad (diffusers ``Downsample2D(padding=0)``): H, W halve."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample2D(nn.Module):
    """Nearest x2 then a 3x3 conv (diffusers ``Upsample2D(use_conv=True)``): H, W double."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] >= 64 or x.numel() * 2 > 2**31:
            x = x.contiguous()  # diffusers' guard: upsample_nearest_nhwc fails on large inputs
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Attention(nn.Module):
    """The VAE's single-head self-attention over all ``H W`` positions, residual: ``(B, C, H, W) -> same``.

    ``math=False`` (default): ``scaled_dot_product_attention`` (diffusers' default ``AttnProcessor2_0``);
    ``math=True``: ``baddbmm`` + float32 softmax (diffusers' ``AttnProcessor``, ``upcast_softmax``).
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])
        self.scale = channels**-0.5
        self.math = False

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        b, c, hgt, wid = x.shape
        h = x.view(b, c, hgt * wid).transpose(1, 2)  # (B, N, C)
        h = self.group_norm(h.transpose(1, 2)).transpose(1, 2)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        if self.math:
            dtype = q.dtype
            scores = torch.baddbmm(
                torch.empty(b, q.shape[1], k.shape[1], dtype=q.dtype, device=q.device),
                q, k.transpose(-1, -2), beta=0, alpha=self.scale,
            )  # fmt: skip
            h = torch.bmm(scores.float().softmax(dim=-1).to(dtype), v)
        else:
            q, k, v = (t.view(b, -1, 1, c).transpose(1, 2) for t in (q, k, v))  # (B, 1, N, C), one head
            h = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
            h = h.transpose(1, 2).reshape(b, -1, c).to(q.dtype)
        h = self.to_out[1](self.to_out[0](h))
        h = h.transpose(-1, -2).reshape(b, c, hgt, wid)
        return (h + x) / 1.0  # rescale_output_factor 1


class MidBlock2D(nn.Module):
    """diffusers ``UNetMidBlock2D``: resnet, (attention, resnet): ``(B, C, H, W) -> same``."""

    def __init__(self, channels: int, groups: int, act_fn: str, add_attention: bool) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([Attention(channels, groups) if add_attention else None])
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups, act_fn) for _ in range(2)])

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        x = self.resnets[0](x)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            if attn is not None:
                x = attn(x)
            x = resnet(x)
        return x


class _ResnetStack(nn.Module):
    """``layers`` resnets, then an optional resampler registered as ``<_sampler>.0`` (diffusers' names)."""

    _sampler = ""
    _resample: type[nn.Module]

    def __init__(self, cin: int, cout: int, layers: int, groups: int, act_fn: str, resample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if i == 0 else cout, cout, groups, act_fn) for i in range(layers)]
        )
        setattr(self, self._sampler, nn.ModuleList([self._resample(cout)]) if resample else None)

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for sampler in getattr(self, self._sampler) or ():
            x = sampler(x)
        return x


class DownEncoderBlock2D(_ResnetStack):
    """``layers`` resnets, then an optional :class:`Downsample2D` (as ``downsamplers.0``)."""

    _sampler, _resample = "downsamplers", Downsample2D


class UpDecoderBlock2D(_ResnetStack):
    """``layers`` resnets, then an optional :class:`Upsample2D` (as ``upsamplers.0``)."""

    _sampler, _resample = "upsamplers", Upsample2D


class Encoder(nn.Module):
    """diffusers ``Encoder`` (``double_z``): ``(B, in, H, W) -> (B, 2 z, H / 2^(L-1), W / 2^(L-1))``."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        ch, groups, act = list(cfg.block_out_channels), cfg.norm_num_groups, cfg.act_fn
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock2D(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, groups, act, i < len(ch) - 1)
            for i in range(len(ch))
        )
        self.mid_block = MidBlock2D(ch[-1], groups, act, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], eps=_EPS)
        self.conv_act = nn.SiLU()  # SiLU whatever act_fn says, as diffusers
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """diffusers ``Decoder`` (group norm): ``(B, z, h, w) -> (B, out, h 2^(L-1), w 2^(L-1))``."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        ch, groups, act = list(cfg.block_out_channels), cfg.norm_num_groups, cfg.act_fn
        rev = ch[::-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1)
        # up_blocks registered before mid_block: diffusers' state-dict order
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock2D(
                rev[max(i - 1, 0)], rev[i], cfg.layers_per_block + 1, groups, act, i < len(ch) - 1
            )
            for i in range(len(ch))
        )
        self.mid_block = MidBlock2D(ch[-1], groups, act, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, ch[0], eps=_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor, latent_embeds: Tensor | None = None) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


def _randn(shape: Sequence[int], generator, device: torch.device, dtype: torch.dtype) -> Tensor:
    """diffusers ``randn_tensor``: a CPU generator draws on the CPU and the noise moves to ``device``;
    a list of generators draws one item each."""
    gen0 = generator[0] if isinstance(generator, list) else generator
    rand_device = device
    if gen0 is not None and gen0.device.type != device.type:
        if gen0.device.type != "cpu":
            raise ValueError(
                f"Cannot generate a {device} tensor from a generator of type {gen0.device.type}."
            )
        rand_device = torch.device("cpu")
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        one = (1, *shape[1:])
        parts = [
            torch.randn(one, generator=g, device=rand_device, dtype=dtype) for g in generator[: shape[0]]
        ]
        return torch.cat(parts, dim=0).to(device)
    return torch.randn(tuple(shape), generator=generator, device=rand_device, dtype=dtype).to(device)


class DiagonalGaussianDistribution:
    """diffusers' posterior: ``parameters`` ``(B, 2 z, h, w)`` = mean and log-variance (clamped to [-30, 20])."""

    def __init__(self, parameters: Tensor, deterministic: bool = False) -> None:
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> Tensor:
        """``mean + std * noise`` with diffusers' ``randn_tensor`` noise (same draws for the same generator)."""
        eps = _randn(self.mean.shape, generator, self.parameters.device, self.parameters.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL divergence to the standard normal, summed over ``(C, h, w)``: ``(B,)``."""
        if self.deterministic:
            return torch.Tensor([0.0])
        return 0.5 * torch.sum(torch.pow(self.mean, 2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])


@dataclass
class EncoderOutput:
    latent_dist: DiagonalGaussianDistribution


@dataclass
class DecoderOutput:
    sample: Tensor


class AutoencoderKL(_Frozen):
    """diffusers ``AutoencoderKL`` (inference): ``encode(x).latent_dist``, ``decode(z).sample``.

    ``x`` ``(B, in_channels, H, W)`` (a log-mel: ``(B, 1, T, n_mels)``); latents ``(B, z, H / f, W / f)``
    with ``f = 2^(len(block_out_channels) - 1)``. ``config`` holds every config.json field.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = _config(VAE_DEFAULTS, config, kwargs)
        n = len(cfg.block_out_channels)
        if list(cfg.down_block_types) != ["DownEncoderBlock2D"] * n:
            raise UnsupportedConfig(
                f"vae config down_block_types {cfg.down_block_types} (need DownEncoderBlock2D x {n})"
            )
        if list(cfg.up_block_types) != ["UpDecoderBlock2D"] * n:
            raise UnsupportedConfig(
                f"vae config up_block_types {cfg.up_block_types} (need UpDecoderBlock2D x {n})"
            )
        if cfg.get("norm_type", "group") != "group":
            raise UnsupportedConfig(f"vae config norm_type {cfg.get('norm_type')!r} (only 'group')")
        _activation(cfg.act_fn)
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        z = cfg.latent_channels
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(z, z, 1) if cfg.use_post_quant_conv else None

    def attention_modules(self) -> list[Attention]:
        return [m for m in self.modules() if isinstance(m, Attention)]

    def set_attention_math(self, math: bool = True) -> None:
        """``True``: the mid-block attention as matmuls + float32 softmax (diffusers' ``AttnProcessor``);
        ``False``: ``scaled_dot_product_attention`` (``AttnProcessor2_0``, the default)."""
        for m in self.attention_modules():
            m.math = bool(math)

    def encode(
        self, x: Tensor, return_dict: bool = True
    ) -> EncoderOutput | tuple[DiagonalGaussianDistribution]:
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        posterior = DiagonalGaussianDistribution(h)
        return EncoderOutput(posterior) if return_dict else (posterior,)

    def decode(self, z: Tensor, return_dict: bool = True, generator=None) -> DecoderOutput | tuple[Tensor]:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        out = self.decoder(z)
        return DecoderOutput(out) if return_dict else (out,)

    def forward(
        self, sample: Tensor, sample_posterior: bool = False, return_dict: bool = True, generator=None
    ) -> DecoderOutput | tuple[Tensor]:
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)


# ----------------------------------------------------------------------------------------------------
# Vocoder (transformers models/speecht5/modeling_speecht5.py SpeechT5HifiGan, HifiGanResidualBlock)
# ----------------------------------------------------------------------------------------------------

#: transformers ``SpeechT5HifiGanConfig`` defaults, plus this project's ``upsample_padding``.
VOCODER_DEFAULTS: dict[str, Any] = {
    "model_in_dim": 80,
    "sampling_rate": 16000,
    "upsample_initial_channel": 512,
    "upsample_rates": [4, 4, 4, 4],
    "upsample_kernel_sizes": [8, 8, 8, 8],
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "initializer_range": 0.01,
    "leaky_relu_slope": 0.1,
    "normalize_before": True,
}
UpsamplePadding = Literal["speecht5", "hifires"]
PADDINGS: tuple[str, ...] = ("speecht5", "hifires")
PADDING_KEY = "upsample_padding"


def upsample_padding(config: Any) -> UpsamplePadding:
    """The padding convention a vocoder config (mapping or config object) asks for (``"speecht5"`` when
    it does not say)."""
    value = config.get(PADDING_KEY) if isinstance(config, Mapping) else getattr(config, PADDING_KEY, None)
    value = "speecht5" if value is None else value
    if value not in PADDINGS:
        raise ValueError(f"vocoder config {PADDING_KEY!r} must be one of {PADDINGS}, got {value!r}")
    return value  # type: ignore[return-value]


def hifires_conv_transpose(in_ch: int, out_ch: int, rate: int, kernel: int) -> nn.ConvTranspose1d:
    """One ``Generator_HiFiRes`` upsampler: ``L`` in, exactly ``rate * L`` out (requires ``kernel == 2 rate``)."""
    if kernel != 2 * rate:
        # Generator_HiFiRes builds its kernel as 2u whatever the config says; with another kernel
        # this padding would not give rate * L samples.
        raise ValueError(
            f"vocoder config 'upsample_kernel_sizes' must be 2 x 'upsample_rates' for HiFiRes padding, "
            f"got kernel {kernel} for rate {rate}"
        )
    return nn.ConvTranspose1d(
        in_ch, out_ch, kernel_size=kernel, stride=rate, padding=rate // 2 + rate % 2, output_padding=rate % 2
    )


def speecht5_conv_transpose(in_ch: int, out_ch: int, rate: int, kernel: int) -> nn.ConvTranspose1d:
    """transformers' upsampler: ``padding = (k - u) // 2``, no output padding (``u L + k - u - 2 pad`` out)."""
    return nn.ConvTranspose1d(in_ch, out_ch, kernel_size=kernel, stride=rate, padding=(kernel - rate) // 2)


class HifiGanResidualBlock(nn.Module):
    """transformers ``HifiGanResidualBlock``: dilated conv pairs with residuals, ``(B, C, L) -> same``."""

    def __init__(self, channels: int, kernel: int, dilation: Sequence[int], slope: float) -> None:
        super().__init__()
        self.leaky_relu_slope = slope
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=(kernel * d - d) // 2) for d in dilation
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilation
        )

    def forward(self, x: Tensor) -> Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2):
            residual = x
            x = conv2(F.leaky_relu(conv1(F.leaky_relu(x, self.leaky_relu_slope)), self.leaky_relu_slope))
            x = x + residual
        return x


class HiFiGAN(_Frozen):
    """transformers ``SpeechT5HifiGan``: log-mel ``(B, T, n_mels)`` -> waveform ``(B, N)``, or
    ``(T, n_mels)`` -> ``(N,)``.

    ``N = T * prod(upsample_rates)`` with HiFiRes padding; with SpeechT5 padding each upsampler adds
    ``k - u - 2 ((k - u) // 2)`` samples per stage (AudioLDM2's 16 kHz vocoder: ``T * 160 + 32``).
    """

    def __init__(self, config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = _config(VOCODER_DEFAULTS, config, kwargs)
        padding = upsample_padding(cfg)
        self.config = cfg
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.num_upsamples = len(cfg.upsample_rates)
        c0 = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.model_in_dim, c0, kernel_size=7, stride=1, padding=3)
        make = hifires_conv_transpose if padding == "hifires" else speecht5_conv_transpose
        self.upsampler = nn.ModuleList(
            make(c0 // 2**i, c0 // 2 ** (i + 1), u, k)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))
        )
        self.resblocks = nn.ModuleList(
            HifiGanResidualBlock(c0 // 2 ** (i + 1), k, d, cfg.leaky_relu_slope)
            for i in range(self.num_upsamples)
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)
        )
        self.conv_post = nn.Conv1d(c0 // 2**self.num_upsamples, 1, kernel_size=7, stride=1, padding=3)
        self.register_buffer("mean", torch.zeros(cfg.model_in_dim))
        self.register_buffer("scale", torch.ones(cfg.model_in_dim))

    def forward(self, spectrogram: Tensor) -> Tensor:
        if self.config.normalize_before:
            spectrogram = (spectrogram - self.mean) / self.scale
        batched = spectrogram.dim() == 3
        if not batched:
            spectrogram = spectrogram.unsqueeze(0)
        x = self.conv_pre(spectrogram.transpose(2, 1))
        for i in range(self.num_upsamples):
            x = self.upsampler[i](F.leaky_relu(x, self.config.leaky_relu_slope))
            res = self.resblocks[i * self.num_kernels](x)
            for j in range(1, self.num_kernels):
                res += self.resblocks[i * self.num_kernels + j](x)
            x = res / self.num_kernels
        x = torch.tanh(self.conv_post(F.leaky_relu(x)))  # default slope 0.01 here, as transformers
        return x.squeeze(0).transpose(1, 0).view(-1) if not batched else x.squeeze(1)
