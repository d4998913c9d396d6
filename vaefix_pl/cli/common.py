"""What the ``vaefix`` subcommands' parsers share."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from vaefix_pl.core.errors import InputsError, SettingsError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows every default and keeps the description's line breaks."""


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors raise :class:`SettingsError` (printed as one line by ``main``)
    instead of printing the usage and exiting, and whose ``--help`` shows the defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D102 (argparse API)
        raise SettingsError(f"{self.prog}: {message} (see {self.prog} --help)")


def inputs_parser(prog: str, description: str) -> Parser:
    """A parser whose positional ``audio`` takes files, folders or manifests (none: the probe set)."""
    p = Parser(prog=prog, description=description)
    p.add_argument("audio", nargs="*", help="files, folders or manifests (none: the built-in probe set)")
    return p


def require_some_input(inputs: str | os.PathLike | Sequence[str | os.PathLike] | None) -> None:
    """Raise :class:`InputsError` when inputs were given and not one of them exists.

    A run with some missing inputs goes on (each one becomes a row of ``errors.csv``); a run where
    every named input is missing stops here with one line, before any model is loaded.
    """
    if inputs is None:
        return
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        return
    missing = [str(i) for i in items if not Path(i).expanduser().exists()]
    if len(missing) < len(items):
        return
    if len(missing) == 1:
        raise InputsError(f"{missing[0]}: no such file or folder")
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    raise InputsError(f"none of the {len(missing)} inputs exist: {shown}")
