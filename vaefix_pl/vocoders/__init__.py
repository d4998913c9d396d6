"""Pluggable vocoders: anything that maps a ``(B, T, 64)`` natural-log mel to a ``(B, T*160)`` waveform.

The protocol (:class:`Vocoder`) is deliberately small: an ``nn.Module`` or any callable taking the
AudioLDM2 log-mel (``log(clamp(mel, 1e-5))``, 64 Slaney bands, hop 160 at 16 kHz, the VAE's output
squeezed on dim 1) and returning ``(B, T*160)`` float samples at 16 kHz, output sample ``n`` belonging to
frame ``n // 160``. Optional attributes, read on the object or its ``config``, are checked when present:
``sampling_rate`` (or ``sample_rate``) must be 16000, ``hop_length`` (or the product of
``upsample_rates``) 160, ``model_in_dim`` (or ``n_mels`` / ``num_mels``) 64, ``normalize_before`` false.

Modules: :mod:`~vaefix_pl.vocoders.base` (protocol, checks, adapter), :mod:`~vaefix_pl.vocoders.hifigan`,
:mod:`~vaefix_pl.vocoders.griffinlim`, :mod:`~vaefix_pl.vocoders.loading` (a user's vocoder).

Adapters:

* :func:`load_hifigan`: transformers ``SpeechT5HifiGan`` from a model folder (``<folder>/vocoder`` of a
  diffusers-format AudioLDM2 folder, a vocoder folder itself, or a hub id in the local HF cache). The
  default vocoder and the fixed baseline.
* :class:`GriffinLimVocoder`: weight-free floor. torchaudio ``InverseMelScale`` (with exactly the
  front-end's Slaney basis, :func:`vaefix_pl.core.frontend.slaney_mel_basis`) + ``GriffinLim`` (n_fft 1024, hop
  160, periodic Hann, magnitude), its output placed on the same timeline as the HiFi-GAN's for the
  chosen framing (see the class docstring).
* :func:`load_user_vocoder` / :func:`vocoder_from_config`: a user's module from ``class_path`` +
  ``init_args`` (nested ``class_path`` dicts are instantiated too) + a checkpoint (Lightning ``.ckpt``,
  plain state dict ``.pt``/``.pth``/``.bin``, or ``.safetensors``), with prefix stripping; YAML works.

:func:`check_vocoder` runs a probe mel through any of them and raises :class:`VocoderError` with a clear
message for a wrong output shape, hop, sample rate or input size.
"""
