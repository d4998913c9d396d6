"""AudioLDM2-shaped models built by the project itself, for tests, demos and benchmarks.

No weights can be downloaded here, so tests load small models of AudioLDM2's exact geometry
(1 input channel, 64 mel bins, VAE down factor 4, vocoder hop 160 at 16 kHz) written in diffusers
format by :func:`write_tiny_audioldm2`, through the real loader. :func:`full_size_configs` gives the
real architectures (``docs/FRONTEND.md``, ``docs/MODELS.md``) for cost and speed measurements
with random weights. Outputs of random weights are not meaningful audio.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from vaefix_pl.core.geometry import AUDIOLDM_48K
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
    """Build ``(AutoencoderKL, vocoder)`` with deterministic random weights (float32, eval); the vocoder
    is the class the config asks for (``SpeechT5HifiGan``, or HiFiRes padding at 48 kHz)."""
    from diffusers import AutoencoderKL
    from transformers import SpeechT5HifiGanConfig

    from vaefix_pl.core.hifires import vocoder_class_for

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**vae_config)
        vocoder = vocoder_class_for(vocoder_config)(SpeechT5HifiGanConfig(**vocoder_config))
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


# ----------------------------------------------------------------------------------------------------
# Every supported geometry (16 kHz above; 48 kHz below) and tiny ORIGINAL-format checkpoints.
# ----------------------------------------------------------------------------------------------------

# audioldm_48k: 4-level VAE (down 8), z 16, 256-mel HiFiRes vocoder with upsample [6, 5, 4, 2, 2]
# (haoheliu/AudioLDM2 get_audioldm_48k_config / get_vocoder_config_48k), a few thousand times smaller.
TINY_48K_VAE_CONFIG: dict[str, Any] = {
    **FULL_VAE_CONFIG,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "latent_channels": 16,
    "sample_size": 1024,
    "scaling_factor": 0.6,  # not any real checkpoint's: tests must read it from the config
}
FULL_48K_VOCODER_CONFIG: dict[str, Any] = {
    **FULL_VOCODER_CONFIG,  # same init range, slope and normalize_before
    "model_in_dim": AUDIOLDM_48K.n_mels,
    "sampling_rate": AUDIOLDM_48K.sample_rate,
    "upsample_initial_channel": 1536,
    "upsample_rates": [6, 5, 4, 2, 2],
    "upsample_kernel_sizes": [12, 10, 8, 4, 4],
    "resblock_kernel_sizes": [3, 7, 11, 15],
    "resblock_dilation_sizes": [[1, 3, 5]] * 4,
    "upsample_padding": "hifires",
}
FULL_48K_VAE_CONFIG: dict[str, Any] = {
    **FULL_VAE_CONFIG,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 1024],
    "latent_channels": 16,
    "scaling_factor": 1.0,  # audioldm_48k's own value is not known here: random-weight benchmarks only
}
TINY_48K_VOCODER_CONFIG: dict[str, Any] = {
    **FULL_48K_VOCODER_CONFIG,
    "upsample_initial_channel": 64,
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3, 5]],
    "initializer_range": 0.1,
}


def geometry_configs(geometry: str, size: str = "tiny") -> tuple[dict[str, Any], dict[str, Any]]:
    """``(vae_config, vocoder_config)`` for ``geometry`` (``"audioldm_16k"``/``"audioldm_48k"``), tiny or full."""
    table = {
        ("audioldm_16k", "tiny"): (TINY_VAE_CONFIG, TINY_VOCODER_CONFIG),
        ("audioldm_16k", "full"): (FULL_VAE_CONFIG, FULL_VOCODER_CONFIG),
        ("audioldm_48k", "tiny"): (TINY_48K_VAE_CONFIG, TINY_48K_VOCODER_CONFIG),
        ("audioldm_48k", "full"): (FULL_48K_VAE_CONFIG, FULL_48K_VOCODER_CONFIG),
    }
    if (geometry, size) not in table:
        raise ValueError(f"no {size} configs for geometry {geometry!r}")
    vae, voc = table[(geometry, size)]
    return copy.deepcopy(vae), copy.deepcopy(voc)


#: :func:`build_models` builds every geometry's models (the name the 48 kHz tests use).
build_geometry_models = build_models


def write_tiny_geometry(path: str | os.PathLike, geometry: str = "audioldm_16k", seed: int = 0) -> Path:
    """Write a tiny diffusers-format model folder of ``geometry`` (``vae/``, ``vocoder/``) to ``path``."""
    vae_cfg, voc_cfg = geometry_configs(geometry, "tiny")
    out = Path(path)
    vae, vocoder = build_geometry_models(vae_cfg, voc_cfg, seed=seed)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    vocoder.save_pretrained(out / "vocoder", safe_serialization=True)
    return out


def write_tiny_audioldm_48k(path: str | os.PathLike, seed: int = 0) -> Path:
    """Tiny audioldm_48k-shaped diffusers folder (4-level z-16 VAE, 256-mel HiFiRes vocoder)."""
    return write_tiny_geometry(path, "audioldm_48k", seed=seed)


# --- original (pre-diffusers) layouts ----------------------------------------------------------------
# Key names and shapes enumerated from the upstream modules themselves (haoheliu/AudioLDM
# audioldm/variational_autoencoder/modules.py Encoder/Decoder/ResnetBlock/AttnBlock and
# autoencoder.py; audioldm/hifigan/models.py Generator), independently of vaefix_pl.convert's key map.

#: tiny original-layout architectures: ldm GroupNorm is fixed at 32 groups, so channels are 32
TINY_ORIGINAL = {
    "audioldm_16k": {
        "ch": 32,
        "ch_mult": [1, 1, 1],
        "num_res_blocks": 1,
        "z_channels": 8,
        "n_mels": 64,
        "upsample_initial_channel": 32,
        "upsample_kernel_sizes": [16, 16, 8, 4, 4],
        "resblock_kernel_sizes": [3],
    },
    "audioldm_48k": {
        "ch": 32,
        "ch_mult": [1, 1, 1, 1],
        "num_res_blocks": 1,
        "z_channels": 16,
        "n_mels": 256,
        "upsample_initial_channel": 64,
        "upsample_kernel_sizes": [12, 10, 8, 4, 4],
        "resblock_kernel_sizes": [3],
    },
}


def ldm_vae_shapes(
    ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int, in_channels: int = 1, out_ch: int = 1
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an ldm ``AutoencoderKL`` (encoder, decoder, quant convs; embed_dim = z)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)

    def norm(name: str, c: int) -> None:
        shapes[f"{name}.weight"] = (c,)
        shapes[f"{name}.bias"] = (c,)

    def resnet(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cout, cin, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cout, cin, 1)

    def mid(side: str, c: int) -> None:
        resnet(f"{side}.mid.block_1", c, c)
        norm(f"{side}.mid.attn_1.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{side}.mid.attn_1.{part}", c, c, 1)
        resnet(f"{side}.mid.block_2", c, c)

    levels = len(ch_mult)
    in_mult = (1, *ch_mult)
    conv("encoder.conv_in", ch, in_channels, 3)
    block_in = ch
    for i in range(levels):
        block_in = ch * in_mult[i]
        block_out = ch * ch_mult[i]
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    mid("encoder", block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", 2 * z_channels, block_in, 3)

    block_in = ch * ch_mult[-1]
    conv("decoder.conv_in", block_in, z_channels, 3)
    mid("decoder", block_in)
    for i in reversed(range(levels)):
        block_out = ch * ch_mult[i]
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", out_ch, block_in, 3)
    conv("quant_conv", 2 * z_channels, 2 * z_channels, 1)
    conv("post_quant_conv", z_channels, z_channels, 1)
    return shapes


def hifigan_shapes(
    n_mels: int,
    upsample_initial_channel: int,
    upsample_kernel_sizes: list[int],
    resblock_kernel_sizes: list[int],
    n_dilations: int = 3,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an original HiFi-GAN ``Generator`` after ``remove_weight_norm``."""
    c0 = upsample_initial_channel
    shapes: dict[str, tuple[int, ...]] = {"conv_pre.weight": (c0, n_mels, 7), "conv_pre.bias": (c0,)}
    for i, k in enumerate(upsample_kernel_sizes):
        shapes[f"ups.{i}.weight"] = (c0 // 2**i, c0 // 2 ** (i + 1), k)  # ConvTranspose1d: (in, out, k)
        shapes[f"ups.{i}.bias"] = (c0 // 2 ** (i + 1),)
    n = len(resblock_kernel_sizes)
    for i in range(len(upsample_kernel_sizes)):
        c = c0 // 2 ** (i + 1)
        for j, k in enumerate(resblock_kernel_sizes):
            for conv in ("convs1", "convs2"):
                for m in range(n_dilations):
                    shapes[f"resblocks.{i * n + j}.{conv}.{m}.weight"] = (c, c, k)
                    shapes[f"resblocks.{i * n + j}.{conv}.{m}.bias"] = (c,)
    c_last = c0 // 2 ** len(upsample_kernel_sizes)
    shapes["conv_post.weight"] = (1, c_last, 7)
    shapes["conv_post.bias"] = (1,)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int, std: float = 0.1) -> dict[str, torch.Tensor]:
    """Deterministic random tensors: norm weights near 1, other weights ``N(0, std)``, biases small."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        x = torch.randn(shape, generator=gen)
        if ("norm" in key.split(".")[-2]) and key.endswith(".weight"):
            out[key] = 1.0 + 0.1 * x
        elif key.endswith(".bias"):
            out[key] = 0.01 * x
        else:
            out[key] = std * x
    return out


def weight_normed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split every conv weight into ``weight_g``/``weight_v`` (the layout before ``remove_weight_norm``)."""
    out = {}
    for key, w in state.items():
        if key.endswith(".weight") and w.ndim == 3:
            g = w.flatten(1).norm(dim=1).reshape(-1, 1, 1)
            base = key[: -len(".weight")]
            out[f"{base}.weight_g"] = g
            out[f"{base}.weight_v"] = w * 2.0  # any positive multiple of w: the norm divides it out
        else:
            out[key] = w
    return out


def tiny_original_states(geometry: str = "audioldm_16k", seed: int = 0) -> tuple[dict, dict]:
    """``(vae_state, vocoder_state)`` in the original key layouts (no prefixes), random weights."""
    a = TINY_ORIGINAL[geometry]
    vae = random_state(
        ldm_vae_shapes(a["ch"], a["ch_mult"], a["num_res_blocks"], a["z_channels"]), seed, 0.05
    )
    voc = random_state(
        hifigan_shapes(
            a["n_mels"], a["upsample_initial_channel"], a["upsample_kernel_sizes"], a["resblock_kernel_sizes"]
        ),
        seed + 1,
        0.1,
    )
    return vae, voc


def write_tiny_original_ldm(
    path: str | os.PathLike,
    geometry: str = "audioldm_16k",
    seed: int = 0,
    scale_factor: float | None = 0.8125,
    audioldm2: bool = True,
    vocoder_weight_norm: bool = False,
) -> Path:
    """Write a tiny Lightning-style ``.ckpt`` (``{"state_dict": ...}``) of the AudioLDM / AudioLDM2 /
    audioldm_48k layout: VAE under ``first_stage_model.``, vocoder under ``first_stage_model.vocoder.``,
    the learnt ``scale_factor`` buffer, and a stand-in UNet/conditioner key the converter must ignore."""
    vae, voc = tiny_original_states(geometry, seed)
    if vocoder_weight_norm:
        voc = weight_normed(voc)
    sd: dict[str, torch.Tensor] = {f"first_stage_model.{k}": v for k, v in vae.items()}
    sd.update({f"first_stage_model.vocoder.{k}": v for k, v in voc.items()})
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(4, 8, 3, 3)
    sd["cond_stage_models.0.dummy" if audioldm2 else "cond_stage_model.dummy"] = torch.zeros(1)
    if scale_factor is not None:
        sd["scale_factor"] = torch.tensor(scale_factor)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd, "global_step": 1}, out)
    return out


def write_tiny_tango(path: str | os.PathLike, seed: int = 0, scale_factor: float = 0.8125) -> Path:
    """Write Tango's layout to folder ``path``: ``pytorch_model_vae.bin`` (VAE keys at the top level,
    vocoder under ``vocoder.``) and ``vae_config.json`` (``ddconfig``, ``embed_dim``, ``scale_factor``)."""
    a = TINY_ORIGINAL["audioldm_16k"]
    vae, voc = tiny_original_states("audioldm_16k", seed)
    sd = dict(vae)
    sd.update({f"vocoder.{k}": v for k, v in voc.items()})
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(sd, out / "pytorch_model_vae.bin")
    cfg = {
        "image_key": "fbank",
        "subband": 1,
        "embed_dim": a["z_channels"],
        "time_shuffle": 1,
        "ddconfig": {
            "double_z": True,
            "z_channels": a["z_channels"],
            "resolution": 256,
            "downsample_time": False,
            "in_channels": 1,
            "out_ch": 1,
            "ch": a["ch"],
            "ch_mult": a["ch_mult"],
            "num_res_blocks": a["num_res_blocks"],
            "attn_resolutions": [],
            "dropout": 0.0,
        },
        "scale_factor": scale_factor,
    }
    (out / "vae_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return out
