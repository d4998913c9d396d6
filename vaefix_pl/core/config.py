"""``ReconstructorConfig``: the one definition of the pipeline settings, their types and defaults.

:class:`~vaefix_pl.core.reconstruct.Reconstructor`, :class:`~vaefix_pl.lightning.module.ReconstructionModule`
(and through it LightningCLI / YAML), the ``vaefix`` parsers, the mel export and ``vaefix diagnose`` all
read their settings from these fields and ``Literal`` types; none restates them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from vaefix_pl.core.choices import SPEEDS, Speed  # noqa: F401 (re-exported)
from vaefix_pl.core.errors import SettingsError
from vaefix_pl.core.frontend import Framing
from vaefix_pl.core.models import DEFAULT_SOURCE, Precision, normalize_precision
from vaefix_pl.core.windowing import Crossfade

LatentMode = Literal["mode", "sample"]
LATENT_MODES: tuple[str, ...] = get_args(LatentMode)

#: ``speed`` -> :meth:`~vaefix_pl.core.reconstruct.Reconstructor.optimize` settings (on CUDA). Every
#: rewrite is exact; each was kept because it measured faster on an H100 or H200 (docs/PERFORMANCE.md).
SPEED_PRESETS: dict[str, dict[str, Any]] = {
    "none": {"vocoder_channels_last": False, "cudnn_benchmark": False},
    "auto": {"vocoder_channels_last": True, "cudnn_benchmark": None},
    "compile": {
        "channels_last": True,
        "vocoder_channels_last": True,
        "cudnn_benchmark": None,
        "compile": True,
        "freeze": False,  # frozen graphs bypass Inductor's caches; no faster (docs/STARTUP.md)
        "pad_narrow_convs": True,
        "attention_math": True,
        "polyphase_dilated": True,
        "narrow_convs": True,
    },
}
assert tuple(SPEED_PRESETS) == SPEEDS

#: What ``speed: auto`` adds per precision: the exact rewrites that measured faster run eagerly at
#: batch 64 (``benchmarks/eager_rewrites.py``, docs/PERFORMANCE.md). None was kept for bf16 (gains under 1.5 %).
AUTO_BY_PRECISION: dict[str, dict[str, Any]] = {
    "fp32": {"attention_math": True, "polyphase_dilated": True, "narrow_convs": True},
}


def speed_settings(speed: str, precision: str) -> dict[str, Any]:
    """The :meth:`~vaefix_pl.core.reconstruct.Reconstructor.optimize` settings of ``speed`` for a
    model in ``precision`` (:data:`SPEED_PRESETS`, plus :data:`AUTO_BY_PRECISION` for ``auto``)."""
    settings = dict(SPEED_PRESETS[speed])
    if speed == "auto":
        settings.update(AUTO_BY_PRECISION.get(normalize_precision(precision), {}))
    return settings


@dataclass(frozen=True)
class ReconstructorConfig:
    """Everything that decides a reconstruction (see ``ReconstructionModule`` for each setting's meaning).

    ``model``: local diffusers folder or hub id; ``precision``: ``fp32`` | ``bf16`` | ``fp16`` (or a
    Lightning alias); ``framing``; ``latent_mode`` (``sample`` is seeded by ``seed``); ``pad_frames_to``:
    canonical-length multiple in frames; ``allow_download``; ``speed``: CUDA preset of
    :data:`SPEED_PRESETS`; ``window_seconds`` / ``window_overlap_seconds`` / ``max_windows`` /
    ``crossfade``: long items in overlapping windows (``window_seconds=None``: every item whole).
    """

    model: str = DEFAULT_SOURCE
    precision: Precision = "fp32"
    framing: Framing = "tacotron"
    latent_mode: LatentMode = "mode"
    seed: int = 0
    pad_frames_to: int = 1024
    allow_download: bool = False
    speed: Speed = "auto"
    window_seconds: float | None = None
    window_overlap_seconds: float = 1.0
    max_windows: int | None = None
    crossfade: Crossfade = "equal_gain"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "precision", normalize_precision(self.precision))
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if self.speed not in SPEEDS:
            raise SettingsError(f"speed must be one of {SPEEDS}, got {self.speed!r}")
        if self.crossfade not in get_args(Crossfade):
            raise SettingsError(f"crossfade must be one of {get_args(Crossfade)}, got {self.crossfade!r}")
        if self.max_windows is not None and int(self.max_windows) < 1:
            raise SettingsError(f"max_windows must be >= 1 or None, got {self.max_windows}")
        if self.latent_mode not in LATENT_MODES:
            raise SettingsError(f"latent_mode must be one of {LATENT_MODES}, got {self.latent_mode!r}")
        if self.pad_frames_to < 4 or self.pad_frames_to % 4:
            raise SettingsError(
                f"pad_frames_to must be a positive multiple of 4 (VAE down factor), got {self.pad_frames_to}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


class Hparams(dict):
    """Constructor arguments as Lightning's ``hparams`` is: a dict with attribute access (for the
    classes that also run without Lightning)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc
