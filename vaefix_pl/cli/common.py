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
    instead of printing the usage and exiting, and whose ``--help`` shows the defaults.

    With ``config_options`` (the default) it also takes ``--config FILE.yaml`` (keys are the long
    option names, ``-`` or ``_``; later files and explicit flags win) and ``--print_config`` (print the
    resulting settings as YAML and exit), like the LightningCLI commands.
    """

    def __init__(self, *args, config_options: bool = True, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._config_options = config_options
        if config_options:
            self.add_argument("--config", action="append", default=[], help="YAML file(s) of option values")
            self.add_argument(
                "--print_config", action="store_true", help="print the settings as YAML and exit"
            )

    def error(self, message: str):  # noqa: D102 (argparse API)
        raise SettingsError(f"{self.prog}: {message} (see {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):  # noqa: D102 (argparse API)
        if not self._config_options:
            return super().parse_args(args, namespace)
        ns = super().parse_args(args, namespace)
        if ns.config:
            self.set_defaults(**self._read_configs(ns.config))
            ns = super().parse_args(args, namespace)  # explicit flags still win over the files
        if ns.print_config:
            import yaml

            shown = {k: v for k, v in vars(ns).items() if k not in ("config", "print_config")}
            print(yaml.safe_dump(shown, sort_keys=False), end="")
            raise SystemExit(0)
        return ns

    def _read_configs(self, paths: Sequence[str]) -> dict:
        import yaml

        known = {a.dest for a in self._actions}
        values: dict = {}
        for path in paths:
            try:
                data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            except FileNotFoundError:
                raise SettingsError(f"{path}: no such config file") from None
            except (OSError, yaml.YAMLError) as exc:
                raise SettingsError(f"{path}: cannot read this YAML config ({type(exc).__name__})") from None
            if not isinstance(data, dict):
                raise SettingsError(f"{path}: a config must be a mapping of option names to values")
            for key, value in data.items():
                dest = str(key).replace("-", "_")
                if dest not in known or dest in ("config", "print_config", "help"):
                    raise SettingsError(f"{path}: unknown option '{key}' for {self.prog}")
                values[dest] = value
        return values


def inputs_parser(prog: str, description: str, config_options: bool = True) -> Parser:
    """A parser whose positional ``audio`` takes files, folders or manifests (none: the probe set)."""
    p = Parser(prog=prog, description=description, config_options=config_options)
    p.add_argument("audio", nargs="*", help="files, folders or manifests (none: the built-in probe set)")
    return p


def add_repair_flag(p: argparse.ArgumentParser, help: str) -> None:
    """``--repair``, and its old name ``--seed-repair`` as a hidden alias."""
    p.add_argument("--repair", action="store_true", help=help)
    p.add_argument("--seed-repair", dest="repair", action="store_true", help=argparse.SUPPRESS)


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
