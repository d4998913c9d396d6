"""Inputs: file discovery, the audio dataset (decoding in the workers), collate and ``AudioDataModule``.

A batch is ``{"waveform": (B, N) float32, "lengths": (B,) int64, "ids": [B], "paths": [B],
"errors": [{"id", "path", "reason"}, ...]}``. Items that cannot be read are not in the tensors: they
travel in ``errors`` so the run goes on and the writer records them.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vaefix_pl.audio import AUDIO_EXTENSIONS, AudioReadError, audio_info, load_audio
from vaefix_pl.frontend import SAMPLE_RATE
from vaefix_pl.probes import PROBE_NAMES, probe_signals

log = logging.getLogger(__name__)

__all__ = [
    "AudioDataModule",
    "AudioDataset",
    "AudioEntry",
    "collate_audio",
    "discover_inputs",
    "probe_signals",
]

MANIFEST_EXTENSIONS = (".txt", ".csv", ".lst", ".list")


@dataclass(frozen=True)
class AudioEntry:
    """One input: a stable id (used for output names), its source path (None for probes), duration (s)."""

    id: str
    path: str | None
    seconds: float | None = None
    error: str | None = None


def _read_manifest(manifest: Path) -> list[Path]:
    """Paths listed by a ``.txt`` (one per line, ``#`` comments) or ``.csv`` (``path`` column) manifest."""
    base = manifest.parent
    paths: list[str] = []
    if manifest.suffix.lower() == ".csv":
        with open(manifest, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise ValueError(
                    f"{manifest}: a CSV manifest needs a 'path' column (has {reader.fieldnames})"
                )
            paths = [row["path"].strip() for row in reader if row.get("path", "").strip()]
    else:
        with open(manifest, encoding="utf-8") as fh:
            paths = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    return [(base / p).resolve() if not Path(p).is_absolute() else Path(p) for p in paths]


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def _expand(inp: str | os.PathLike) -> list[Path]:
    p = Path(inp).expanduser()
    if p.is_dir():
        return sorted(f.resolve() for f in p.rglob("*") if f.is_file() and _is_audio(f))
    if p.suffix.lower() in MANIFEST_EXTENSIONS and p.is_file():
        return _read_manifest(p)
    return [p.resolve()]  # a file (or a missing one: reported as an error item, not a crash)


def _unique_ids(paths: Sequence[Path]) -> list[str]:
    """Ids = paths relative to their common folder, extension dropped; clashes get the extension back."""
    if not paths:
        return []
    base = Path(os.path.commonpath([str(p.parent) for p in paths]))
    stems = [p.relative_to(base).with_suffix("").as_posix() for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    ids, seen = [], set()
    for p, s in zip(paths, stems):
        cand = s if counts[s] == 1 else f"{s}__{p.suffix.lstrip('.').lower() or 'noext'}"
        k, base_cand = 2, cand
        while cand in seen:  # the same file listed twice
            cand, k = f"{base_cand}__{k}", k + 1
        seen.add(cand)
        ids.append(cand)
    return ids


def discover_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[AudioEntry]:
    """Resolve files, folders (recursive) and manifests into entries with collision-free ids.

    ``None`` or an empty list gives the built-in probe set.
    """
    if inputs is None or (isinstance(inputs, (list, tuple)) and not inputs):
        return [AudioEntry(id=name, path=None) for name in PROBE_NAMES]
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths: list[Path] = []
    for inp in inputs:
        paths.extend(_expand(inp))
    entries = []
    for pid, p in zip(_unique_ids(paths), paths):
        try:
            frames, sr, _ = audio_info(p) if p.is_file() else (0, 0, 0)
            err = None if p.is_file() else f"{p}: no such file"
            seconds = frames / sr if sr else None
        except AudioReadError as exc:
            seconds, err = None, str(exc)
        entries.append(AudioEntry(id=pid, path=str(p), seconds=seconds, error=err))
    return entries


class AudioDataset(Dataset):
    """Decodes, mixes down and resamples one entry per ``__getitem__`` (so it runs in the workers).

    Returns ``{"id", "path", "waveform": (N,) float32 | None, "error": str | None}``. With ``seconds``
    set, every clip is cropped or zero-padded to exactly that length (after ``offset``).
    """

    def __init__(
        self,
        entries: Sequence[AudioEntry],
        seconds: float | None = None,
        offset: float = 0.0,
        sample_rate: int = SAMPLE_RATE,
        channel: str | int = "mean",
        probe_seconds: float = 4.0,
        min_samples: int = 1,
    ) -> None:
        self.entries = list(entries)
        self.seconds = seconds
        self.offset = offset
        self.sample_rate = sample_rate
        self.channel = channel
        self.probe_seconds = probe_seconds
        self.min_samples = min_samples
        self._probes: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def _probe(self, name: str) -> torch.Tensor:
        if self._probes is None:
            self._probes = probe_signals(seconds=self.probe_seconds, sample_rate=self.sample_rate)
        x = torch.from_numpy(self._probes[name])
        start = int(round(self.offset * self.sample_rate))
        return x[start:]

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        item: dict[str, Any] = {"id": e.id, "path": e.path, "waveform": None, "error": e.error}
        if e.error:
            return item
        try:
            if e.path is None:
                x = self._probe(e.id)
            else:
                x = load_audio(e.path, self.sample_rate, self.channel, self.offset, self.seconds)
            if self.seconds is not None:
                n = int(round(self.seconds * self.sample_rate))
                x = torch.nn.functional.pad(x[:n], (0, max(0, n - x.shape[0])))
            if x.shape[0] < self.min_samples:
                raise AudioReadError(f"{e.path or e.id}: only {x.shape[0]} samples (< {self.min_samples})")
            item["waveform"] = x.float().contiguous()
        except Exception as exc:  # one bad file never stops the batch
            item["error"] = str(exc) if isinstance(exc, AudioReadError) else f"{e.path}: {exc}"
        return item


def collate_audio(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad the good items into ``(B, N)`` with ``lengths``; carry failed ones in ``errors``."""
    good = [it for it in items if it["waveform"] is not None]
    lengths = torch.tensor([it["waveform"].shape[0] for it in good], dtype=torch.long)
    n = int(lengths.max()) if len(good) else 0
    wave = torch.zeros(len(good), n, dtype=torch.float32)
    for i, it in enumerate(good):
        wave[i, : it["waveform"].shape[0]] = it["waveform"]
    return {
        "waveform": wave,
        "lengths": lengths,
        "ids": [it["id"] for it in good],
        "paths": [it["path"] for it in good],
        "errors": [
            {"id": it["id"], "path": it["path"], "reason": it["error"]} for it in items if it["error"]
        ],
    }


class AudioDataModule(L.LightningDataModule):
    """Audio files, folders, manifests or the probe set -> padded 16 kHz batches for ``trainer.predict``.

    Args:
        inputs: a file, a folder (recursive), a manifest (``.txt`` one path a line, ``.csv`` with a
            ``path`` column; relative paths resolve against the manifest), or a list of them.
            ``None`` = the built-in probe set.
        seconds: crop/zero-pad every clip to this length (``None``: full length).
        offset: seconds skipped at the start of every file.
        batch_size, num_workers: DataLoader settings (decoding and resampling run in the workers).
        sort_by_duration: order by duration (longest first) so batches carry little padding.
        channel: ``"mean"`` (mix-down) or a channel index (upstream AudioLDM2 takes channel 0).
        probe_seconds: length of each probe signal.
    """

    def __init__(
        self,
        inputs: str | list[str] | None = None,
        seconds: float | None = None,
        offset: float = 0.0,
        batch_size: int = 8,
        num_workers: int = 2,
        sort_by_duration: bool = True,
        channel: str | int = "mean",
        probe_seconds: float = 4.0,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.inputs = inputs
        self.seconds = seconds
        self.offset = offset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.sort_by_duration = sort_by_duration
        self.channel = channel
        self.probe_seconds = probe_seconds
        self.pin_memory = pin_memory
        self.dataset: AudioDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        entries = discover_inputs(self.inputs)
        if not entries:
            raise FileNotFoundError(
                f"no audio files found in {self.inputs!r} (extensions: {AUDIO_EXTENSIONS})"
            )
        if self.sort_by_duration and self.seconds is None:
            # longest first: a batch that does not fit in memory fails at once, not at the end
            entries.sort(key=lambda e: (-(e.seconds or self.probe_seconds), e.id))
        else:
            entries.sort(key=lambda e: e.id)
        bad = [e for e in entries if e.error]
        for e in bad:
            log.warning("skipping %s", e.error)
        self.dataset = AudioDataset(
            entries, self.seconds, self.offset, channel=self.channel, probe_seconds=self.probe_seconds
        )

    def _loader(self) -> DataLoader:
        if self.dataset is None:
            self.setup("predict")
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_audio,
            pin_memory=pin,
            persistent_workers=False,
            prefetch_factor=4 if self.num_workers > 0 else None,
        )

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()
