"""``vaefix export-mels``: argument parsing and printing over :func:`vaefix_pl.export.writer.export_mels`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vaefix_pl.cli.common import inputs_parser, require_some_input
from vaefix_pl.core.config import LATENT_MODES
from vaefix_pl.core.frontend import FRAMINGS
from vaefix_pl.core.models import PRECISIONS
from vaefix_pl.export.layout import ERRORS
from vaefix_pl.export.writer import export_mels


def _export_parser():
    p = inputs_parser(
        "vaefix export-mels",
        "Export AudioLDM2 VAE-decoded mels, true mels and level-normalised waveforms for "
        "vocoder fine-tuning (sharded safetensors + manifest.jsonl; resumable; DDP-safe).",
    )
    p.add_argument("--out", required=True, help="export folder (rerun the same command to resume)")
    p.add_argument("--model", default=None, help="local diffusers folder or hub id (default cvssp/audioldm2)")
    p.add_argument("--seconds", type=float, default=None, help="crop/pad every clip to this length")
    p.add_argument("--offset", type=float, default=0.0, help="seconds to skip at the start of each file")
    p.add_argument("--framing", default="tacotron", choices=FRAMINGS)
    p.add_argument("--shard-size", type=int, default=64, help="clips per safetensors shard (per rank)")
    p.add_argument("--devices", default="1", help="number of devices (GPUs); >1 runs DDP")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--latent-mode", default="mode", choices=LATENT_MODES)
    p.add_argument("--seed", type=int, default=0, help="latent noise seed for --latent-mode sample")
    p.add_argument("--pad-frames-to", type=int, default=1024, help="canonical length multiple (frames)")
    p.add_argument("--probe-seconds", type=float, default=4.0, help="length of each probe signal")
    p.add_argument("--allow-download", action="store_true", help="let the loader fetch missing weights")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    return p


def export_main(argv: Sequence[str]) -> int:
    """``vaefix export-mels AUDIO... --out DIR [--model] [--seconds] [--framing] [--shard-size N] [--devices N]``."""
    ns = _export_parser().parse_args(list(argv))
    require_some_input(ns.audio)
    devices: int | str = int(ns.devices) if str(ns.devices).isdigit() else ns.devices
    summary = export_mels(
        ns.audio or None, ns.out, model=ns.model, seconds=ns.seconds, offset=ns.offset, framing=ns.framing,
        shard_size=ns.shard_size, devices=devices, accelerator=ns.accelerator, num_nodes=ns.num_nodes,
        batch_size=ns.batch_size, num_workers=ns.num_workers, precision=ns.precision,
        latent_mode=ns.latent_mode, seed=ns.seed, pad_frames_to=ns.pad_frames_to,
        probe_seconds=ns.probe_seconds, allow_download=ns.allow_download, progress=ns.progress,
    )  # fmt: skip
    if summary.get("is_global_zero", True):
        print(
            f"exported to {summary['output_dir']}: {summary['clips']} clips in the manifest; "
            f"{summary['exported']} exported now, {summary['skipped']} already there, {summary['failed']} failed"
        )
        if summary["failed"]:
            print(f"  failures listed in {Path(summary['output_dir']) / ERRORS}")
    return 0
