#!/usr/bin/env python3
"""Render a ``report.html`` in headless Chromium and save a PNG screenshot.

    python scripts/screenshot_report.py OUT_DIR/report.html report.png [--width 1400] [--height 2000]

Looks for ``chromium``, ``chromium-browser``, ``google-chrome`` or ``$CHROMIUM`` (Debian: ``apt-get install
-y chromium``). Runs with a fresh temporary profile, no sandbox (CI containers run as root), no GPU and no
network services, so it works offline. Exit code 0 on success, 2 when no Chromium is installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or ``None``."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(
    html: str | os.PathLike,
    png: str | os.PathLike,
    width: int = 1400,
    height: int = 2000,
    timeout: float = 120.0,
    chromium: str | None = None,
) -> Path:
    """Render ``html`` (a local file) headless at ``width`` x ``height`` CSS px and write ``png``."""
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary found (apt-get install -y chromium, or set $CHROMIUM)")
    src = Path(html).resolve()
    out = Path(png).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="vaefix-chromium-") as profile:
        cmd = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            f"--screenshot={out}",
            f"--window-size={width},{height}",
            src.as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html")
    p.add_argument("png")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=2000)
    args = p.parse_args(argv)
    if find_chromium() is None:
        print("no chromium found: apt-get install -y chromium (or set $CHROMIUM)", file=sys.stderr)
        return 2
    path = screenshot(args.html, args.png, args.width, args.height)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
