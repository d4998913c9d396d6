"""Safe conversion of original AudioLDM-family checkpoints into diffusers folders (``vaefix convert``)."""

from vaefix_pl.convert.checkpoint import (
    KINDS,
    ConversionResult,
    UnsafeCheckpointError,
    convert_checkpoint,
    load_state,
)
from vaefix_pl.convert.cli import convert_main
from vaefix_pl.convert.keymap import ConversionError

__all__ = [
    "KINDS",
    "ConversionError",
    "ConversionResult",
    "UnsafeCheckpointError",
    "convert_checkpoint",
    "convert_main",
    "load_state",
]
