"""Per-rank figures of a DDP predict run, gathered on every rank (``summary.json`` ``timing.ranks``)."""

from __future__ import annotations

import time
from typing import Any


def gather_objects(trainer: Any, obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (a collective: every rank must call it); ``[obj]`` alone."""
    import torch.distributed as dist

    if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_timing(trainer: Any, mine: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's ``mine`` (its items, audio seconds, loop and tail times), each with
    ``waited_at_end_s``: how long before the last rank it reached the end of its predict loop and
    writer drain (what it then waits at the closing barrier). Call on every rank at the same point."""
    ranks = gather_objects(trainer, {**mine, "rank": trainer.global_rank, "end_unix": time.time()})
    last = max(r["end_unix"] for r in ranks)
    return [
        {**{k: v for k, v in r.items() if k != "end_unix"}, "waited_at_end_s": last - r["end_unix"]}
        for r in ranks
    ]
