"""Whether installed packages have usable bytecode, and a bytecode cache for those that have none.

A pip install compiles every module to ``__pycache__/*.pyc`` at install time, so a user's process
reads bytecode. An environment without valid ``.pyc`` files that it cannot write either (a read-only
image, ``PYTHONDONTWRITEBYTECODE``) compiles every imported module from source in every process:
seconds of start-up that such an install does not pay (docs/STARTUP.md, "Bytecode"). A whole-run
benchmark there should say so, or give its processes a bytecode cache filled beforehand, as a pip
install would have been (``PYTHONPYCACHEPREFIX``).

    python benchmarks/pyc_cache.py                    # which of the CLI's big imports lack bytecode here
    python benchmarks/pyc_cache.py --fill /tmp/pyc    # compile them into /tmp/pyc (then export PYTHONPYCACHEPREFIX=/tmp/pyc)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

#: Packages whose import dominates ``vaefix`` start-up (``speed: compile`` adds torch's compiler).
BIG_IMPORTS = ("torch", "numpy", "scipy", "sympy", "safetensors", "soundfile", "lightning", "transformers")


def needs_source_compile(module: str, prefix: str | None = None) -> bool:
    """Whether importing ``module`` compiles its source: no ``.pyc`` for it (in ``prefix``, else in its
    ``__pycache__``) that CPython would accept (magic number, and source mtime and size for the
    default timestamp-checked kind)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return False  # not installed, or not Python source (a built-in or extension module)
    src = Path(spec.origin)
    old = sys.pycache_prefix
    sys.pycache_prefix = prefix
    try:
        pyc = Path(importlib.util.cache_from_source(str(src)))
    finally:
        sys.pycache_prefix = old
    try:
        head = pyc.read_bytes()[:16]
    except OSError:
        return True
    if len(head) < 16 or head[:4] != importlib.util.MAGIC_NUMBER:
        return True
    if int.from_bytes(head[4:8], "little") & 1:  # hash-based .pyc: validated against the source's hash
        return False
    st = src.stat()
    stamp = (int.from_bytes(head[8:12], "little"), int.from_bytes(head[12:16], "little"))
    return stamp != (int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF)


def site_dirs(modules: tuple[str, ...] = BIG_IMPORTS) -> list[Path]:
    """The folders ``modules`` are installed in (each ``site-packages`` or ``PYTHONPATH`` entry once)."""
    dirs: dict[Path, None] = {}
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        dirs[origin.parent.parent if spec.submodule_search_locations else origin.parent] = None
    return list(dirs)


def fill_pycache(prefix: str | os.PathLike, modules: tuple[str, ...] = BIG_IMPORTS) -> float:
    """Compile everything installed beside ``modules`` into the bytecode cache ``prefix`` (what pip
    does at install time, into ``__pycache__``); returns the seconds it took. Files that do not
    compile (e.g. templates named ``.py``) are skipped, as pip skips them."""
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(prefix))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # with a prefix set, CPython reads bytecode only from there: the standard library's goes in too
    dirs = [Path(sysconfig.get_paths()["stdlib"]), *site_dirs(modules)]
    cmd = [sys.executable, "-m", "compileall", "-q", "-j", "0", *map(str, dirs)]
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fill", metavar="DIR", help="compile the big imports' folders into this bytecode cache")
    a = p.parse_args()
    if a.fill:
        print(f"filled {a.fill} in {fill_pycache(a.fill):.0f} s; export PYTHONPYCACHEPREFIX={a.fill}")
    prefix = a.fill or sys.pycache_prefix
    for name in BIG_IMPORTS:
        print(
            f"{name}: {'compiled from source in every process' if needs_source_compile(name, prefix) else 'bytecode'}"
        )


if __name__ == "__main__":
    main()
