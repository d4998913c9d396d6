"""Small leaf helpers that several layers share: a file's sha256, JSON-safe values, short numbers.

Imports nothing from the package, so any layer may use it (metrics, runs, convert, report, cli), and
only the standard library: the compile cache's key is computed before torch is imported. A tensor or
a NumPy scalar can only exist once its library is imported, so :func:`jsonable` looks them up in
``sys.modules`` instead of importing them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in ``block``-byte pieces (never the whole file at once)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for piece in iter(lambda: fh.read(block), b""):
            h.update(piece)
    return h.hexdigest()


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in ``path``; ``ValueError`` with a one-line reason (unreadable, not JSON, not an
    object). Callers add the path and their own error type."""
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not readable JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"must hold a JSON object, got {type(obj).__name__}")
    return obj


def jsonable(v: Any) -> Any:
    """``v`` with tensors, NumPy scalars and paths converted and non-finite floats as ``None`` (strict JSON).

    Mappings get string keys, tuples become lists; any other object becomes its ``str``.
    """
    torch, np = sys.modules.get("torch"), sys.modules.get("numpy")
    if torch is not None and isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if np is not None and isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def format_number(v: Any, missing: str = "—") -> str:
    """A table cell: ``missing`` for ``None``/NaN, ``inf``/``-inf``, integers (and bools as 0/1) as they
    are, other floats to 4 significant digits (``1.234e-05`` style below 1e-3 or from 1e4 up)."""
    np = sys.modules.get("numpy")
    if np is not None and isinstance(v, np.generic):
        v = v.item()
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)
