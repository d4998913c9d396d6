"""Inputs: file discovery, the audio dataset (decoding in the workers), collate and :class:`AudioInputs`.

:class:`AudioInputs` is the data side of a run without Lightning (``vaefix reconstruct`` on one device
imports no Lightning); :class:`~vaefix_pl.data.module.AudioDataModule` is the same class as a
``LightningDataModule``.

A batch is ``{"waveform": (B, N) float32, "lengths": (B,) int64, "host_lengths": [B] ints, "ids": [B], "paths": [B],
"errors": [{"id", "path", "stage", "reason"}, ...]}``. Items that cannot be read are not in the
tensors: they travel in ``errors`` so the run goes on and the writer records them. ``stage`` is
``"discover"`` (missing file, broken or looping link, folder, not readable) or ``"decode"`` (empty,
corrupt, truncated, unsupported format, non-finite samples).

Ids are output names: a path relative to the inputs' common folder, extension dropped, made safe by
:func:`safe_id` (no ``..``, no absolute paths, no control characters), so no input can make a writer
write outside its output folder.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vaefix_pl.core.config import Hparams
from vaefix_pl.core.errors import SettingsError
from vaefix_pl.core.frontend import HOP, SAMPLE_RATE
from vaefix_pl.core.probes import PROBE_NAMES, probe_signals
from vaefix_pl.data.audio import (
    AUDIO_EXTENSIONS,
    AudioReadError,
    StreamedAudio,
    audio_info,
    load_audio,
    unreadable_reason,
)
from vaefix_pl.data.sampler import BalancedDistributedSampler, entry_seconds

log = logging.getLogger(__name__)

__all__ = [
    "AudioInputs",
    "AudioDataset",
    "AudioEntry",
    "collate_audio",
    "discover_inputs",
    "probe_signals",
    "safe_id",
]

MANIFEST_EXTENSIONS = (".txt", ".csv", ".lst", ".list")
#: Narrowest batch tensor collate builds (zero padding beyond every item's length, which no per-item
#: step reads): one hop. Items shorter than a frame are still processed at their own length; framed
#: steps that need more room pad their own input (``compute_metrics`` pads to ``MIN_WIDTH``).
MIN_BATCH_SAMPLES = HOP
#: Longest id component in UTF-8 bytes: leaves room for ``.original.wav`` within the usual 255-byte limit.
_MAX_COMPONENT_BYTES = 200
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"|?*\\]')


@dataclass(frozen=True)
class AudioEntry:
    """One input: a stable id (used for output names), its source path (None for probes), duration (s)."""

    id: str
    path: str | None
    seconds: float | None = None
    error: str | None = None
    stage: str | None = None  # where ``error`` arose: "discover" or "decode"


def safe_id(raw: str) -> str:
    """``raw`` as a relative output name that stays inside the output folder.

    Splits on ``/`` and ``\\``, drops empty, ``.`` and ``..`` components (so ``../../x`` -> ``x`` and
    ``/etc/x`` -> ``etc/x``), replaces control characters and ``<>:"|?*`` with ``_``, turns a leading
    ``.`` into ``_`` (no hidden outputs, no clash with the writer's ``.tmp-*`` and ``.parts``) and
    shortens components longer than 200 UTF-8 bytes. Never empty (``"item"``).
    """
    parts = []
    for comp in re.split(r"[/\\]+", raw):
        if comp in ("", ".", ".."):
            continue
        comp = _UNSAFE_CHARS.sub("_", comp)
        if comp.startswith("."):
            comp = "_" + comp[1:]
        b = comp.encode("utf-8")
        if len(b) > _MAX_COMPONENT_BYTES:
            comp = b[:_MAX_COMPONENT_BYTES].decode("utf-8", errors="ignore")
        parts.append(comp)
    return "/".join(parts) or "item"


def _manifest_line(manifest: Path, n: int, reason: str) -> tuple[Path, str]:
    """An error item standing for line ``n`` of ``manifest`` (its id names the manifest and the line)."""
    return manifest.parent / f"{manifest.stem}-line{n}", f"{manifest}: line {n}: {reason}"


def _read_manifest(manifest: Path) -> list[tuple[Path, str | None]]:
    """Paths listed by a ``.txt`` (one per line, ``#`` comments) or ``.csv`` (``path`` column) manifest.

    Read as UTF-8 with a BOM stripped (Excel's "CSV UTF-8"). A line that is not UTF-8 (e.g. Latin-1)
    becomes an error item naming the line; a manifest that cannot be read at all, or a CSV without a
    ``path`` column, becomes one error item. Either way the other inputs go on.
    """
    base = manifest.parent
    bad = "not UTF-8 text (save the manifest as UTF-8)"
    out: list[tuple[Path, str | None]] = []
    try:
        with open(manifest, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            text = fh.read()
    except OSError as exc:
        return [(manifest, f"cannot read the manifest {manifest}: {exc.strerror or exc}")]
    if manifest.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "path" not in [f.strip() for f in reader.fieldnames]:
            return [(manifest, f"{manifest}: a CSV manifest needs a 'path' column (has {reader.fieldnames})")]
        key = next(f for f in reader.fieldnames if f.strip() == "path")
        listed = [(reader.line_num, (row.get(key) or "").strip()) for row in reader]
    else:
        listed = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1)]
        listed = [(n, p) for n, p in listed if p and not p.startswith("#")]
    for n, p in listed:
        if not p:
            continue
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            out.append(_manifest_line(manifest, n, bad))
            continue
        q = Path(p).expanduser()
        out.append((_absolute(q if q.is_absolute() else base / p), None))
    return out


def _absolute(p: Path) -> Path:
    """Absolute, lexically normalised (``..`` folded), symbolic links kept: ``Path.resolve`` would turn a
    linked file's id into its target's and raises on link loops."""
    return Path(os.path.abspath(p))


def _scan_folder(root: Path) -> list[Path]:
    """Audio files under ``root``, recursively, in sorted order.

    Follows linked folders, but enters each real folder once (a link back to a parent, or a link loop,
    is skipped with a warning instead of recursing forever). Linked files are listed as found; broken or
    looping file links are listed too and become error items naming the problem.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def on_error(exc: OSError) -> None:
        log.warning("cannot scan %s: %s", exc.filename, exc.strerror or exc)

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError as exc:
            log.warning("cannot scan %s: %s", dirpath, exc.strerror or exc)
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            log.warning(
                "not scanning %s again: a symbolic link leads back to a folder already scanned", dirpath
            )
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames.sort()
        for name in filenames:
            f = Path(dirpath) / name
            if _is_audio(f):
                found.append(_absolute(f))
    return sorted(found)


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def _expand(inp: str | os.PathLike) -> list[tuple[Path, str | None]]:
    p = Path(inp).expanduser()
    if p.is_dir():
        return [(f, None) for f in _scan_folder(p)]
    if p.suffix.lower() in MANIFEST_EXTENSIONS and p.is_file():
        return _read_manifest(p)
    return [(_absolute(p), None)]  # a file (or a missing one: reported as an error item, not a crash)


def _unique_ids(paths: Sequence[Path]) -> list[str]:
    """Ids = paths relative to their common folder, extension dropped; clashes get the extension back."""
    if not paths:
        return []
    try:
        base = Path(os.path.commonpath([str(p.parent) for p in paths]))
        stems = [safe_id(p.relative_to(base).with_suffix("").as_posix()) for p in paths]
    except ValueError:  # no common folder (different drives on Windows)
        stems = [safe_id(p.with_suffix("").as_posix()) for p in paths]
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
    found: list[tuple[Path, str | None]] = []
    for inp in inputs:
        found.extend(_expand(inp))
    paths = [p for p, _ in found]
    entries = []
    for pid, (p, listed_err) in zip(_unique_ids(paths), found):
        seconds, err, stage = None, None, None
        if listed_err is not None:
            entries.append(AudioEntry(id=pid, path=str(p), error=listed_err, stage="discover"))
            continue
        reason = unreadable_reason(p)
        if reason is not None and reason != "empty file (0 bytes)":
            err, stage = f"{p}: {reason}", "discover"
        else:
            try:
                frames, sr, _ = audio_info(p)
                seconds = frames / sr if sr else None
                if frames == 0:
                    err, stage = f"{p}: no samples (an audio file with 0 frames)", "decode"
            except AudioReadError as exc:
                err, stage = str(exc), "decode"
        entries.append(AudioEntry(id=pid, path=str(p), seconds=seconds, error=err, stage=stage))
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
        self.seconds, self.offset, self.sample_rate = seconds, offset, sample_rate
        self.channel, self.probe_seconds, self.min_samples = channel, probe_seconds, min_samples
        self._probes: dict[str, np.ndarray] | None = None
        #: items whose header promises more samples than this are not read here: their
        #: :class:`~vaefix_pl.data.audio.StreamedAudio` goes in the batch's ``deferred`` list (set by the
        #: job when it can reconstruct such items in segments; ``None``: every item is read whole)
        self.stream_above: int | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def _probe(self, name: str) -> torch.Tensor:
        if self._probes is None:
            self._probes = probe_signals(seconds=self.probe_seconds, sample_rate=self.sample_rate)
        x = torch.from_numpy(self._probes[name])
        start = int(round(self.offset * self.sample_rate))
        return x[start:]

    def __getitem__(self, index: int | None) -> dict[str, Any]:
        if index is None:  # a DDP rank's placeholder when it has no input (data/sampler.py): no item
            return {"id": None, "path": None, "waveform": None, "error": None, "stage": None}
        e = self.entries[index]
        item: dict[str, Any] = {
            "id": e.id,
            "path": e.path,
            "waveform": None,
            "error": e.error,
            "stage": e.stage or ("decode" if e.error else None),
        }
        if e.error:
            return item
        if self.stream_above is not None and e.path is not None and self.seconds is None:
            try:
                audio = StreamedAudio(e.path, self.sample_rate, self.channel, self.offset)
                if audio.expected > self.stream_above:
                    item["deferred"] = audio
                    return item
            except AudioReadError:
                pass  # read below, which names the reason
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
            item["stage"] = "decode"
        return item


def collate_audio(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad the good items into ``(B, N)`` with ``lengths``; carry failed ones in ``errors``.

    ``N`` is the longest item, at least :data:`MIN_BATCH_SAMPLES` (zeros beyond each length).
    """
    good = [it for it in items if it["waveform"] is not None]
    lengths = torch.tensor([it["waveform"].shape[0] for it in good], dtype=torch.long)
    n = max(int(lengths.max()), MIN_BATCH_SAMPLES) if len(good) else 0
    if len(good) == 1 and good[0]["waveform"].shape[0] == n and good[0]["waveform"].dtype == torch.float32:
        wave = good[0]["waveform"][None]  # one item (a long file alone): no second copy of it
    else:
        wave = torch.zeros(len(good), n, dtype=torch.float32)
        for i, it in enumerate(good):
            wave[i, : it["waveform"].shape[0]] = it["waveform"]
    return {
        "waveform": wave,
        "lengths": lengths,
        # a plain list, which the Trainer leaves on the host: the module plans from it without
        # reading the (device) lengths back
        "host_lengths": lengths.tolist(),
        "ids": [it["id"] for it in good],
        "paths": [it["path"] for it in good],
        "errors": [
            {"id": it["id"], "path": it["path"], "stage": it.get("stage") or "decode", "reason": it["error"]}
            for it in items
            if it["error"]
        ],
        # long files not read here (AudioDataset.stream_above): the job reconstructs them in segments
        "deferred": [
            {"id": it["id"], "path": it["path"], "audio": it["deferred"]}
            for it in items
            if it.get("deferred")
        ],
    }


def _check_data_settings(seconds: Any, offset: Any, batch_size: Any, num_workers: Any) -> None:
    """Refuse settings that cannot mean anything, with one line naming the setting."""
    if seconds is not None and not (
        isinstance(seconds, (int, float)) and np.isfinite(seconds) and seconds > 0
    ):
        raise SettingsError(
            f"seconds (--seconds) must be a positive number of seconds or unset, got {seconds!r}"
        )
    if not (isinstance(offset, (int, float)) and np.isfinite(offset) and offset >= 0):
        raise SettingsError(f"offset (--offset) must be >= 0 seconds, got {offset!r}")
    if batch_size != "auto" and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise SettingsError(f"batch_size (--batch-size) must be an integer >= 1, got {batch_size!r}")
    if num_workers != "auto" and (
        isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0
    ):
        raise SettingsError(f"num_workers (--num-workers) must be an integer >= 0, got {num_workers!r}")


#: ``batch_size: auto`` on CUDA: GPU-sized batches (the reconstructor halves a sub-batch that runs out
#: of memory; cuDNN autotuning stays off at this size, see core/autotune.py). On the CPU: 8.
AUTO_BATCH_SIZE = {"cuda": 64, "cpu": 8}
#: ``num_workers: auto``: at most this many decoding workers on CUDA (the CPU does the model's work
#: on the CPU accelerator, so there 2).
AUTO_MAX_WORKERS = {"cuda": 8, "cpu": 2}


def prefetch_factor(workers: int) -> int | None:
    """Batches each loader worker keeps ready: 1 with 4 or more workers, else 2 (torch's default);
    ``None`` without workers. Every batch in flight is a pinned host buffer allocated at start-up, and
    those allocations held the first batch back on CUDA (docs/STARTUP.md, "Batches in flight")."""
    return None if workers <= 0 else 1 if workers >= 4 else 2


def resolve_loader_settings(
    batch_size: int | Literal["auto"], num_workers: int | Literal["auto"], device_type: str
) -> tuple[int, int]:
    """``(batch_size, num_workers)`` with ``"auto"`` resolved for ``device_type`` (``"cuda"``: 64 and
    ``min(8, cpu_count)``; anything else: 8 and ``min(2, cpu_count)``; with ``LOCAL_WORLD_SIZE`` ranks on
    the machine, each takes its share of the cores less one for its main process). Numbers pass through."""
    kind = "cuda" if device_type == "cuda" else "cpu"
    if batch_size == "auto":
        batch_size = AUTO_BATCH_SIZE[kind]
    if num_workers == "auto":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        # the ranks of one machine share its cores (LOCAL_WORLD_SIZE: torchrun's and vaefix's launcher)
        ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        num_workers = min(AUTO_MAX_WORKERS[kind], max(1, cpus // ranks - 1) if ranks > 1 else cpus)
    return int(batch_size), int(num_workers)


class AudioInputs:
    """Audio files, folders, manifests or the probe set -> padded batches at the model's rate.

    Plain class (no Lightning): :class:`~vaefix_pl.data.module.AudioDataModule` adds the
    ``LightningDataModule`` base for ``trainer.predict``. ``trainer`` is whatever runs it (a Lightning
    Trainer or :class:`~vaefix_pl.pipeline.local.LocalTrainer`): its device picks the ``auto`` loader
    settings and its module's ``sample_rate`` the rate.

    Args:
        inputs: a file, a folder (recursive), a manifest (``.txt`` one path a line, ``.csv`` with a
            ``path`` column; relative paths resolve against the manifest), or a list of them.
            ``None`` = the built-in probe set.
        seconds: crop/zero-pad every clip to this length (``None``: full length).
        offset: seconds skipped at the start of every file.
        batch_size, num_workers: DataLoader settings (decoding and resampling run in the workers);
            ``"auto"`` (default) is resolved at :meth:`setup` from the Trainer's device
            (:func:`resolve_loader_settings`: 64 and up to 8 workers on CUDA, 8 and 2 on the CPU); each
            worker keeps :func:`prefetch_factor` batches ready.
        sort_by_duration: order by duration (longest first) so batches carry little padding.
        channel: ``"mean"`` (mix-down) or a channel index (upstream AudioLDM2 takes channel 0).
        probe_seconds: length of each probe signal.
        sample_rate: rate (Hz) the inputs are resampled to. ``None`` (default): the model's, read
            from the Trainer's module (``ReconstructionModule.sample_rate``) when the dataloader is
            built, 16000 without one.
    """

    def __init__(
        self,
        inputs: str | list[str] | None = None,
        seconds: float | None = None,
        offset: float = 0.0,
        batch_size: int | Literal["auto"] = "auto",
        num_workers: int | Literal["auto"] = "auto",
        sort_by_duration: bool = True,
        channel: str | int = "mean",
        probe_seconds: float = 4.0,
        pin_memory: bool | None = None,
        sample_rate: int | None = None,
    ) -> None:
        super().__init__()  # LightningDataModule's, in AudioDataModule
        _check_data_settings(seconds, offset, batch_size, num_workers)
        hparams = dict(
            inputs=inputs, seconds=seconds, offset=offset, batch_size=batch_size, num_workers=num_workers,
            sort_by_duration=sort_by_duration, channel=channel, probe_seconds=probe_seconds,
            pin_memory=pin_memory, sample_rate=sample_rate,
        )  # fmt: skip
        self._store_hparams(hparams)
        for name, value in hparams.items():  # every argument is also a plain attribute
            setattr(self, name, value)
        self.dataset: AudioDataset | None = None
        self._all_ids: list[str] = []

    trainer: Any = None  # set by whatever runs the data (Lightning sets its own attribute)

    def _store_hparams(self, hparams: dict[str, Any]) -> None:
        self.hparams = Hparams(hparams)

    def setup(self, stage: str | None = None) -> None:
        if "auto" in (self.batch_size, self.num_workers):
            self.batch_size, self.num_workers = resolve_loader_settings(
                self.batch_size, self.num_workers, self._device_type()
            )
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
        self._all_ids = [e.id for e in entries]
        self.dataset = AudioDataset(
            entries, self.seconds, self.offset, channel=self.channel, probe_seconds=self.probe_seconds
        )

    def _device_type(self) -> str:
        """The Trainer's device type (``"cuda"``, ``"cpu"``, ...); without a Trainer, CUDA if available."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device.type
        return "cuda" if torch.cuda.is_available() else "cpu"

    def entry_ids(self) -> list[str]:
        """Ids of every input of this run (after :meth:`setup`), skipped ones included."""
        if self.dataset is None:
            self.setup("predict")
        assert self.dataset is not None
        return list(self._all_ids)

    def drop_inside(self, folder: str | os.PathLike, suffixes: Sequence[str]) -> list[str]:
        """Leave out the inputs under ``folder`` whose names end with one of ``suffixes`` (a run's own
        outputs, ``.recon.wav`` ..., when ``--out`` is or lies inside an input folder: they are never read
        back as inputs); returns their ids."""
        if self.dataset is None:
            self.setup("predict")
        assert self.dataset is not None
        root = os.path.abspath(folder)
        inside = [
            e.id
            for e in self.dataset.entries
            if e.path
            and e.path.endswith(tuple(suffixes))
            and os.path.commonpath([root, os.path.abspath(e.path)]) == root
        ]
        self.drop_ids(inside)
        self._all_ids = [i for i in self._all_ids if i not in set(inside)]
        return inside

    def drop_ids(self, ids: set[str] | Sequence[str]) -> int:
        """Leave ``ids`` out of the data (e.g. items a resumed run already completed); returns how many.

        Call after :meth:`setup` and before the dataloader is built (the writer does so from its
        ``setup`` hook). Deterministic, so every DDP rank drops the same items before the sampler splits.
        """
        if self.dataset is None:
            self.setup("predict")
        assert self.dataset is not None
        drop = set(ids)
        before = len(self.dataset.entries)
        self.dataset.entries = [e for e in self.dataset.entries if e.id not in drop]
        return before - len(self.dataset.entries)

    def resolved_sample_rate(self) -> int:
        """``sample_rate``, else the Trainer's module's (the loaded model's), else 16000."""
        if self.sample_rate is not None:
            return int(self.sample_rate)
        trainer = getattr(self, "trainer", None)
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        return int(getattr(module, "sample_rate", None) or SAMPLE_RATE)

    def _loader(self) -> DataLoader:
        if self.dataset is None:
            self.setup("predict")
        assert self.dataset is not None
        # set here, not in setup(): the Trainer loads the model (configure_model) after the data's setup
        self.dataset.sample_rate = self.resolved_sample_rate()
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        sampler = self._rank_sampler()
        workers = self.num_workers
        n_items = len(sampler) if sampler is not None else len(self.dataset)
        if self.hparams["num_workers"] == "auto" and n_items <= self.batch_size:
            # one batch is built by one worker anyway: decoding it here saves starting the workers
            workers = 0
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_audio,
            pin_memory=pin,
            persistent_workers=False,
            prefetch_factor=prefetch_factor(workers),
        )

    def _rank_sampler(self) -> BalancedDistributedSampler | None:
        """Under DDP, this rank's share of the inputs, balanced by audio seconds, each input on one rank
        (:mod:`vaefix_pl.data.sampler`); ``None`` (all, in order) on one process. A ``DistributedSampler``,
        so Lightning keeps it and injects none of its own."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or getattr(trainer, "world_size", 1) <= 1:
            return None
        assert self.dataset is not None
        seconds = entry_seconds(self.dataset.entries, self.seconds, self.offset, self.probe_seconds)
        # a static-shape compiled model recompiles for every new batch size: hand out whole batches
        speed = getattr(getattr(trainer.lightning_module, "config", None), "speed", None)
        whole = self.batch_size if speed == "compile" else None
        return BalancedDistributedSampler(seconds, trainer.world_size, trainer.global_rank, whole)

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()
