"""Streaming band-limited resampling: torchaudio's sinc resampler applied block by block.

``torchaudio.functional.resample`` zero-pads the whole waveform and runs one strided ``conv1d`` over
it, so its memory grows with the file. :class:`StreamResampler` takes the same kernel
(``torchaudio.functional.functional._get_sinc_resample_kernel``, the function ``resample`` itself
calls; the default Hann-windowed sinc, width 6, roll-off 0.99) and runs the same convolution on each
block of input plus the kernel's context, so its output equals the one-shot result (to float32
rounding of the convolution) while holding only a block. torchaudio exposes no streaming form, and a
different filter (scipy's ``resample_poly``, soxr) would change every resampled input's values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchaudio.functional.functional import _get_sinc_resample_kernel

__all__ = ["MAX_KERNEL_ELEMENTS", "StreamResampler", "kernel_elements"]

#: Largest resampling kernel built (float32 elements: 64 MiB). Rates whose ratio to the target rate
#: does not reduce (44101 -> 16000 Hz needs a 16000 x 44135 kernel, 2.8 GB) are refused above it.
MAX_KERNEL_ELEMENTS = 2**24


def _reduced(orig_freq: int, new_freq: int) -> tuple[int, int, int]:
    g = math.gcd(int(orig_freq), int(new_freq))
    return int(orig_freq) // g, int(new_freq) // g, g


def kernel_elements(
    orig_freq: int, new_freq: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> int:
    """Elements of torchaudio's sinc kernel from ``orig_freq`` to ``new_freq`` (0 when equal)."""
    if int(orig_freq) == int(new_freq):
        return 0
    o, q, _ = _reduced(orig_freq, new_freq)
    width = math.ceil(lowpass_filter_width * o / (min(o, q) * rolloff))
    return q * (2 * width + o)


class StreamResampler:
    """``orig_freq`` -> ``new_freq`` Hz, fed 1-D float blocks with :meth:`push`, finished with :meth:`flush`.

    ``cat(push(b1), push(b2), ..., flush())`` equals ``torchaudio.functional.resample(cat(b1, b2, ...),
    orig_freq, new_freq)``: ``ceil(new * L / orig)`` samples for ``L`` input samples. Holds one block
    plus ``2 width + orig`` samples of context (the reduced ratio's kernel), never the whole signal.
    """

    def __init__(
        self,
        orig_freq: int,
        new_freq: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if orig_freq <= 0 or new_freq <= 0:
            raise ValueError(f"rates must be positive, got {orig_freq} and {new_freq}")
        self.orig, self.new, gcd = _reduced(orig_freq, new_freq)
        self.kernel, self.width = _get_sinc_resample_kernel(
            orig_freq, new_freq, gcd, 6, 0.99, "sinc_interp_hann", None, torch.device(device), dtype
        )
        self.size = self.kernel.shape[-1]  # 2 width + orig
        # the zero-padded input ``[0] * width + x + [0] * (width + orig)`` from padded position ``start``
        self._buf = torch.zeros(self.width, dtype=dtype, device=device)
        self._start = 0  # padded position of ``_buf[0]``; equals the next frame's first sample
        self._frame = 0  # next output frame (each gives ``new`` samples)
        self._length = 0  # input samples pushed

    def _frames(self, n_frames: int) -> Tensor:
        """Run the kernel over the next ``n_frames`` frames and drop the input they no longer need."""
        if n_frames <= 0:
            return self._buf.new_zeros(0)
        span = (n_frames - 1) * self.orig + self.size
        out = torch.nn.functional.conv1d(self._buf[None, None, :span], self.kernel, stride=self.orig)
        self._buf = self._buf[n_frames * self.orig :]
        self._start += n_frames * self.orig
        self._frame += n_frames
        return out[0].transpose(0, 1).reshape(-1)

    def push(self, block: Tensor) -> Tensor:
        """Resampled samples that ``block`` (1-D) completes (possibly none)."""
        self._length += block.shape[-1]
        self._buf = torch.cat([self._buf, block.to(self._buf.dtype)])
        have = self._buf.shape[0]
        return self._frames((have - self.size) // self.orig + 1 if have >= self.size else 0)

    def flush(self) -> Tensor:
        """The last samples: the end's zero padding applied, the output cut to ``ceil(new * L / orig)``."""
        self._buf = torch.cat([self._buf, self._buf.new_zeros(self.width + self.orig)])
        total = self._length // self.orig + 1  # frames of the one-shot convolution
        before = self._frame * self.new
        out = self._frames(total - self._frame)
        want = math.ceil(self.new * self._length / self.orig)
        return out[: max(0, want - before)]
