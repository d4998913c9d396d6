"""``vaefix convert SRC --out DIR``: the entry function the CLI wires (``convert_main(argv) -> int``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vaefix_pl.convert.checkpoint import KINDS, convert_checkpoint
from vaefix_pl.convert.keymap import ConversionError


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vaefix convert",
        description="Convert an original AudioLDM / AudioLDM2 / MusicLDM / Tango / audioldm_48k checkpoint "
        "into a diffusers folder (vae/ + vocoder/, safetensors). Pickles are read with weights_only=True.",
    )
    p.add_argument("src", help=".ckpt/.pth/.safetensors file, or Tango's folder / pytorch_model_vae.bin")
    p.add_argument("--out", required=True, help="output folder (gets vae/, vocoder/, conversion.json)")
    p.add_argument("--kind", choices=KINDS, default=None, help="checkpoint family (default: detect)")
    p.add_argument(
        "--scaling-factor",
        type=float,
        default=None,
        help="use this instead of the checkpoint's scale_factor (only when it has none)",
    )
    p.add_argument("--sample-size", type=int, default=None, help="nominal VAE sample_size to record")
    p.add_argument(
        "--vocoder-padding",
        choices=("hifires", "speecht5"),
        default=None,
        help="upsampler padding of the written vocoder (default: hifires at 48 kHz)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing vae/ and vocoder/")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def convert_main(argv: Sequence[str] | None = None) -> int:
    """Run the conversion; one line per error on stderr, exit 0 on success, 1 on failure, 2 on bad usage."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse already printed its one-line usage error
        return int(exc.code or 0)
    try:
        result = convert_checkpoint(
            args.src,
            args.out,
            kind=args.kind,
            scaling_factor=args.scaling_factor,
            sample_size=args.sample_size,
            vocoder_padding=args.vocoder_padding,
            overwrite=args.overwrite,
        )
    except ConversionError as exc:
        if args.debug:
            raise
        print(f"vaefix convert: error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:  # anything unforeseen still gives one line (and the traceback with --debug)
        if args.debug:
            raise
        message = _one_line(f"{args.src}: {type(exc).__name__}: {exc}")
        print(f"vaefix convert: error: {message}", file=sys.stderr)
        return 1
    print(
        f"wrote {result.out_dir} ({result.kind}, {result.geometry}, scaling_factor {result.scaling_factor!r}, "
        f"vocoder padding {result.vocoder_padding})"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(convert_main())
