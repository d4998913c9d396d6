"""Fine-tune AudioLDM2's HiFi-GAN on VAE-decoded mels, with the frozen HiFi-GAN as the fixed baseline.

    # 1. export decoded mels once (resumable; --devices N for DDP)
    vaefix export-mels data/clips/ --out exports/clips --model /path/to/audioldm2 --seconds 10
    # 2. fine-tune: starts from the model folder's HiFi-GAN, logs baseline/*, vocoder/*, delta/* to CSV
    python examples/finetune_vocoder.py --export exports/clips --model /path/to/audioldm2 --steps 2000 --out runs/ft

    # CI / smoke test: tiny random-weight models, the probe set exported on the fly, a few steps on the CPU
    python examples/finetune_vocoder.py --tiny --steps 4 --out /tmp/ft

The training objective is the log-mel L1 of HiFi-GAN's recipe (the generator's reconstruction term, x45 in
HiFi-GAN; adversarial and feature-matching terms are left out to keep the example short): the generated
segment's log-mel against the target segment's, both through the export's own front-end. The target
segment is exactly the samples the mel frames pair with (``vaefix_pl.finetune.baseline``: frame ``k`` <-> samples
``[160 k, 160 k + 160)``). ``FixedDecoderBaseline`` runs at every validation; a validation also runs
before training, where the vocoder still *is* the baseline (every ``delta/*`` is 0).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn

from vaefix_pl.core.config import ReconstructorConfig
from vaefix_pl.core.frontend import LogMelFrontend
from vaefix_pl.export.dataset import DecodedMelDataModule
from vaefix_pl.export.writer import export_mels
from vaefix_pl.finetune.baseline import FixedDecoderBaseline
from vaefix_pl.vocoders.hifigan import load_hifigan


class VocoderFineTuner(L.LightningModule):
    """``self.vocoder``: ``(B, T, 64)`` log-mel -> ``(B, T*160)`` waveform, trained with a log-mel L1 loss.

    Args:
        vocoder: the vocoder to train (e.g. ``load_hifigan(model, trainable=True)``).
        framing: the export's framing (the loss front-end must match the mels' definition).
        lr: AdamW learning rate (HiFi-GAN's betas 0.8/0.99).
    """

    def __init__(self, vocoder: nn.Module, framing: str = "tacotron", lr: float = 2e-5) -> None:
        super().__init__()
        self.vocoder = vocoder
        self.frontend = LogMelFrontend(framing)  # no parameters; buffers are not saved
        self.lr = lr

    def mel_l1(self, estimate: Tensor, target: Tensor, lengths: Tensor) -> Tensor:
        """Mean |log-mel(estimate) - log-mel(target)| over the frames inside each item's valid samples."""
        est = self.frontend(estimate)[:, 0]
        ref = self.frontend(target)[:, 0]
        t = min(est.shape[1], ref.shape[1], estimate.shape[1] // 160)
        frames = torch.arange(t, device=estimate.device)[None] * 160 < lengths[:, None]  # (B, t)
        diff = (est[:, :t] - ref[:, :t]).abs().mean(-1)
        return (diff * frames).sum() / frames.sum().clamp(min=1)

    def forward(self, mel: Tensor) -> Tensor:
        return self.vocoder(mel)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.mel_l1(self(batch["mel"]), batch["waveform"], batch["lengths"])
        self.log("train/mel_l1", loss, prog_bar=True, batch_size=batch["mel"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss = self.mel_l1(self(batch["mel"]), batch["waveform"], batch["lengths"])
        self.log("val/mel_l1", loss, batch_size=batch["mel"].shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.vocoder.parameters(), lr=self.lr, betas=(0.8, 0.99))


def _tiny_setup(out: Path) -> tuple[str, str]:
    """Tiny random-weight AudioLDM2-shaped models and a 1.28 s probe-set export under ``out``."""
    from vaefix_pl.testing import write_tiny_audioldm2

    model = out / "tiny_audioldm2"
    if not (model / "vocoder" / "config.json").is_file():
        write_tiny_audioldm2(model, seed=0)
    export = out / "export"
    config = ReconstructorConfig(model=str(model), pad_frames_to=128)  # the pipeline settings, defined once
    export_mels(None, export, config, accelerator="cpu", num_workers=0, shard_size=4, probe_seconds=1.28)
    return str(model), str(export)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", default=None, help="export folder (vaefix export-mels ... --out DIR)")
    p.add_argument(
        "--model", default=None, help="model folder / hub id whose HiFi-GAN is the start and baseline"
    )
    p.add_argument(
        "--tiny", action="store_true", help="tiny random models + probe-set export (CI smoke test)"
    )
    p.add_argument("--out", default="runs/finetune_vocoder", help="logs, audio examples, checkpoints")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--val-every", type=int, default=None, help="validate every N steps (default: at the end)")
    p.add_argument("--segment-frames", type=int, default=32, help="training segment length in mel frames")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--max-val-items", type=int, default=8, help="held-out clips scored by the callback")
    p.add_argument("--no-perceptual", action="store_true", help="skip PESQ/STOI in the callback")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="1")
    p.add_argument("--num-workers", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the fine-tuning; returns the callback's last scores (``baseline/*``, ``vocoder/*``, ``delta/*``)."""
    args = parse_args(argv)
    out = Path(args.out)
    if args.tiny:
        model, export = _tiny_setup(out)
        model = args.model or model
    else:
        if args.export is None:
            raise SystemExit("--export DIR is required (or --tiny)")
        model, export = args.model, args.export
    data = DecodedMelDataModule(
        export, segment_frames=args.segment_frames, batch_size=args.batch_size, num_workers=args.num_workers,
        val_fraction=args.val_fraction, max_val_items=args.max_val_items,
    )  # fmt: skip
    data.setup("fit")
    assert data.train_set is not None
    framing = data.train_set.framing
    source = model or data.train_set.settings.get("model")
    module = VocoderFineTuner(load_hifigan(source, trainable=True), framing=framing, lr=args.lr)
    baseline = FixedDecoderBaseline(
        export, vocoder="vocoder", model=source, val_fraction=args.val_fraction, max_items=args.max_val_items,
        perceptual=[] if args.no_perceptual else ["pesq", "stoi"],  # audio: <log_dir>/fixed_decoder_baseline
    )  # fmt: skip
    devices: int | str = int(args.devices) if str(args.devices).isdigit() else args.devices
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=devices, max_steps=args.steps,
        val_check_interval=args.val_every or args.steps, check_val_every_n_epoch=None,
        logger=CSVLogger(out, name="logs"), callbacks=[baseline],
        enable_checkpointing=True, default_root_dir=out, log_every_n_steps=1, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.validate(module, datamodule=data)  # step 0: the vocoder is still the baseline (delta = 0)
    trainer.fit(module, datamodule=data)
    if trainer.is_global_zero:
        last = baseline.last_scores
        for key in sorted(k for k in last if k.startswith("delta/")):
            m = key.split("/", 1)[1]
            print(
                f"{m:<22} baseline {last[f'baseline/{m}']:>10.4f}   fine-tuned {last[f'vocoder/{m}']:>10.4f}   "
                f"delta {last[key]:>+10.4f}"
            )
        log_dir = trainer.logger.log_dir
        print(f"logs: {log_dir}/metrics.csv; audio examples: {log_dir}/fixed_decoder_baseline/")
    return baseline.last_scores


if __name__ == "__main__":
    main(sys.argv[1:])
