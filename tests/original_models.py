"""Independent references: the ORIGINAL (pre-diffusers) modules, written in the tests from the upstream code.

* ldm VAE: haoheliu/AudioLDM ``audioldm/variational_autoencoder/modules.py`` (Encoder, Decoder,
  ResnetBlock, AttnBlock, Downsample, Upsample) and ``autoencoder.py`` (quant_conv, post_quant_conv,
  DiagonalGaussianDistribution.mode = mean).
* HiFi-GAN ``Generator`` (16 kHz; ``padding=(k-u)//2``): haoheliu/AudioLDM ``audioldm/hifigan/models.py``.
* ``Generator_HiFiRes`` (48 kHz; kernel ``2u``, ``padding=u//2 + u%2``, ``output_padding=u%2``):
  haoheliu/AudioLDM-training-finetuning ``audioldm_train/modules/hifigan/models_hifires.py``.

Weight norm is left out: upstream removes it before inference, so the modules hold plain weights and
load the original key layout (``conv_pre``, ``ups.i``, ``resblocks.j.convs1.m``, ...) strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.1


# ------------------------------------------------------------------------------------------------ VAE
def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


def _swish(x):
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.cin, self.cout = cin, cout
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x):
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        if self.cin != self.cout:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w).permute(0, 2, 1)
        k = k.reshape(b, c, h * w)
        w_ = torch.bmm(q, k) * (int(c) ** (-0.5))
        w_ = torch.softmax(w_, dim=2)
        v = v.reshape(b, c, h * w)
        h_ = torch.bmm(v, w_.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(h_)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(c: int) -> nn.Module:
    m = nn.Module()
    m.block_1, m.attn_1, m.block_2 = ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)
    return m


class Encoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels, in_channels=1):
        super().__init__()
        self.levels, self.nrb = len(ch_mult), num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_mult = (1, *ch_mult)
        self.down = nn.ModuleList()
        for i in range(self.levels):
            block_in, block_out = ch * in_mult[i], ch * ch_mult[i]
            d = nn.Module()
            d.block = nn.ModuleList()
            for _ in range(num_res_blocks):
                d.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
            if i != self.levels - 1:
                d.downsample = Downsample(block_in)
            self.down.append(d)
        self.mid = _mid(block_in)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for i in range(self.levels):
            for j in range(self.nrb):
                h = self.down[i].block[j](h)
            if i != self.levels - 1:
                h = self.down[i].downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels, out_ch=1):
        super().__init__()
        self.levels, self.nrb = len(ch_mult), num_res_blocks
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = _mid(block_in)
        ups = []
        for i in reversed(range(self.levels)):
            u = nn.Module()
            u.block = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                u.block.append(ResnetBlock(block_in, ch * ch_mult[i]))
                block_in = ch * ch_mult[i]
            if i != 0:
                u.upsample = Upsample(block_in)
            ups.insert(0, u)
        self.up = nn.ModuleList(ups)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i in reversed(range(self.levels)):
            for j in range(self.nrb + 1):
                h = self.up[i].block[j](h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class LdmAutoencoderKL(nn.Module):
    """``encode_mean(mel)`` and ``decode(z)`` of the ldm VAE (embed_dim = z_channels)."""

    def __init__(self, ch, ch_mult, num_res_blocks, z_channels):
        super().__init__()
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, z_channels)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, z_channels)
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * z_channels, 1)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, 1)

    def encode_mean(self, x):
        moments = self.quant_conv(self.encoder(x))
        return torch.chunk(moments, 2, dim=1)[0]  # DiagonalGaussianDistribution.mode()

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


# -------------------------------------------------------------------------------------------- vocoders
class ResBlock1(nn.Module):
    def __init__(self, channels, kernel_size=3, dilation=(1, 3, 5)):
        super().__init__()
        pad = lambda k, d: int((k * d - d) / 2)  # noqa: E731  (upstream get_padding)
        self.convs1 = nn.ModuleList(
            [
                nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=pad(kernel_size, d))
                for d in dilation
            ]
        )
        self.convs2 = nn.ModuleList(
            [
                nn.Conv1d(channels, channels, kernel_size, 1, dilation=1, padding=pad(kernel_size, 1))
                for _ in dilation
            ]
        )

    def forward(self, x):
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
            x = xt + x
        return x


class Generator(nn.Module):
    """HiFi-GAN ``Generator`` (``hifires=False``) or ``Generator_HiFiRes`` (``hifires=True``). ``(B, n_mels, T)`` in."""

    def __init__(
        self,
        n_mels,
        upsample_rates,
        upsample_kernel_sizes,
        upsample_initial_channel,
        resblock_kernel_sizes,
        resblock_dilation_sizes,
        hifires: bool,
    ):
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        c0 = upsample_initial_channel
        self.conv_pre = nn.Conv1d(n_mels, c0, 7, 1, padding=3)
        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            cin, cout = c0 // 2**i, c0 // 2 ** (i + 1)
            if hifires:  # models_hifires.py: kernel u * 2 whatever the config says
                self.ups.append(
                    nn.ConvTranspose1d(cin, cout, u * 2, u, padding=u // 2 + u % 2, output_padding=u % 2)
                )
            else:
                self.ups.append(nn.ConvTranspose1d(cin, cout, k, u, padding=(k - u) // 2))
        self.resblocks = nn.ModuleList()
        for i in range(len(self.ups)):
            ch = c0 // 2 ** (i + 1)
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(ResBlock1(ch, k, d))
        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3)

    def forward(self, x):
        x = self.conv_pre(x)
        for i in range(self.num_upsamples):
            x = self.ups[i](F.leaky_relu(x, LRELU_SLOPE))
            xs = None
            for j in range(self.num_kernels):
                r = self.resblocks[i * self.num_kernels + j](x)
                xs = r if xs is None else xs + r
            x = xs / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))
        return torch.tanh(x)
