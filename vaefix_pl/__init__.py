"""vaefix-pl: faithful AudioLDM2 VAE + HiFi-GAN reconstruction, repair chain and measurement on Lightning.

Public names are imported lazily so that ``import vaefix_pl`` stays cheap (Lightning, diffusers and
transformers load only when the part that needs them is used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    # core
    "LogMelFrontend": "vaefix_pl.frontend",
    "normalize_level": "vaefix_pl.frontend",
    "load_audioldm2": "vaefix_pl.models",
    "AudioLDM2Models": "vaefix_pl.models",
    "Reconstructor": "vaefix_pl.reconstruct",
    "ReconstructionOutput": "vaefix_pl.reconstruct",
    "load_audio": "vaefix_pl.audio",
    "probe_signals": "vaefix_pl.data",
    # repair chain
    "PostProcessChain": "vaefix_pl.postprocess",
    # Lightning parts
    "AudioDataModule": "vaefix_pl.data",
    "ReconstructionModule": "vaefix_pl.module",
    "ReconstructionWriter": "vaefix_pl.writer",
    # vocoder fine-tuning baseline
    "DecodedMelDataset": "vaefix_pl.baseline",
    "DecodedMelDataModule": "vaefix_pl.baseline",
    "FixedDecoderBaseline": "vaefix_pl.baseline",
    "MelExportWriter": "vaefix_pl.baseline",
    "export_mels": "vaefix_pl.baseline",
    "collate_decoded_mels": "vaefix_pl.baseline",
    "GriffinLimVocoder": "vaefix_pl.vocoders",
    "VocoderError": "vaefix_pl.vocoders",
    "check_vocoder": "vaefix_pl.vocoders",
    "load_hifigan": "vaefix_pl.vocoders",
    "load_vocoder": "vaefix_pl.vocoders",
    # diagnosis and report
    "decompose": "vaefix_pl.diagnose",
    "diagnose_mel": "vaefix_pl.diagnose",
    "write_report": "vaefix_pl.report",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vaefix_pl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from vaefix_pl.audio import load_audio
    from vaefix_pl.baseline import (
        DecodedMelDataModule,
        DecodedMelDataset,
        FixedDecoderBaseline,
        MelExportWriter,
        collate_decoded_mels,
        export_mels,
    )
    from vaefix_pl.data import AudioDataModule, probe_signals
    from vaefix_pl.diagnose import decompose, diagnose_mel
    from vaefix_pl.frontend import LogMelFrontend, normalize_level
    from vaefix_pl.models import AudioLDM2Models, load_audioldm2
    from vaefix_pl.module import ReconstructionModule
    from vaefix_pl.postprocess import PostProcessChain
    from vaefix_pl.reconstruct import ReconstructionOutput, Reconstructor
    from vaefix_pl.report import write_report
    from vaefix_pl.vocoders import GriffinLimVocoder, VocoderError, check_vocoder, load_hifigan, load_vocoder
    from vaefix_pl.writer import ReconstructionWriter
