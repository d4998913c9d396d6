"""Training data from a decoded-mel export: :class:`DecodedMelDataset` (aligned random segments; full clips for validation), its collate and :class:`DecodedMelDataModule`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors import safe_open
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vaefix_pl.core.frontend import HOP, LOG_MEL_FLOOR, N_MELS, Framing
from vaefix_pl.export.layout import MANIFEST, ExportSettingsError, read_manifest, segment_samples


# ============================================================================== dataset
def _id_hash(clip_id: str, seed: int) -> float:
    digest = hashlib.sha1(f"{seed}:{clip_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_ids(
    ids: Sequence[str], val_fraction: float = 0.1, seed: int = 0, val_ids: Iterable[str] | None = None
) -> tuple[list[str], list[str]]:
    """Deterministic ``(train, val)`` split of clip ids (sorted lists).

    ``val_ids`` given: exactly those (present ones) are held out. Otherwise an id is held out when a
    hash of ``(seed, id)`` falls below ``val_fraction``: stable when clips are added (no other id moves).
    With at least two ids and ``0 < val_fraction < 1``, each side gets at least one (the lowest / highest
    hash moves over).
    """
    ids = sorted(set(ids))
    if val_ids is not None:
        held = set(val_ids)
        return [i for i in ids if i not in held], [i for i in ids if i in held]
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    h = {i: _id_hash(i, seed) for i in ids}
    val = {i for i in ids if h[i] < val_fraction}
    if len(ids) >= 2 and 0.0 < val_fraction < 1.0:
        if not val:
            val = {min(ids, key=h.__getitem__)}
        if len(val) == len(ids):
            val.discard(max(ids, key=h.__getitem__))
    return [i for i in ids if i not in val], [i for i in ids if i in val]


class DecodedMelDataset(Dataset):
    """An export read back: aligned ``(mel, waveform)`` pairs for vocoder training and validation.

    Each item is ``{"id", "mel": (S, 64) float32 natural-log mel, "waveform": (S*160,) float32 at the
    normalised level, "length": valid samples (int), "frames": S, "start_frame": s}`` where the waveform
    is exactly samples ``[160 s, 160 (s + S))`` of the clip (module docstring: the alignment convention).

    Args:
        export_dir: an export folder (``manifest.jsonl`` + ``shards/``).
        segment_frames: ``None``: full clips (``S = F``, for validation). An int: segments of that many
            frames (for training): the start ``s`` is drawn uniformly from ``[0, F - S]``; a clip shorter
            than ``S`` frames is padded (mel with the log floor, waveform with zeros; ``length`` says how
            many samples are real).
        split: ``"all"``, ``"train"`` or ``"val"`` (see :func:`split_ids`; ``val_fraction``, ``split_seed``,
            ``val_ids``).
        which: the mel fed to the vocoder: ``"mel_hat"`` (VAE-decoded, default) or ``"mel"`` (ground truth).
        ids: restrict to these clip ids (after the split).
        random_segments: ``False``: the centred segment ``s = (F - S) // 2`` (deterministic).
        seed: ``None``: starts come from torch's global RNG (seeded per DataLoader worker, reproducible
            with ``seed_everything``); an int: from ``(seed, epoch, index)`` (call :meth:`set_epoch`).
        max_items: keep only the first this many clips (by id).

    Works with a plain ``DataLoader(ds, collate_fn=collate_decoded_mels)`` and with Lightning
    (:class:`DecodedMelDataModule`). Shards are opened lazily per worker process and read with
    ``safetensors`` slices, so a segment reads only its own rows.
    """

    def __init__(
        self,
        export_dir: str | os.PathLike,
        segment_frames: int | None = None,
        split: str = "all",
        which: str = "mel_hat",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        val_ids: Iterable[str] | None = None,
        ids: Iterable[str] | None = None,
        random_segments: bool = True,
        seed: int | None = None,
        max_items: int | None = None,
    ) -> None:
        self.export_dir = Path(export_dir)
        entries = read_manifest(self.export_dir)
        if not entries:
            raise FileNotFoundError(
                f"{self.export_dir / MANIFEST} is missing or empty: export first (vaefix export-mels ... --out "
                f"{self.export_dir})"
            )
        framings = {e["settings"]["framing"] for e in entries}
        if len(framings) != 1:
            raise ExportSettingsError(f"{self.export_dir} mixes framings {sorted(framings)}")
        if which not in ("mel_hat", "mel"):
            raise ValueError(f"which must be 'mel_hat' (decoded) or 'mel' (ground truth), got {which!r}")
        if split not in ("all", "train", "val"):
            raise ValueError(f"split must be 'all', 'train' or 'val', got {split!r}")
        if segment_frames is not None and segment_frames < 1:
            raise ValueError(f"segment_frames must be >= 1 or None, got {segment_frames}")
        self.settings: dict[str, Any] = dict(entries[0]["settings"])
        self.framing: Framing = self.settings["framing"]
        #: the export's geometry (exports made before it was recorded are 16 kHz: hop 160, 64 mels)
        self.hop, self.n_mels = int(self.settings.get("hop", HOP)), int(self.settings.get("n_mels", N_MELS))
        train, val = split_ids([e["id"] for e in entries], val_fraction, split_seed, val_ids)
        keep = set(train if split == "train" else val if split == "val" else train + val)
        if ids is not None:
            keep &= set(ids)
        self.entries = sorted((e for e in entries if e["id"] in keep), key=lambda e: e["id"])
        if max_items is not None:
            self.entries = self.entries[: int(max_items)]
        self.segment_frames = segment_frames
        self.split = split
        self.which = which
        self.random_segments = random_segments
        self.seed = seed
        self.epoch = 0
        self._handles: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.entries]

    def set_epoch(self, epoch: int) -> None:
        """Change the segment draws of a seeded dataset (``seed`` set) from one epoch to the next."""
        self.epoch = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # safetensors handles do not pickle; each worker opens its own
        return state

    def _handle(self, shard: str) -> Any:
        h = self._handles.get(shard)
        if h is None:
            h = safe_open(str(self.export_dir / shard), framework="pt")
            self._handles[shard] = h
        return h

    def _rows(self, entry: Mapping[str, Any], name: str, start: int, stop: int) -> Tensor:
        """Rows ``[start, stop)`` of a stored tensor (clipped to its size), read without loading the rest."""
        sl = self._handle(entry["shard"]).get_slice(entry["keys"][name])
        size = sl.get_shape()[0]
        a, b = min(max(start, 0), size), min(max(stop, 0), size)
        return sl[a:b].float()

    def clip(self, index_or_id: int | str) -> dict[str, Tensor | str | int]:
        """One whole clip as stored: ``{"id", "mel_hat": (F, 64), "mel": (F, 64), "waveform": (N,), "frames", "samples"}``."""
        e = self._entry(index_or_id)
        f, n = int(e["frames"]), int(e["samples"])
        return {
            "id": e["id"],
            "mel_hat": self._rows(e, "mel_hat", 0, f),
            "mel": self._rows(e, "mel", 0, f),
            "waveform": self._rows(e, "waveform", 0, n),
            "frames": f,
            "samples": n,
        }

    def _entry(self, index_or_id: int | str) -> dict[str, Any]:
        if isinstance(index_or_id, str):
            for e in self.entries:
                if e["id"] == index_or_id:
                    return e
            raise KeyError(
                f"{index_or_id!r} is not in this dataset ({self.split} split of {self.export_dir})"
            )
        return self.entries[index_or_id]

    def segment_start(self, index: int) -> int:
        """First frame of item ``index``'s segment (0 for full clips)."""
        e = self.entries[index]
        if self.segment_frames is None:
            return 0
        hi = max(0, int(e["frames"]) - self.segment_frames)
        if hi == 0:
            return 0
        if not self.random_segments:
            return hi // 2
        if self.seed is None:
            return int(torch.randint(0, hi + 1, (1,)).item())
        g = torch.Generator().manual_seed(int(_id_hash(f"{self.epoch}:{index}", self.seed) * 2**62))
        return int(torch.randint(0, hi + 1, (1,), generator=g).item())

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        f, n = int(e["frames"]), int(e["samples"])
        frames = f if self.segment_frames is None else int(self.segment_frames)
        s = self.segment_start(index)
        a, b = segment_samples(s, frames, self.hop)
        mel = torch.full((frames, self.n_mels), LOG_MEL_FLOOR, dtype=torch.float32)
        rows = self._rows(e, self.which, s, s + frames)
        mel[: rows.shape[0]] = rows
        wave = torch.zeros(b - a, dtype=torch.float32)
        samples = self._rows(e, "waveform", a, b)
        wave[: samples.shape[0]] = samples
        return {
            "id": e["id"],
            "mel": mel,
            "waveform": wave,
            "length": int(min(max(n - a, 0), b - a)),
            "frames": frames,
            "start_frame": s,
        }


def collate_decoded_mels(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch :class:`DecodedMelDataset` items.

    Returns ``{"mel": (B, T, n_mels)`` (padded with the log floor), ``"waveform": (B, T*hop)`` (zero-padded),
    ``"lengths": (B,)`` valid samples, ``"frames": (B,)``, ``"start_frame": (B,)``, ``"ids": [B]}`` with
    ``T`` the longest item's frames.
    """
    t = max(int(it["frames"]) for it in items)
    b = len(items)
    first = items[0]
    hop = first["waveform"].shape[0] // max(int(first["frames"]), 1)  # every item: frames * hop samples
    mel = torch.full((b, t, first["mel"].shape[-1]), LOG_MEL_FLOOR, dtype=torch.float32)
    wave = torch.zeros(b, t * hop, dtype=torch.float32)
    for i, it in enumerate(items):
        mel[i, : it["mel"].shape[0]] = it["mel"]
        wave[i, : it["waveform"].shape[0]] = it["waveform"]
    return {
        "mel": mel,
        "waveform": wave,
        "lengths": torch.tensor([int(it["length"]) for it in items], dtype=torch.long),
        "frames": torch.tensor([int(it["frames"]) for it in items], dtype=torch.long),
        "start_frame": torch.tensor([int(it["start_frame"]) for it in items], dtype=torch.long),
        "ids": [it["id"] for it in items],
    }


class DecodedMelDataModule(L.LightningDataModule):
    """Train on random aligned segments, validate on full held-out clips of one export.

    Args:
        export_dir: the export folder.
        segment_frames: training segment length in frames (32 = 0.32 s, HiFi-GAN's usual 8192 samples
            is 51.2 frames at hop 160).
        batch_size / val_batch_size: loader batch sizes (validation clips differ in length: 1 keeps
            every clip unpadded).
        which: ``"mel_hat"`` (decoded, default) or ``"mel"``.
        val_fraction, split_seed, val_ids: the split (:func:`split_ids`); use the same in
            :class:`FixedDecoderBaseline` (it reads the same ``val`` split by default).
        max_val_items: cap on validation clips.
    """

    def __init__(
        self,
        export_dir: str,
        segment_frames: int = 32,
        batch_size: int = 16,
        val_batch_size: int = 1,
        num_workers: int = 0,
        which: str = "mel_hat",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        val_ids: list[str] | None = None,
        max_val_items: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_set: DecodedMelDataset | None = None
        self.val_set: DecodedMelDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        common = dict(
            which=hp.which, val_fraction=hp.val_fraction, split_seed=hp.split_seed, val_ids=hp.val_ids
        )
        if self.train_set is None:
            self.train_set = DecodedMelDataset(hp.export_dir, hp.segment_frames, split="train", **common)
        if self.val_set is None:
            self.val_set = DecodedMelDataset(
                hp.export_dir, None, split="val", max_items=hp.max_val_items, **common
            )

    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers,
            collate_fn=collate_decoded_mels, persistent_workers=self.hparams.num_workers > 0,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.train_set is not None
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        assert self.val_set is not None
        return self._loader(self.val_set, self.hparams.val_batch_size, shuffle=False)
