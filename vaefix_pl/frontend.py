"""Old path of :mod:`vaefix_pl.core.frontend`, kept only for ``metrics/clicks.py`` until its rewrite
(issue 20) imports ``vaefix_pl.core.frontend`` itself; then delete this file."""

from vaefix_pl.core.frontend import *  # noqa: F403
from vaefix_pl.core.frontend import SAMPLE_RATE, valid_mask  # noqa: F401
