"""Run by test_lightning.py in its own process: Lightning's "ddp" strategy re-launches this script
once per extra rank, which it cannot do from inside pytest. Every WAV write is logged per rank so the
test can check that no file is written twice."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import lightning as L

import vaefix_pl.pipeline.writer as writer_mod
from vaefix_pl import AudioDataModule, ReconstructionModule, ReconstructionWriter

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--inputs", required=True)
p.add_argument("--out", required=True)
p.add_argument("--devices", type=int, default=2)
args = p.parse_args()

rank = int(os.environ.get("LOCAL_RANK", 0))
log_path = Path(args.out + "_writes") / f"rank{rank}.log"
log_path.parent.mkdir(parents=True, exist_ok=True)
real_write = writer_mod.write_wav


def logged_write(path, waveform, sample_rate=16000):
    with open(log_path, "a") as fh:
        fh.write(f"{path}\t{waveform.shape[-1]}\n")
    return real_write(path, waveform, sample_rate)


writer_mod.write_wav = logged_write

trainer = L.Trainer(
    accelerator="cpu",
    devices=args.devices,
    strategy="ddp",
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    callbacks=[ReconstructionWriter(args.out)],
)
module = ReconstructionModule(model=args.model, metrics=["mel_distance", "snr", "lag"])
data = AudioDataModule(inputs=args.inputs, batch_size=2, num_workers=0)
trainer.predict(module, datamodule=data, return_predictions=False)
