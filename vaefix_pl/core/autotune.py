"""When to let cuDNN autotune its convolution algorithms (``torch.backends.cudnn.benchmark``).

Autotuning times every candidate algorithm of each new convolution shape in the first batch. It pays
where the default heuristic picks slow kernels (small batches) and costs close to a minute of first
batch at large ones for no steady-state gain. The measurements behind :data:`AUTOTUNE_MAX_BATCH` are
in docs/STARTUP.md.
"""

from __future__ import annotations

import torch

#: Largest batch (items or windows per model call) for which autotuning is switched on.
AUTOTUNE_MAX_BATCH = 8


def want_cudnn_benchmark(
    batch_size: int, device: torch.device | str = "cuda", requested: bool | None = None
) -> bool:
    """Whether to turn ``torch.backends.cudnn.benchmark`` on for model calls of ``batch_size`` items.

    Args:
        batch_size: items (or windows) per VAE/vocoder call; the conv workload is this times the fixed
            canonical length, so the batch alone decides.
        device: only CUDA devices autotune; anything else returns ``False``.
        requested: an explicit user choice (``True``/``False``) wins over the policy; ``None``: policy.
    """
    if torch.device(device).type != "cuda":
        return False
    if requested is not None:
        return bool(requested)
    return 1 <= int(batch_size) <= AUTOTUNE_MAX_BATCH


def apply_cudnn_benchmark(
    batch_size: int, device: torch.device | str = "cuda", requested: bool | None = None
) -> bool:
    """Set ``torch.backends.cudnn.benchmark`` from :func:`want_cudnn_benchmark`; returns the value set.

    ``torch.backends.cudnn.benchmark_limit`` is left at torch's default (10 algorithms per shape).
    """
    on = want_cudnn_benchmark(batch_size, device, requested)
    torch.backends.cudnn.benchmark = on
    return on
