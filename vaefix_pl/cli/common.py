"""What the ``vaefix`` subcommands' parsers share."""

from __future__ import annotations

import argparse


def inputs_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser whose positional ``audio`` takes files, folders or manifests (none: the probe set)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("audio", nargs="*", help="files, folders or manifests (none: the built-in probe set)")
    return p
