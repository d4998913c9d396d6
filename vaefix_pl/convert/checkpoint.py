"""Convert an original AudioLDM-family checkpoint into a diffusers folder (``vae/`` + ``vocoder/``, safetensors).

Inputs (``kind``):

* ``"audioldm"``, ``"audioldm2"``, ``"musicldm"``: a Lightning ``.ckpt``/``.pth`` whose ``state_dict``
  holds the VAE under ``first_stage_model.`` and the vocoder under ``first_stage_model.vocoder.``,
  plus the learnt ``scale_factor`` buffer (diffusers' conversion scripts read the same keys).
* ``"audioldm_48k"``: the same layout with a 4-level, z-16 VAE and a 256-mel vocoder; written with
  the HiFiRes upsampler padding (``vaefix_pl.core.hifires``).
* ``"tango"``: ``pytorch_model_vae.bin`` (VAE at the top level, vocoder under ``vocoder.``) with
  ``vae_config.json`` beside it, whose ``scale_factor`` becomes the ``scaling_factor``.

Pickles are read only through ``torch.load(path, map_location="cpu", weights_only=True)``: a file
whose unpickling would need code is refused (:class:`UnsafeCheckpointError`), never run.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from vaefix_pl.convert.keymap import (
    ConversionError,
    convert_vae_state,
    convert_vocoder_state,
    fold_weight_norm,
    infer_vae_config,
    infer_vocoder_config,
)
from vaefix_pl.core.errors import exception_line
from vaefix_pl.core.geometry import match_geometry
from vaefix_pl.core.utils import sha256_file

KINDS: tuple[str, ...] = ("audioldm", "audioldm2", "musicldm", "tango", "audioldm_48k")
#: diffusers' nominal ``sample_size`` per kind (only used for tiling there): 512 for AudioLDM 1 and
#: 1024 for AudioLDM 2 / MusicLDM (the conversion scripts' image_size defaults and the hub configs);
#: Tango and audioldm_48k work on 1024-frame (10.24 s) mels, so 1024 too.
SAMPLE_SIZES = {"audioldm": 512, "audioldm2": 1024, "musicldm": 1024, "tango": 1024, "audioldm_48k": 1024}
LDM_VAE_PREFIX = "first_stage_model."
LDM_VOCODER_PREFIX = "first_stage_model.vocoder."
TANGO_WEIGHTS = "pytorch_model_vae.bin"
TANGO_CONFIG = "vae_config.json"


class UnsafeCheckpointError(ConversionError):
    """The pickle needs code to load; it was refused without running anything."""


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_checkpoint` wrote."""

    out_dir: str
    source: str
    sha256: str
    kind: str
    geometry: str
    scaling_factor: float
    sample_size: int
    vocoder_padding: str


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``.safetensors`` file, or a pickle with ``weights_only=True``; refuse pickles that carry code."""
    p = Path(path)
    if not p.is_file():
        raise ConversionError(f"{p}: no such file")
    if p.suffix == ".safetensors":
        return dict(load_file(str(p), device="cpu"))
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            raise UnsafeCheckpointError(
                f"{p}: refused: loading it would need unpickling of code (it names {found.group(1)}); "
                "only plain tensors are read"
            ) from None
        detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()
        raise UnsafeCheckpointError(
            f"{p}: refused: not a plain-tensor checkpoint (the weights-only unpickler stopped"
            f"{': ' + detail[0].strip() if detail and 'WeightsUnpickler' in text else ''})"
        ) from None
    except Exception as exc:  # truncated files, not a pickle or zip at all, ...
        raise ConversionError(f"{p}: cannot be read as a PyTorch checkpoint: {exception_line(exc)}") from None
    if not isinstance(obj, dict):
        raise ConversionError(f"{p}: holds a {type(obj).__name__}, expected a dict of tensors")
    return obj


def _sub(sd: dict[str, Any], prefix: str, exclude: str | None = None) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        k2 = k.replace("_orig_mod.", "")  # torch.compile'd modules
        rest = k2[len(prefix) :]
        if k2.startswith(prefix) and not (exclude and rest.startswith(exclude)) and isinstance(v, Tensor):
            out[rest] = v
    return out


def _scale_from(value: Any, where: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ConversionError(f"{where}: scale_factor has {value.numel()} values, expected 1")
        value = value.item()
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConversionError(f"{where}: scale_factor must be a positive number, got {value!r}")
    return float(value)


def _find_tango(src: Path) -> tuple[Path, Path] | None:
    folder = src if src.is_dir() else src.parent
    weights = src if src.is_file() else folder / TANGO_WEIGHTS
    if weights.name == TANGO_WEIGHTS and weights.is_file():
        return weights, folder / TANGO_CONFIG
    return None


def _ldm_kind(sd: dict[str, Any]) -> str:
    # AudioLDM 2 has several conditioners (cond_stage_models.N), AudioLDM 1 / MusicLDM one
    return "audioldm2" if any(k.startswith("cond_stage_models.") for k in sd) else "audioldm"


def convert_checkpoint(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    kind: str | None = None,
    *,
    scaling_factor: float | None = None,
    sample_size: int | None = None,
    vocoder_padding: str | None = None,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert ``src`` into the diffusers folder ``out_dir`` and return what was written.

    Args:
        src: a ``.ckpt``/``.pth``/``.safetensors`` file, or Tango's folder / ``pytorch_model_vae.bin``.
        kind: one of :data:`KINDS`; ``None`` detects it from the files and the weights.
        scaling_factor: overrides the checkpoint's ``scale_factor`` (needed only when it has none).
        sample_size: overrides the kind's nominal ``sample_size``.
        vocoder_padding: ``"hifires"`` (default for 48 kHz) or ``"speecht5"``.
    Raises:
        ConversionError / UnsafeCheckpointError with a one-line message.
    """
    from diffusers import AutoencoderKL
    from transformers import SpeechT5HifiGanConfig

    from vaefix_pl.core.hifires import vocoder_class_for

    src_path = Path(src).expanduser()
    out = Path(out_dir).expanduser()
    if kind is not None and kind not in KINDS:
        raise ConversionError(f"kind must be one of {KINDS}, got {kind!r}")
    if not src_path.exists():
        raise ConversionError(f"{src_path}: no such file or folder")
    for sub in ("vae", "vocoder"):
        if (out / sub).exists() and not overwrite:
            raise ConversionError(f"{out / sub} already exists (pass overwrite=True / --overwrite)")

    tango = _find_tango(src_path)
    if tango is not None and kind not in (None, "tango"):
        raise ConversionError(
            f"{src_path}: holds Tango's {TANGO_WEIGHTS}, not a {kind!r} checkpoint (use kind 'tango')"
        )
    if kind == "tango" and tango is None:
        raise ConversionError(f"{src_path}: no {TANGO_WEIGHTS} found for kind 'tango'")
    if tango is not None and kind in (None, "tango"):
        weights_path, config_path = tango
        kind = detected = "tango"
        where = str(weights_path)
        if not config_path.is_file():
            raise ConversionError(f"{config_path}: missing (Tango's VAE config, holds scale_factor)")
        try:
            with open(config_path, encoding="utf-8") as fh:
                tango_cfg = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ConversionError(f"{config_path}: not valid JSON ({exc})") from None
        if not isinstance(tango_cfg, dict):
            raise ConversionError(f"{config_path}: must be a JSON object")
        sd = load_state(weights_path)
        vae_sd = _sub(sd, "", exclude="vocoder.")
        voc_sd = _sub(sd, "vocoder.")
        raw_scale = tango_cfg.get("scale_factor")
        scale_where = str(config_path)
    else:
        if src_path.is_dir():
            raise ConversionError(f"{src_path}: a folder without {TANGO_WEIGHTS}; give the .ckpt/.pth file")
        weights_path = src_path
        where = str(src_path)
        sd = load_state(src_path)
        if isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        if not any(k.startswith(LDM_VAE_PREFIX) for k in sd):
            raise ConversionError(
                f"{where}: no '{LDM_VAE_PREFIX}*' weights: not an AudioLDM-family checkpoint"
            )
        detected = _ldm_kind(sd)
        vae_sd = _sub(sd, LDM_VAE_PREFIX, exclude="vocoder.")
        voc_sd = _sub(sd, LDM_VOCODER_PREFIX)
        raw_scale = sd.get("scale_factor")
        scale_where = where
        tango_cfg = None
    if not voc_sd:
        raise ConversionError(f"{where}: no vocoder weights found")

    if scaling_factor is not None:
        sf = _scale_from(scaling_factor, "scaling_factor")
    elif raw_scale is None:
        raise ConversionError(f"{scale_where}: no scale_factor found; pass scaling_factor / --scaling-factor")
    else:
        sf = _scale_from(raw_scale, scale_where)

    voc_sd = fold_weight_norm(voc_sd)
    geometry, voc_cfg = infer_vocoder_config(voc_sd, where)
    if kind is None:
        kind = "audioldm_48k" if geometry.name == "audioldm_48k" else detected
    elif (kind == "audioldm_48k") != (geometry.name == "audioldm_48k"):
        raise ConversionError(f"{where}: kind {kind!r} does not fit its {geometry.name} vocoder")

    vae_cfg = infer_vae_config(vae_sd, where)
    if tango_cfg is not None:
        _check_tango_config(tango_cfg, vae_cfg, str(config_path))
    vae_cfg["sample_size"] = int(sample_size or SAMPLE_SIZES[kind])
    vae_cfg["scaling_factor"] = sf
    vae_state = convert_vae_state(vae_sd, len(vae_cfg["block_out_channels"]), where)

    padding = vocoder_padding or ("hifires" if geometry.name == "audioldm_48k" else "speecht5")
    if padding not in ("hifires", "speecht5"):
        raise ConversionError(f"vocoder_padding must be 'hifires' or 'speecht5', got {padding!r}")
    if padding == "hifires":
        voc_cfg["upsample_padding"] = "hifires"
    voc_state = convert_vocoder_state(voc_sd, len(voc_cfg["upsample_rates"]), voc_cfg["model_in_dim"], where)

    # the converted pair must describe a supported geometry (e.g. a 64-mel vocoder with a 4-level VAE is not)
    try:
        matched = match_geometry(vae_cfg, voc_cfg)
    except ValueError as exc:
        raise ConversionError(f"{where}: {exc}") from None

    vae = AutoencoderKL(**vae_cfg)
    _load_strict(vae, vae_state, where, "VAE")
    vocoder = vocoder_class_for(voc_cfg)(SpeechT5HifiGanConfig(**voc_cfg))
    _load_strict(vocoder, voc_state, where, "vocoder")

    out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(str(out / "vae"), safe_serialization=True)
    vocoder.save_pretrained(str(out / "vocoder"), safe_serialization=True)
    result = ConversionResult(
        out_dir=str(out),
        source=str(weights_path),
        sha256=sha256_file(weights_path),
        kind=kind,
        geometry=matched.name,
        scaling_factor=sf,
        sample_size=vae_cfg["sample_size"],
        vocoder_padding=padding,
    )
    with open(out / "conversion.json", "w", encoding="utf-8") as fh:
        json.dump(asdict(result), fh, indent=2)
    return result


def _load_strict(model: torch.nn.Module, state: dict[str, Tensor], where: str, part: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise ConversionError(f"{where}: {part} weights do not fit the inferred architecture ({detail})")
    for k, v in state.items():
        if tuple(expected[k].shape) != tuple(v.shape):
            raise ConversionError(
                f"{where}: {part} weight {k!r} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
            )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def _check_tango_config(cfg: dict, inferred: dict, where: str) -> None:
    """Cross-check Tango's ``vae_config.json`` (``ddconfig`` + ``embed_dim``) against the weights."""
    dd = cfg.get("ddconfig", cfg)
    if not isinstance(dd, dict):
        raise ConversionError(f"{where}: 'ddconfig' must be a JSON object")
    ch, mult = dd.get("ch"), dd.get("ch_mult")
    if ch is not None and mult is not None:
        if not isinstance(mult, list) or not all(isinstance(m, int) for m in mult) or not isinstance(ch, int):
            raise ConversionError(f"{where}: 'ch' / 'ch_mult' must be an integer and a list of integers")
        if [ch * m for m in mult] != inferred["block_out_channels"]:
            raise ConversionError(
                f"{where}: ch {ch} x ch_mult {mult} does not match the weights' {inferred['block_out_channels']}"
            )
    for key in ("z_channels", "embed_dim"):
        value = dd.get(key, cfg.get(key))
        if value is not None and value != inferred["latent_channels"]:
            raise ConversionError(
                f"{where}: {key} {value!r} does not match the weights' {inferred['latent_channels']}"
            )
