"""``vaefix convert`` and ``vaefix models``: the CLI's parser style (one-line usage errors, defaults in
``--help``, ``--config`` and ``--print_config``) over :mod:`vaefix_pl.convert`."""

from __future__ import annotations

import json
from collections.abc import Sequence

from vaefix_pl.cli.common import from_argparse, make_parser


def convert_main(argv: Sequence[str]) -> int:
    """``vaefix convert SRC --out DIR [--kind] ...``: :func:`vaefix_pl.convert.cli.convert_main` with the flags
    it defines, parsed (and ``--config`` files read) here."""
    from vaefix_pl.convert import cli as convert_cli

    parser, to_argv = from_argparse(convert_cli.build_parser())
    ns = parser.parse_args(list(argv))  # usage mistakes, --help and --print_config stop here
    return convert_cli.convert_main(to_argv(ns))


def models_main(argv: Sequence[str]) -> int:
    """``vaefix models [FOLDER ...] [--json]``: print the known checkpoints and where each is."""
    from vaefix_pl.convert.catalog import format_table, list_models

    p = make_parser(
        "vaefix models",
        "List the AudioLDM-family checkpoints vaefix knows, their front-end geometry and whether each is in "
        "the local Hugging Face cache (no network). Original-format ones need `vaefix convert` once.",
    )
    p.add_argument("folders", nargs="*", default=[], help="also describe these local model folders")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ns = p.parse_args(list(argv))
    rows = list_models(ns.folders)
    print(json.dumps(rows, indent=2) if ns.json else format_table(rows))
    return 0
