"""How ``vaefix`` turns exceptions into one line and an exit code, and keeps library chatter off the screen.

Exit codes (also in README and docs/CLI.md): 0 ok; 1 ``--strict`` and some input failed; 2 bad flag,
config or setting; 3 model missing or unusable; 4 no usable input; 5 output folder unusable; 70
internal error (a bug: rerun with ``--debug`` and report the traceback); 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from typing import NoReturn

from vaefix_pl.core.errors import VaefixError

EXIT_INTERNAL = 70  # EX_SOFTWARE from sysexits.h: "an internal software error has been detected"
EXIT_INTERRUPTED = 130

#: Library error types that are not (yet) :class:`VaefixError` subclasses -> exit code. Matched by class
#: name along the MRO, so the table imports nothing (a subcommand only loads what it needs).
KNOWN_ERRORS: dict[str, int] = {
    "ArgumentError": 2,  # argparse / jsonargparse
    "ExportSettingsError": 2,
    "ModelNotFoundError": 3,
    "ModelConfigError": 3,
    "GeometryError": 3,
    "VocoderError": 3,
    "ConversionError": 3,
    "AudioReadError": 4,
    "FileNotFoundError": 4,
    "IsADirectoryError": 4,
    "NotADirectoryError": 4,
    "UnsafePathError": 5,
    "PermissionError": 5,
}


def exit_code(exc: BaseException) -> int | None:
    """The documented exit code of a user-facing error, ``None`` for an unexpected one (a bug)."""
    if isinstance(exc, VaefixError):
        return exc.exit_code
    for cls in type(exc).__mro__:
        if cls.__name__ in KNOWN_ERRORS:
            return KNOWN_ERRORS[cls.__name__]
    return None


def one_line(exc: BaseException) -> str:
    """``str(exc)`` on one line: whitespace runs (newlines included) become one space."""
    text = str(exc)
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    return re.sub(r"\s+", " ", text).strip() or type(exc).__name__


def debug_enabled(argv: list[str]) -> bool:
    """``--debug`` anywhere on the command line (removed from ``argv``) or ``VAEFIX_DEBUG=1``."""
    flag = "--debug" in argv
    while "--debug" in argv:
        argv.remove("--debug")
    return flag or os.environ.get("VAEFIX_DEBUG", "").strip().lower() in ("1", "true", "yes")


def report_error(exc: BaseException) -> int:
    """Print ``error: <one line>`` on stderr; return the exit code."""
    if isinstance(exc, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    code = exit_code(exc)
    if code is None:
        print(
            f"error: internal error: {type(exc).__name__}: {one_line(exc)} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    print(f"error: {one_line(exc)}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------------- library noise
#: warnings that concern the libraries, not the user (exact message starts, as regexes)
_QUIET_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r".*does not have many workers which may be a bottleneck",
    r"The '(predict|val|test)_dataloader' does not have many workers",
    r".*`torch\.set_float32_matmul_precision",
    r"Total length of `DataLoader` across ranks is zero",  # a resumed run with nothing left to do
)


def quiet_libraries(debug: bool = False) -> None:
    """Silence Lightning's tips and accelerator lines, deprecation chatter and the transformers/diffusers
    progress bars. The project's own warnings and its one progress bar stay. With ``debug`` nothing is hidden."""
    if debug:
        return
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.fabric.accelerators.cuda",
        "lightning.pytorch.trainer.connectors.signal_connector",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning(\..*)?")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(diffusers|transformers)(\..*)?")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # transformers reads HF_HUB_DISABLE_PROGRESS_BARS when it loads; a module already loaded is told directly
    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "disable_progress_bar"):
            module.disable_progress_bar()


def fast_exit(code: int | None) -> NoReturn:
    """End the process with ``code`` as the interpreter would, minus its final teardown.

    Runs what a normal exit runs that has an effect outside the process: the join of non-daemon
    threads (thread pools included, as ``sys.exit`` does), the ``atexit`` handlers (logging's flush,
    coverage, Inductor's worker pools) and a flush of stdout/stderr; then ``os._exit``. What is skipped
    is the teardown of every module and object, which frees nothing the OS would not (its cost:
    docs/STARTUP.md). ``VAEFIX_FAST_EXIT=0`` falls back to ``sys.exit``.
    """
    code = 0 if code is None else int(code)
    if os.environ.get("VAEFIX_FAST_EXIT", "1") == "0":
        sys.exit(code)
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # what Py_Finalize calls first; private, so guarded
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed, replaced or detached streams
            pass
    os._exit(code & 0xFF)  # the status sys.exit(code) gives on POSIX
