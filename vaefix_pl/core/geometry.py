"""Front-end geometries of the AudioLDM family, and matching a model folder's configs to one of them.

A geometry is everything the reconstruction path needs to know about a checkpoint's mel front-end
(sample rate, STFT, mel bank, framing, log floor) and the VAE's down factor. The checkpoint's own
``scaling_factor``, ``latent_channels`` and ``sample_size`` are read from its config and recorded on
the matched :class:`Geometry`, never assumed.

Imports only the standard library and :mod:`vaefix_pl.core.errors` (its errors are model errors).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from vaefix_pl.core.errors import ModelError

Framing = Literal["tacotron", "hifigan"]
FRAMINGS: tuple[str, ...] = ("tacotron", "hifigan")
LOG_FLOOR = 1e-5


class GeometryError(ModelError, ValueError):
    """A model config cannot be matched to a supported geometry; the message is one line."""


class UnsupportedGeometry(GeometryError):
    """The configs are well-formed but describe a front-end this project does not support."""


class ConfigTypeError(GeometryError):
    """A config field has the wrong type or value; the message names the key."""


@dataclass(frozen=True)
class Geometry:
    """One supported front-end geometry (units: Hz, samples, mel bins, frames).

    ``framing`` is the default framing; both ``"tacotron"`` (reflect-pad ``n_fft/2``, frame ``k``
    centred on sample ``k*hop``) and ``"hifigan"`` (reflect-pad ``(n_fft-hop)/2``, ``center=False``)
    exist upstream for every geometry. The last four fields are ``None`` in the table and filled in by
    :func:`match_geometry` from the model's own configs.
    """

    name: str
    sample_rate: int
    n_fft: int
    win_length: int
    hop: int
    n_mels: int
    fmin: float
    fmax: float
    vae_down: int
    framing: Framing = "tacotron"
    log_floor: float = LOG_FLOOR
    models: str = ""
    scaling_factor: float | None = None
    latent_channels: int | None = None
    sample_size: int | None = None
    vae_levels: int | None = None

    @property
    def vae_levels_expected(self) -> int:
        """Number of VAE levels (``len(block_out_channels)``) that gives :attr:`vae_down`."""
        return int(math.log2(self.vae_down)) + 1

    @property
    def log_floor_value(self) -> float:
        """``ln(log_floor)``: the log-mel of silence (-11.5129 for 1e-5)."""
        return math.log(self.log_floor)

    def frame_padding(self, framing: Framing | None = None) -> int:
        """Reflect padding (samples, each side) before an uncentred STFT."""
        f = _check_framing(framing or self.framing)
        return self.n_fft // 2 if f == "tacotron" else (self.n_fft - self.hop) // 2

    def num_frames(self, num_samples: int, framing: Framing | None = None) -> int:
        """Frames made from ``num_samples`` samples: ``N//hop + 1`` (tacotron) or ``N//hop`` (hifigan)."""
        f = _check_framing(framing or self.framing)
        return num_samples // self.hop + 1 if f == "tacotron" else num_samples // self.hop

    def summary(self) -> str:
        """``"16000 Hz/64 mels/hop 160"``, the short form used in messages."""
        return f"{self.sample_rate} Hz/{self.n_mels} mels/hop {self.hop}"


def _check_framing(framing: str) -> str:
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
    return framing


#: 16 kHz / 64 mels / hop 160 (haoheliu/AudioLDM2 audioldm2/utils.py default configs;
#: diffusers scripts/convert_original_audioldm*_to_diffusers.py DEFAULT_CONFIG; declare-lab/tango
#: stft_config.json per the reference page). VAE ch_mult [1, 2, 4]: 3 levels, down 4.
AUDIOLDM_16K = Geometry(
    name="audioldm_16k",
    sample_rate=16000,
    n_fft=1024,
    win_length=1024,
    hop=160,
    n_mels=64,
    fmin=0.0,
    fmax=8000.0,
    vae_down=4,
    models="AudioLDM 1/2, MusicLDM, Tango",
)

#: 48 kHz / 256 mels / hop 480 (haoheliu/AudioLDM2 audioldm2/utils.py get_audioldm_48k_config:
#: filter_length 2048, hop 480, win 2048, 256 mels, 20-24000 Hz; ddconfig ch_mult [1, 2, 4, 8],
#: z_channels 16: 4 levels, down 8; vocoder upsample [6, 5, 4, 2, 2] in get_vocoder_config_48k).
AUDIOLDM_48K = Geometry(
    name="audioldm_48k",
    sample_rate=48000,
    n_fft=2048,
    win_length=2048,
    hop=480,
    n_mels=256,
    fmin=20.0,
    fmax=24000.0,
    vae_down=8,
    models="audioldm_48k",
)

GEOMETRIES: dict[str, Geometry] = {g.name: g for g in (AUDIOLDM_16K, AUDIOLDM_48K)}


def supported_summary() -> str:
    """One line listing the supported geometries."""
    return ", ".join(f"{g.summary()} ({g.models})" for g in GEOMETRIES.values())


def get_geometry(name: str) -> Geometry:
    """The table entry called ``name``; :class:`UnsupportedGeometry` (one line) otherwise."""
    try:
        return GEOMETRIES[name]
    except KeyError:
        raise UnsupportedGeometry(f"unknown geometry {name!r}; supported: {', '.join(GEOMETRIES)}") from None


def geometry_for_rate(sample_rate: int) -> Geometry:
    """The table entry at ``sample_rate`` Hz (each supported rate has one); :class:`UnsupportedGeometry` otherwise."""
    for g in GEOMETRIES.values():
        if g.sample_rate == int(sample_rate):
            return g
    raise UnsupportedGeometry(f"no supported geometry at {sample_rate} Hz; supported: {supported_summary()}")


# ----------------------------------------------------------------------------------------- validation


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _need_mapping(cfg: Any, part: str) -> Mapping[str, Any]:
    if not isinstance(cfg, Mapping):
        raise ConfigTypeError(f"{part} config must be a JSON object (dict), got {type(cfg).__name__}")
    return cfg


def _need_int(cfg: Mapping[str, Any], key: str, part: str, *, required: bool = True) -> int | None:
    if key not in cfg or cfg[key] is None:
        if required:
            raise ConfigTypeError(f"{part} config is missing {key!r}")
        return None
    v = cfg[key]
    if not _is_int(v) or v <= 0:
        raise ConfigTypeError(f"{part} config {key!r} must be a positive integer, got {v!r}")
    return v


def _need_int_list(cfg: Mapping[str, Any], key: str, part: str) -> list[int]:
    if key not in cfg:
        raise ConfigTypeError(f"{part} config is missing {key!r}")
    v = cfg[key]
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or not v:
        raise ConfigTypeError(f"{part} config {key!r} must be a non-empty list of integers, got {v!r}")
    if not all(_is_int(x) and x > 0 for x in v):
        raise ConfigTypeError(f"{part} config {key!r} must hold positive integers, got {list(v)!r}")
    return list(v)


def _need_scaling_factor(cfg: Mapping[str, Any]) -> float:
    if "scaling_factor" not in cfg:
        # diffusers would silently use Stable Diffusion's 0.18215: never right for this family
        raise ConfigTypeError("vae config is missing 'scaling_factor' (it belongs to the checkpoint)")
    sf = cfg["scaling_factor"]
    if not isinstance(sf, (int, float)) or isinstance(sf, bool) or not math.isfinite(sf) or sf <= 0:
        raise ConfigTypeError(f"vae config 'scaling_factor' must be a positive number, got {sf!r}")
    return float(sf)


def _sample_size(cfg: Mapping[str, Any]) -> int | None:
    v = cfg.get("sample_size")
    if v is None:
        return None
    if _is_int(v) and v > 0:
        return v
    if isinstance(v, Sequence) and not isinstance(v, (str, bytes)) and v and all(_is_int(x) for x in v):
        return int(v[0])
    raise ConfigTypeError(f"vae config 'sample_size' must be an integer or a list of integers, got {v!r}")


# ------------------------------------------------------------------------------------------- matching


def match_geometry(vae_config: Mapping[str, Any], vocoder_config: Mapping[str, Any]) -> Geometry:
    """Match a model folder's ``vae/config.json`` and ``vocoder/config.json`` to a supported geometry.

    Matched on the vocoder's ``sampling_rate``, ``model_in_dim`` (mel bins) and the product of its
    ``upsample_rates`` (the hop), and on the VAE's number of levels (``len(block_out_channels)``, which
    sets the down factor). Returns the table entry with ``scaling_factor``, ``latent_channels``,
    ``sample_size`` and ``vae_levels`` filled in from the VAE config.

    Raises:
        ConfigTypeError: a field is missing or of the wrong type (one line, naming the key).
        UnsupportedGeometry: the configs are valid but no supported geometry matches (one line that
            lists the supported ones).
    """
    vae = _need_mapping(vae_config, "vae")
    voc = _need_mapping(vocoder_config, "vocoder")

    sr = _need_int(voc, "sampling_rate", "vocoder")
    n_mels = _need_int(voc, "model_in_dim", "vocoder")
    rates = _need_int_list(voc, "upsample_rates", "vocoder")
    kernels = _need_int_list(voc, "upsample_kernel_sizes", "vocoder")
    if len(kernels) != len(rates):
        raise ConfigTypeError(
            f"vocoder config 'upsample_kernel_sizes' has {len(kernels)} entries, "
            f"'upsample_rates' has {len(rates)}"
        )
    if voc.get("normalize_before", True) is not False:
        # SpeechT5HifiGanConfig defaults it to true; the family's vocoders take the raw log-mel
        raise ConfigTypeError(
            f"vocoder config 'normalize_before' must be false (got {voc.get('normalize_before', 'missing')!r})"
        )
    hop = math.prod(rates)

    blocks = _need_int_list(vae, "block_out_channels", "vae")
    latent = _need_int(vae, "latent_channels", "vae")
    for key in ("in_channels", "out_channels"):
        if vae.get(key) != 1:
            raise ConfigTypeError(
                f"vae config {key!r} must be 1 (one mel 'image' channel), got {vae.get(key)!r}"
            )
    sf = _need_scaling_factor(vae)
    sample_size = _sample_size(vae)
    levels = len(blocks)
    down = 2 ** (levels - 1)

    for g in GEOMETRIES.values():
        if (sr, n_mels, hop, down) == (g.sample_rate, g.n_mels, g.hop, g.vae_down):
            return dataclasses.replace(
                g, scaling_factor=sf, latent_channels=latent, sample_size=sample_size, vae_levels=levels
            )
    raise UnsupportedGeometry(
        f"{sr} Hz, {n_mels} mels, hop {hop}, VAE down {down} ({levels} levels) is not supported; "
        f"supported: "
        + ", ".join(f"{g.summary()}/VAE down {g.vae_down} ({g.models})" for g in GEOMETRIES.values())
    )


# ------------------------------------------------------------------------------------ known checkpoints

CheckpointFormat = Literal["diffusers", "original"]


@dataclass(frozen=True)
class KnownCheckpoint:
    """A public checkpoint of the family. ``None`` means not known here (never guessed)."""

    hub_id: str
    geometry: str
    format: CheckpointFormat
    scaling_factor: float | None = None
    sample_size: int | None = None
    latent_channels: int | None = None
    notes: str = ""
    files: tuple[str, ...] = field(default_factory=tuple)


# Values come from the hub configs as collected on the project's reference page; none could be
# re-checked offline here (docs/MODELS.md says which facts were verified against upstream code).
KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {
    c.hub_id: c
    for c in (
        KnownCheckpoint(
            "cvssp/audioldm2",
            "audioldm_16k",
            "diffusers",
            0.4110932946205139,
            1024,
            8,
            "AudioLDM 2 base; the project's default",
        ),
        KnownCheckpoint(
            "cvssp/audioldm2-large",
            "audioldm_16k",
            "diffusers",
            None,
            None,
            None,
            "'large' changes the UNet only",
        ),
        KnownCheckpoint("cvssp/audioldm2-music", "audioldm_16k", "diffusers", None, None, None, "music"),
        KnownCheckpoint(
            "anhnct/audioldm2_gigaspeech",
            "audioldm_16k",
            "diffusers",
            None,
            None,
            None,
            "speech; has vae/ and vocoder/",
        ),
        KnownCheckpoint(
            "cvssp/audioldm", "audioldm_16k", "diffusers", 0.9227914214134216, 512, 8, "AudioLDM 1 s-full"
        ),
        KnownCheckpoint(
            "cvssp/audioldm-s-full-v2",
            "audioldm_16k",
            "diffusers",
            0.9392935633659363,
            512,
            8,
            "scaling_factor from a third-party copy",
        ),
        KnownCheckpoint("cvssp/audioldm-m-full", "audioldm_16k", "diffusers", 0.9138255715370178, 512, 8, ""),
        KnownCheckpoint(
            "cvssp/audioldm-l-full",
            "audioldm_16k",
            "diffusers",
            0.9654927849769592,
            512,
            8,
            "same VAE weights as cvssp/audioldm, different scaling_factor",
        ),
        KnownCheckpoint(
            "ucsd-reach/musicldm",
            "audioldm_16k",
            "diffusers",
            1.075324296951294,
            1024,
            8,
            "MusicLDM; own vocoder weights",
        ),
        KnownCheckpoint(
            "declare-lab/tango",
            "audioldm_16k",
            "original",
            0.9227914214134216,
            None,
            8,
            "convert with `vaefix convert`; VAE = audioldm-s-full's",
            ("pytorch_model_vae.bin", "vae_config.json"),
        ),
        KnownCheckpoint(
            "declare-lab/tango2",
            "audioldm_16k",
            "original",
            None,
            None,
            None,
            "convert with `vaefix convert`",
            ("pytorch_model_vae.bin", "vae_config.json"),
        ),
        KnownCheckpoint(
            "declare-lab/tango-full",
            "audioldm_16k",
            "original",
            None,
            None,
            None,
            "convert with `vaefix convert`",
            ("pytorch_model_vae.bin", "vae_config.json"),
        ),
        KnownCheckpoint(
            "haoheliu/audioldm_48k",
            "audioldm_48k",
            "original",
            None,
            None,
            16,
            "no diffusers port; convert with `vaefix convert` (HiFiRes vocoder padding)",
            ("audioldm_48k.pth",),
        ),
    )
}
