"""``RepairConfig``: the one definition of the repair chain's settings, and the bug report's final preset.

:class:`~vaefix_pl.repair.chain.PostProcessChain` takes these fields as keyword arguments (YAML / LightingCLI
``postprocess: {...}``) or a ``RepairConfig``; ``describe()`` and :data:`SEED_FINAL_SETTINGS` are derived
from the fields, never written out again.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from vaefix_pl.core.errors import SettingsError
from vaefix_pl.core.frontend import SAMPLE_RATE, TRAINED_LOG_MEL_RANGE
from vaefix_pl.repair.dsp import BlockSize

MelMode = Literal["guard", "standardize", "minmax", "none"]
MEL_MODES: tuple[str, ...] = get_args(MelMode)

#: field type (as written below) -> how a value given in YAML/JSON is made that type
_COERCE = {
    "float": float,
    "int": int,
    "bool": bool,
    "tuple[float, float]": lambda v: (float(v[0]), float(v[1])),
}


@dataclass(frozen=True)
class RepairConfig:
    """Settings of the bug report's repair chain (defaults: the project's safe chain, mel ``"guard"`` only).

    Mel step: ``mel_mode`` with ``target_mean``/``target_std`` (``"standardize"``), ``target_range``
    (``"minmax"``), ``guard_range`` (``"guard"``, nats). Waveform stages, in order: ``outliers``
    (``outlier_k`` sigma, median of ``outlier_size``), ``fade`` (``fade_samples``), ``bandpass``
    (elliptic ``order``, ``ripple_db``, ``stop_db``, ``low_hz``-``high_hz``; ``block_size`` of its matmul
    form), ``compress`` (``threshold``, ``ratio``). ``sample_rate`` in Hz.
    """

    mel_mode: MelMode = "guard"
    target_mean: float = -5.0
    target_std: float = 5.0
    target_range: tuple[float, float] = (-10.0, 10.0)
    guard_range: tuple[float, float] = TRAINED_LOG_MEL_RANGE
    outliers: bool = True
    outlier_k: float = 3.0
    outlier_size: int = 5
    fade: bool = True
    fade_samples: int = 1024
    bandpass: bool = True
    low_hz: float = 60.0
    high_hz: float = 7000.0
    order: int = 5
    ripple_db: float = 1.0
    stop_db: float = 60.0
    compress: bool = True
    threshold: float = 0.7
    ratio: float = 0.3
    sample_rate: int = SAMPLE_RATE
    block_size: BlockSize = "auto"

    def __post_init__(self) -> None:
        if self.mel_mode not in MEL_MODES:
            raise SettingsError(f"mel_mode must be one of {MEL_MODES}, got {self.mel_mode!r}")
        if int(self.outlier_size) < 1 or int(self.outlier_size) % 2 == 0:
            raise SettingsError(f"outlier_size must be a positive odd integer, got {self.outlier_size}")
        if self.block_size not in (None, "auto") and int(self.block_size) < 2:
            raise SettingsError(f"block_size must be 'auto', None or >= 2, got {self.block_size!r}")
        for f in fields(self):
            coerce = _COERCE.get(str(f.type))
            if coerce is not None:
                object.__setattr__(self, f.name, coerce(getattr(self, f.name)))
        if self.block_size not in (None, "auto"):
            object.__setattr__(self, "block_size", int(self.block_size))

    def describe(self) -> dict[str, Any]:
        """The settings as a plain JSON-able dict; ``RepairConfig(**config.describe())`` rebuilds it."""
        return describe(self)


def describe(settings: Any) -> dict[str, Any]:
    """Every :class:`RepairConfig` field of ``settings`` (a config or a chain) as a plain dict (tuples as lists)."""
    out = {}
    for f in fields(RepairConfig):
        v = getattr(settings, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


#: The the bug report's final run (``vae_final_noise_fix.py``): every waveform stage at the bug report's values (the
#: defaults) and the mel min-max normalised to (-8, 2), the HiFiGAN input range its final report gives.
SEED_FINAL = RepairConfig(mel_mode="minmax", target_range=(-8.0, 2.0))
#: :data:`SEED_FINAL` as keyword arguments (for ``ReconstructionModule(postprocess=...)`` and the CLI).
SEED_FINAL_SETTINGS: dict[str, Any] = SEED_FINAL.describe()
