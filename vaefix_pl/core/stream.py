"""One long item reconstructed segment by segment: memory bounded by the window, not by the item.

:class:`ItemStream` runs the steps :meth:`Reconstructor.forward <vaefix_pl.core.reconstruct.Reconstructor.forward>`
runs on a windowed item, in segments of :data:`SEGMENT_WINDOWS` windows, and yields the reconstruction
and the reference as consecutive sample spans. Nothing of the item's length is held but its input
waveform: the level-normalised samples are made per window from the item's level statistics (one
float64 pass, :func:`~vaefix_pl.core.frontend.level_stats`: the gain stays one gain per item over the
whole item), and the three overlap-added streams (log-mel, decoded mel, latent; then the vocoder's
waveform) are kept only over the frames still open. What crosses a segment boundary:

* windows are decoded one ahead of the windows vocoded: the vocoder's window ``j`` reads frames
  ``[jH, jH + W)``, which window ``j + 1`` overlaps; frames before ``(j + 1) H`` are final once
  windows ``0 .. j`` are added (``O <= H``);
* the vocoder output: samples before ``b H`` (hop samples per frame) are final once windows
  ``0 .. b - 1`` are vocoded; the overlap of window ``b - 1`` with ``b`` stays in the buffer.

Every sum is made in the order ``forward`` makes it (window by window into zeros), every other step
is element-wise, so the spans equal ``forward``'s ``waveform``/``reference`` up to the models'
sub-batch numerics (``tests/test_stream.py``). The health figures are ``forward``'s, accumulated per
segment (mean and spread merged with Chan's parallel update instead of one two-pass sum).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vaefix_pl.core.frontend import _LEVEL_BLOCK, TRAINED_LOG_MEL_RANGE, LevelStats, apply_level, level_stats
from vaefix_pl.core.health import CONSTANT_STD, repair_mel, repair_waveform
from vaefix_pl.core.output import _scale_rows
from vaefix_pl.core.windowing import (
    MEL_CONTEXT,
    crossfade_weights,
    num_windows,
    overlap_add,
    window_sample_positions,
)

if TYPE_CHECKING:
    from vaefix_pl.core.reconstruct import Reconstructor

__all__ = ["SEGMENT_WINDOWS", "ItemStream", "stream_threshold", "streams_item"]

#: Windows per segment (8 windows of 10.24 s, 9.24 s apart: 74 s of audio). A segment's buffers are
#: the memory a long item costs (about 4 M samples of float32 buffers at 48 kHz).
SEGMENT_WINDOWS = 8
#: Items shorter than this many samples keep the batched whole-item path (their scores too).
MIN_STREAM_SAMPLES = 2**19


def stream_threshold(rec: Reconstructor, segment_windows: int | None = None) -> int | None:
    """Samples above which an item streams (:func:`streams_item`); ``None`` without windows."""
    if rec.window_frames is None:
        return None
    segment = SEGMENT_WINDOWS if segment_windows is None else segment_windows
    frames = (segment - 1) * rec._hop_frames + rec.window_frames  # more frames: more than `segment` windows
    return max(MIN_STREAM_SAMPLES, frames * rec.hop)


def streams_item(rec: Reconstructor, length: int, segment_windows: int | None = None) -> bool:
    """Whether an item of ``length`` samples runs as an :class:`ItemStream`: windowed, more than one
    segment of windows and longer than :data:`MIN_STREAM_SAMPLES` (shorter ones batch better whole)."""
    if rec.window_frames is None or length <= MIN_STREAM_SAMPLES:
        return False
    frames = rec.covered_frames(torch.tensor([int(length)]))
    segment = SEGMENT_WINDOWS if segment_windows is None else segment_windows
    return int(num_windows(frames, rec.window_frames, rec._hop_frames)[0]) > segment


class _Stitch:
    """Overlap-add over absolute positions of one item's time axis ``axis``, kept from ``base`` on."""

    def __init__(self, axis: int) -> None:
        self.axis, self.base, self.buf = axis, 0, None

    def add(self, values: Tensor, starts: Tensor, weights: Tensor) -> None:
        """``values`` ``(m, ...)`` at absolute ``starts`` ``(m,)`` with ``weights`` ``(m, L)`` (as
        :func:`overlap_add`, into zeros where nothing was added yet)."""
        size = values.shape[self.axis + 1]
        end = int(starts.max()) + size - self.base
        have = 0 if self.buf is None else self.buf.shape[self.axis]
        if end > have:
            shape = list(values.shape[1:])
            shape[self.axis] = end - have
            more = torch.zeros(shape, dtype=torch.float32, device=values.device)
            self.buf = more if self.buf is None else torch.cat([self.buf, more], self.axis)
        assert self.buf is not None
        item = torch.zeros_like(starts)
        overlap_add(self.buf[None], values, item, starts - self.base, weights, dim=self.axis)

    def view(self, a: int, b: int) -> Tensor:
        assert self.buf is not None and a >= self.base
        return self.buf.narrow(self.axis, a - self.base, b - a)

    def take(self, upto: int) -> Tensor:
        """Positions ``[base, upto)`` (final), dropped from the buffer."""
        assert self.buf is not None
        k = upto - self.base
        out = self.buf.narrow(self.axis, 0, k).clone()
        self.buf = self.buf.narrow(self.axis, k, self.buf.shape[self.axis] - k).clone()
        self.base = upto
        return out


class _Health:
    """:func:`~vaefix_pl.core.health.tensor_health` of one item, accumulated over chunks of its values."""

    def __init__(self, value_range: tuple[float, float] | None = None, tolerance: float = 0.0) -> None:
        self.range = None if value_range is None else (value_range[0] - tolerance, value_range[1] + tolerance)
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.lo, self.hi = math.inf, -math.inf
        self.nan = self.posinf = self.neginf = self.outside = 0

    def add(self, x: Tensor) -> None:
        x = x.reshape(-1)
        self.nan += int(torch.isnan(x).sum())
        self.posinf += int(torch.isposinf(x).sum())
        self.neginf += int(torch.isneginf(x).sum())
        v = x[torch.isfinite(x)].to(torch.float64)
        k = int(v.numel())
        if k == 0:
            return
        mean_b = float(v.mean())
        m2_b = float((v - mean_b).square().sum())
        n = self.n + k
        delta = mean_b - self.mean
        self.mean += delta * k / n
        self.m2 += m2_b + delta * delta * self.n * k / n
        self.n = n
        self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))
        if self.range is not None:
            self.outside += int(((v < self.range[0]) | (v > self.range[1])).sum())

    def result(self) -> dict[str, Any]:
        none = self.n == 0
        std = math.nan if none else math.sqrt(self.m2 / self.n)
        out: dict[str, Any] = {
            "nan": self.nan,
            "posinf": self.posinf,
            "neginf": self.neginf,
            "nonfinite": self.nan + self.posinf + self.neginf,
            "min": math.nan if none else self.lo,
            "max": math.nan if none else self.hi,
            "mean": math.nan if none else self.mean,
            "std": std,
            "constant": (not none) and std < CONSTANT_STD,
        }
        if self.range is not None:
            out["frac_out_of_range"] = self.outside / max(self.n, 1)
        return out


class ItemStream:
    """Iterate for ``{"original": (k,), "recon": (k,)}`` float32 spans of one long item, in order.

    ``waveform``: the item's ``(n,)`` samples (every one valid), on the models' device. After the
    iteration, :attr:`health` holds ``forward``'s health figures of the item (plain numbers) and
    :attr:`gain` its level gain. ``batch_rows``: the item's batch size, for the windows per model call
    (``max_windows``, else the batch's item count, as ``forward``).
    """

    def __init__(
        self,
        rec: Reconstructor,
        waveform: Any,
        batch_rows: int = 1,
        segment_windows: int | None = None,
    ) -> None:
        if isinstance(waveform, Tensor):
            if waveform.ndim != 1:
                raise ValueError(f"one item: (n,), got {tuple(waveform.shape)}")
            self.source: Any = _TensorSource(waveform)
            self.n = int(waveform.shape[0])
        else:
            self.source = _BlockSource(waveform)
            self.n = int(waveform.expected)  # the header's, until the first pass counts them
        self.rec = rec
        segment = SEGMENT_WINDOWS if segment_windows is None else segment_windows
        self.batch_rows, self.segment_windows = max(1, int(batch_rows)), max(1, int(segment))
        self.health: dict[str, Any] = {}
        self.gain = math.nan

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        with torch.inference_mode():
            yield from self._run()

    def _run(self) -> Iterator[dict[str, Tensor]]:
        rec, src = self.rec, self.source
        dev = next(iter(rec.parameters()), torch.empty(0)).device
        n, mean, gain = src.level()
        self.n = n
        mean, gain = mean.to(dev), gain.to(dev)
        host = torch.tensor([n])
        if not bool(rec.windowed(host)[0]):
            raise ValueError(f"{n} samples is no longer than one window: not a long item")
        self.gain = float(gain[0])
        inv = 1.0 / gain[:, None]
        frames = int(rec.covered_frames(host)[0])
        canon = int(rec.canonical_frames(host)[0])
        canon_dev = torch.tensor([canon], device=dev)
        plan = rec._plan(host.to(dev))
        count = len(plan)
        w, o, d, hop = rec.window_frames, rec.overlap_frames, rec.down, rec.hop
        assert w is not None
        step = w - o
        mel, mel_hat, latent, wav = _Stitch(1), _Stitch(1), _Stitch(1), _Stitch(0)
        h_mel, h_hat = _Health(), _Health(TRAINED_LOG_MEL_RANGE, 0.5)
        latent_bad = output_bad = 0
        peak = 0.0
        decoded = emitted = done_frames = 0
        cap = rec._cap(self.batch_rows)

        def encode_windows(a: int, b: int) -> None:
            p = plan.select(slice(a, b))
            pos = window_sample_positions(p, w, canon_dev, MEL_CONTEXT, hop)
            inside = (pos >= 0) & (pos < n)
            lo, hi = _read_range(p, w, canon, n, hop)
            span = apply_level(src.read(lo, hi).to(dev)[None], mean, gain)[0]
            xw = torch.where(inside, span[(pos - lo).clamp(0, hi - lo - 1)], torch.zeros((), device=dev))
            mel_w = rec.frontend(xw)[:, :, MEL_CONTEXT : MEL_CONTEXT + w]
            z = rec.encode(mel_w)
            mh_raw = rec.decode(z)
            weights = crossfade_weights(p, w, o, "equal_gain")
            mel.add(mel_w, p.start, weights)
            mel_hat.add(mh_raw, p.start, weights)
            latent.add(z, p.start // d, crossfade_weights(p, w // d, o // d, "equal_gain"))

        def vocode_windows(a: int, b: int) -> None:
            p = plan.select(slice(a, b))
            stack = torch.stack([mel_hat.view(s, s + w) for s in p.start.tolist()])  # (m, 1, w, M)
            out = rec._vocoder(repair_mel(stack))[:, : w * hop]
            weights = crossfade_weights(p, w * hop, o * hop, rec.crossfade)
            wav.add(out, p.start * hop, weights)

        def rows(a: int, b: int) -> list[int]:
            return [0]

        for a in range(0, count, self.segment_windows):
            b = min(count, a + self.segment_windows)
            need = min(count, b + 1)  # one window ahead: it overlaps the last one vocoded here

            def enc(i: int, j: int, first: int = decoded) -> None:
                encode_windows(first + i, first + j)

            def voc(i: int, j: int, first: int = a) -> None:
                vocode_windows(first + i, first + j)

            rec._run_chunks(need - decoded, cap, enc, rows, "window")
            decoded = need
            rec._run_chunks(b - a, cap, voc, rows, "window")
            last = b == count
            final = canon if last else b * step  # frames no later window reads
            upto = min(final, frames)
            if upto > done_frames:
                h_mel.add(mel.view(done_frames, upto))
                h_hat.add(mel_hat.view(done_frames, upto))
                done_frames = upto
            for stitch in (mel, mel_hat):
                stitch.take(final)
            latent_bad += int((~torch.isfinite(latent.take(final // d))).sum())
            upto = n if last else min(n, b * step * hop)
            raw = wav.take(upto)
            if last:
                wav.buf = None
            output_bad += int((~torch.isfinite(raw)).sum())
            out = repair_waveform(raw)
            peak = max(peak, float(out.abs().amax())) if out.numel() else peak
            ref = _blockwise(lambda v: apply_level(v, mean, gain), src.read(emitted, upto).to(dev)[None])
            yield {"original": _scale_rows(ref, inv)[0], "recon": _scale_rows(out[None], inv)[0]}
            emitted = upto
            src.release(min(emitted, max(0, (decoded * step - MEL_CONTEXT) * hop)))
        self.health = {f"mel_{k}": v for k, v in h_mel.result().items() if k in ("min", "max", "mean", "std")}
        self.health.update({f"mel_hat_{k}": v for k, v in h_hat.result().items()})
        self.health.update(latent_nonfinite=latent_bad, output_nonfinite=output_bad, output_peak=peak)


def _read_range(plan: Any, w: int, canon: int, n: int, hop: int) -> tuple[int, int]:
    """``[lo, hi)``: the item samples the windows of ``plan`` read (the values of
    :func:`window_sample_positions` below ``n``): from the span's two ends and the turning points of its
    reflections at 0 and at ``hop * canon``."""
    a, b = (int(plan.start[0]) - MEL_CONTEXT) * hop, (int(plan.start[-1]) + w + MEL_CONTEXT) * hop - 1
    big_l = canon * hop

    def reflect(p: int) -> int:
        p = abs(p)
        return 2 * (big_l - 1) - p if p >= big_l else p

    values = [reflect(a), reflect(b)]
    if a < 0 <= b:
        values.append(0)
    if max(a, 0) <= big_l - 1 <= b:
        values.append(big_l - 1)
    lo, hi = max(0, min(values)), min(n, max(values) + 1)
    return lo, max(hi, lo + 1)


class _TensorSource:
    """An item held as a ``(n,)`` tensor."""

    def __init__(self, x: Tensor) -> None:
        self.x = x.float()

    def level(self) -> tuple[int, Tensor, Tensor]:
        n = int(self.x.shape[0])
        mean, gain = level_stats(self.x[None], torch.tensor([n], device=self.x.device))
        return n, mean, gain

    def read(self, a: int, b: int) -> Tensor:
        return self.x[a:b]

    def release(self, upto: int) -> None:
        pass


class _BlockSource:
    """An item read in order from ``audio.blocks()`` (a :class:`~vaefix_pl.data.audio.StreamedAudio`):
    one pass for the level (re-cut into :func:`level_stats`' blocks, so the gain is the whole-item
    one), then a second one read as the windows need it, keeping only the samples from the last
    :meth:`release` on."""

    def __init__(self, audio: Any) -> None:
        self.audio = audio
        self.blocks: Iterator[Tensor] | None = None
        self.buf, self.start, self.done = torch.zeros(0), 0, False

    def level(self) -> tuple[int, Tensor, Tensor]:
        acc, n, pending = LevelStats(1), 0, torch.zeros(0)
        for block in self.audio.blocks():
            pending = torch.cat([pending, block.float()])
            while pending.shape[0] >= _LEVEL_BLOCK:
                chunk, pending = pending[:_LEVEL_BLOCK], pending[_LEVEL_BLOCK:].clone()
                acc.add(chunk[None], torch.ones(1, _LEVEL_BLOCK, dtype=torch.bool))
                n += _LEVEL_BLOCK
        if pending.shape[0]:
            acc.add(pending[None], torch.ones(1, pending.shape[0], dtype=torch.bool))
            n += pending.shape[0]
        mean, gain = acc.result(torch.tensor([n]))
        return n, mean, gain

    def read(self, a: int, b: int) -> Tensor:
        if a < self.start:
            raise RuntimeError(f"samples {a}.. were released (kept from {self.start})")
        if self.blocks is None:
            self.blocks = self.audio.blocks()
        parts = [self.buf]
        have = self.start + self.buf.shape[0]
        while have < b and not self.done:
            block = next(self.blocks, None)
            if block is None:
                self.done = True
                break
            parts.append(block.float())
            have += block.shape[0]
        if len(parts) > 1:
            self.buf = torch.cat(parts)
        return self.buf[a - self.start : b - self.start]

    def release(self, upto: int) -> None:
        k = min(max(0, upto - self.start), self.buf.shape[0])
        if k:
            self.buf, self.start = self.buf[k:].clone(), self.start + k


def _blockwise(fn: Any, x: Tensor, block: int = 1 << 20) -> Tensor:
    """``fn(x)`` of an element-wise ``fn`` over ``x`` ``(B, n)``, in column blocks (its float64
    temporaries span a block, not the segment)."""
    out = torch.empty_like(x)
    for s in range(0, x.shape[-1], block):
        out[:, s : s + block] = fn(x[:, s : s + block])
    return out
