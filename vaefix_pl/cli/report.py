"""``vaefix report OUT_DIR``: argument parsing and printing over :func:`vaefix_pl.report.html.write_report`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vaefix_pl.cli.common import Parser
from vaefix_pl.core.errors import InputsError
from vaefix_pl.report.html import DEFAULT_EMBED_AUDIO_CLIPS, DEFAULT_MAX_FIGURES, write_report


def report_main(argv: Sequence[str]) -> int:
    """``vaefix report OUT_DIR [--title T] [--embed-audio N] [--max-figures N]``: write ``OUT_DIR/report.html``."""
    p = Parser(prog="vaefix report", description="Write report.html (and figures/) for a run folder.")
    p.add_argument(
        "out_dir", help="a folder written by `vaefix reconstruct`, `vaefix predict` or `vaefix diagnose`"
    )
    p.add_argument("--title", default=None)
    p.add_argument(
        "--embed-audio",
        type=int,
        default=DEFAULT_EMBED_AUDIO_CLIPS,
        help="clips whose audio is embedded (base64 16-bit WAV); later clips link their WAV files",
    )
    p.add_argument("--max-figures", type=int, default=DEFAULT_MAX_FIGURES, help="clips that get a figure")
    args = p.parse_args(list(argv))
    out = Path(args.out_dir)
    if not (out / "metrics.csv").is_file():
        raise InputsError(f"{out}: no metrics.csv here (not a folder written by vaefix)")
    path = write_report(
        out, title=args.title, embed_audio_clips=args.embed_audio, max_figures=args.max_figures
    )
    print(f"wrote {path}")
    return 0
