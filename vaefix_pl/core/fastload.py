"""Load AudioLDM2's VAE and vocoder from a local folder without building weights that loading replaces.

The modules are the project's own (:mod:`vaefix_pl.core.nets`: diffusers ``AutoencoderKL`` and
transformers ``SpeechT5HifiGan`` in plain torch, same state-dict keys, same outputs), so this path
imports neither diffusers nor transformers; ``config.json`` is read with :mod:`json`.
``from_pretrained`` builds each module with random weights and then copies the checkpoint over them.
Here the modules are built on the ``meta`` device (shapes only, no memory, no init), the safetensors
file is read straight onto the target device, and ``load_state_dict(..., assign=True, strict=True)``
makes the loaded tensors the parameters. Only safetensors are read. A checkpoint this path does not
understand (renamed keys, missing parameters, a config asking for blocks :mod:`~vaefix_pl.core.nets`
does not have) raises :class:`FastLoadError`; callers fall back to the libraries' ``from_pretrained``
(:func:`load_models` does, importing diffusers/transformers only then).

This module imports only torch, safetensors and :mod:`vaefix_pl.core.nets` on its normal path.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from vaefix_pl.core.utils import read_json_object

VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"
VOCODER_WEIGHTS = "model.safetensors"


class FastLoadError(RuntimeError):
    """The checkpoint does not match the module exactly; use ``from_pretrained`` instead."""


def _read_state_dict(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    # safetensors maps the file and copies each tensor once, straight to ``device``.
    return load_file(str(path), device=str(device))


def _fold_weight_norm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace weight-norm pairs by the plain ``weight`` they stand for.

    Both spellings: legacy ``<m>.weight_g`` / ``<m>.weight_v`` (``nn.utils.weight_norm``) and
    ``<m>.parametrizations.weight.original0`` / ``original1`` (``nn.utils.parametrizations.weight_norm``).
    ``weight = g * v / ||v||``, the norm over every dimension but 0 (``dim=0``, torch's default and the
    one SpeechT5HifiGan uses).
    """
    pairs = {
        ".weight_g": ".weight_v",
        ".parametrizations.weight.original0": ".parametrizations.weight.original1",
    }
    out = dict(sd)
    for key in list(sd):
        for g_suffix, v_suffix in pairs.items():
            if key.endswith(g_suffix):
                prefix = key[: -len(g_suffix)]
                g, v = out.pop(key), out.pop(prefix + v_suffix)
                norm = torch.linalg.vector_norm(v.float(), dim=tuple(range(1, v.ndim)), keepdim=True)
                out[prefix + ".weight"] = (g.float() * v.float() / norm).to(v.dtype)
    return out


def _assign(module: nn.Module, sd: dict[str, torch.Tensor], where: Path) -> nn.Module:
    try:
        module.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise FastLoadError(f"{where}: {str(e).splitlines()[0]}") from e
    left = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if left:
        raise FastLoadError(f"{where}: not in the checkpoint and not initialised: {left[:5]}")
    return module


def _read_json(path: Path) -> dict:
    try:
        return read_json_object(path)
    except ValueError as exc:
        raise FastLoadError(f"{path}: {exc}") from None


def _build(cls, config: dict, where: Path) -> nn.Module:
    from vaefix_pl.core.nets import UnsupportedConfig

    try:
        with torch.device("meta"):
            return cls(config)
    except (UnsupportedConfig, TypeError, KeyError) as e:
        raise FastLoadError(f"{where}: {e}") from e


def load_vae(folder: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """:class:`vaefix_pl.core.nets.AutoencoderKL` from ``folder`` (``config.json`` + safetensors),
    float32, ``eval()``: the weights and outputs of diffusers' ``AutoencoderKL.from_pretrained(folder)``
    without its random init or its import."""
    from vaefix_pl.core.nets import AutoencoderKL

    folder, device = Path(folder), torch.device(device)
    vae = _build(AutoencoderKL, _read_json(folder / "config.json"), folder / "config.json")
    sd = _read_state_dict(folder / VAE_WEIGHTS, device)
    return _assign(vae, sd, folder / VAE_WEIGHTS).float().eval()


def load_vocoder(folder: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """:class:`vaefix_pl.core.nets.HiFiGAN` from ``folder``, float32, ``eval()``, weight norm folded:
    transformers ``SpeechT5HifiGan``'s weights and outputs, with the upsampler padding its config's
    ``"upsample_padding"`` asks for (``"hifires"`` for the 48 kHz vocoder).

    The ``mean``/``scale`` buffers are taken from the checkpoint; where it lacks them they get the
    model's own init (zeros / ones), as ``from_pretrained`` gives them.
    """
    from vaefix_pl.core.nets import HiFiGAN

    folder, device = Path(folder), torch.device(device)
    vocoder = _build(HiFiGAN, _read_json(folder / "config.json"), folder / "config.json")
    sd = _fold_weight_norm(_read_state_dict(folder / VOCODER_WEIGHTS, device))
    n_mels = vocoder.config.model_in_dim
    sd.setdefault("mean", torch.zeros(n_mels, device=device))
    sd.setdefault("scale", torch.ones(n_mels, device=device))
    return _assign(vocoder, sd, folder / VOCODER_WEIGHTS).float().eval()


def load_models(
    source: str | os.PathLike, device: torch.device | str = "cpu", fallback: bool = True
) -> tuple[nn.Module, nn.Module]:
    """``(vae, vocoder)`` from a diffusers-format folder (``<source>/vae``, ``<source>/vocoder``).

    With ``fallback`` a :class:`FastLoadError` (checkpoint with other key names, e.g. diffusers'
    deprecated attention names, or blocks :mod:`~vaefix_pl.core.nets` does not implement) loads that
    model with diffusers' / transformers' ``from_pretrained`` instead (imported only then).
    """
    root = Path(source)
    try:
        vae = load_vae(root / "vae", device)
    except FastLoadError:
        if not fallback:
            raise
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

        vae = (
            AutoencoderKL.from_pretrained(
                str(root / "vae"), use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False
            )
            .to(device)
            .float()
            .eval()
        )
    try:
        vocoder = load_vocoder(root / "vocoder", device)
    except FastLoadError:
        if not fallback:
            raise
        from vaefix_pl.core.hifires import load_vocoder as load_by_class

        vocoder = load_by_class(root / "vocoder").to(device).float().eval()
    return vae, vocoder
