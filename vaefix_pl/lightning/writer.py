"""``ReconstructionWriter``: :class:`~vaefix_pl.pipeline.writer.RunWriter` as a Lightning prediction writer.

Every hook is :class:`~vaefix_pl.pipeline.writer.RunWriter`'s (same arguments and files); this class adds
the ``BasePredictionWriter`` base so ``trainer.predict`` calls ``write_on_batch_end`` after each batch.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import BasePredictionWriter

from vaefix_pl.pipeline.writer import RunWriter
from vaefix_pl.runs.identity import file_identity, settings_fingerprint

__all__ = ["ReconstructionWriter", "file_identity", "settings_fingerprint"]


class ReconstructionWriter(RunWriter, BasePredictionWriter):
    __doc__ = RunWriter.__doc__
