"""Per-item valid lengths: the one validation of a ``(B,)`` ``lengths`` tensor against a ``(B, N)`` batch.

Every layer that takes ``lengths`` (the Reconstructor, the repair chain, the metrics) calls
:func:`full_lengths`; none checks them again.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def full_lengths(
    x: Tensor, lengths: Tensor | Sequence[int] | None, device: torch.device | str | None = None
) -> Tensor:
    """``lengths`` of a ``(B, N)`` batch ``x`` as a validated ``(B,)`` int64 tensor on ``device``
    (default: ``x``'s); ``None`` means all ``N``. Raises a one-line ``ValueError`` for a wrong shape or a
    length outside ``[0, N]``.

    Lengths given on the CPU (or as a list) are checked there and copied without waiting for the
    device; lengths already on a GPU are checked there, which waits for its queued work.
    """
    if x.ndim != 2:
        raise ValueError(f"waveform must be (B, N), got shape {tuple(x.shape)}")
    b, n = x.shape
    device = x.device if device is None else torch.device(device)
    if lengths is None:
        return torch.full((b,), n, dtype=torch.long, device=device)
    lengths = torch.as_tensor(lengths).detach().long()
    if lengths.shape != (b,):
        raise ValueError(f"lengths must be ({b},) for a batch of {b}, got shape {tuple(lengths.shape)}")
    if bool(((lengths < 0) | (lengths > n)).any()):
        raise ValueError(f"lengths must lie in [0, {n}], got {lengths.tolist()}")
    return lengths.to(device, non_blocking=True)
