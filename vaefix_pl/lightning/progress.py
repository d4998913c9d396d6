"""A progress bar that shows throughput in clips/s and x real time during ``trainer.predict``."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar

from vaefix_pl.core.frontend import SAMPLE_RATE
from vaefix_pl.pipeline.local import throughput_postfix


class ClipsPerSecondProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar with ``clips/s`` and ``xRT`` (audio seconds per wall second) on this rank."""

    def on_predict_start(self, trainer, pl_module) -> None:
        super().on_predict_start(trainer, pl_module)
        self._t0 = time.perf_counter()
        self._clips = 0
        self._audio_s = 0.0

    def on_predict_batch_end(
        self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._clips += len(batch["ids"])
        self._audio_s += float(batch["lengths"].sum()) / (
            getattr(pl_module, "sample_rate", None) or SAMPLE_RATE
        )
        if self.predict_progress_bar is not None:
            postfix = throughput_postfix(self._clips, self._audio_s, self._t0)
            self.predict_progress_bar.set_postfix(postfix, refresh=False)
