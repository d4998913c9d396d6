"""Per-item valid lengths: the one validation of a ``(B,)`` ``lengths`` tensor against a ``(B, N)`` batch."""

from __future__ import annotations

import torch
from torch import Tensor


def full_lengths(x: Tensor, lengths: Tensor | None) -> Tensor:
    """``lengths`` of a ``(B, N)`` batch as a ``(B,)`` long tensor on ``x``'s device (``None``: all ``N``);
    raises ``ValueError`` for a wrong shape or a length outside ``[0, N]``."""
    if x.ndim != 2:
        raise ValueError(f"waveform must be (B, N), got shape {tuple(x.shape)}")
    b, n = x.shape
    if lengths is None:
        return torch.full((b,), n, dtype=torch.long, device=x.device)
    lengths = torch.as_tensor(lengths, device=x.device).long()
    if lengths.shape != (b,):
        raise ValueError(f"lengths must be ({b},), got shape {tuple(lengths.shape)}")
    if bool(((lengths < 0) | (lengths > n)).any()):
        raise ValueError(f"lengths must lie in [0, {n}], got {lengths.tolist()}")
    return lengths
