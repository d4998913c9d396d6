"""Audio file I/O (soundfile) and the mono/resample helpers around it.

torchaudio's own ``load``/``save`` need torchcodec + FFmpeg since 2.9, so files are read and written
with ``soundfile`` (libsndfile: wav, flac, ogg/vorbis, opus, mp3 with libsndfile >= 1.1) and
resampled with ``torchaudio.functional.resample`` as upstream AudioLDM2 does.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import Tensor

from vaefix_pl.core.frontend import SAMPLE_RATE
from vaefix_pl.data.resample import MAX_KERNEL_ELEMENTS, StreamResampler, kernel_elements

AUDIO_EXTENSIONS: tuple[str, ...] = tuple(
    sorted({"." + ext.lower() for ext in sf.available_formats()} | {".wav", ".flac", ".ogg", ".mp3", ".opus"})
)


class AudioReadError(RuntimeError):
    """A file could not be read as audio; the message names the file and the reason."""


def to_mono(x: Tensor, channel: str | int = "mean") -> Tensor:
    """``(C, N)`` -> ``(N,)``: ``"mean"`` mixes the channels down; an int picks one (upstream takes 0)."""
    if x.ndim == 1:
        return x
    if channel == "mean":
        return x.mean(dim=0)
    if isinstance(channel, int) or (isinstance(channel, str) and channel.isdigit()):
        c = int(channel)
        if not 0 <= c < x.shape[0]:
            raise ValueError(f"channel {c} out of range for {x.shape[0]} channels")
        return x[c]
    raise ValueError(f"channel must be 'mean' or a channel index, got {channel!r}")


def resample(x: Tensor, orig_sr: int, target_sr: int = SAMPLE_RATE) -> Tensor:
    """Band-limited resampling along the last axis (torchaudio's default sinc interpolation)."""
    if orig_sr == target_sr:
        return x
    return torchaudio.functional.resample(x, orig_sr, target_sr)


def unreadable_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be opened as a file (``None`` when it can): missing, a broken or looping
    symbolic link, a folder, not readable, or empty (0 bytes). Checks the file system only, no decoding."""
    p = os.fspath(path)
    if not os.path.lexists(p):
        return "no such file"
    try:
        st = os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (following the links never reaches a file)"
        if os.path.islink(p):
            return f"broken symbolic link (target {os.readlink(p)!r} does not exist)"
        return f"cannot access the file ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not an audio file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if not os.access(p, os.R_OK):
        return "permission denied (the file is not readable)"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


#: Lowest file sample rate read: a header claiming less (e.g. 1 Hz) would be upsampled into an
#: enormous waveform from a tiny file.
MIN_SAMPLE_RATE = 1000
#: Longest item, in seconds at the model rate, that is decoded whole (3 h: 0.7 GB as float32 at 16 kHz).
#: Longer files (or headers claiming more, such as 2^31 frames) become an error row naming this limit;
#: crop them with ``--seconds`` / ``--offset``.
MAX_ITEM_SECONDS = 3 * 3600.0


def size_limit_reason(frames: int, sr: int, sample_rate: int = SAMPLE_RATE) -> str | None:
    """Why a file of ``frames`` at ``sr`` Hz is refused before decoding (``None``: it is read)."""
    if sr < MIN_SAMPLE_RATE:
        return f"sample rate {sr} Hz is below the {MIN_SAMPLE_RATE} Hz minimum vaefix reads"
    if kernel_elements(sr, sample_rate) > MAX_KERNEL_ELEMENTS:
        size = kernel_elements(sr, sample_rate) * 4 / 2**30
        return (
            f"resampling {sr} Hz to {sample_rate} Hz needs a {size:.1f} GB filter (the rates have no "
            f"common factor to reduce it; the limit is {MAX_KERNEL_ELEMENTS * 4 // 2**20} MiB): resample "
            "the file to a standard rate first"
        )
    seconds = frames / sr
    if seconds > MAX_ITEM_SECONDS:
        return (
            f"{seconds:.0f} s of audio ({frames} frames at {sr} Hz) is above the {MAX_ITEM_SECONDS:.0f} s "
            f"limit of one item (about {MAX_ITEM_SECONDS * sample_rate * 4 / 2**30:.1f} GB at {sample_rate} Hz); "
            "crop it with --seconds / --offset"
        )
    return None


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(frames, sample_rate, channels)`` of a file without decoding it.

    Raises :class:`AudioReadError` naming the file and the reason. ``frames`` is what the header says
    (an estimate for MP3); a truncated WAV reports the frames actually present.
    """
    reason = unreadable_reason(path)
    if reason is not None:
        raise AudioReadError(f"{path}: {reason}")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError with terse messages
        raise AudioReadError(
            f"{path}: cannot read audio header, corrupt, truncated or not an audio format libsndfile "
            f"{sf.__libsndfile_version__} reads ({_terse(exc)})"
        ) from exc
    return int(info.frames), int(info.samplerate), int(info.channels)


def _terse(exc: BaseException) -> str:
    """libsndfile's message without the ``Error opening '<path>':`` prefix that repeats the path."""
    msg = str(exc)
    if msg.startswith("Error opening") and "': " in msg:
        msg = msg.split("': ", 1)[1]
    return msg.strip() or type(exc).__name__


class _SizeLimit(Exception):
    """A file refused before decoding (its rate, length or channel); the message says why."""


#: Frames decoded per read: the file is read, mixed down and resampled block by block, so host
#: memory holds the output waveform plus one block (of every channel), never the whole decoded file.
READ_BLOCK_FRAMES = 2**18


class _Output:
    """The mono output, written into a tensor sized from the header (grown if the header was short)."""

    def __init__(self, expected: int) -> None:
        self.buf = torch.empty(max(0, expected), dtype=torch.float32)
        self.n = 0

    def add(self, x: Tensor) -> None:
        k = x.shape[0]
        if self.n + k > self.buf.shape[0]:  # more than the header said (MP3's estimate): grow
            grown = torch.empty(max(self.n + k, 2 * self.buf.shape[0]), dtype=torch.float32)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n : self.n + k] = x
        self.n += k

    def result(self) -> Tensor:
        if self.n < self.buf.shape[0] // 2:  # far fewer than the header said: do not keep the slack
            return self.buf[: self.n].clone()
        return self.buf[: self.n]


def _decode(
    p: Path,
    sample_rate: int,
    channel: str | int,
    offset: float,
    seconds: float | None,
    tally: dict[str, int],
    header_only: bool = False,
) -> Iterator[Tensor]:
    """The mono blocks at ``sample_rate`` of ``p``'s span, in order; ``tally`` gets ``expected`` (output
    samples the header promises, set before the first block), ``nan``, ``inf`` and ``total`` (frames
    read). Blocks stop at the first non-finite sample (the rest is only counted). Raises
    :class:`_SizeLimit` for a file refused before decoding."""
    with sf.SoundFile(str(p)) as fh:
        sr = fh.samplerate
        start = int(round(offset * sr))
        if start > 0:
            fh.seek(min(start, fh.frames))
        count = -1 if seconds is None else int(round(seconds * sr))
        left = max(0, fh.frames - min(max(start, 0), fh.frames))
        want = left if count < 0 else min(count, left)
        limit = size_limit_reason(want, sr, sample_rate)
        if limit is not None:
            raise _SizeLimit(limit)
        try:  # a channel the file does not have: refused before decoding
            to_mono(torch.zeros(fh.channels, 1), channel)
        except ValueError as exc:
            raise _SizeLimit(str(exc)) from None
        tally["expected"] = math.ceil(want * sample_rate / sr)
        if header_only:
            return
        resampler = None if sr == sample_rate else StreamResampler(sr, sample_rate)
        remaining = count
        while remaining != 0:
            n = READ_BLOCK_FRAMES if remaining < 0 else min(READ_BLOCK_FRAMES, remaining)
            data = fh.read(frames=n, dtype="float32", always_2d=True)
            got = data.shape[0]
            if got == 0:
                break
            finite = np.isfinite(data)
            if not finite.all():
                nan = int(np.isnan(data).sum())
                tally["nan"] += nan
                tally["inf"] += int((~finite).sum()) - nan
            tally["total"] += got
            remaining = remaining - got if remaining > 0 else remaining
            if tally["nan"] or tally["inf"]:
                continue  # rejected by the caller; the count covers the whole span
            x = to_mono(torch.from_numpy(data.T), channel)
            yield x if resampler is None else resampler.push(x)
            if got < n:
                break
        if resampler is not None and not (tally["nan"] or tally["inf"]) and tally["total"]:
            yield resampler.flush()


def _read_blocks(
    p: Path,
    sample_rate: int,
    channel: str | int,
    offset: float,
    seconds: float | None,
    tally: dict[str, int] | None = None,
) -> Iterator[Tensor]:
    """:func:`_decode` with its failures as :class:`AudioReadError` (raised after the whole span was
    counted, for empty spans and non-finite samples)."""
    reason = unreadable_reason(p)
    if reason is not None:
        raise AudioReadError(f"{p}: cannot decode audio: {reason}")
    tally = {"nan": 0, "inf": 0, "total": 0, "expected": 0} if tally is None else tally
    try:
        blocks = _decode(p, sample_rate, channel, offset, seconds, tally)
        while True:
            try:
                x = next(blocks)
            except StopIteration:
                break
            if not (tally["nan"] or tally["inf"]):
                yield x
    except _SizeLimit as exc:
        raise AudioReadError(f"{p}: {exc}") from None
    except Exception as exc:
        raise AudioReadError(
            f"{p}: cannot decode audio, corrupt or truncated file ({type(exc).__name__}: {_terse(exc)})"
        ) from exc
    if tally["total"] == 0:
        raise AudioReadError(
            f"{p}: no samples (an audio file with 0 frames, or offset {offset}s past its end)"
        )
    if tally["nan"] or tally["inf"]:
        raise AudioReadError(
            f"{p}: non-finite samples ({tally['nan']} NaN, {tally['inf']} infinite): rejected, not repaired"
        )


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    channel: str | int = "mean",
    offset: float = 0.0,
    seconds: float | None = None,
) -> Tensor:
    """Read ``path`` as a ``(N,)`` float32 mono waveform at ``sample_rate``.

    ``offset``/``seconds`` select a span (in seconds of the file) before resampling; only that span is
    decoded. Decoding, mix-down and resampling run in blocks of :data:`READ_BLOCK_FRAMES`
    (:class:`~vaefix_pl.data.resample.StreamResampler`, equal to one-shot ``torchaudio`` resampling), so
    memory is the output plus one block. Raises :class:`AudioReadError` naming the file and the reason
    (missing, undecodable, empty, non-finite samples, a rate or length over the limits). Samples that
    are NaN or infinite are rejected, not repaired: any repair would invent signal, and the scores
    would then compare against audio the file never held.
    """
    tally = {"nan": 0, "inf": 0, "total": 0, "expected": 0}
    out = None
    for x in _read_blocks(Path(path), sample_rate, channel, offset, seconds, tally):
        if out is None:  # sized from the header, known before the first block
            out = _Output(tally["expected"])
        out.add(x)
    assert out is not None  # no block: _read_blocks raised
    return out.result()


class StreamedAudio:
    """A file read in order, block by block, each time :meth:`blocks` is iterated: the samples
    :func:`load_audio` returns, never held whole (a long item reconstructed in segments reads it twice,
    once for its level and once for its windows). ``expected``: output samples its header promises."""

    def __init__(
        self,
        path: str | os.PathLike,
        sample_rate: int = SAMPLE_RATE,
        channel: str | int = "mean",
        offset: float = 0.0,
        seconds: float | None = None,
    ) -> None:
        self.path, self.sample_rate, self.channel = Path(path), int(sample_rate), channel
        self.offset, self.seconds = offset, seconds
        reason = unreadable_reason(self.path)
        if reason is not None:
            raise AudioReadError(f"{self.path}: cannot decode audio: {reason}")
        tally = {"nan": 0, "inf": 0, "total": 0, "expected": 0}
        try:
            for _ in _decode(self.path, self.sample_rate, channel, offset, seconds, tally, header_only=True):
                pass
        except _SizeLimit as exc:
            raise AudioReadError(f"{self.path}: {exc}") from None
        except Exception as exc:
            raise AudioReadError(f"{self.path}: cannot read audio header ({_terse(exc)})") from exc
        self.expected = tally["expected"]

    def blocks(self) -> Iterator[Tensor]:
        """``(k,)`` float32 blocks; raises :class:`AudioReadError` as :func:`load_audio` would."""
        return _read_blocks(self.path, self.sample_rate, self.channel, self.offset, self.seconds)


#: Start of every temporary file name the project writes (then the run's tag, then a random part), so
#: a rerun deletes only what a killed run of this project left, never a user's own ``.tmp-*`` files.
TEMP_PREFIX = ".vaefix-tmp-"


def temp_prefix() -> str:
    """This process's temporary-file prefix: :data:`TEMP_PREFIX` + the run tag (``VAEFIX_RUN_TAG``,
    set by the run lock on every rank) + ``-``."""
    return f"{TEMP_PREFIX}{os.environ.get('VAEFIX_RUN_TAG', 'norun')}-"


@functools.cache
def new_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open()`` gives a new file. Outputs are written through
    ``tempfile.mkstemp`` files, which are always 0600, and get this mode before the rename. Read once per
    process."""
    return 0o666 & ~_read_umask()


def _read_umask() -> int:
    # /proc reads it without changing it (Linux >= 4.7); os.umask has no read-only form, so the fallback
    # sets it for an instant, which another thread creating a file at that moment could see.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def write_wav(path: str | os.PathLike, waveform: Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write a mono float waveform as 32-bit float WAV, atomically (temp file + rename).

    A crash mid-write never leaves a truncated file under the final name.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = waveform.detach().cpu().float().numpy() if isinstance(waveform, Tensor) else np.asarray(waveform)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(), suffix=".wav", dir=p.parent)
    try:
        os.fchmod(fd, new_file_mode())
    finally:
        os.close(fd)
    try:
        sf.write(tmp, np.asarray(data, dtype=np.float32), sample_rate, subtype="FLOAT", format="WAV")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
