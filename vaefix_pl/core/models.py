"""Load and validate AudioLDM2's frozen VAE (diffusers) and HiFi-GAN vocoder (transformers), offline first.

``source`` is a local diffusers-format folder (``<source>/vae``, ``<source>/vocoder``) or a Hugging
Face hub id (default ``cvssp/audioldm2``) resolved from the local HF cache; nothing is downloaded
unless ``allow_download=True``. Only safetensors weights are read (never a pickle ``.bin``, whose
unpickling can run code), and no ``trust_remote_code``: the VAE and vocoder classes are the project's
own (:mod:`vaefix_pl.core.nets`, checked against diffusers' ``AutoencoderKL`` and transformers'
``SpeechT5HifiGan``), so no code comes with the weights. The configs are read as plain JSON; diffusers
and transformers are imported only for a checkpoint those classes cannot hold.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaefix_pl.core.choices import PRECISIONS, Precision  # noqa: F401 (re-exported)
from vaefix_pl.core.errors import ModelError
from vaefix_pl.core.frontend import SAMPLE_RATE
from vaefix_pl.core.geometry import (
    GEOMETRIES,
    KNOWN_CHECKPOINTS,
    ConfigTypeError,
    Geometry,
    UnsupportedGeometry,
    match_geometry,
)
from vaefix_pl.core.utils import read_json_object

DEFAULT_SOURCE = "cvssp/audioldm2"
_PRECISION_ALIASES = {
    "32": "fp32", "32-true": "fp32", "float32": "fp32", "tf32": "fp32",
    "bf16-mixed": "bf16", "bfloat16": "bf16", "bf16-true": "bf16",
    "16": "fp16", "16-mixed": "fp16", "float16": "fp16", "fp16-mixed": "fp16",
}  # fmt: skip

# cvssp/audioldm2 vae/config.json (architecture fields).
FULL_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 1,
    "out_channels": 1,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [128, 256, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 8,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.4110932946205139,
    "force_upcast": True,
}

# cvssp/audioldm2 vocoder/config.json (SpeechT5HifiGanConfig fields).
FULL_VOCODER_CONFIG: dict[str, Any] = {
    "model_in_dim": 64,
    "sampling_rate": 16000,
    "upsample_initial_channel": 1024,
    "upsample_rates": [5, 4, 2, 2, 2],
    "upsample_kernel_sizes": [16, 16, 8, 4, 4],
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "initializer_range": 0.01,
    "leaky_relu_slope": 0.1,
    "normalize_before": False,  # the config class defaults to True: AudioLDM2 sets it False
}

VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"
VOCODER_WEIGHTS = "model.safetensors"


class ModelNotFoundError(ModelError, FileNotFoundError):
    """The VAE/vocoder could not be found locally; the message says how to get them."""


class ModelConfigError(ModelError, ValueError):
    """The VAE/vocoder config does not match AudioLDM2's front-end; the message names the field."""


def normalize_precision(precision: str) -> Precision:
    """Map ``"fp32" | "bf16" | "fp16"`` and Lightning-style aliases (``"bf16-mixed"``, ...) to ours."""
    p = _PRECISION_ALIASES.get(str(precision).lower(), str(precision).lower())
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (or a Lightning alias), got {precision!r}")
    return p  # type: ignore[return-value]


def _how_to_get(source: str) -> str:
    known = KNOWN_CHECKPOINTS.get(source)
    if known is not None and known.format == "original":
        files = " ".join(known.files) or "the checkpoint"
        return (
            f"{source} has no diffusers folder: download {files} (e.g. `hf download {source} {files}`) "
            f"and run `vaefix convert <file> --out DIR`, then pass --model DIR."
        )
    return (
        f'Get the weights once (~440 MB) with `hf download {source} --include "vae/*" "vocoder/*"`, '
        f"or point --model / `model:` at a local diffusers-format folder that has "
        f"vae/ and vocoder/ subfolders (config.json + safetensors), or pass allow_download=True "
        f"(--allow-download) to let this run fetch them."
    )


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not source.startswith((".", "~", os.sep))
        and not any(p in (".", "..") for p in parts)
    )


def resolve_source(
    source: str | os.PathLike = DEFAULT_SOURCE,
    allow_download: bool = False,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Return a local folder holding ``vae/`` and ``vocoder/`` for ``source``.

    A local folder is used as is. A hub id is looked up in the HF cache (``local_files_only``) unless
    ``allow_download``; the environment's ``HF_HUB_OFFLINE`` is respected by huggingface_hub.
    """
    src = str(source)
    path = Path(src).expanduser()
    if path.is_dir():
        missing = [sub for sub in ("vae", "vocoder") if not (path / sub).is_dir()]
        if missing:
            raise ModelNotFoundError(
                f"{path} is not an AudioLDM2 diffusers folder: missing subfolder(s) {missing}. "
                + _how_to_get(DEFAULT_SOURCE)
            )
        return path
    if path.exists():
        raise ModelNotFoundError(f"{path} exists but is not a folder. " + _how_to_get(DEFAULT_SOURCE))
    if not _looks_like_hub_id(src):
        raise ModelNotFoundError(f"No model folder at {path}. " + _how_to_get(DEFAULT_SOURCE))
    known = KNOWN_CHECKPOINTS.get(src)
    if known is not None and known.format == "original":
        raise ModelNotFoundError(_how_to_get(src))

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        local = snapshot_download(
            repo_id=src,
            revision=revision,
            cache_dir=cache_dir,
            # configs and safetensors only: a download never fetches pickle weights
            allow_patterns=[
                f"{sub}/{pat}" for sub in ("vae", "vocoder") for pat in ("*.json", "*.safetensors")
            ],
            local_files_only=not allow_download,
        )
    except LocalEntryNotFoundError as exc:
        raise ModelNotFoundError(
            f"{src!r} is not in the local Hugging Face cache and downloads are off. " + _how_to_get(src)
        ) from exc
    except Exception as exc:  # network or auth errors when downloading is allowed
        raise ModelNotFoundError(f"Could not get {src!r}: {exc}. " + _how_to_get(src)) from exc
    local_path = Path(local)
    if not (local_path / "vae").is_dir() or not (local_path / "vocoder").is_dir():
        raise ModelNotFoundError(f"{src!r} in the cache lacks vae/ or vocoder/. " + _how_to_get(src))
    return local_path


def _bad_link(path: Path) -> str | None:
    """Why ``path`` is a symbolic link that leads to no file (a loop, a broken target), else ``None``."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path} is a symbolic link loop (following the links never reaches a file)"
        return f"{path} is a broken symbolic link (target {os.readlink(path)!r} does not exist)"
    return None


def _read_config(folder: Path) -> dict[str, Any]:
    cfg_path = folder / "config.json"
    link = _bad_link(cfg_path)
    if link is not None:
        raise ModelNotFoundError(link)
    if not cfg_path.is_file():
        raise ModelNotFoundError(f"{cfg_path} is missing. " + _how_to_get(DEFAULT_SOURCE))
    try:
        return read_json_object(cfg_path)
    except ValueError as exc:
        raise ModelConfigError(f"{cfg_path}: {exc}") from None


@dataclass
class AudioLDM2Models:
    """The frozen VAE and vocoder, with what the pipeline needs to know about them.

    ``geometry``: the matched front-end geometry, carrying the checkpoint's own ``scaling_factor``.
    """

    vae: nn.Module
    vocoder: nn.Module
    scaling_factor: float
    precision: Precision = "fp32"
    source: str = ""
    path: Path | None = None
    geometry: Geometry | None = None

    @property
    def sample_rate(self) -> int:
        return self.geometry.sample_rate if self.geometry is not None else SAMPLE_RATE

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def sample_size(self) -> int:
        return int(getattr(self.vae.config, "sample_size", 1024))


def freeze(module: nn.Module) -> nn.Module:
    """``eval()`` and ``requires_grad_(False)``: the models are frozen."""
    module.eval()
    module.requires_grad_(False)
    return module


def apply_precision_policy(precision: str, device: torch.device | str | None) -> Precision:
    """Normalise ``precision``; for ``fp32`` on CUDA allow TF32 matmuls/convolutions.

    ``bf16`` and ``fp16`` are applied as autocast regions by the pipeline (weights stay float32), and
    the VAE never runs in float16: ``fp16`` upcasts it to float32, as diffusers' ``force_upcast`` intends.
    """
    p = normalize_precision(precision)
    if device is not None and torch.device(device).type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for float32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    return p


def load_audioldm2(
    source: str | os.PathLike = DEFAULT_SOURCE,
    precision: str = "fp32",
    device: torch.device | str | None = None,
    allow_download: bool = False,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> AudioLDM2Models:
    """Load the VAE (``<source>/vae``) and vocoder (``<source>/vocoder``) of any supported geometry, frozen.

    The configs are matched with :func:`~vaefix_pl.core.geometry.match_geometry`; both models are
    loaded by :func:`~vaefix_pl.core.fastload.load_models` into :mod:`vaefix_pl.core.nets` classes
    (HiFiRes vocoder padding where its config asks).
    Raises :class:`ModelNotFoundError` (with how to get the weights), :class:`ModelConfigError`
    (unreadable config) or a :class:`~vaefix_pl.core.geometry.GeometryError` (naming the field, or
    listing the supported geometries), all :class:`~vaefix_pl.core.errors.ModelError`. Weights stay float32 for every precision; the pipeline applies
    bf16/fp16 through autocast and keeps the VAE out of float16.
    """
    # meta-device build, safetensors straight to ``device``, no random init (core/fastload.py)
    from vaefix_pl.core.fastload import load_models

    p = apply_precision_policy(precision, device)
    path = resolve_source(source, allow_download=allow_download, revision=revision, cache_dir=cache_dir)
    vae_dir, voc_dir = path / "vae", path / "vocoder"
    vae_cfg, voc_cfg = _read_config(vae_dir), _read_config(voc_dir)
    geometry = match_geometry_at(vae_cfg, voc_cfg, path)
    for folder, weights in ((vae_dir, VAE_WEIGHTS), (voc_dir, VOCODER_WEIGHTS)):
        if not (folder / weights).is_file():
            others = sorted(p.name for p in folder.glob("*.bin"))
            link = _bad_link(folder / weights)
            if link is not None:
                raise ModelNotFoundError(link)
            if others:  # a local folder of pickle weights: saying "download" would not help
                raise ModelNotFoundError(
                    f"{folder / weights} is missing (found {others}: only safetensors weights are loaded); "
                    "save the model with safe_serialization=True, or point --model at a folder with safetensors"
                )
            raise ModelNotFoundError(f"{folder / weights} is missing. " + _how_to_get(str(source)))

    vae, vocoder = load_models(path, device if device is not None else "cpu")
    vae, vocoder = freeze(vae.float()), freeze(vocoder.float())
    return AudioLDM2Models(
        vae=vae,
        vocoder=vocoder,
        scaling_factor=float(vae.config.scaling_factor),
        precision=p,
        source=str(source),
        path=path,
        geometry=geometry,
    )


def read_geometry(path: str | os.PathLike) -> Geometry:
    """The geometry of a local model folder from its two ``config.json`` files (no weights loaded)."""
    folder = Path(path)
    return match_geometry_at(_read_config(folder / "vae"), _read_config(folder / "vocoder"), folder)


class ModelConfigTypeError(ModelConfigError, ConfigTypeError):
    """A model folder's config field has the wrong type or value (one line: folder, part, key)."""


class UnsupportedModelGeometry(ModelConfigError, UnsupportedGeometry):
    """A model folder's configs describe an unsupported geometry (one line: folder, the differing
    fields, the supported geometries)."""


def _differences(vae: Mapping[str, Any], voc: Mapping[str, Any]) -> str:
    """The fields that differ from the nearest supported geometry, e.g. ``vocoder model_in_dim 80 (not 64)``."""
    got = {
        "vocoder sampling_rate": voc.get("sampling_rate"),
        "vocoder model_in_dim": voc.get("model_in_dim"),
        "vocoder upsample_rates": math.prod(voc.get("upsample_rates") or [0]),
        "vae block_out_channels": 2 ** (len(vae.get("block_out_channels") or [0]) - 1),
    }

    def want(g: Geometry) -> dict[str, Any]:
        return dict(zip(got, (g.sample_rate, g.n_mels, g.hop, g.vae_down)))

    nearest = max(GEOMETRIES.values(), key=lambda g: sum(got[k] == v for k, v in want(g).items()))
    what = {"vocoder upsample_rates": "product", "vae block_out_channels": "down factor"}
    return ", ".join(
        f"{k} {what.get(k, '')}{' ' if k in what else ''}{got[k]} (not {v})"
        for k, v in want(nearest).items()
        if got[k] != v
    )


def match_geometry_at(vae_config: Any, vocoder_config: Any, where: str | os.PathLike) -> Geometry:
    """:func:`~vaefix_pl.core.geometry.match_geometry` for a model folder: one line naming the folder,
    and for an unsupported geometry the fields that differ from the nearest supported one."""
    try:
        return match_geometry(vae_config, vocoder_config)
    except UnsupportedGeometry as exc:
        diff = _differences(vae_config, vocoder_config)
        raise UnsupportedModelGeometry(f"{where}: {diff}: {exc}") from None
    except ConfigTypeError as exc:
        raise ModelConfigTypeError(f"{where}: {exc}") from None


def is_full_size(rec: Any) -> bool:
    """True when ``rec.vae`` and ``rec.vocoder`` have AudioLDM2's full-size architecture (not tiny test models)."""
    vae = list(getattr(rec.vae.config, "block_out_channels", []))
    voc = getattr(getattr(rec.vocoder, "config", None), "upsample_initial_channel", None)
    return (
        vae == FULL_VAE_CONFIG["block_out_channels"]
        and voc == FULL_VOCODER_CONFIG["upsample_initial_channel"]
    )


def resolve_model(
    model: str | None, fallback: Callable[[ModelNotFoundError], str | os.PathLike] | None = None
) -> tuple[str, bool]:
    """``(path, is_real)``: the given or cached AudioLDM2 weights (``True``); when ``model`` is ``None``
    and none are found, ``(fallback(error), False)``. Quiet: printing a banner is the caller's (CLI) job.

    Raises :class:`ModelNotFoundError` when ``model`` was given, or no fallback, and nothing is found.
    """
    try:
        return str(resolve_source(model or DEFAULT_SOURCE)), True
    except ModelNotFoundError as exc:
        if model is not None or fallback is None:
            raise
        return str(fallback(exc)), False
