"""``vaefix convert``: :func:`vaefix_pl.convert.cli.convert_main` with the CLI's one-line usage errors
and defaults shown in ``--help``."""

from __future__ import annotations

from collections.abc import Sequence

from vaefix_pl.cli.common import HelpFormatter
from vaefix_pl.core.errors import SettingsError


def convert_main(argv: Sequence[str]) -> int:
    from vaefix_pl.convert import cli as convert_cli

    parser = convert_cli.build_parser()
    parser.formatter_class = HelpFormatter

    def error(message: str):
        raise SettingsError(f"{parser.prog}: {message} (see {parser.prog} --help)")

    parser.error = error  # argparse calls self.error(message) on a usage mistake
    parser.parse_args(list(argv))  # usage mistakes and --help stop here
    return convert_cli.convert_main(list(argv))
