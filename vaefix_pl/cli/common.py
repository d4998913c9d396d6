"""What the ``vaefix`` subcommands' parsers share."""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path

from vaefix_pl.core.errors import InputsError, SettingsError


@functools.cache
def _parser_class() -> type:
    """:class:`jsonargparse.ArgumentParser` whose usage errors raise :class:`SettingsError` (one line, a
    "did you mean" for a mistyped flag). Built on first use: jsonargparse is imported only by a command
    that parses, not by ``vaefix`` itself."""
    import argparse

    from jsonargparse import ArgumentParser

    class Parser(ArgumentParser):
        def parse_args(self, args=None, namespace=None, **kwargs):  # noqa: D102 (argparse API)
            try:
                return super().parse_args(list(args) if args is not None else None, namespace, **kwargs)
            except argparse.ArgumentError as exc:
                raise SettingsError(
                    f"{self.prog}: {self._explain(str(exc))} (see {self.prog} --help)"
                ) from None

        def _explain(self, message: str) -> str:
            """jsonargparse's message in the project's words, with a suggestion for a mistyped flag."""
            message = " ".join(message.split())
            unknown = re.match(r"[Uu]nrecognized arguments: (\S+)", message)
            if unknown and unknown.group(1).startswith("-"):
                flags = [o for a in self._actions for o in a.option_strings if a.help != argparse.SUPPRESS]
                flags = [f for f in flags if f not in ("-h", "--help", "--config", "--print_config")]
                close = difflib.get_close_matches(unknown.group(1).split("=")[0], flags, n=1, cutoff=0.75)
                return f"unknown flag {unknown.group(1)}" + (f"; did you mean {close[0]}?" if close else "")
            key = re.match(r"Option '([^']+)' is not accepted", message)
            if key:
                return f"unknown option '{key.group(1)}' in a --config file"
            message = re.sub(r"Expected a <class '(\w+)'>\.", r"expected a value of type \1;", message)
            return re.sub(
                r'^Parser key "([^"]+)": ', lambda m: f"--{m.group(1).replace('_', '-')}: ", message
            )

    return Parser


def make_parser(prog: str, description: str, config_options: bool = True):
    """A jsonargparse parser for one ``vaefix`` subcommand: ``--help`` shows every default, usage errors
    raise :class:`SettingsError` (printed as one line by ``main``).

    With ``config_options`` (the default) it takes ``--config FILE.yaml`` (a flat mapping of the long
    option names, ``-`` or ``_``; later files and later flags win) and ``--print_config`` (print the
    resulting settings as YAML and exit), as the LightningCLI commands do.
    """
    parser = _parser_class()(
        prog=prog,
        description=description,
        exit_on_error=False,
        print_config="--print_config" if config_options else None,
    )
    if config_options:
        from jsonargparse import ActionConfigFile

        parser.add_argument("--config", action=ActionConfigFile, help="YAML file(s) of option values")
    return parser


def inputs_parser(prog: str, description: str, config_options: bool = True):
    """A parser whose positional ``audio`` takes files, folders or manifests (none: the probe set)."""
    p = make_parser(prog, description, config_options=config_options)
    p.add_argument(
        "audio", nargs="*", default=[], help="files, folders or manifests (none: the built-in probe set)"
    )
    return p


def add_repair_flag(p, help: str) -> None:
    """``--repair``, and its old name ``--seed-repair`` as a hidden alias."""
    import argparse

    p.add_argument("--repair", action="store_true", help=help)
    p.add_argument("--seed-repair", dest="repair", action="store_true", help=argparse.SUPPRESS)


def from_argparse(source, config_options: bool = True):
    """A :func:`make_parser` parser with the arguments of a plain :class:`argparse.ArgumentParser` (one
    definition of a command's flags, kept by the module that runs it), and ``to_argv(namespace)`` that
    turns what it parsed (``--config`` files included) back into arguments for ``source``."""
    import argparse

    p = make_parser(source.prog, source.description or "", config_options=config_options)
    actions = [a for a in source._actions if not isinstance(a, argparse._HelpAction)]
    for a in actions:
        # "(default: detect)" in an argparse help means "when unset"; jsonargparse adds "(default: null)"
        help = re.sub(r"\(default: ", "(unset: ", a.help) if a.help else a.help
        kwargs = (
            {"help": help}
            if a.default is None and not a.option_strings
            else {"help": help, "default": a.default}
        )
        if isinstance(a, argparse._StoreTrueAction):
            kwargs["action"] = "store_true"
        else:
            given = {"type": a.type, "choices": a.choices, "nargs": a.nargs}
            kwargs.update({k: v for k, v in given.items() if v is not None})
            if a.option_strings:
                kwargs["required"] = a.required
        p.add_argument(*(a.option_strings or [a.dest]), **kwargs)

    def to_argv(ns) -> list[str]:
        argv: list[str] = []
        for a in actions:
            value = ns.get(a.dest)
            if not a.option_strings:
                argv += [str(v) for v in value] if isinstance(value, list) else [str(value)]
            elif isinstance(a, argparse._StoreTrueAction):
                argv += [a.option_strings[-1]] if value else []
            elif value is not None:
                argv += [a.option_strings[-1], str(value)]
        return argv

    return p, to_argv


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
