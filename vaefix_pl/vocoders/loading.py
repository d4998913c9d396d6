"""Loading a user's vocoder by name, ``class_path`` + ``init_args`` (the LightningCLI YAML shape) and a checkpoint: :func:`load_vocoder`, :func:`load_user_vocoder`, :func:`vocoder_from_config`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from torch import Tensor, nn

from vaefix_pl.core.frontend import (
    Framing,
)
from vaefix_pl.vocoders.base import VocoderError, VocoderLike, as_vocoder, check_vocoder
from vaefix_pl.vocoders.griffinlim import GriffinLimVocoder
from vaefix_pl.vocoders.hifigan import load_hifigan

GRIFFIN_LIM_NAMES = ("griffinlim", "griffin-lim", "griffin_lim", "gl")
HIFIGAN_NAMES = ("hifigan", "hifi-gan", "speecht5hifigan", "default")


# ---------------------------------------------------------------------------------------- user modules
def instantiate_class(class_path: str, init_args: Mapping[str, Any] | None = None) -> nn.Module:
    """``Class(**init_args)`` for an ``nn.Module`` subclass, built by jsonargparse as LightningCLI does.

    The same shape as LightningCLI / jsonargparse YAML: ``init_args`` are checked against the class's
    signature, and nested ``{"class_path": ..., "init_args": ...}`` values are built first, e.g. a
    transformers model with its config::

        class_path: transformers.SpeechT5HifiGan
        init_args:
          config:
            class_path: transformers.SpeechT5HifiGanConfig
            init_args: {model_in_dim: 64, upsample_rates: [5, 4, 2, 2, 2], normalize_before: false}

    Raises :class:`VocoderError` (one line) when the class cannot be imported, is not an ``nn.Module``,
    or does not accept ``init_args``.
    """
    from jsonargparse import ArgumentParser  # lazy: only a user's class_path needs it

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--vocoder", type=nn.Module)
    spec = {"class_path": class_path, "init_args": dict(init_args or {})}
    try:
        cfg = parser.parse_object({"vocoder": spec})
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # < 4.49: old name
        return instantiate(cfg).vocoder
    except Exception as exc:  # noqa: BLE001 - jsonargparse's multi-line reason, or the class's own error
        lines = [s.strip().rstrip(":") for s in str(exc).splitlines()[1:] or [str(exc)]]
        reason = "; ".join(s for s in lines if s and not s.startswith("Problem with given class_path"))
        missing = any(s in reason for s in ("No module named", "has no attribute", "dot import path"))
        verb = "cannot import" if missing else "cannot build"
        raise VocoderError(
            f"{verb} vocoder class_path {class_path!r}: {reason or type(exc).__name__}"
        ) from exc


def load_checkpoint_state(
    path: str | os.PathLike, key: str | None = None, trust_checkpoint: bool = False
) -> dict[str, Tensor]:
    """Tensors of a checkpoint: ``.safetensors``, a Lightning ``.ckpt`` (its ``state_dict``) or a plain state dict.

    ``key`` picks a sub-dict (e.g. ``"generator"`` in the original HiFi-GAN's ``g_*`` checkpoints); by
    default ``state_dict`` is used when present. Pickled checkpoints load with ``weights_only=True``
    unless ``trust_checkpoint`` (only for files you trust: unpickling runs code).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise VocoderError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        state: Any = load_file(str(p))
    else:
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=not trust_checkpoint)
        except Exception as exc:  # noqa: BLE001
            hint = "" if trust_checkpoint else " (if you trust the file, pass trust_checkpoint=True)"
            raise VocoderError(f"cannot load checkpoint {p}: {exc}{hint}") from exc
    if key is not None:
        if not isinstance(state, Mapping) or key not in state:
            have = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise VocoderError(f"checkpoint {p} has no key {key!r} (has {have})")
        state = state[key]
    elif isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise VocoderError(f"checkpoint {p} is not a state dict of tensors (pass key= to pick one)")
    return dict(state)


def strip_state_prefix(
    state: Mapping[str, Tensor], model_keys: list[str] | set[str], prefix: str | None = None
) -> dict[str, Tensor]:
    """Keys of ``state`` with ``prefix`` removed (only keys that have it are kept).

    ``prefix=None`` finds it: the leading part (e.g. ``"vocoder."``, ``"model.generator."``, DDP's
    ``"module."``, ``torch.compile``'s ``"_orig_mod."``) that makes the most keys match ``model_keys``.
    """
    if prefix is None:
        wanted = set(model_keys)
        if not wanted or wanted <= set(state):
            return dict(state)
        counts: dict[str, int] = {}
        for k in state:
            for mk in wanted:
                if k.endswith(mk) and len(k) > len(mk) and k[-len(mk) - 1] == ".":
                    cand = k[: -len(mk)]
                    counts[cand] = counts.get(cand, 0) + 1
        if not counts:
            return dict(state)
        prefix = max(counts, key=lambda c: (counts[c], -len(c)))
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _attribute(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def load_user_vocoder(
    class_path: str,
    init_args: Mapping[str, Any] | None = None,
    ckpt_path: str | os.PathLike | None = None,
    *,
    prefix: str | None = None,
    key: str | None = None,
    strict: bool = True,
    attribute: str | None = None,
    input_layout: str = "btc",
    trust_checkpoint: bool = False,
    check: bool = True,
    framing: Framing = "tacotron",
) -> VocoderLike:
    """Build a user's vocoder from ``class_path`` + ``init_args``, load ``ckpt_path``, return it frozen.

    Args:
        prefix: strip this from the checkpoint's keys (``None``: detected, see :func:`strip_state_prefix`).
        key: sub-dict of the checkpoint holding the weights (default: ``state_dict`` when present).
        attribute: dotted attribute of the built object that is the vocoder (e.g. ``"vocoder"`` when
            ``class_path`` is a whole LightningModule whose checkpoint is loaded as is).
        input_layout: ``"bct"`` for modules that take ``(B, 64, T)``.
        check: run :func:`check_vocoder` on the result.
    """
    obj = instantiate_class(class_path, init_args)
    if ckpt_path is not None:
        state = load_checkpoint_state(ckpt_path, key=key, trust_checkpoint=trust_checkpoint)
        own = list(obj.state_dict())
        state = strip_state_prefix(state, own, prefix)
        result = obj.load_state_dict(state, strict=strict)
        if not strict and (result.missing_keys or result.unexpected_keys):
            warnings.warn(
                f"{class_path} from {ckpt_path}: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}",
                stacklevel=2,
            )
    if attribute:
        obj = _attribute(obj, attribute)
    if isinstance(obj, nn.Module):
        obj.eval()
        obj.requires_grad_(False)
    vocoder = as_vocoder(obj, input_layout=input_layout, squeeze=True)
    if isinstance(vocoder, nn.Module):
        vocoder.eval()
    if check:
        check_vocoder(vocoder, framing=framing, name=class_path)
    return vocoder


_CONFIG_KEYS = {
    "class_path", "init_args", "ckpt_path", "checkpoint", "checkpoint_path", "prefix", "key", "strict",
    "attribute", "input_layout", "trust_checkpoint",
}  # fmt: skip


def vocoder_from_config(
    config: Mapping[str, Any] | str | os.PathLike, framing: Framing = "tacotron", check: bool = True
) -> VocoderLike:
    """A user's vocoder from a mapping or a YAML/JSON file::

        class_path: my_package.vocoders.BigVGAN      # any importable nn.Module
        init_args: {channels: 512}                    # nested class_path dicts are built too
        ckpt_path: runs/ft/last.ckpt                  # Lightning .ckpt, plain .pt state dict or .safetensors
        prefix: vocoder.                              # optional: stripped from the checkpoint keys (auto)
        input_layout: btc                             # or bct for (B, 64, T) models

    Relative ``ckpt_path`` values in a file resolve against the file's folder.
    """
    base: Path | None = None
    if not isinstance(config, Mapping):
        path = Path(config).expanduser()
        text = path.read_text(encoding="utf-8")
        config = yaml.safe_load(text)
        base = path.parent
        if not isinstance(config, Mapping):
            raise VocoderError(f"{path} must hold a mapping with class_path (and init_args, ckpt_path)")
    unknown = set(config) - _CONFIG_KEYS
    if unknown or "class_path" not in config:
        raise VocoderError(
            f"vocoder config needs class_path and takes {sorted(_CONFIG_KEYS)}; got {sorted(config)}"
        )
    ckpt = config.get("ckpt_path") or config.get("checkpoint") or config.get("checkpoint_path")
    if ckpt is not None and base is not None and not Path(ckpt).expanduser().is_absolute():
        ckpt = base / ckpt
    return load_user_vocoder(
        config["class_path"],
        config.get("init_args"),
        ckpt,
        prefix=config.get("prefix"),
        key=config.get("key"),
        strict=bool(config.get("strict", True)),
        attribute=config.get("attribute"),
        input_layout=config.get("input_layout", "btc"),
        trust_checkpoint=bool(config.get("trust_checkpoint", False)),
        check=check,
        framing=framing,
    )


def load_vocoder(
    spec: Any = None,
    source: str | os.PathLike | None = None,
    framing: Framing = "tacotron",
    device: torch.device | str | None = None,
    allow_download: bool = False,
) -> VocoderLike:
    """Any vocoder spec -> a frozen vocoder following the protocol.

    ``spec``: ``None`` / ``"hifigan"`` (the HiFi-GAN of ``source``), ``"griffinlim"`` (weight-free,
    for ``framing``), a folder (a HiFi-GAN: AudioLDM2 folder or vocoder folder), a ``.yaml``/``.yml``/
    ``.json`` file or a mapping with ``class_path`` (:func:`vocoder_from_config`), or an ``nn.Module`` /
    callable (returned as is, moved to ``device`` when it is a module).
    """
    if spec is None or (isinstance(spec, str) and spec.lower() in HIFIGAN_NAMES):
        voc: VocoderLike = load_hifigan(source, allow_download=allow_download)
    elif isinstance(spec, str) and spec.lower() in GRIFFIN_LIM_NAMES:
        voc = GriffinLimVocoder(framing)
    elif isinstance(spec, Mapping):
        voc = vocoder_from_config(spec, framing=framing)
    elif isinstance(spec, (str, os.PathLike)):
        path = Path(spec).expanduser()
        if path.suffix.lower() in (".yaml", ".yml", ".json") and path.is_file():
            voc = vocoder_from_config(path, framing=framing)
        else:
            voc = load_hifigan(path, allow_download=allow_download)
    elif isinstance(spec, nn.Module) or callable(spec):
        voc = spec
    else:
        raise VocoderError(f"cannot make a vocoder from {type(spec).__name__} {spec!r}")
    if device is not None and isinstance(voc, nn.Module):
        voc = voc.to(device)
    return voc
