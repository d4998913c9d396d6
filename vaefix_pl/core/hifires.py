"""The 48 kHz vocoder: ``SpeechT5HifiGan`` with the transposed-conv padding of ``Generator_HiFiRes``.

The 48 kHz HiFi-GAN was trained with ``Generator_HiFiRes`` (haoheliu/AudioLDM-training-finetuning,
``audioldm_train/modules/hifigan/models_hifires.py``; chosen for 256 mel bins in
``audioldm_train/utilities/model_util.py``). Its upsamplers are
``ConvTranspose1d(k=2u, stride=u, padding=u//2 + u%2, output_padding=u%2)``, where transformers'
``SpeechT5HifiGan`` uses ``padding=(k-u)//2`` and no output padding. The two agree for even ``u``;
for ``u = 5`` SpeechT5's layer makes ``5L + 1`` samples and the whole 48 kHz vocoder ``480 T + 16``,
delayed by 16 samples (docs/MODELS.md has the measurement). :class:`HiFiResVocoder` swaps in the
HiFiRes layers and keeps SpeechT5HifiGan's state-dict keys, so diffusers-style ``model.safetensors``
load unchanged. With ``k = 2u`` every stage gives exactly ``u * L`` samples: the output is
``T * prod(upsample_rates)`` long with no trimming.

A vocoder config selects the padding with the extra key ``"upsample_padding"``: ``"hifires"`` or
``"speecht5"`` (the default when the key is absent, which is what the stock class does).

These are transformers classes (``save_pretrained``, ``_init_weights``): what the tiny-model writers
and ``vaefix convert`` build and save. Loading for a run does not use them: :mod:`vaefix_pl.core.fastload`
loads into :class:`vaefix_pl.core.nets.HiFiGAN`, which takes the same padding rule from its config
(defined once, in :mod:`vaefix_pl.core.nets`) without importing transformers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from vaefix_pl.core.nets import (  # noqa: F401  (re-exported: the padding rule is defined once, in nets)
    PADDING_KEY,
    PADDINGS,
    UpsamplePadding,
    hifires_conv_transpose,
    upsample_padding,
)


class HiFiResVocoder(SpeechT5HifiGan):
    """``(B, T, n_mels)`` log-mel -> ``(B, T * prod(upsample_rates))`` waveform, HiFiRes padding.

    Same parameters, keys and forward as ``SpeechT5HifiGan``; only the upsamplers' padding differs.
    """

    def __init__(self, config: SpeechT5HifiGanConfig) -> None:
        super().__init__(config)
        for i, (u, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes)):
            old = self.upsampler[i]
            self.upsampler[i] = hifires_conv_transpose(old.in_channels, old.out_channels, u, k)
        self.config.upsample_padding = "hifires"


def vocoder_class_for(config: Mapping[str, Any] | SpeechT5HifiGanConfig) -> type[SpeechT5HifiGan]:
    """``HiFiResVocoder`` for ``"upsample_padding": "hifires"``, ``SpeechT5HifiGan`` otherwise."""
    return HiFiResVocoder if upsample_padding(config) == "hifires" else SpeechT5HifiGan


def build_vocoder(config: Mapping[str, Any]) -> SpeechT5HifiGan:
    """A vocoder of the right class for ``config`` (random weights, eval mode)."""
    cfg = SpeechT5HifiGanConfig(**dict(config))
    return vocoder_class_for(config)(cfg).eval()


def load_vocoder(folder: str | os.PathLike) -> SpeechT5HifiGan:
    """Load ``folder/config.json`` + ``folder/model.safetensors`` into the class its config asks for.

    Only safetensors weights are read; no remote code. Returns the model in eval mode.
    """
    path = Path(folder)
    with open(path / "config.json", encoding="utf-8") as fh:
        cfg = json.load(fh)
    cls = vocoder_class_for(cfg)
    model = cls.from_pretrained(str(path), use_safetensors=True, local_files_only=True)
    return model.eval()
