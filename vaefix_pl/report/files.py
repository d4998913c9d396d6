"""Reading a run folder's files for the report: JSON, WAVs (and their rate), confined paths."""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from vaefix_pl.core.frontend import SAMPLE_RATE
from vaefix_pl.runs.files import UnsafePathError, safe_output_path

log = logging.getLogger("vaefix_pl.report.html")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _wav_rate(path: Path | None) -> int:
    """The sample rate of a written WAV (the run's model rate); 16000 when it is not there."""
    if path is None or not path.is_file():
        return SAMPLE_RATE
    import soundfile as sf

    return int(sf.info(str(path)).samplerate)


def _read_wav(path: Path | None) -> np.ndarray | None:
    if path is None or not path.is_file():
        return None
    import soundfile as sf

    data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1)


def wav_base64(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    """Base64 of a 16-bit PCM mono WAV of ``x`` (clipped to [-1, 1]), for an inline ``data:`` URI."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(
        buf, np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV"
    )
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _confined(root: Path, name: str) -> Path | None:
    """``root / name`` when it stays inside ``root`` through no symbolic link, else ``None`` (warned)."""
    try:
        return safe_output_path(root, name, no_links=True)
    except UnsafePathError as exc:
        log.warning("report: skipping %s (%s)", name, exc)
        return None
