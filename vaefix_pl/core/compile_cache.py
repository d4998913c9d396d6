"""Persistent ``torch.compile`` artefacts across processes, one folder per model/torch/GPU/settings key.

The artefacts are Inductor's own on-disk caches (FX graph cache, AOTAutograd cache, the Triton
kernels and autotuning results under ``TORCHINDUCTOR_CACHE_DIR``), pointed at a folder of ours:

    <root>/<key>/inductor/...     Inductor's caches for this key
    <root>/<key>/aoti/*.pt2       AOTInductor packages per compiled part and shape (core/aoti.py)
    <root>/<key>/aoti/*.precompiled  where packages are off (CUDA): precompiled torch.compile artefacts
    <root>/<key>/meta.json        what the key was made from (readable)
    <root>/<key>/manifest.json    sha256 of every artefact, written once a run has compiled

``<root>`` is ``$VAEFIX_CACHE_DIR/compile``, else ``$XDG_CACHE_HOME/vaefix/compile``, else
``~/.cache/vaefix/compile``. ``<key>`` hashes the model (both ``config.json`` files and the size and
mtime of both weight files), the package's own model and rewrite code, the torch/CUDA versions, the GPU
name and capability, the precision and the speed settings/shapes, so a changed model, vaefix, torch or
GPU never finds an old artefact. A folder whose files do not match its manifest (or that has no
manifest: a run that died while compiling) is deleted and rebuilt. Why packages and Inductor's caches and not Mega-Cache: docs/STARTUP.md.

Imports only the standard library at module level (torch inside the functions that need it), so
:func:`cache_main` (``vaefix cache info|clear``) starts in a fraction of a second.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import platform
import shutil
import socket
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaefix_pl.core.utils import sha256_file

if TYPE_CHECKING:
    import torch

ENV_CACHE_DIR = "VAEFIX_CACHE_DIR"
MANIFEST = "manifest.json"
#: Half-written files older than this (seconds) are left over from a killed process (:meth:`CompileCache.sweep_temporaries`).
TEMP_MAX_AGE_S = 3600.0
META = "meta.json"
OWNER = "owner"
#: Files of these model folders enter the key: configs by content, weights by size and mtime.
_CONFIGS = ("vae/config.json", "vocoder/config.json")
_WEIGHTS = ("vae/diffusion_pytorch_model.safetensors", "vocoder/model.safetensors")


def cache_root() -> Path:
    """``$VAEFIX_CACHE_DIR/compile``, else ``$XDG_CACHE_HOME/vaefix/compile``, else ``~/.cache/vaefix/compile``."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser() / "compile"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "vaefix" / "compile"


def model_fingerprint(
    model_dir: str | os.PathLike | None = None, config: Mapping[str, Any] | None = None
) -> str:
    """sha256 of a diffusers folder's two ``config.json`` files plus size and mtime of its weights.

    ``config`` (any JSON-able mapping) is hashed instead of / besides the folder, e.g. for in-memory
    models. Size + mtime (not a content hash) keeps the key cheap for 400 MB of weights; a rewritten
    weight file gets a new mtime.
    """
    h = hashlib.sha256()
    if model_dir is not None:
        root = Path(model_dir)
        for rel in _CONFIGS:
            p = root / rel
            h.update(rel.encode() + b"\0" + (p.read_bytes() if p.is_file() else b"<missing>") + b"\0")
        for rel in _WEIGHTS:
            p = root / rel
            st = p.stat() if p.is_file() else None
            h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}".encode() if st else f"{rel}:<missing>".encode())
    if config is not None:
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
    return h.hexdigest()


def code_fingerprint(folder: str | os.PathLike | None = None) -> str:
    """sha256 of the source files of ``vaefix_pl/core`` (default), where the networks, their speed
    rewrites and the compiled calls are defined: an upgraded or edited vaefix never loads artefacts
    traced from other code. Cached per process for the default folder."""
    if folder is None:
        global _CODE_FP
        if _CODE_FP is None:
            _CODE_FP = code_fingerprint(Path(__file__).resolve().parent)
        return _CODE_FP
    h = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


_CODE_FP: str | None = None


def environment_key(device: torch.device | str = "cpu") -> dict[str, str]:
    """torch/CUDA/Python versions and, on CUDA, the GPU name and compute capability."""
    import torch

    device = torch.device(device)
    env = {
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "python": platform.python_version(),
        "device": device.type,
    }
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        env["gpu"] = torch.cuda.get_device_name(idx)
        env["capability"] = f"{major}.{minor}"
    else:  # CPU code is built for the CPU's vector instructions: the model name stands for them
        env["cpu"] = platform.machine()
        env["cpu_model"] = _cpu_model()
    return env


def _cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def cache_key(
    model_fp: str, device: torch.device | str, precision: str, settings: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """``(key, parts)``: a 20-hex-digit key and the readable parts it hashes.

    ``settings``: everything else the compiled graphs depend on (speed preset and its options, the
    canonical frame count, batch size, ...), any JSON-able mapping.
    """
    parts = {
        "model": model_fp,
        "code": code_fingerprint(),
        "precision": str(precision),
        "settings": dict(settings or {}),
        **environment_key(device),
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20], parts


#: Sub-folders of a key folder: Inductor's caches, and the per-part artefacts of core/aoti.py.
INDUCTOR_DIR, AOTI_DIR = "inductor", "aoti"
_ARTEFACT_DIRS = (INDUCTOR_DIR, AOTI_DIR)
#: What a process writes before renaming it into place (core/aoti.py), and its AOTInductor build folders.
HALF_WRITTEN_SUFFIXES = (".tmp", ".partial.pt2")
BUILD_DIR_PREFIX = ".build."
_ACTIVE: CompileCache | None = None


def active_cache() -> CompileCache | None:
    """The :class:`CompileCache` this process activated last and has not deactivated (or ``None``):
    :mod:`vaefix_pl.core.aoti` writes its packages into its folder."""
    return _ACTIVE


def _artefacts(folder: Path) -> list[tuple[str, os.stat_result]]:
    """``(path relative to folder, stat)`` of every artefact, sorted (``os.walk`` rather than
    ``Path.rglob``: a warm key folder holds thousands of files; docs/STARTUP.md)."""
    # Inductor keeps lock files and per-process temporaries beside the entries, and a package being
    # built is a ``*.partial.pt2`` beside a ``.build.<pid>`` folder: none of them are artefacts.
    out = []
    for d in _ARTEFACT_DIRS:
        for root, dirs, names in os.walk(folder / d):
            dirs[:] = [x for x in dirs if not x.startswith(BUILD_DIR_PREFIX)]
            rel_root = os.path.relpath(root, folder)
            for name in names:
                if name.endswith((".lock", *HALF_WRITTEN_SUFFIXES)):
                    continue
                with contextlib.suppress(OSError):  # removed meanwhile, or a dangling link
                    st = os.stat(os.path.join(root, name))
                    if stat.S_ISREG(st.st_mode):
                        out.append((os.path.join(rel_root, name), st))
    return sorted(out, key=lambda item: item[0])


class CompileCache:
    """One key folder: point Inductor at it, check it against its manifest, seal it after compiling.

    Args:
        path: the key folder (see :func:`compile_cache_for`).
        parts: the readable key parts, written to ``meta.json``.
    """

    def __init__(self, path: str | os.PathLike, parts: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.parts = dict(parts or {})
        #: Why the folder was wiped on :meth:`activate` (``"corrupt"``, ``"unsealed"``) or ``None``.
        self.rebuilt: str | None = None
        self._saved_env: dict[str, str | None] = {}
        self._atexit = False

    @property
    def inductor_dir(self) -> Path:
        return self.path / INDUCTOR_DIR

    @property
    def sealed(self) -> bool:
        """Whether a run has compiled into this folder and written its manifest (after :meth:`activate`,
        which wipes a folder that fails its manifest: a warm start)."""
        return (self.path / MANIFEST).is_file()

    def verify(self) -> str | None:
        """``None`` if every artefact matches the manifest (or the folder is new), else the reason."""
        if not self.inductor_dir.exists():
            return None
        try:
            manifest = json.loads((self.path / MANIFEST).read_text())["files"]
        except FileNotFoundError:
            return "unsealed"
        except (ValueError, KeyError, TypeError):
            return "corrupt"
        for rel, digest in manifest.items():
            p = self.path / rel
            try:
                if sha256_file(p) != digest:
                    return "corrupt"
            except OSError:
                return "corrupt"
        return None

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def activate(self, seal_at_exit: bool = True) -> CompileCache:
        """Check the folder (wipe it if corrupt or unsealed) and point Inductor's caches at it.

        Process-wide: ``TORCHINDUCTOR_CACHE_DIR`` stays set until :meth:`deactivate`, because Inductor
        compiles lazily, at the first call of a compiled module. With ``seal_at_exit`` the manifest is
        written at interpreter exit if :meth:`seal` was not called.
        """
        reason = self.verify()
        if reason == "unsealed" and self._owner_alive():
            reason = None  # another live process is compiling into it: share, do not wipe under it
        if reason is not None:
            self.clear()
        self.rebuilt = reason
        self.sweep_temporaries()
        self.inductor_dir.mkdir(parents=True, exist_ok=True)
        (self.path / OWNER).write_text(f"{socket.gethostname()} {os.getpid()}")
        meta = self.path / META
        if not meta.exists():
            _write_json(meta, {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **self.parts})
        # Inductor puts Triton's kernels under triton/<device index>/: rank 1 of a DDP run would never
        # find what rank 0 (or a 1-GPU run) compiled. The key already fixes the GPU model, so one folder
        # serves every device of the machine (Triton writes its entries atomically).
        triton = str(self.inductor_dir / "triton" / "all")
        for name, value in (
            ("TORCHINDUCTOR_CACHE_DIR", str(self.inductor_dir)),
            ("TRITON_CACHE_DIR", triton),
        ):
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        global _ACTIVE
        _ACTIVE = self
        inductor_config.fx_graph_cache = True
        functorch_config.enable_autograd_cache = True
        if seal_at_exit and not self._atexit:
            atexit.register(self._seal_if_active)
            self._atexit = True
        return self

    def sweep_temporaries(self, older_than_s: float = TEMP_MAX_AGE_S) -> int:
        """Delete what a killed process left half-written in ``aoti/`` (``*.tmp``, ``*.partial.pt2``,
        ``.build.*`` folders) once older than ``older_than_s``; returns how many. By age, not by pid:
        the cache folder may be shared by several hosts, and no save takes an hour."""
        folder = self.path / AOTI_DIR
        cutoff = time.time() - older_than_s
        swept = 0
        for p in list(folder.iterdir()) if folder.is_dir() else []:
            if not (p.name.endswith(HALF_WRITTEN_SUFFIXES) or p.name.startswith(BUILD_DIR_PREFIX)):
                continue
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < cutoff:
                    if p.is_dir():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
                    swept += 1
        return swept

    def _owner_alive(self) -> bool:
        """Whether the process that last activated this folder still runs (same host only)."""
        try:
            host, pid = (self.path / OWNER).read_text().split()
            if host != socket.gethostname() or int(pid) == os.getpid():
                return False
            os.kill(int(pid), 0)
        except (OSError, ValueError):
            return False
        return True

    def seal(self) -> None:
        """Write the manifest (sha256 of every artefact); call once the first compiled batch ran.

        A file whose size and mtime match the previous manifest keeps its digest (it was verified at
        :meth:`activate`): re-sealing a warm folder of large packages costs no re-hashing.
        """
        try:
            old = json.loads((self.path / MANIFEST).read_text())
            old_files, old_stat = dict(old["files"]), dict(old.get("stat", {}))
        except (OSError, ValueError, KeyError, TypeError):
            old_files, old_stat = {}, {}
        files, stats = {}, {}
        for rel, st in _artefacts(self.path):
            stats[rel] = [st.st_size, st.st_mtime_ns]
            same = rel in old_files and old_stat.get(rel) == stats[rel]
            files[rel] = old_files[rel] if same else sha256_file(self.path / rel)
        _write_json(self.path / MANIFEST, {"sealed": time.time(), "files": files, "stat": stats})

    def reseal(self) -> None:
        """:meth:`seal` again if the folder was sealed before (adds artefacts of a new shape)."""
        if self.sealed:
            with contextlib.suppress(OSError):
                self.seal()

    def deactivate(self) -> None:
        """Restore ``TORCHINDUCTOR_CACHE_DIR`` as it was before :meth:`activate`."""
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}

    @contextlib.contextmanager
    def compiling(self) -> Iterator[CompileCache]:
        """Context manager around compiling *and the first compiled call*: activate, then seal on success.

        On an exception inside the block the folder is deleted (its artefacts cannot be trusted) and
        the exception propagates; the caller may retry once, which compiles from scratch.
        """
        self.activate(seal_at_exit=False)
        try:
            yield self
        except BaseException:
            self.clear()
            self.deactivate()
            raise
        self.seal()
        self.deactivate()

    def _seal_if_active(self) -> None:
        if self._saved_env and self.inductor_dir.is_dir():
            with contextlib.suppress(OSError):
                self.seal()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)  # atomic: a reader never sees half a manifest


def compile_cache_for(
    model_dir: str | os.PathLike | None,
    device: torch.device | str,
    precision: str,
    settings: Mapping[str, Any] | None = None,
    model_config: Mapping[str, Any] | None = None,
    root: str | os.PathLike | None = None,
) -> CompileCache:
    """The :class:`CompileCache` of this model folder (and/or config), device, precision and settings."""
    key, parts = cache_key(model_fingerprint(model_dir, model_config), device, precision, settings)
    if model_dir is not None:
        parts["model_dir"] = str(Path(model_dir).resolve())
    return CompileCache((Path(root) if root is not None else cache_root()) / key, parts)


def compile_cache(*args: Any, **kwargs: Any) -> contextlib.AbstractContextManager[CompileCache]:
    """:meth:`CompileCache.compiling` of :func:`compile_cache_for` (same arguments): a context manager
    around compiling and the first compiled call that seals the cache on success and wipes it on error."""
    return compile_cache_for(*args, **kwargs).compiling()


def run_with_cache(fn, cache: CompileCache, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with ``cache`` active; if it raises, wipe the cache and run it once more.

    For the first compiled batch: a cache entry that passed the checksum but still fails to load
    costs one recompile, never the run. ``torch._dynamo.reset()`` drops the half-built graphs first.
    """
    cache.activate(seal_at_exit=False)
    try:
        out = fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - any failure here is retried once from an empty cache
        import torch._dynamo

        cache.clear()
        torch._dynamo.reset()
        cache.activate(seal_at_exit=False)
        out = fn(*args, **kwargs)
    cache.seal()
    return out


def cache_info(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per key folder: ``key``, ``path``, ``bytes``, ``files``, ``sealed``, ``meta``."""
    base = Path(root) if root is not None else cache_root()
    rows = []
    for d in sorted(p for p in base.glob("*") if p.is_dir()) if base.is_dir() else []:
        files = [p for p in d.rglob("*") if p.is_file()]
        try:
            meta = json.loads((d / META).read_text())
        except (OSError, ValueError):
            meta = {}
        rows.append(
            {
                "key": d.name,
                "path": str(d),
                "bytes": sum(p.stat().st_size for p in files),
                "files": len(files),
                "sealed": (d / MANIFEST).is_file(),
                "meta": meta,
            }
        )
    return rows


def clear_cache(key: str | None = None, root: str | os.PathLike | None = None) -> int:
    """Delete one key folder (``key``) or the whole compile cache; returns the bytes freed."""
    base = Path(root) if root is not None else cache_root()
    targets = [base / key] if key else [base]
    freed = 0
    for t in targets:
        if t.is_dir():
            freed += sum(p.stat().st_size for p in t.rglob("*") if p.is_file())
            shutil.rmtree(t, ignore_errors=True)
    return freed


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cache_main(argv: list[str] | None = None) -> int:
    """``vaefix cache info|clear [KEY]``: list the compile cache's key folders, or delete one or all.

    Prints to stdout; returns the exit code (0; 2 for an unknown key). Needs neither torch nor a GPU.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="vaefix cache",
        description=f"The torch.compile cache of `speed: compile` runs (folder: {cache_root()}; "
        f"set {ENV_CACHE_DIR} to move it). Deleting it is always safe: the next run recompiles.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("info", help="list the cached keys: size, files, sealed, model, GPU, precision")
    clear = sub.add_parser("clear", help="delete one key folder, or the whole cache")
    clear.add_argument("key", nargs="?", default=None, help="key to delete (default: all)")
    args = parser.parse_args(argv)
    root = cache_root()
    if args.action == "info":
        rows = cache_info(root)
        print(
            f"{root}: {len(rows)} entr{'y' if len(rows) == 1 else 'ies'}, "
            f"{_human(sum(r['bytes'] for r in rows))}"
        )
        for r in rows:
            m = r["meta"]
            what = ", ".join(
                str(m[k]) for k in ("model_dir", "gpu", "device", "precision", "torch") if m.get(k)
            )
            state = "sealed" if r["sealed"] else "unsealed"
            print(f"  {r['key']}  {_human(r['bytes']):>10}  {r['files']:>5} files  {state}  {what}")
        return 0
    if args.key is not None and not (root / args.key).is_dir():
        print(f"error: no cache entry {args.key!r} in {root} (see `vaefix cache info`)", file=sys.stderr)
        return 2
    freed = clear_cache(args.key, root)
    print(f"deleted {'entry ' + args.key if args.key else root}: {_human(freed)} freed")
    return 0
