"""``ReconstructionModule``: the frozen AudioLDM2 VAE + vocoder in a LightningModule's ``predict_step``.

Thin by design: everything it does is :class:`~vaefix_pl.pipeline.job.ReconstructionJob` (the same
arguments, hooks and outputs); this class only adds the ``LightningModule`` base, so Lightning's
Trainer, DDP and ``predict`` drive the job.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.parsing import save_hyperparameters

from vaefix_pl.pipeline.job import MODULE_DEFAULTS, ReconstructionJob

__all__ = ["MODULE_DEFAULTS", "ReconstructionModule"]


class ReconstructionModule(ReconstructionJob, L.LightningModule):
    __doc__ = ReconstructionJob.__doc__

    def _store_hparams(self, hparams: dict[str, Any]) -> None:
        # Lightning's save_hyperparameters() reads __init__'s frame, which holds **settings, not the fields
        save_hyperparameters(self, given_hparams=hparams)

    def _run_device(self) -> torch.device:
        return self.device
