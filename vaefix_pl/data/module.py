"""``AudioDataModule``: :class:`~vaefix_pl.data.inputs.AudioInputs` as a ``LightningDataModule``."""

from __future__ import annotations

from typing import Any

import lightning as L

from vaefix_pl.data.inputs import AudioInputs


class AudioDataModule(AudioInputs, L.LightningDataModule):
    __doc__ = AudioInputs.__doc__

    def _store_hparams(self, hparams: dict[str, Any]) -> None:
        self.save_hyperparameters(hparams)
