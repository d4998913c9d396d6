""":class:`GriffinLimVocoder`: a weight-free vocoder (inverse mel basis + torchaudio Griffin-Lim) with the same contract as HiFi-GAN, as a floor to compare against."""

from __future__ import annotations

import torch
import torchaudio
from torch import Tensor, nn

from vaefix_pl.core.frontend import (
    FRAMINGS,
    HOP,
    N_FFT,
    N_MELS,
    SAMPLE_RATE,
    Framing,
    slaney_mel_basis,
)


class GriffinLimVocoder(nn.Module):
    """Weight-free vocoder: ``(B, T, 64)`` natural-log mel -> ``(B, T*160)`` waveform by Griffin-Lim.

    Exactly our mel definition inverted: ``exp`` of the log-mel (floor ``1e-5`` stays ``1e-5``), torchaudio
    ``InverseMelScale`` (non-negative least squares via ``lstsq`` + ReLU) whose filter bank is replaced by
    the front-end's own Slaney basis (:func:`vaefix_pl.core.frontend.slaney_mel_basis`, magnitude not power),
    then torchaudio's fast Griffin-Lim (n_fft = win = 1024, hop 160, periodic Hann, ``power=1``).

    Timeline: torchaudio's Griffin-Lim centres STFT frame ``j`` on output sample ``160 j``. Frame ``k`` of
    the mel is centred on input sample ``160 k`` (``"tacotron"``) or ``160 k + 80`` (``"hifigan"``), so the
    mel is edge-padded by ``pre`` frames in front (0 / 1) and one frame behind, and the output is cut at
    ``160 pre - offset`` (0 / 80) for ``T*160`` samples: output sample ``n`` lies on the input's sample
    ``n``, the same timeline as :class:`~vaefix_pl.core.reconstruct.Reconstructor`'s vocoder output (sample
    ``n`` from frame ``n // 160``).

    Args:
        framing: the framing the mel was made with.
        n_iter: Griffin-Lim iterations; ``momentum``: fast Griffin-Lim momentum.
        rand_init: random initial phase (``False``: zero phase, deterministic).
    """

    sampling_rate = SAMPLE_RATE
    hop_length = HOP
    model_in_dim = N_MELS

    def __init__(
        self, framing: Framing = "tacotron", n_iter: int = 32, momentum: float = 0.99, rand_init: bool = False
    ) -> None:
        super().__init__()
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
        self.framing = framing
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=N_FFT // 2 + 1, n_mels=N_MELS, sample_rate=SAMPLE_RATE, f_min=0.0, f_max=SAMPLE_RATE / 2,
            norm="slaney", mel_scale="slaney", driver="gels",
        )  # fmt: skip
        # The front-end's own basis, built in float64 (torchaudio's float32 grid differs by ~1e-7).
        self.inverse_mel.fb = slaney_mel_basis(torch.float32).T.contiguous()  # (513, 64)
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=N_FFT, n_iter=n_iter, win_length=N_FFT, hop_length=HOP,
            window_fn=torch.hann_window, power=1.0, momentum=momentum, rand_init=rand_init,
        )  # fmt: skip
        self._pre, self._offset = (0, 0) if framing == "tacotron" else (1, HOP // 2)

    def extra_repr(self) -> str:
        gl = self.griffin_lim
        return (
            f"framing={self.framing!r}, n_iter={gl.n_iter}, momentum={gl.momentum}, rand_init={gl.rand_init}"
        )

    def magnitude(self, mel: Tensor) -> Tensor:
        """``(B, T, 64)`` log-mel -> ``(B, 513, T)`` non-negative STFT magnitude estimate."""
        return self.inverse_mel(torch.exp(mel.float()).transpose(1, 2))

    def forward(self, mel: Tensor) -> Tensor:
        """``(B, T, 64)`` natural-log mel -> ``(B, T*160)`` float32 waveform (see the class docstring)."""
        if mel.ndim != 3 or mel.shape[-1] != N_MELS:
            raise ValueError(f"mel must be (B, T, {N_MELS}), got shape {tuple(mel.shape)}")
        t = mel.shape[1]
        with torch.autocast(mel.device.type, enabled=False):
            padded = torch.cat([mel[:, :1]] * self._pre + [mel, mel[:, -1:]], dim=1).float()
            mag = self.magnitude(padded)
            gl = self.griffin_lim
            y = torchaudio.functional.griffinlim(
                mag, gl.window.to(mag), N_FFT, HOP, N_FFT, 1.0, gl.n_iter, gl.momentum,
                (padded.shape[1] - 1) * HOP, gl.rand_init,
            )  # fmt: skip
        start = HOP * self._pre - self._offset
        return y[:, start : start + t * HOP]
