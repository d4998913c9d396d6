"""``vaefix models``: the known checkpoints of the family, their geometry, and whether each is here.

Offline: looks in the Hugging Face cache folder layout (``models--org--name/snapshots/*/``, under
``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``) and in folders the user
names; never asks the network.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vaefix_pl.core.geometry import GEOMETRIES, KNOWN_CHECKPOINTS, GeometryError, match_geometry


def hub_cache_dir() -> Path:
    """The HF hub cache folder, as huggingface_hub resolves it (without importing it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home).expanduser() / "hub"


def cached_snapshot(hub_id: str, files: Sequence[str] = (), cache: Path | None = None) -> Path | None:
    """A cached snapshot of ``hub_id`` holding ``vae/config.json`` and ``vocoder/config.json`` (or,
    for an original-format checkpoint, every one of ``files``); ``None`` when there is none."""
    root = (cache or hub_cache_dir()) / ("models--" + hub_id.replace("/", "--")) / "snapshots"
    if not root.is_dir():
        return None
    need = list(files) or ["vae/config.json", "vocoder/config.json"]
    for snap in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        if all((snap / f).is_file() for f in need):
            return snap
    return None


def _folder_row(folder: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"hub_id": str(folder), "format": "diffusers", "present": str(folder)}
    try:
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        voc = json.loads((folder / "vocoder" / "config.json").read_text(encoding="utf-8"))
        g = match_geometry(vae, voc)
    except (OSError, ValueError, GeometryError) as exc:
        return {**row, "geometry": None, "error": " ".join(str(exc).split())}
    return {**row, **_geometry_fields(g.name), "scaling_factor": g.scaling_factor, "error": None}


def _geometry_fields(name: str) -> dict[str, Any]:
    g = GEOMETRIES[name]
    return {"geometry": g.name, "sample_rate": g.sample_rate, "n_mels": g.n_mels, "hop": g.hop}


def list_models(
    extra_folders: Iterable[str | os.PathLike] = (), cache_dir: str | os.PathLike | None = None
) -> list[dict]:
    """One dict per known checkpoint, then per extra folder: ``hub_id``, ``geometry``, ``sample_rate``,
    ``n_mels``, ``hop``, ``scaling_factor`` (the cached config's when present, else the recorded one,
    ``None`` if unknown), ``format`` (``diffusers`` | ``original``) and ``present`` (local path or ``None``)."""
    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    rows: list[dict] = []
    for c in KNOWN_CHECKPOINTS.values():
        snap = cached_snapshot(c.hub_id, c.files if c.format == "original" else (), cache)
        row = {
            "hub_id": c.hub_id,
            **_geometry_fields(c.geometry),
            "scaling_factor": c.scaling_factor,
            "format": c.format,
            "present": None if snap is None else str(snap),
            "error": None,
        }
        if snap is not None and c.format == "diffusers":
            local = _folder_row(snap)
            row.update({k: local[k] for k in ("scaling_factor", "error") if k in local})
        rows.append(row)
    for folder in extra_folders:
        path = Path(folder).expanduser()
        if (path / "vae").is_dir() and (path / "vocoder").is_dir():
            rows.append(_folder_row(path))
        else:
            rows.append({"hub_id": str(path), "geometry": None, "format": "diffusers", "present": None,
                         "error": "no vae/ and vocoder/ subfolders"})  # fmt: skip
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """A plain-text table of :func:`list_models` rows."""
    head = ("model", "geometry", "rate", "mels", "hop", "scaling_factor", "format", "local")
    body = [
        (
            r["hub_id"],
            r.get("geometry") or "?",
            str(r.get("sample_rate") or "?"),
            str(r.get("n_mels") or "?"),
            str(r.get("hop") or "?"),
            "unknown" if r.get("scaling_factor") is None else f"{r['scaling_factor']:.6g}",
            r.get("format") or "?",
            r["present"] or ("error: " + r["error"] if r.get("error") else "no"),
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in [head, *body]]
    return "\n".join(lines)


def models_main(argv: Sequence[str]) -> int:
    """``vaefix models [FOLDER ...] [--json]``: print the known checkpoints and where each is."""
    p = argparse.ArgumentParser(
        prog="vaefix models",
        description="List the AudioLDM-family checkpoints vaefix knows, their front-end geometry and "
        "whether each is in the local Hugging Face cache (no network). Original-format ones need "
        "`vaefix convert` once.",
    )
    p.add_argument("folders", nargs="*", help="also describe these local model folders")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ns = p.parse_args(list(argv))
    rows = list_models(ns.folders)
    print(json.dumps(rows, indent=2) if ns.json else format_table(rows), file=sys.stdout)
    return 0
