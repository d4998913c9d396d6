"""The cuDNN autotuning policy: on for small batches on CUDA only, explicit choices win."""

import pytest
import torch

from vaefix_pl.core.autotune import AUTOTUNE_MAX_BATCH, apply_cudnn_benchmark, want_cudnn_benchmark


def test_policy_by_batch_and_device():
    # Measured on an H200 (docs/STARTUP.md): batch 1 gains 509x vs 176x; batch 64 gains nothing.
    assert want_cudnn_benchmark(1, "cuda")
    assert want_cudnn_benchmark(AUTOTUNE_MAX_BATCH, "cuda")
    assert not want_cudnn_benchmark(AUTOTUNE_MAX_BATCH + 1, "cuda")
    assert not want_cudnn_benchmark(64, "cuda:0")
    assert not want_cudnn_benchmark(1, "cpu")
    assert want_cudnn_benchmark(64, "cuda", requested=True)
    assert not want_cudnn_benchmark(1, "cuda", requested=False)
    assert not want_cudnn_benchmark(1, "cpu", requested=True)


@pytest.mark.parametrize("batch, expected", [(1, True), (64, False)])
def test_apply_sets_the_flag(batch, expected):
    saved = torch.backends.cudnn.benchmark
    try:
        assert apply_cudnn_benchmark(batch, "cuda") is expected
        assert torch.backends.cudnn.benchmark is expected
    finally:
        torch.backends.cudnn.benchmark = saved
