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
    "LogMelFrontend": "vaefix_pl.core.frontend",
    "normalize_level": "vaefix_pl.core.frontend",
    "load_audioldm2": "vaefix_pl.core.models",
    "AudioLDM2Models": "vaefix_pl.core.models",
    "Reconstructor": "vaefix_pl.core.reconstruct",
    "ReconstructionOutput": "vaefix_pl.core.output",
    "load_audio": "vaefix_pl.data.audio",
    "probe_signals": "vaefix_pl.data.inputs",
    # repair chain
    "PostProcessChain": "vaefix_pl.repair.chain",
    # Lightning parts
    "AudioDataModule": "vaefix_pl.data.module",
    "AudioInputs": "vaefix_pl.data.inputs",
    "ReconstructionJob": "vaefix_pl.pipeline.job",
    "RunWriter": "vaefix_pl.pipeline.writer",
    "ReconstructionModule": "vaefix_pl.lightning.module",
    "ReconstructionWriter": "vaefix_pl.lightning.writer",
    # vocoder fine-tuning baseline
    "DecodedMelDataset": "vaefix_pl.export.dataset",
    "DecodedMelDataModule": "vaefix_pl.export.dataset",
    "FixedDecoderBaseline": "vaefix_pl.finetune.baseline",
    "MelExportWriter": "vaefix_pl.export.writer",
    "export_mels": "vaefix_pl.export.writer",
    "collate_decoded_mels": "vaefix_pl.export.dataset",
    "GriffinLimVocoder": "vaefix_pl.vocoders.griffinlim",
    "VocoderError": "vaefix_pl.vocoders.base",
    "check_vocoder": "vaefix_pl.vocoders.base",
    "load_hifigan": "vaefix_pl.vocoders.hifigan",
    "load_vocoder": "vaefix_pl.vocoders.loading",
    # diagnosis and report
    "decompose": "vaefix_pl.diagnose.decompose",
    "diagnose_mel": "vaefix_pl.diagnose.mel",
    "write_report": "vaefix_pl.report.html",
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
    from vaefix_pl.core.frontend import LogMelFrontend, normalize_level
    from vaefix_pl.core.models import AudioLDM2Models, load_audioldm2
    from vaefix_pl.core.output import ReconstructionOutput
    from vaefix_pl.core.reconstruct import Reconstructor
    from vaefix_pl.data.audio import load_audio
    from vaefix_pl.data.inputs import AudioInputs, probe_signals
    from vaefix_pl.data.module import AudioDataModule
    from vaefix_pl.diagnose.decompose import decompose
    from vaefix_pl.diagnose.mel import diagnose_mel
    from vaefix_pl.export.dataset import DecodedMelDataModule, DecodedMelDataset, collate_decoded_mels
    from vaefix_pl.export.writer import MelExportWriter, export_mels
    from vaefix_pl.finetune.baseline import FixedDecoderBaseline
    from vaefix_pl.lightning.module import ReconstructionModule
    from vaefix_pl.lightning.writer import ReconstructionWriter
    from vaefix_pl.pipeline.job import ReconstructionJob
    from vaefix_pl.pipeline.writer import RunWriter
    from vaefix_pl.repair.chain import PostProcessChain
    from vaefix_pl.report.html import write_report
    from vaefix_pl.vocoders.base import VocoderError, check_vocoder
    from vaefix_pl.vocoders.griffinlim import GriffinLimVocoder
    from vaefix_pl.vocoders.hifigan import load_hifigan
    from vaefix_pl.vocoders.loading import load_vocoder
