"""Key maps from the original AudioLDM-family layouts to diffusers ``AutoencoderKL`` / ``SpeechT5HifiGan``.

Written from, and checked against, huggingface/diffusers ``scripts/convert_original_audioldm_to_diffusers.py``,
``convert_original_audioldm2_to_diffusers.py`` and ``convert_original_musicldm_to_diffusers.py``
(``convert_ldm_vae_checkpoint``, ``renew_vae_*_paths``, ``conv_attn_to_linear``,
``convert_hifigan_checkpoint``): same renames, same 1x1-conv -> linear attention weights, same
``ups.i -> upsampler.i`` and ``mean``/``scale`` buffers. Unlike those scripts, every key must be
mapped (an unknown key is an error, not silently dropped) and the architecture is read from the
weight shapes instead of a YAML file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from vaefix_pl.core.geometry import AUDIOLDM_16K, AUDIOLDM_48K, Geometry


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message is one line naming the reason."""


# ------------------------------------------------------------------------------------------------ VAE

_RESNET_PARTS = {"norm1", "conv1", "norm2", "conv2", "nin_shortcut"}
_ATTN_PARTS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _resnet_part(part: str) -> str | None:
    """diffusers' name of an ldm ResnetBlock part (``None`` for a part it does not have)."""
    return None if part not in _RESNET_PARTS else ("conv_shortcut" if part == "nin_shortcut" else part)


def _key(*parts: object) -> str | None:
    """``parts`` joined by dots; ``None`` when a part has no diffusers name."""
    return None if any(p is None for p in parts) else ".".join(str(p) for p in parts)


#: ``(ldm key pattern, groups -> diffusers key)``, given ``n``, the number of VAE levels: the ldm
#: decoder lists its levels from the finest (``up.0``) to the coarsest, diffusers the other way.
_VAE_RULES: tuple[tuple[str, Callable[..., str | None]], ...] = (
    (r"((?:post_)?quant_conv(?:\..*)?)", lambda n, key: key),
    (
        r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.(weight|bias)",
        lambda n, side, layer, p: _key(side, "conv_norm_out" if layer == "norm_out" else layer, p),
    ),
    (
        r"(encoder|decoder)\.mid\.block_([12])\.(\w+)\.(weight|bias)",
        lambda n, side, i, part, p: _key(side, "mid_block.resnets", int(i) - 1, _resnet_part(part), p),
    ),
    (
        r"(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)",
        lambda n, side, part, p: _key(side, "mid_block.attentions.0", _ATTN_PARTS.get(part), p),
    ),
    (
        r"encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)",
        lambda n, i, j, part, p: _key("encoder.down_blocks", i, "resnets", j, _resnet_part(part), p),
    ),
    (
        r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)",
        lambda n, i, p: _key("encoder.down_blocks", i, "downsamplers.0.conv", p),
    ),
    (
        r"decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)",
        lambda n, b, j, part, p: _key(
            "decoder.up_blocks", n - 1 - int(b), "resnets", j, _resnet_part(part), p
        ),
    ),
    (
        r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)",
        lambda n, b, p: _key("decoder.up_blocks", n - 1 - int(b), "upsamplers.0.conv", p),
    ),
)


def _map_vae_key(key: str, num_levels: int) -> str | None:
    """One ldm VAE key -> its diffusers key (``None`` when it has no place in ``AutoencoderKL``)."""
    for pattern, build in _VAE_RULES:
        if m := re.fullmatch(pattern, key):
            return build(num_levels, *m.groups())
    return None


def _count(keys: list[str], pattern: str) -> int:
    found = {m.group(1) for k in keys if (m := re.match(pattern, k))}
    return len(found)


def _shape(sd: Mapping[str, Tensor], key: str, where: str) -> tuple[int, ...]:
    if key not in sd:
        raise ConversionError(f"{where}: missing VAE weight {key!r}")
    return tuple(sd[key].shape)


def infer_vae_config(sd: Mapping[str, Tensor], where: str = "checkpoint") -> dict:
    """Architecture of an ldm ``AutoencoderKL`` state dict (no prefix), as a diffusers config (no scaling)."""
    keys = list(sd)
    levels = _count(keys, r"encoder\.down\.(\d+)\.")
    if levels == 0:
        raise ConversionError(f"{where}: no VAE encoder weights (encoder.down.*) found")
    layers = _count(keys, r"encoder\.down\.0\.block\.(\d+)\.")
    dec_layers = _count(keys, r"decoder\.up\.0\.block\.(\d+)\.")
    if dec_layers != layers + 1:
        raise ConversionError(f"{where}: decoder has {dec_layers} blocks per level, expected {layers + 1}")
    if any(re.match(r"(encoder\.down|decoder\.up)\.\d+\.attn\.", k) for k in keys):
        raise ConversionError(
            f"{where}: VAE has attention inside its levels (attn_resolutions), "
            "which diffusers' AutoencoderKL cannot hold"
        )
    if not any(k.startswith("encoder.mid.attn_1.") for k in keys):
        raise ConversionError(f"{where}: VAE has no mid-block attention (encoder.mid.attn_1)")
    conv_in = _shape(sd, "encoder.conv_in.weight", where)
    blocks = [_shape(sd, f"encoder.down.{i}.block.0.conv1.weight", where)[0] for i in range(levels)]
    z2 = _shape(sd, "encoder.conv_out.weight", where)[0]
    quant = _shape(sd, "quant_conv.weight", where)
    post = _shape(sd, "post_quant_conv.weight", where)
    z, embed = z2 // 2, quant[0] // 2
    if embed != z or post[:2] != (z, embed):
        raise ConversionError(
            f"{where}: embed_dim {embed} differs from z_channels {z}; "
            "diffusers' AutoencoderKL needs them equal"
        )
    return {
        "in_channels": conv_in[1],
        "out_channels": _shape(sd, "decoder.conv_out.weight", where)[0],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": blocks,
        "layers_per_block": layers,
        "act_fn": "silu",
        "latent_channels": z,
        "norm_num_groups": 32,  # ldm's Normalize() is GroupNorm(32, eps=1e-6), fixed in the code
    }


def convert_vae_state(
    sd: Mapping[str, Tensor], num_levels: int, where: str = "checkpoint"
) -> dict[str, Tensor]:
    """ldm VAE state dict (no prefix) -> diffusers ``AutoencoderKL`` state dict.

    Keys under ``loss.`` (the training loss's LPIPS/discriminator) are dropped; any other key that has
    no place in ``AutoencoderKL`` is an error.
    """
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.startswith("loss."):
            continue
        new = _map_vae_key(key, num_levels)
        if new is None:
            raise ConversionError(f"{where}: unexpected VAE weight {key!r}")
        if ".attentions.0." in new and new.endswith(".weight") and value.ndim == 4:
            value = value[:, :, 0, 0]  # 1x1 conv -> linear, as diffusers' conv_attn_to_linear
        out[new] = value
    return out


# -------------------------------------------------------------------------------------------- vocoder


def fold_weight_norm(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Replace ``weight_g``/``weight_v`` (or parametrization ``original0/1``) pairs by the plain weight.

    ``torch.nn.utils.weight_norm`` (dim 0): ``w = g * v / ||v||`` with the norm over all dims but 0.
    """
    out: dict[str, Tensor] = {}
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in sd.items():
        for g_suffix, v_suffix in (
            (".weight_g", ".weight_v"),
            (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
        ):
            if key.endswith(g_suffix):
                pairs.setdefault(key[: -len(g_suffix)], {})["g"] = value
                break
            if key.endswith(v_suffix):
                pairs.setdefault(key[: -len(v_suffix)], {})["v"] = value
                break
        else:
            out[key] = value
    for base, gv in pairs.items():
        if set(gv) != {"g", "v"}:
            raise ConversionError(f"weight-norm pair for {base!r} is incomplete")
        v = gv["v"].to(torch.float64)
        norm = v.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (v.ndim - 1))
        out[f"{base}.weight"] = (gv["g"].to(torch.float64) * v / norm).to(gv["v"].dtype)
    return out


#: Upsample rates cannot be read from weights (they are strides): the family's two vocoders, from
#: haoheliu/AudioLDM audioldm/hifigan/utilities.py HIFIGAN_16K_64 and haoheliu/AudioLDM2
#: audioldm2/utilities/model.py get_vocoder_config_48k. Dilations likewise ([1, 3, 5] in both).
VOCODER_PRESETS: dict[int, tuple[Geometry, list[int], list[int]]] = {
    64: (AUDIOLDM_16K, [5, 4, 2, 2, 2], [16, 16, 8, 4, 4]),
    256: (AUDIOLDM_48K, [6, 5, 4, 2, 2], [12, 10, 8, 4, 4]),
}


def infer_vocoder_config(sd: Mapping[str, Tensor], where: str = "checkpoint") -> tuple[Geometry, dict]:
    """Geometry and ``SpeechT5HifiGanConfig`` fields of a HiFi-GAN state dict (original keys, folded)."""
    if "conv_pre.weight" not in sd:
        raise ConversionError(f"{where}: no vocoder weights (conv_pre.weight) found")
    initial, n_mels = tuple(sd["conv_pre.weight"].shape[:2])
    if n_mels not in VOCODER_PRESETS:
        raise ConversionError(
            f"{where}: vocoder takes {n_mels} mel bins; supported: "
            + ", ".join(f"{m} ({g.name})" for m, (g, _, _) in VOCODER_PRESETS.items())
        )
    geometry, rates, kernels = VOCODER_PRESETS[n_mels]
    keys = list(sd)
    n_ups = _count(keys, r"ups\.(\d+)\.")
    found = [tuple(sd[f"ups.{i}.weight"].shape)[2] for i in range(n_ups) if f"ups.{i}.weight" in sd]
    if found != kernels:
        raise ConversionError(
            f"{where}: vocoder upsample kernels {found}, expected {kernels} for {geometry.name}"
        )
    n_res = _count(keys, r"resblocks\.(\d+)\.")
    if n_res == 0 or n_res % n_ups:
        raise ConversionError(f"{where}: {n_res} vocoder resblocks do not divide into {n_ups} upsamplers")
    per = n_res // n_ups
    res_kernels = [tuple(sd[f"resblocks.{j}.convs1.0.weight"].shape)[2] for j in range(per)]
    n_dil = _count(keys, r"resblocks\.0\.convs1\.(\d+)\.")
    if n_dil != 3:
        raise ConversionError(f"{where}: vocoder resblocks have {n_dil} dilations, expected 3 ([1, 3, 5])")
    return geometry, {
        "model_in_dim": n_mels,
        "sampling_rate": geometry.sample_rate,
        "upsample_initial_channel": initial,
        "upsample_rates": rates,
        "upsample_kernel_sizes": kernels,
        "resblock_kernel_sizes": res_kernels,
        "resblock_dilation_sizes": [[1, 3, 5] for _ in range(per)],
        "normalize_before": False,
    }


def convert_vocoder_state(
    sd: Mapping[str, Tensor], n_ups: int, n_mels: int, where: str = "checkpoint"
) -> dict:
    """HiFi-GAN state dict (original keys, weight norm folded) -> ``SpeechT5HifiGan`` state dict."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = re.fullmatch(r"ups\.(\d+)\.(weight|bias)", key)
        if m:
            out[f"upsampler.{m.group(1)}.{m.group(2)}"] = value
        elif re.fullmatch(r"(conv_pre|conv_post)\.(weight|bias)", key) or re.fullmatch(
            r"resblocks\.\d+\.convs[12]\.\d+\.(weight|bias)", key
        ):
            out[key] = value
        else:
            raise ConversionError(f"{where}: unexpected vocoder weight {key!r}")
    if len({k for k in out if k.startswith("upsampler.")}) != 2 * n_ups:
        raise ConversionError(f"{where}: vocoder upsampler weights are incomplete")
    # unused with normalize_before=False; set to their initial values, as the diffusers scripts do
    out["mean"] = torch.zeros(n_mels)
    out["scale"] = torch.ones(n_mels)
    return out
