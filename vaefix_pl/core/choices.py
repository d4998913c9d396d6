"""The named choices of the settings (precision, speed preset, framing, crossfade), torch-free.

Defined here once so that the CLI can offer them without importing torch: ``vaefix reconstruct
--devices N`` starts its ranks from a parent that never loads a model (pipeline/launch.py).
"""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
Speed = Literal["none", "auto", "compile"]
SPEEDS: tuple[str, ...] = get_args(Speed)
Framing = Literal["tacotron", "hifigan"]
FRAMINGS: tuple[str, ...] = get_args(Framing)
Crossfade = Literal["equal_gain", "equal_power"]
CROSSFADES: tuple[str, ...] = get_args(Crossfade)
