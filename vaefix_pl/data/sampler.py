"""``BalancedDistributedSampler``: split predict inputs over DDP ranks by audio seconds, each exactly once.

torch's ``DistributedSampler`` deals indices round-robin and repeats some to make every rank's count
equal (Lightning's predict wrapper drops the repeats but still deals round-robin): ranks get the
same *number* of items, not the same *work*, so with mixed lengths one rank runs on while the
others wait at the closing barrier. Here every index goes to exactly one rank by
longest-processing-time greedy assignment of the item durations (each item, longest first, to the
rank with the least audio so far), which bounds the spread of audio seconds between ranks by the
longest item. The split is a pure function of the durations and the world size, so every rank
computes the same one without communicating. Within a rank items run longest first (as
``AudioDataModule`` orders them), so a batch groups similar lengths and carries little padding.

Durations come from the caller (``AudioDataModule`` reads them from the file headers at discovery);
nothing here touches a file.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DistributedSampler

__all__ = ["BalancedDistributedSampler", "balance_by_duration", "entry_seconds"]


def _weights(durations: Sequence[float] | np.ndarray) -> np.ndarray:
    w = np.asarray(durations, dtype=np.float64).reshape(-1)
    if w.size and not (np.isfinite(w).all() and (w >= 0).all()):
        raise ValueError("durations must be finite and >= 0 seconds")
    return w


def balance_by_duration(
    durations: Sequence[float] | np.ndarray, num_replicas: int, batch_size: int | None = None
) -> list[list[int]]:
    """Indices of ``durations`` (seconds, ``(N,)``) split into ``num_replicas`` lists, each index once.

    Longest-processing-time greedy: units longest first (ties by index), each to the rank with the
    least total so far (ties: fewer items, then lower rank). A unit is one item, or with
    ``batch_size`` one run of ``batch_size`` consecutive items of the longest-first order (the last
    may be shorter): every rank then gets whole batches and the run has at most one short batch, as
    on one process (a static-shape compiled model meets no batch size a single process would not).
    After every step the spread ``max(total) - min(total)`` is at most the heaviest unit, and with
    at least ``num_replicas`` units every rank gets one. Each list comes back longest first (ties by
    index).
    """
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    w = _weights(durations)
    order = sorted(range(w.size), key=lambda i: (-w[i], i))
    step = batch_size or 1
    units = [order[j : j + step] for j in range(0, len(order), step)]
    cost = [float(w[u].sum()) for u in units]
    # (total seconds, item count, rank): a heap, because N is up to millions and ranks up to thousands
    heap = [(0.0, 0, r) for r in range(num_replicas)]
    out: list[list[int]] = [[] for _ in range(num_replicas)]
    for k in sorted(range(len(units)), key=lambda k: (-cost[k], k)):
        total, count, r = heapq.heappop(heap)
        out[r].extend(units[k])
        heapq.heappush(heap, (total + cost[k], count + len(units[k]), r))
    return [sorted(idx, key=lambda i: (-w[i], i)) for idx in out]


def entry_seconds(
    entries: Sequence[Any], seconds: float | None = None, offset: float = 0.0, default: float = 4.0
) -> list[float]:
    """Seconds each entry will run for: ``seconds`` when every clip is cropped/padded to it, else the
    header duration less ``offset``; ``default`` (e.g. the probe length) where none is known; 0 for an
    entry that already failed (it costs nothing). ``entries``: objects with ``seconds`` and ``error``
    (:class:`~vaefix_pl.data.inputs.AudioEntry`)."""
    out = []
    for e in entries:
        if getattr(e, "error", None):
            out.append(0.0)
        elif seconds is not None:
            out.append(float(seconds))
        else:
            s = getattr(e, "seconds", None)
            s = default if s is None or not math.isfinite(s) else float(s)
            out.append(max(0.0, s - offset))
    return out


class BalancedDistributedSampler(DistributedSampler):
    """This rank's share of the indices ``[0, N)``: audio seconds balanced, every index on one rank only.

    A ``DistributedSampler`` subclass so that Lightning keeps it as it is (it only injects its own
    sampler when the loader's is not one), whatever ``use_distributed_sampler`` says. Unlike the
    base class it never pads: ranks may get different item counts (and one batch more or less).

    A rank whose share is empty while others' are not (fewer inputs than ranks, e.g. a resumed run
    with one input left) yields one ``None``: Lightning stops the whole run when one rank's predict
    loader has no batch and another's has ("DataLoader within local rank has zero length"), so it gets
    one batch with no item (``AudioDataset`` answers ``None`` with an empty item that collate leaves
    out, and ``predict_step`` returns an empty result for it).

    Args:
        durations: ``(N,)`` seconds of each dataset item (any per-item cost works).
        num_replicas: world size.
        rank: this process's global rank.
        batch_size: balance whole batches of this many items (see :func:`balance_by_duration`), for
            static-shape compiled models; ``None``: single items (the tightest balance).
    """

    def __init__(
        self,
        durations: Sequence[float] | np.ndarray,
        num_replicas: int,
        rank: int,
        batch_size: int | None = None,
    ) -> None:
        w = _weights(durations)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        # the base class only needs len(dataset); it never indexes it
        super().__init__(w, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.durations = w
        self.indices = balance_by_duration(w, num_replicas, batch_size)[rank]
        self.total_size = int(w.size)  # no padding: the ranks' shares add up to N exactly
        # an empty share beside non-empty ones: one placeholder (see above); no input at all: nothing,
        # so every rank skips the loop alike
        self._placeholder = [None] if not self.indices and self.total_size else []
        self.num_samples = len(self.indices) + len(self._placeholder)

    @property
    def seconds(self) -> float:
        """Total seconds of this rank's share."""
        return float(self.durations[self.indices].sum()) if self.indices else 0.0

    def __iter__(self) -> Iterator[int | None]:
        return iter(self.indices or self._placeholder)

    def __len__(self) -> int:
        return self.num_samples
