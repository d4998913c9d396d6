"""``vaefix report OUT_DIR``: argument parsing and printing over :func:`vaefix_pl.report.html.write_report`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vaefix_pl.cli.common import make_parser
from vaefix_pl.core.errors import InputsError

#: the defaults of :func:`vaefix_pl.report.html.write_report`, repeated here so that ``--help`` needs
#: neither the report's imports nor torch (tests/test_cli_errors.py checks that they agree)
DEFAULT_EMBED_AUDIO_CLIPS = 0
DEFAULT_MAX_FIGURES = 100


def report_main(argv: Sequence[str]) -> int:
    """``vaefix report OUT_DIR [--title T] [--embed-audio N] [--max-figures N]``: write ``OUT_DIR/report.html``."""
    p = make_parser("vaefix report", "Write report.html (and figures/) for a run folder.")
    p.add_argument(
        "out_dir", help="a folder written by `vaefix reconstruct`, `vaefix predict` or `vaefix diagnose`"
    )
    p.add_argument("--title", default=None, help="page title (none: 'vaefix report: <folder name>')")
    counts = {  # flag: (default, help), all clip counts
        "--embed-audio": (
            DEFAULT_EMBED_AUDIO_CLIPS,
            "clips whose audio is embedded; later clips link their WAVs",
        ),
        "--max-figures": (DEFAULT_MAX_FIGURES, "clips that get a figure"),
    }
    for flag, (default, help) in counts.items():
        p.add_argument(flag, type=int, default=default, help=help)
    args = p.parse_args(list(argv))
    out = Path(args.out_dir)
    if not (out / "metrics.csv").is_file():
        raise InputsError(f"{out}: no metrics.csv here (not a folder written by vaefix)")
    from vaefix_pl.report.html import write_report

    path = write_report(
        out, title=args.title, embed_audio_clips=args.embed_audio, max_figures=args.max_figures
    )
    print(f"report: {path}")
    return 0
