"""The user-facing error types: one line of message, and the exit code the CLI returns for them.

Library code raises these (or subclasses) for problems a user can fix: a missing model, an
unsupported geometry, a bad setting, an unusable output folder. The CLI prints ``error: <message>``
on stderr and exits with :attr:`VaefixError.exit_code`; a traceback only with ``--debug``. Errors of a
single input never raise: they become a row of ``errors.csv`` and the run goes on.
"""

from __future__ import annotations


class VaefixError(Exception):
    """Base of every user-facing error. ``str(err)`` is one line naming the file or setting and the reason."""

    exit_code: int = 2


class SettingsError(VaefixError, ValueError):
    """A flag, YAML key or setting value is invalid (exit code 2)."""

    exit_code = 2


class ModelError(VaefixError):
    """The model cannot be used: missing weights, malformed or unsupported config (exit code 3)."""

    exit_code = 3


class InputsError(VaefixError):
    """No usable input at all: nothing found, or the inputs cannot be listed (exit code 4)."""

    exit_code = 4


class OutputError(VaefixError, OSError):
    """The output folder cannot be used: not a folder, busy with another run, or the disk is full (exit code 5)."""

    exit_code = 5


def exception_line(exc: BaseException) -> str:
    """``"Type: first line of its message"``: a caught exception as part of a one-line message."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


#: Exit codes of ``vaefix`` (also in docs): 0 ok; 1 ``--strict`` and some inputs failed.
EXIT_CODES = {
    0: "success",
    1: "--strict and at least one input failed (see errors.csv)",
    SettingsError.exit_code: "bad flag, config or setting",
    ModelError.exit_code: "model missing or unusable",
    InputsError.exit_code: "no usable inputs",
    OutputError.exit_code: "output folder unusable or busy, or disk full",
    130: "interrupted (Ctrl-C)",
}
