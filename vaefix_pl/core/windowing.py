"""Overlapping-window processing of long items, as pure tensor functions (no models, no I/O).

An item longer than the model window (``W`` mel frames, default 1024 = 10.24 s, the VAE's
``sample_size``) is cut into windows starting every ``H = W - O`` frames (``O`` = overlap). All
counts are in mel frames of 160 samples and multiples of 4 frames (the VAE's down factor), so the
window starts land on whole mel frames *and* whole latent frames: window ``k`` starts at frame
``k * H``, at sample ``160 * k * H`` and at latent frame ``k * H / 4``. The last window runs past the
item's end into silence, exactly as a short clip is silence-padded to 1024 frames upstream; an item
with ``K`` windows is processed as ``(K - 1) * H + W`` frames (its *planned* frames).

Joining: each window's output is weighted by a crossfade over the ``O`` frames it shares with its
neighbour (fade-in over its first ``O``, fade-out over its last ``O``, 1 elsewhere) and the weighted
windows are overlap-added. At most two windows overlap anywhere (``O <= W / 2``). Two crossfade shapes:

* ``"equal_gain"``: raised cosine, ``sin^2`` / ``cos^2``; the weights *sum* to 1, so two identical (fully
  correlated) windows add back to exactly the signal. Right when both windows carry the same waveform,
  as a convolutional vocoder does on the same mel frames (its receptive field is a few frames): an
  equal-power fade would lift such a passage by up to +3 dB in the middle of the overlap.
* ``"equal_power"``: ``sin`` / ``cos``; the *squares* sum to 1, so two uncorrelated windows keep their
  power. Right when the windows' waveforms differ in phase (e.g. independent Griffin-Lim runs); on
  correlated windows it bumps the level.

Mel and latent frames are values, not signals to be summed in power: they are always joined with
the equal-gain weights (a linear interpolation of the two windows' values over the overlap).

Why by hand: no library does overlap-add of ragged, per-item window plans at three rates (samples,
mel frames, latent frames); the functions are a few lines of index arithmetic each.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from vaefix_pl.core.choices import CROSSFADES, Crossfade  # noqa: F401 (re-exported)
from vaefix_pl.core.frontend import HOP, SAMPLE_RATE

#: Window starts and lengths are multiples of this many mel frames (the VAE's down factor).
FRAME_ALIGN = 4
#: Real-audio context (mel frames) each side of a window when its mel is computed, so that the
#: front-end's reflect padding (512 or 432 samples < 4 * 160) never reaches into a window's frames.
MEL_CONTEXT = 4

__all__ = [
    "CROSSFADES",
    "WindowPlan",
    "boundary_samples",
    "crossfade_weights",
    "fade_curves",
    "gather_window_samples",
    "num_windows",
    "overlap_add",
    "plan_windows",
    "planned_frames",
    "window_geometry",
    "window_sample_positions",
]


def _align_up(frames: int, align: int = FRAME_ALIGN) -> int:
    return -(-frames // align) * align


def window_geometry(
    window_seconds: float,
    overlap_seconds: float,
    sample_rate: int = SAMPLE_RATE,
    hop: int = HOP,
    align: int = FRAME_ALIGN,
) -> tuple[int, int]:
    """``(window, overlap)`` in mel frames (of ``hop`` samples at ``sample_rate``) for lengths in seconds.

    Both are rounded up to a multiple of ``align`` frames, the VAE's down factor (4 frames = 40 ms at
    16 kHz; 8 frames = 80 ms at 48 kHz); the overlap must be at least one such step and at most half
    the window (so that no more than two windows overlap).
    """
    frame_s = hop / sample_rate
    if not window_seconds > 0:
        raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
    if not overlap_seconds > 0:
        raise ValueError(f"window_overlap_seconds must be > 0, got {overlap_seconds}")
    window = max(2 * align, _align_up(math.ceil(window_seconds / frame_s - 1e-9), align))
    overlap = _align_up(math.ceil(overlap_seconds / frame_s - 1e-9), align)
    if 2 * overlap > window:
        raise ValueError(
            f"window_overlap_seconds ({overlap_seconds} s = {overlap} frames) must be at most half of "
            f"window_seconds ({window_seconds} s = {window} frames)"
        )
    return window, overlap


def num_windows(frames: Tensor, window: int, hop: int) -> Tensor:
    """``(B,)`` windows per item of ``frames`` ``(B,)`` covered frames: 1 up to ``window``, then one per hop."""
    extra = (frames - window).clamp(min=0)
    return 1 + (extra + hop - 1) // hop


def planned_frames(frames: Tensor, window: int, hop: int) -> Tensor:
    """``(B,)`` frames the windows of each item span: ``(K - 1) * hop + window``."""
    return (num_windows(frames, window, hop) - 1) * hop + window


class WindowPlan(NamedTuple):
    """Flat list of ``M`` windows over a batch (all ``(M,)`` int64, on the ``frames``' device).

    ``item``: batch row; ``start``: first frame; ``index``/``count``: position of the window in its
    item and the item's window count (``index == 0``: no fade-in, ``index == count - 1``: no fade-out).
    """

    item: Tensor
    start: Tensor
    index: Tensor
    count: Tensor

    def __len__(self) -> int:
        return int(self.item.numel())

    def select(self, sl: slice) -> WindowPlan:
        return WindowPlan(*(t[sl] for t in self))


def plan_windows(frames: Tensor, window: int, hop: int, items: Tensor | None = None) -> WindowPlan:
    """Windows of the items ``items`` (default: all) with ``frames`` ``(B,)`` covered frames each.

    Windows are listed item by item, in time order.
    """
    if items is None:
        items = torch.arange(frames.shape[0], device=frames.device)
    count = num_windows(frames[items], window, hop)
    item = torch.repeat_interleave(items, count)
    first = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    index = torch.arange(item.numel(), device=frames.device) - first
    return WindowPlan(item, index * hop, index, torch.repeat_interleave(count, count))


def fade_curves(
    n: int, kind: Crossfade = "equal_gain", dtype=torch.float64, device=None
) -> tuple[Tensor, Tensor]:
    """``(fade_in, fade_out)`` of ``n`` points, sampled at ``t = (j + 0.5) / n``.

    ``equal_gain``: ``sin^2(pi t / 2)`` and ``cos^2``, ``in + out = 1``; ``equal_power``: ``sin`` and ``cos``,
    ``in^2 + out^2 = 1``. The fade-out of one window and the fade-in of the next are taken at the same
    global positions, so these identities hold sample by sample over the overlap.
    """
    if kind not in CROSSFADES:
        raise ValueError(f"crossfade must be one of {CROSSFADES}, got {kind!r}")
    t = (torch.arange(n, dtype=torch.float64, device=device) + 0.5) / max(n, 1)
    rise, fall = torch.sin(0.5 * math.pi * t), torch.cos(0.5 * math.pi * t)
    if kind == "equal_gain":
        rise, fall = rise.square(), fall.square()
    return rise.to(dtype), fall.to(dtype)


def crossfade_weights(
    plan: WindowPlan, length: int, overlap: int, kind: Crossfade = "equal_gain", dtype=torch.float32
) -> Tensor:
    """``(M, length)`` weights of each window at one rate (``length``/``overlap`` in that rate's units).

    1 inside, fade-in over the first ``overlap`` points unless the window is its item's first,
    fade-out over the last ``overlap`` points unless it is the last.
    """
    m = len(plan)
    device = plan.item.device
    w = torch.ones(m, length, dtype=torch.float64, device=device)
    if overlap > 0 and m:
        rise, fall = fade_curves(overlap, kind, device=device)
        has_prev = (plan.index > 0)[:, None]
        has_next = (plan.index < plan.count - 1)[:, None]
        w[:, :overlap] = torch.where(has_prev, rise[None], w[:, :overlap])
        w[:, length - overlap :] = torch.where(has_next, fall[None], w[:, length - overlap :])
    return w.to(dtype)


def overlap_add(
    out: Tensor, values: Tensor, item: Tensor, start: Tensor, weights: Tensor, dim: int
) -> Tensor:
    """``out[item[m], ..., start[m] + j, ...] += weights[m, j] * values[m, ..., j, ...]`` along ``dim``, in place.

    ``out`` ``(B, ...)``, ``values`` ``(M, ...)`` with the same trailing shape except along ``dim`` (the
    time axis, counted without the batch axis: ``dim=-1`` for ``(B, N)`` waveforms, ``dim=1`` for
    ``(B, 1, T, 64)`` mels). Points past ``out``'s end along ``dim`` are dropped (an item's padding),
    and so are zero-weight points (a NaN there stays out of the sum). Returns ``out``.
    """
    axis = dim % (values.dim() - 1)  # the time axis of one item's tensor
    size, length = out.shape[axis + 1], values.shape[axis + 1]
    if weights.shape[-1] != length:
        raise ValueError(f"weights have {weights.shape[-1]} points along the time axis, values {length}")
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    for m, (i, s) in enumerate(zip(item.tolist(), start.tolist())):
        take = min(length, size - s)
        if take <= 0:
            continue
        shape = [1] * (values.dim() - 1)
        shape[axis] = take
        w = weights[m, :take].reshape(shape).to(values.dtype)
        contrib = torch.where(w > 0, values[m].narrow(axis, 0, take) * w, zero)
        out[i].narrow(axis, s, take).add_(contrib.to(out.dtype))
    return out


def gather_window_samples(
    waveform: Tensor,
    lengths: Tensor,
    plan: WindowPlan,
    window: int,
    total_frames: Tensor,
    context: int = MEL_CONTEXT,
    hop: int = HOP,
) -> Tensor:
    """``(M, 160 * (window + 2 * context))`` samples around each window, for the log-mel front-end.

    Sample ``j`` of window ``m`` is the item's sample ``160 * (start - context) + j``, with the same
    reflection the front-end applies to the whole item: at sample 0 and at the end of the item's
    zero-padded span of ``160 * total_frames`` samples (``x[-k] = x[k]``, ``x[L - 1 + k] = x[L - 1 - k]``);
    samples at or past an item's length are 0. Frames ``context .. context + window`` of the
    front-end's output of these samples are then exactly frames ``start .. start + window`` of the
    front-end's output of the whole padded item (for both framings: their reflect padding, 512 or
    432 samples, is less than ``160 * context``), so windows see real neighbouring audio, not a
    reflection, at their edges.
    """
    n = waveform.shape[-1]
    pos = window_sample_positions(plan, window, total_frames, context, hop)
    inside = (pos >= 0) & (pos < lengths[plan.item][:, None]) & (pos < n)
    vals = waveform[plan.item[:, None], pos.clamp(0, n - 1)]
    return torch.where(inside, vals, torch.zeros((), dtype=waveform.dtype, device=waveform.device))


def window_sample_positions(
    plan: WindowPlan, window: int, total_frames: Tensor, context: int = MEL_CONTEXT, hop: int = HOP
) -> Tensor:
    """``(M, hop * (window + 2 * context))`` int64: the item sample each of
    :func:`gather_window_samples`' samples is read from, reflected at 0 and at ``hop * total_frames``
    (negative where the reflection leaves the item: such samples are 0)."""
    span = hop * (window + 2 * context)
    pos = (plan.start[:, None] - context) * hop + torch.arange(span, device=plan.start.device)[None, :]
    big_l = (total_frames[plan.item] * hop)[:, None]
    pos = pos.abs()
    return torch.where(pos >= big_l, 2 * (big_l - 1) - pos, pos)


def boundary_samples(plan: WindowPlan, overlap: int, hop: int = HOP) -> tuple[Tensor, Tensor]:
    """``(item, sample)`` ``(3 P,)`` of the landmarks of each of the ``P`` overlaps in ``plan``: where the
    fade starts, its middle and where it ends (the places a badly joined window would click)."""
    has_prev = plan.index > 0
    start = plan.start[has_prev]
    pos = torch.stack([start, start + overlap // 2, start + overlap], dim=1) * hop
    return plan.item[has_prev].repeat_interleave(3), pos.flatten()
