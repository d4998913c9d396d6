"""The ``vaefix`` command line (see :mod:`vaefix_pl.cli.commands`); banners, printing and exit codes live here."""

from vaefix_pl.cli.commands import main, run

__all__ = ["main", "run"]
