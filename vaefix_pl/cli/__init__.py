"""The ``vaefix`` command line (see :mod:`vaefix_pl.cli.commands`); banners, printing and exit codes live here."""

from vaefix_pl.cli.commands import main

__all__ = ["main"]
