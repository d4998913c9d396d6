"""Which stage loses what: stage-wise decomposition, numeric health per stage, and the user-mel mistake detector.

Three tools, all pure tensor code except the two command-line entry points at the end:

* :func:`decompose` runs one batch through four views of the pipeline and scores each against the input:

  (a) ``vocoder_ceiling`` -- the vocoder on the *true* log-mel of the input (what the vocoder alone loses),
  (b) ``vae_roundtrip`` -- mel -> VAE -> mel, no vocoder: the decoded mel's L1 distance to the true mel,
  (c) ``pipeline`` -- the full pipeline (front-end, VAE, vocoder),
  (d) ``repaired`` -- the full pipeline plus a :class:`~vaefix_pl.repair.chain.PostProcessChain` (when given).

  With the same waveform metrics on (a), (c), (d) side by side, ``c - a`` is what the VAE costs and
  ``d - c`` what the repair chain adds or removes.
* :func:`stage_health` / :func:`health_warnings`: per stage and item, dtype, float64 min/max/mean/std,
  NaN/Inf counts, fraction outside the trained log-mel range, constant-output detection, and warnings that
  name the probable cause (the seed's ``std=inf`` and constant ``[-4.000, -4.000]`` vocoder input among them).
* :func:`diagnose_mel`: given a mel a user computed with their own front-end, says which known mistake it
  matches (transposed, power, log10/dB, missing log, wrong sample rate or hop, wrong number of mel bins,
  float16 overflow), from its statistics and -- when the audio is given -- from our front-end on that audio.

Units: log-mels are natural-log mel magnitudes (nats), ``(B, 1, T, 64)``; waveforms ``(B, N)`` at 16 kHz.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaefix_pl.core.frontend import (
    HOP,
    LOG_MEL_CEIL,
    LOG_MEL_FLOOR,
    N_MELS,
    SAMPLE_RATE,
    TRAINED_LOG_MEL_RANGE,
    Framing,
    LogMelFrontend,
    normalize_level,
    valid_mask,
)
from vaefix_pl.core.health import mel_health, tensor_health

#: Stages of the decomposition, in order, with their display titles.
STAGES: dict[str, str] = {
    "vocoder_ceiling": "(a) vocoder on the true mel",
    "vae_roundtrip": "(b) VAE round trip (mel only)",
    "pipeline": "(c) full pipeline",
    "repaired": "(d) full pipeline + repair chain",
}
#: Column prefix of each waveform stage in ``metrics.csv`` (the writer's convention: recon unprefixed).
STAGE_PREFIX: dict[str, str] = {"pipeline": "", "repaired": "post_", "vocoder_ceiling": "ceiling_"}
#: Waveform metrics scored on stages (a), (c), (d) (those that ``vaefix_pl.metrics`` provides).
DEFAULT_STAGE_METRICS: tuple[str, ...] = (
    "mel_distance",
    "mrstft_distance",
    "lsd",
    "snr",
    "si_sdr",
    "clicks_added_per_s",
)
#: Health stages, in pipeline order, and the decomposition stage each belongs to.
HEALTH_STAGES: dict[str, str] = {
    "input": "vocoder_ceiling",
    "frontend_mel": "vocoder_ceiling",
    "latent": "vae_roundtrip",
    "decoded_mel": "vae_roundtrip",
    "vocoder_input": "pipeline",
    "output": "pipeline",
    "repaired_vocoder_input": "repaired",
    "repaired_output": "repaired",
}
#: Fraction of valid values outside the trained range above which a mel stage gets a warning.
OUT_OF_RANGE_WARN = 0.01
#: Normalised-level peak at which the vocoder's tanh output counts as saturated.
SATURATION_PEAK = 0.999
#: Mean change (nats) of the vocoder input by a repair chain's mel step above which stage (d) gets a warning.
MEL_STEP_WARN = 0.05
#: Added clicks per second above which a stage gets a warning.
CLICKS_WARN_PER_S = 0.5


# ==========================================================================================================
# numeric health per stage
# ==========================================================================================================
def _item_dicts(stats: dict[str, Tensor], dtype: torch.dtype | str) -> list[dict[str, Any]]:
    """``{name: (B,) tensor}`` -> one plain dict per item (floats, ints, bools) with a ``dtype`` entry."""
    cols = {k: v.detach().cpu().tolist() for k, v in stats.items()}
    b = len(next(iter(cols.values()))) if cols else 0
    name = str(dtype).replace("torch.", "")
    return [{"dtype": name, **{k: v[i] for k, v in cols.items()}} for i in range(b)]


def stage_health(
    x: Tensor, mask: Tensor, value_range: tuple[float, float] | None = None, tolerance: float = 0.5
) -> list[dict[str, Any]]:
    """Per-item health of one stage's tensor, as plain dicts (JSON-able).

    Args:
        x: ``(B, ...)`` tensor of any dtype (statistics are taken in float64, so a float16 tensor cannot
            overflow them: the seed's ``std=inf`` came from float16 statistics).
        mask: boolean, broadcastable to ``x``, True at valid positions.
        value_range: trained range of the values (e.g. the log-mel range), for ``frac_out_of_range``.
    Returns:
        ``B`` dicts with ``dtype``, ``nan``, ``posinf``, ``neginf``, ``nonfinite`` (counts), ``min``,
        ``max``, ``mean``, ``std`` (float64 over finite valid values), ``constant`` (std < 1e-6) and, with
        ``value_range``, ``frac_out_of_range``.
    """
    return _item_dicts(tensor_health(x, mask, value_range, tolerance), x.dtype)


@dataclass(frozen=True)
class HealthWarning:
    """One warning: the stage it concerns, ``"fault"`` (broken numbers) or ``"warn"``, and the probable cause."""

    stage: str
    severity: str
    message: str

    def __str__(self) -> str:
        return f"[{self.severity}] {self.stage}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"stage": self.stage, "severity": self.severity, "message": self.message}


def _fmt_range(h: dict[str, Any]) -> str:
    lo, hi = h.get("min"), h.get("max")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "[no finite values]"
    return f"[{lo:.3f}, {hi:.3f}]"


_NONFINITE_CAUSE = {
    "input": "the audio file holds NaN/inf samples (or was decoded through a float16 buffer)",
    "frontend_mel": "non-finite input samples (the front-end itself clamps before the log)",
    "latent": "the VAE encoder overflowed: run the VAE in float32 (its config says force_upcast; "
    "diffusers never upcasts by itself) and keep inputs in the trained log-mel range",
    "decoded_mel": "the VAE decoder overflowed: float16 VAE (keep it in float32, as force_upcast says) or a "
    "VAE input far outside the trained log-mel range (wrong layout or scale: see `vaefix diagnose-mel`)",
    "vocoder_input": "non-finite decoded mel reached the vocoder (repair_mel / the 'guard' step replaces them)",
    "output": "the vocoder overflowed: float16 vocoder (precision='fp16'); use fp32 or bf16",
    "repaired_vocoder_input": "the repair chain's mel step produced NaN/inf",
    "repaired_output": "the repair chain produced NaN/inf",
}


def health_warnings(stage: str, h: dict[str, Any], mel_mode: str | None = None) -> list[HealthWarning]:
    """Warnings for one stage and item from its :func:`stage_health` dict, each naming the probable cause.

    Args:
        stage: a key of :data:`HEALTH_STAGES`.
        h: the item's health dict (``min``, ``max``, ``std``, ``nonfinite``, ``constant``, ...).
        mel_mode: the repair chain's ``mel_mode`` when ``stage`` is ``repaired_vocoder_input``.
    """
    out: list[HealthWarning] = []

    def add(severity: str, message: str) -> None:
        out.append(HealthWarning(stage, severity, message))

    nonfinite = int(h.get("nonfinite") or 0)
    if nonfinite:
        counts = f"{int(h.get('nan') or 0)} NaN, {int(h.get('posinf') or 0)} +inf, {int(h.get('neginf') or 0)} -inf"
        add("fault", f"{counts}: {_NONFINITE_CAUSE.get(stage, 'overflow upstream')}")
    dtype = str(h.get("dtype", ""))
    if dtype == "float16":
        add(
            "warn",
            "float16 tensor: take statistics in float64 (np.std of a float16 log-mel overflows to inf, "
            "the seed's std=inf) and keep the VAE in float32",
        )
    frac = h.get("frac_out_of_range")
    is_mel = stage in ("frontend_mel", "decoded_mel", "vocoder_input", "repaired_vocoder_input")
    if h.get("constant"):
        value = h.get("min")
        value_s = f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else "?"
        if stage == "input":
            add(
                "warn", "silent (constant) input: every mel bin sits at the log floor; nothing to reconstruct"
            )
        elif stage == "frontend_mel":
            add("warn", f"constant front-end mel ({value_s}): silent input, every bin at the log floor")
        elif stage == "repaired_vocoder_input" and mel_mode in ("minmax", "standardize"):
            add(
                "fault",
                f"constant vocoder input [{value_s}, {value_s}] (the seed's [-4.000, -4.000] symptom): made by "
                f"the repair chain's mel_mode={mel_mode!r} step (min-max/standardise of a flat or non-finite "
                "mel returns a constant); feed the decoded mel to the vocoder unchanged",
            )
        elif stage in ("vocoder_input", "repaired_vocoder_input", "decoded_mel"):
            add(
                "fault",
                f"constant {stage.replace('_', ' ')} [{value_s}, {value_s}] (the seed's [-4.000, -4.000] "
                "symptom): a normalisation of a flat or non-finite mel, a constant latent, or a dead decoder",
            )
        elif stage == "latent":
            add("fault", "constant latent: the VAE encoder saw a constant or non-finite mel")
        elif stage in ("output", "repaired_output"):
            add("fault", "silent (constant) output from the vocoder")
    if is_mel and frac is not None and frac > OUT_OF_RANGE_WARN:
        rng = _fmt_range(h)
        trained = f"[{TRAINED_LOG_MEL_RANGE[0]:.2f}, {TRAINED_LOG_MEL_RANGE[1]:.2f}]"
        if stage == "frontend_mel":
            cause = (
                "the front-end is not AudioLDM2's (log base, power vs magnitude, missing level step): "
                "check it with `vaefix diagnose-mel`"
            )
        elif stage == "decoded_mel":
            cause = (
                "wrong scaling_factor (read it from the VAE config) or a VAE input in the wrong layout/scale"
            )
        elif stage == "repaired_vocoder_input":
            cause = (
                f"the repair chain's mel_mode={mel_mode!r} renormalised the decoded mel; the vocoder was "
                "trained on the raw log-mel, so renormalising moves its input off what it knows"
            )
        else:
            cause = "the decoded mel leaves the range the vocoder was trained on"
        add("warn", f"{frac:.1%} of values outside the trained log-mel range {trained} (got {rng}): {cause}")
    peak = h.get("peak")
    if stage in ("output", "repaired_output") and peak is not None and peak >= SATURATION_PEAK:
        add(
            "warn",
            f"output peak {peak:.4f} at the level-normalised scale: the vocoder's tanh saturates "
            "(its input mel is louder than anything it was trained on)",
        )
    return out


# ==========================================================================================================
# stage-wise decomposition
# ==========================================================================================================
def masked_mel_error(estimate: Tensor, reference: Tensor, frames: Tensor) -> dict[str, Tensor]:
    """Per-item L1 / bias / max error of two ``(B, 1, T, M)`` log-mels over each item's first ``frames`` frames.

    Returns float64 ``(B,)`` tensors in nats: ``l1 = mean |est - ref|``, ``bias = mean (est - ref)``,
    ``max_abs = max |est - ref|`` (non-finite differences count as NaN).
    """
    mask = valid_mask(frames, estimate.shape[2])[:, None, :, None].expand_as(estimate)
    diff = estimate.double() - reference.double()
    count = mask.flatten(1).sum(1).clamp(min=1).double()
    zero = torch.zeros((), dtype=torch.float64, device=diff.device)
    l1 = torch.where(mask, diff.abs(), zero).flatten(1).sum(1) / count
    bias = torch.where(mask, diff, zero).flatten(1).sum(1) / count
    max_abs = torch.where(mask, diff.abs(), zero).flatten(1).amax(1)
    return {"l1": l1, "bias": bias, "max_abs": max_abs}


@dataclass
class Decomposition:
    """Result of :func:`decompose` for one batch.

    Attributes:
        ids: ``B`` item names.
        lengths: ``(B,)`` valid samples.
        metrics: stage -> metric name -> ``(B,)`` float64. Waveform stages (a), (c), (d) hold the
            waveform metrics plus ``input_mel_l1`` (the vocoder input's L1 distance to the true mel, nats);
            ``vae_roundtrip`` holds ``mel_l1``, ``mel_bias`` and ``mel_max_abs`` (nats).
        health: health stage -> ``B`` dicts from :func:`stage_health`.
        warnings: per item, the :class:`HealthWarning` list of every stage.
        audio: ``"original"``, ``"ceiling"``, ``"recon"`` and (with a chain) ``"post"``: ``(B, N)`` float32 at
            the input's level, zero beyond each length.
        output: the pipeline's :class:`~vaefix_pl.core.reconstruct.ReconstructionOutput`.
        mel_mode: the chain's ``mel_mode`` (``None`` without a chain).
    """

    ids: list[str]
    lengths: Tensor
    metrics: dict[str, dict[str, Tensor]]
    health: dict[str, list[dict[str, Any]]]
    warnings: list[list[HealthWarning]]
    audio: dict[str, Tensor]
    output: Any
    mel_mode: str | None = None

    @property
    def stages(self) -> list[str]:
        return [s for s in STAGES if s in self.metrics]

    def value(self, stage: str, name: str, i: int) -> float:
        v = self.metrics.get(stage, {}).get(name)
        return float(v[i]) if v is not None else math.nan

    def verdict(self, i: int) -> dict[str, str]:
        """Per stage one line of text for item ``i`` (see :func:`stage_verdicts`)."""
        return stage_verdicts(self, i)

    def item(self, i: int) -> dict[str, Any]:
        """Everything about item ``i`` as plain JSON-able values."""
        return {
            "id": self.ids[i],
            "seconds": int(self.lengths[i]) / SAMPLE_RATE,
            "stages": {s: {k: _num(v[i]) for k, v in m.items()} for s, m in self.metrics.items()},
            "health": {s: items[i] for s, items in self.health.items()},
            "warnings": [w.to_dict() for w in self.warnings[i]],
            "verdict": self.verdict(i),
        }

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per item in the writer's ``metrics.csv`` convention.

        Pipeline metrics unprefixed, repaired ``post_``, ceiling ``ceiling_``, VAE round trip ``vae_``;
        ``health_*`` from the pipeline's own health dict plus ``health_warnings`` / ``health_faults`` counts.
        """
        out = []
        health = {k: v.detach().cpu().tolist() for k, v in self.output.health.items()}
        for i, item_id in enumerate(self.ids):
            row: dict[str, Any] = {"id": item_id, "seconds": int(self.lengths[i]) / SAMPLE_RATE}
            for stage, scores in self.metrics.items():
                for k, v in scores.items():
                    key = f"vae_{k}" if stage == "vae_roundtrip" else STAGE_PREFIX[stage] + k
                    row[key] = _num(v[i])
            for k, v in health.items():
                row[f"health_{k}"] = int(v[i]) if isinstance(v[i], bool) else v[i]
            row["health_warnings"] = sum(1 for w in self.warnings[i] if w.severity == "warn")
            row["health_faults"] = sum(1 for w in self.warnings[i] if w.severity == "fault")
            out.append(row)
        return out


def _num(x: Any) -> float | int | None:
    if isinstance(x, Tensor):
        x = x.item()
    if isinstance(x, bool):
        return int(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else x
    return x


def _stage_metrics(reference: Tensor, estimate: Tensor, lengths: Tensor, names: Sequence[str]) -> dict:
    if not names:
        return {}
    from vaefix_pl.metrics import compute_metrics

    return {k: v.double() for k, v in compute_metrics(reference, estimate, lengths, list(names)).items()}


def available_stage_metrics(names: Sequence[str] = DEFAULT_STAGE_METRICS) -> list[str]:
    """The subset of ``names`` that :mod:`vaefix_pl.metrics` provides (empty when it is not importable)."""
    try:
        from vaefix_pl.metrics import available_metrics
    except ImportError:
        return []
    have = set(available_metrics())
    return [n for n in names if n in have]


@torch.inference_mode()
def decompose(
    rec: Any,
    waveform: Tensor,
    lengths: Tensor | None = None,
    chain: Any | None = None,
    metrics: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
) -> Decomposition:
    """Stage-wise decomposition of one batch (see the module docstring for stages (a)-(d)).

    Args:
        rec: a :class:`~vaefix_pl.core.reconstruct.Reconstructor`.
        waveform: ``(B, N)`` float at 16 kHz; ``lengths``: ``(B,)`` valid samples (``None``: all ``N``).
        chain: an optional :class:`~vaefix_pl.repair.chain.PostProcessChain` for stage (d); its mel step runs
            on the decoded mel and the vocoder is re-run on the result only when that step changed it, as
            :class:`~vaefix_pl.lightning.module.ReconstructionModule` does.
        metrics: waveform metric names for stages (a), (c), (d) (default: those of
            :data:`DEFAULT_STAGE_METRICS` that :mod:`vaefix_pl.metrics` provides).
        ids: item names (default ``item0``, ``item1``, ...).
    """
    b, n = waveform.shape
    if lengths is None:
        lengths = torch.full((b,), n, dtype=torch.long, device=waveform.device)
    lengths = lengths.to(device=waveform.device, dtype=torch.long)
    names = available_stage_metrics() if metrics is None else list(metrics)
    out = rec(waveform, lengths)
    frames = out.frames
    gain = out.gain

    # (a) the vocoder on the true mel, (c) the pipeline, (d) the pipeline + repair chain
    ceiling = rec.vocode(out.mel, lengths, gain)
    audio = {"original": out.reference, "ceiling": ceiling, "recon": out.waveform}
    stage_metrics: dict[str, dict[str, Tensor]] = {}
    stage_metrics["vocoder_ceiling"] = _stage_metrics(out.reference, ceiling, lengths, names)
    stage_metrics["vocoder_ceiling"]["input_mel_l1"] = masked_mel_error(out.mel, out.mel, frames)["l1"]
    # (b) the VAE round trip on the mel alone (decoded mel after non-finite repair vs the true mel)
    vae = masked_mel_error(out.mel_hat, out.mel, frames)
    stage_metrics["vae_roundtrip"] = {f"mel_{k}": v for k, v in vae.items()}
    stage_metrics["pipeline"] = _stage_metrics(out.reference, out.waveform, lengths, names)
    stage_metrics["pipeline"]["input_mel_l1"] = vae["l1"]

    mel_mode = None
    post_mel = None
    if chain is not None:
        mel_mode = getattr(chain, "mel_mode", None)
        post_in = out.waveform
        post_mel = out.mel_hat
        if mel_mode:
            post_mel = chain.process_mel(out.mel_hat, frames)
            if not torch.equal(post_mel, out.mel_hat):
                post_in = rec.vocode(post_mel, lengths, gain)
        post = chain(post_in, lengths)
        audio["post"] = post
        stage_metrics["repaired"] = _stage_metrics(out.reference, post, lengths, names)
        stage_metrics["repaired"]["input_mel_l1"] = masked_mel_error(post_mel, out.mel, frames)["l1"]
        stage_metrics["repaired"]["mel_step_l1"] = masked_mel_error(post_mel, out.mel_hat, frames)["l1"]

    health = _health_of(out, lengths, gain, audio, post_mel)
    item_warnings: list[list[HealthWarning]] = [[] for _ in range(b)]
    for stage, items in health.items():
        for i, h in enumerate(items):
            item_warnings[i].extend(
                health_warnings(stage, h, mel_mode if stage.startswith("repaired") else None)
            )
    shift = stage_metrics.get("repaired", {}).get("mel_step_l1")
    for i in range(b if shift is not None else 0):
        if float(shift[i]) > MEL_STEP_WARN:
            item_warnings[i].append(
                HealthWarning(
                    "repaired_vocoder_input",
                    "warn",
                    f"the repair chain's mel step (mel_mode={mel_mode!r}) moves the vocoder input "
                    f"{float(shift[i]):.2f} nats (mean |change|) away from the decoded mel; with the right "
                    "front-end the decoded mel is already on the vocoder's scale and needs no renormalisation",
                )
            )
    for stage, scores in stage_metrics.items():
        clicks = scores.get("clicks_added_per_s")
        if clicks is None:
            continue
        for i in range(b):
            if float(clicks[i]) > CLICKS_WARN_PER_S:
                item_warnings[i].append(
                    HealthWarning(
                        stage,
                        "warn",
                        f"{float(clicks[i]):.2f} added clicks per second that the input does not explain",
                    )
                )
    return Decomposition(
        ids=list(ids) if ids is not None else [f"item{i}" for i in range(b)],
        lengths=lengths,
        metrics=stage_metrics,
        health=health,
        warnings=item_warnings,
        audio=audio,
        output=out,
        mel_mode=mel_mode,
    )


def _health_of(
    out: Any, lengths: Tensor, gain: Tensor, audio: dict[str, Tensor], post_mel: Tensor | None
) -> dict[str, list[dict[str, Any]]]:
    """Per-stage health dicts of a pipeline output (see :data:`HEALTH_STAGES`)."""
    n = out.waveform.shape[1]
    mask = valid_mask(lengths, n)
    frames = out.frames

    def mel_items(mel: Tensor) -> list[dict[str, Any]]:
        return _item_dicts(mel_health(mel, frames), mel.dtype)

    def wave_items(wave: Tensor) -> list[dict[str, Any]]:
        normed = (wave.double() * gain[:, None]).float()  # back at the level-normalised scale
        stats = tensor_health(normed, mask, (-1.0, 1.0))
        stats["peak"] = (normed.abs() * mask).amax(1).double()
        return _item_dicts(stats, wave.dtype)

    health: dict[str, list[dict[str, Any]]] = {}
    health["input"] = wave_items(out.reference)
    health["frontend_mel"] = mel_items(out.mel)
    lat_frames = (frames + 3) // 4
    lat_mask = valid_mask(lat_frames, out.latent.shape[2])[:, None, :, None]
    latent = _item_dicts(tensor_health(out.latent, lat_mask), out.latent.dtype)
    for i, h in enumerate(latent):  # the output's latent is repaired; its raw non-finite count is in health
        h["nonfinite"] = int(out.health["latent_nonfinite"][i])
    health["latent"] = latent
    # The raw decoded mel (before non-finite repair) is summarised by the pipeline itself.
    raw = {k[len("mel_hat_") :]: v for k, v in out.health.items() if k.startswith("mel_hat_")}
    health["decoded_mel"] = _item_dicts(raw, out.mel_hat.dtype)
    health["vocoder_input"] = mel_items(out.mel_hat)
    output = wave_items(audio["recon"])
    for i, h in enumerate(output):
        h["nonfinite"] = int(out.health["output_nonfinite"][i])
    health["output"] = output
    if "post" in audio and post_mel is not None:
        health["repaired_vocoder_input"] = mel_items(post_mel)
        health["repaired_output"] = wave_items(audio["post"])
    return health


def _status(warns: Sequence[HealthWarning]) -> str:
    if any(w.severity == "fault" for w in warns):
        return "FAULT"
    if warns:
        return "WARN"
    return "ok"


def _metric_text(d: Decomposition, stage: str, i: int) -> str:
    parts = []
    fmt = {
        "mel_distance": ("mel", "{:.3f}"),
        "mrstft_distance": ("mrstft", "{:.3f}"),
        "lsd": ("lsd", "{:.2f}"),
        "snr": ("snr", "{:+.1f} dB"),
        "si_sdr": ("si-sdr", "{:+.1f} dB"),
        "clicks_added_per_s": ("clicks", "+{:.2f}/s"),
    }
    for k, (label, f) in fmt.items():
        v = d.value(stage, k, i)
        if k in d.metrics.get(stage, {}):
            parts.append(f"{label} " + (f.format(v) if math.isfinite(v) else "nan"))
    if stage != "vocoder_ceiling" and "input_mel_l1" in d.metrics.get(stage, {}):
        parts.append(f"vocoder-input L1 {d.value(stage, 'input_mel_l1', i):.3f}")
    return "  ".join(parts)


def stage_verdicts(d: Decomposition, i: int) -> dict[str, str]:
    """One line per stage for item ``i`` (status, headline numbers, first warning) and an ``overall`` line.

    The overall line attributes the loss in mel distance (nats): the vocoder's ceiling (a), what the VAE
    adds on top of it (c - a), and what the repair chain adds (d - c); it names numeric faults first.
    """
    by_stage: dict[str, list[HealthWarning]] = {s: [] for s in STAGES}
    for w in d.warnings[i]:
        by_stage.setdefault(HEALTH_STAGES.get(w.stage, w.stage), []).append(w)
    lines: dict[str, str] = {}
    for stage in d.stages:
        warns = by_stage.get(stage, [])
        if stage == "vae_roundtrip":
            text = (
                f"mel L1 {d.value(stage, 'mel_l1', i):.3f} nats (bias {d.value(stage, 'mel_bias', i):+.3f}, "
                f"max {d.value(stage, 'mel_max_abs', i):.2f})"
            )
        else:
            text = _metric_text(d, stage, i)
        status = _status(warns)
        first = f" -- {warns[0].stage}: {warns[0].message}" if warns else ""
        lines[stage] = f"{status:<5} {text}{first}"

    faults = [w for w in d.warnings[i] if w.severity == "fault"]
    a = d.value("vocoder_ceiling", "mel_distance", i)
    c = d.value("pipeline", "mel_distance", i)
    pieces = []
    if faults:
        pieces.append(f"numeric fault at {faults[0].stage}: {faults[0].message.split(':')[0]}")
    if math.isfinite(a) and math.isfinite(c):
        vae = c - a
        worst = "the vocoder (its own ceiling)" if a >= vae else "the VAE round trip"
        pieces.append(
            f"mel distance {c:.3f} nats = vocoder ceiling {a:.3f} + VAE {vae:+.3f}; largest loss: {worst}"
        )
        if "repaired" in d.metrics:
            dd = d.value("repaired", "mel_distance", i)
            if math.isfinite(dd):
                effect = "worse" if dd > c + 1e-3 else ("better" if dd < c - 1e-3 else "no change")
                pieces.append(f"repair chain {dd - c:+.3f} nats ({effect})")
    else:
        pieces.append(f"VAE mel L1 {d.value('vae_roundtrip', 'mel_l1', i):.3f} nats (no waveform metrics)")
    lines["overall"] = "; ".join(pieces)
    return lines


def format_verdicts(d: Decomposition, i: int) -> str:
    """Multi-line text of item ``i``: one line per stage, then every warning, then the overall line."""
    v = d.verdict(i)
    out = [f"== {d.ids[i]} ({int(d.lengths[i]) / SAMPLE_RATE:.2f} s) =="]
    for stage in d.stages:
        out.append(f"  {STAGES[stage]:<34} {v[stage]}")
    for w in d.warnings[i]:
        out.append(f"    ! {w}")
    out.append(f"  verdict: {v['overall']}")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------
# warnings from a metrics.csv row (what the report shows for runs made by the writer)
# ----------------------------------------------------------------------------------------------------------
def row_warnings(row: dict[str, Any]) -> list[HealthWarning]:
    """Warnings derivable from one ``metrics.csv`` row's ``health_*`` columns (the writer's runs)."""

    def g(key: str) -> Any:
        v = row.get(f"health_{key}")
        return None if v in ("", None) else v

    out: list[HealthWarning] = []
    decoded = {
        k: g(f"mel_hat_{k}")
        for k in (
            "nan",
            "posinf",
            "neginf",
            "nonfinite",
            "min",
            "max",
            "std",
            "constant",
            "frac_out_of_range",
        )
    }
    if any(v is not None for v in decoded.values()):
        decoded["constant"] = bool(decoded.get("constant") and float(decoded["constant"]))
        decoded = {k: (float(v) if isinstance(v, str) else v) for k, v in decoded.items()}
        out += health_warnings("decoded_mel", decoded)
    if (g("latent_nonfinite") or 0) and float(g("latent_nonfinite")) > 0:
        out += health_warnings("latent", {"nonfinite": int(float(g("latent_nonfinite")))})
    if (g("output_nonfinite") or 0) and float(g("output_nonfinite")) > 0:
        out += health_warnings("output", {"nonfinite": int(float(g("output_nonfinite")))})
    for prefix, stage in (("", "pipeline"), ("post_", "repaired")):
        v = row.get(prefix + "clicks_added_per_s")
        try:
            if v not in (None, "") and float(v) > CLICKS_WARN_PER_S:
                out.append(HealthWarning(stage, "warn", f"{float(v):.2f} added clicks per second"))
        except ValueError:
            pass
    return out


# ==========================================================================================================
# the mistake detector
# ==========================================================================================================
#: Known mistakes and how to fix each.
MISTAKES: dict[str, str] = {
    "ok": "nothing to fix",
    "transposed": "the VAE wants (B, 1, T, 64) (time on the height axis): use mel.transpose(-1, -2)",
    "power": "use the magnitude |STFT| (librosa power=1.0), not the power |STFT|^2 (recompute: the mel of the "
    "power is not the square of the mel of the magnitude, so halving the log-mel is only approximate)",
    "log10": "use the natural log: log(clamp(mel, 1e-5)), not log10 (multiply a log10-mel by ln 10)",
    "db": "use the natural log of clamp(mel, 1e-5) of the magnitude mel, not decibels (librosa.power_to_db "
    "works on the power and clips at top_db)",
    "missing_log": "take log(clamp(mel, 1e-5)): the VAE and vocoder expect a natural-log mel, not a linear one",
    "missing_floor": "clamp before the log: log(clamp(mel, min=1e-5)) (log(0) = -inf)",
    "wrong_sample_rate": "resample to 16 kHz before the front-end (librosa.load's default is 22050 Hz)",
    "wrong_hop": "use hop 160 at 16 kHz (100 frames per second), n_fft = win_length = 1024",
    "wrong_n_mels": "use 64 Slaney mel bands, 0-8000 Hz (librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, "
    "fmax=8000))",
    "float16_overflow": "compute the front-end and every statistic in float32/float64; cast to float16 only "
    "after, if at all (the VAE must run in float32)",
    "constant": "a min-max or standardisation of a flat/non-finite mel made it constant: drop that step",
    "not_level_normalized": "apply the level step first: subtract the mean, scale to peak 0.5 "
    "(vaefix_pl.normalize_level)",
    "unknown": "recompute the mel with vaefix_pl.LogMelFrontend",
}
#: Common mel-band counts of other front-ends (TTS 80, Whisper 80/128, HTK 40/128, ...).
COMMON_N_MELS: tuple[int, ...] = (40, 80, 128, 96, 100, 256, 32, 48, 120, 160, 512)
#: Sample rates and hops other front-ends use, for naming a frame-rate mismatch.
COMMON_RATES: tuple[int, ...] = (16000, 22050, 24000, 44100, 48000, 8000, 11025, 32000)
COMMON_HOPS: tuple[int, ...] = (160, 256, 512, 200, 128, 320, 80, 100, 240, 300, 275, 441, 480, 220, 400)
#: Log-scale factors of the natural-log magnitude mel: log_x(mel) = scale * ln(mel) for each mistake.
SCALE_CANDIDATES: dict[str, float] = {
    "ok": 1.0,
    "power": 2.0,  # ln(|X|^2)
    "log10": 1.0 / math.log(10.0),  # log10(|X|)
    "log10_power": 2.0 / math.log(10.0),  # log10(|X|^2)
    "db": 20.0 / math.log(10.0),  # 20 log10 |X| == 10 log10 |X|^2 (amplitude_to_db / power_to_db)
    "db_half": 10.0 / math.log(10.0),  # 10 log10 |X|
    "db_double": 40.0 / math.log(10.0),  # 20 log10 |X|^2
}
_SCALE_LABEL = {"log10_power": "log10", "db_half": "db", "db_double": "db"}
#: Clamp floors other front-ends leave behind: value -> mistake.
KNOWN_FLOORS: dict[float, str] = {
    LOG_MEL_FLOOR: "ln",  # ln(1e-5): ours (or power with our clamp)
    2 * LOG_MEL_FLOOR: "power",  # ln(1e-10): power with librosa's amin
    -5.0: "log10",  # log10(1e-5)
    -10.0: "log10",  # log10(1e-10)
    -100.0: "db",  # 10 log10(1e-10) (power_to_db's amin) or 20 log10(1e-5)
    -50.0: "db",  # 10 log10(1e-5)
}


@dataclass
class MelFinding:
    """One matched mistake: its name (a key of :data:`MISTAKES`), confidence, evidence and fix."""

    mistake: str
    confidence: str  # "certain" | "high" | "likely"
    evidence: str
    fix: str = ""
    #: for value-scale mistakes: the user's values (their log, for ``missing_log``) = ``scale`` x our log-mel
    scale: float | None = None

    def __post_init__(self) -> None:
        if not self.fix:
            self.fix = MISTAKES.get(self.mistake, "")

    def to_dict(self) -> dict[str, str]:
        return {
            "mistake": self.mistake,
            "confidence": self.confidence,
            "evidence": self.evidence,
            "fix": self.fix,
        }


@dataclass
class MelVerdict:
    """What :func:`diagnose_mel` found.

    Attributes:
        findings: matched mistakes, most fundamental first (empty: the mel looks right).
        shape, dtype: of the mel as given.
        layout: ``"(T, 64)"``-style description of the axes as interpreted.
        stats: float64 statistics of the finite values (``min``, ``max``, ``mean``, ``std``,
            ``frac_out_of_range``, ``floor_fraction``, ``frames``, ``n_mels``).
        checks: what was compared (``"statistics"``; ``"front-end"`` when audio was given) and any notes.
        fit: with audio, the log-domain fit ``user ~ slope * ours + intercept`` (``slope``, ``intercept``,
            ``r2``, ``domain``).
        corrected: a ``(1, 1, T, 64)`` natural-log mel with every invertible mistake undone (transpose,
            log base, power, missing log), or ``None`` when a finding needs the audio recomputed.
    """

    findings: list[MelFinding]
    shape: tuple[int, ...]
    dtype: str
    layout: str
    stats: dict[str, float]
    checks: list[str] = field(default_factory=list)
    fit: dict[str, Any] = field(default_factory=dict)
    corrected: Tensor | None = None

    @property
    def mistakes(self) -> list[str]:
        return [f.mistake for f in self.findings]

    @property
    def mistake(self) -> str:
        """The primary finding's name, ``"ok"`` when there is none."""
        return self.findings[0].mistake if self.findings else "ok"

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "mistake": self.mistake,
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "shape": list(self.shape),
            "dtype": self.dtype,
            "layout": self.layout,
            "stats": {k: _num(v) for k, v in self.stats.items()},
            "checks": self.checks,
            "fit": {k: _num(v) if not isinstance(v, str) else v for k, v in self.fit.items()},
        }

    def __str__(self) -> str:
        lines = [f"mel {list(self.shape)} {self.dtype}, read as {self.layout}"]
        s = self.stats
        lines.append(
            f"  values [{s.get('min', math.nan):.3f}, {s.get('max', math.nan):.3f}], mean {s.get('mean', math.nan):.3f}, "
            f"std {s.get('std', math.nan):.3f} (float64); {s.get('frac_out_of_range', math.nan):.1%} outside the "
            f"trained range [{TRAINED_LOG_MEL_RANGE[0]:.2f}, {TRAINED_LOG_MEL_RANGE[1]:.2f}]"
        )
        if self.fit:
            lines.append(
                f"  vs our front-end on the audio: {self.fit.get('domain')} values ~ {self.fit.get('slope', math.nan):.3f}"
                f" x ours {self.fit.get('intercept', math.nan):+.3f} (R^2 {self.fit.get('r2', math.nan):.3f})"
            )
        if self.ok:
            lines.append(
                "verdict: OK -- matches AudioLDM2's log-mel front-end"
                + (
                    ""
                    if any("front-end" in c for c in self.checks)
                    else " (statistics only; pass the audio to be sure)"
                )
            )
        else:
            lines.append(f"verdict: {self.mistake}")
            for f in self.findings:
                lines.append(f"  - {f.mistake} ({f.confidence}): {f.evidence}\n      fix: {f.fix}")
        for c in self.checks:
            if c.startswith("note:"):
                lines.append(f"  {c}")
        return "\n".join(lines)


def load_mel(path: str | Path, key: str | None = None) -> Tensor:
    """Read a user mel from ``.npy`` / ``.npz`` / ``.pt`` / ``.pth`` (a tensor, or a dict holding one).

    The dtype is kept (a float16 file stays float16: that is one of the mistakes to detect).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        obj: Any = np.load(p, allow_pickle=False)
    elif suffix == ".npz":
        obj = dict(np.load(p, allow_pickle=False))
    elif suffix in (".pt", ".pth"):
        obj = torch.load(p, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"{p}: unsupported mel file type {suffix!r} (use .npy, .npz, .pt or .pth)")
    if isinstance(obj, dict):
        if key is not None:
            obj = obj[key]
        else:
            for k in ("mel", "log_mel", "logmel", "fbank", "spec", "spectrogram", "mel_hat"):
                if k in obj:
                    obj = obj[k]
                    break
            else:
                arrays = [v for v in obj.values() if isinstance(v, (np.ndarray, Tensor))]
                if len(arrays) != 1:
                    raise ValueError(f"{p}: holds {sorted(obj)}; say which with key=/--key")
                obj = arrays[0]
    t = obj if isinstance(obj, Tensor) else torch.from_numpy(np.asarray(obj))
    if not t.is_floating_point():
        t = t.double()
    return t


def _squeeze_2d(mel: Tensor) -> tuple[Tensor, list[str]]:
    """Drop leading singleton axes down to 2-D; of a batch, keep item 0 (with a note)."""
    notes = []
    x = mel
    while x.ndim > 2:
        if x.shape[0] != 1:
            notes.append(f"note: took item 0 of a leading axis of size {x.shape[0]}")
        x = x[0]
    if x.ndim == 1:
        raise ValueError(f"a mel must have a time and a frequency axis, got shape {tuple(mel.shape)}")
    return x, notes


def _floor_of(values: np.ndarray) -> tuple[float, float]:
    """``(minimum, fraction of values at it)``: a clamped floor shows as many values exactly at the minimum."""
    vmin = float(values.min())
    tol = 1e-5 * max(1.0, abs(vmin))
    return vmin, float(np.mean(np.abs(values - vmin) <= tol))


def _known_floor(vmin: float) -> str | None:
    for value, kind in KNOWN_FLOORS.items():
        if abs(vmin - value) <= 2e-3 * max(1.0, abs(value)):
            return kind
    return None


def value_statistics(mel2d: Tensor) -> dict[str, float]:
    """Float64 statistics of the finite values of a 2-D mel (``min``, ``max``, ``mean``, ``std``,
    ``frac_out_of_range`` of the trained log-mel range, ``floor_fraction`` at the minimum)."""
    x = mel2d.double()
    finite = x[torch.isfinite(x)]
    if finite.numel() == 0:
        return {k: math.nan for k in ("min", "max", "mean", "std", "frac_out_of_range", "floor_fraction")}
    lo, hi = TRAINED_LOG_MEL_RANGE
    v = finite.numpy()
    vmin, floor_frac = _floor_of(v)
    return {
        "min": vmin,
        "max": float(v.max()),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "frac_out_of_range": float(np.mean((v < lo - 0.5) | (v > hi + 0.5))),
        "floor_fraction": floor_frac,
    }


def _scale_from_statistics(s: dict[str, float]) -> MelFinding | None:
    """Guess the value scale from the statistics alone (no audio). ``None``: consistent with ours."""
    vmin, vmax, floor_frac = s["min"], s["max"], s["floor_fraction"]
    ceil = LOG_MEL_CEIL + 0.5
    if vmin >= 0.0:
        louder = (
            " (values above exp(2.81) = 16.7 suggest power or an unnormalised level)" if vmax > 16.7 else ""
        )
        return MelFinding(
            "missing_log",
            "high",
            f"every value is >= 0 (min {vmin:.3g}, max {vmax:.3g}): a linear mel{louder}",
            scale=1.0,
        )
    floor = _known_floor(vmin) if floor_frac >= 0.002 else None
    if floor_frac >= 0.002 and abs((vmax - vmin) - 80.0) < 1e-3:
        return MelFinding(
            "db",
            "high",
            f"values span exactly 80 ({vmin:.2f} to {vmax:.2f}): power_to_db's top_db",
            scale=None,  # power_to_db: the mel of the power, not invertible
        )
    if floor == "log10":
        return MelFinding(
            "log10",
            "high",
            f"{floor_frac:.1%} of values sit at {vmin:.4f} = log10 of a clamp floor",
            scale=None if vmin < -7.5 else SCALE_CANDIDATES["log10"],  # -10: log10 of a power mel
        )
    if floor == "db":
        return MelFinding(
            "db",
            "high",
            f"{floor_frac:.1%} of values sit at {vmin:.2f} dB, a decibel floor",
            scale=None,
        )
    if floor == "power":
        return MelFinding(
            "power",
            "likely",
            f"{floor_frac:.1%} of values sit at {vmin:.3f} = ln(1e-10), power's floor",
            scale=None,
        )
    if vmin < 2 * LOG_MEL_FLOOR - 1.0 or vmax > 12.0:
        return MelFinding(
            "db",
            "likely",
            f"values from {vmin:.1f} to {vmax:.1f}: far outside any natural-log mel",
            scale=None,
        )
    if vmax > ceil:
        if vmax <= 2 * LOG_MEL_CEIL + 0.5:
            return MelFinding(
                "power",
                "likely",
                f"max {vmax:.2f} > {LOG_MEL_CEIL:.2f}, the largest log-mel a peak-0.5 input gives; up to "
                f"{2 * LOG_MEL_CEIL:.2f} is what a power mel reaches (or the level step was skipped)",
                scale=None,
            )
        return MelFinding("not_level_normalized", "likely", f"max {vmax:.2f} far above {LOG_MEL_CEIL:.2f}")
    if vmin < LOG_MEL_FLOOR - 0.01:
        return MelFinding("power", "likely", f"min {vmin:.2f} below the log floor {LOG_MEL_FLOOR:.2f}")
    return None


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares ``y ~ a x + b``: ``(a, b, r2)``."""
    if x.size < 8 or float(np.std(x)) == 0.0:
        return math.nan, math.nan, math.nan
    a, b = np.polyfit(x, y, 1)
    resid = y - (a * x + b)
    var = float(np.var(y))
    r2 = 1.0 - float(np.var(resid)) / var if var > 0 else math.nan
    return float(a), float(b), r2


def _compare_values(user: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Fit the user's values against our log-mel ``ref`` (same shape ``(T, 64)``, frames aligned).

    Both the log domain (user values as they are) and, for non-negative values, the linear domain
    (``log`` of the user values) are tried; the better fit wins. Clamped floors and the 4 edge frames
    (where front-ends pad differently) are left out.
    """
    t = ref.shape[0]
    edge = 4 if t > 24 else 0
    u = user[edge : t - edge] if edge else user
    r = ref[edge : t - edge] if edge else ref
    ok = np.isfinite(u) & np.isfinite(r) & (r > LOG_MEL_FLOOR + 1.0)
    fits = {}
    if ok.sum() >= 8:
        umin = float(u[np.isfinite(u)].min())
        span = float(u[np.isfinite(u)].max()) - umin
        keep = ok & (u > umin + 1e-3 * max(span, 1e-12))
        fits["log"] = _fit(r[keep], u[keep])
        if umin >= 0:
            pos = ok & (u > 0)
            lu = np.log(np.where(pos, u, 1.0))
            lmin = float(lu[pos].min()) if pos.any() else 0.0
            keep = pos & (lu > lmin + 1e-6)
            fits["linear"] = _fit(r[keep], lu[keep])
    best = None
    for domain, (a, b, r2) in fits.items():
        if math.isfinite(r2) and (best is None or r2 > best["r2"]):
            best = {"domain": domain, "slope": a, "intercept": b, "r2": r2}
    return best or {}


def _nearest_scale(slope: float, resampled: bool = False) -> str | None:
    """The :data:`SCALE_CANDIDATES` key nearest a fitted slope (within x1.25), ``None`` if none is.

    When the user's frames had to be resampled onto ours (another frame rate), the fit is rougher: a slope
    within 20 % of 1 then counts as the natural log (log10 of power, 0.869, is the nearest other scale).
    """
    if not math.isfinite(slope) or slope <= 0:
        return None
    if resampled and abs(math.log(slope)) < math.log(1.2):
        return "ok"
    name, scale = min(SCALE_CANDIDATES.items(), key=lambda kv: abs(math.log(slope / kv[1])))
    return name if abs(math.log(slope / scale)) <= math.log(1.25) else None


#: Scales that are exact functions of the natural-log magnitude mel. A mel of the *power* is not the square
#: of the mel of the magnitude (the filterbank sums before the square), so power-based mistakes cannot be
#: undone on the mel: they need recomputing from the audio.
_MAGNITUDE_SCALES = ("ok", "log10", "db_half")


def _invertible(name: str, fit: dict[str, Any]) -> bool:
    """Whether the scale ``name`` is exactly undone by dividing by its factor.

    ``"db"`` (slope 8.686) is either ``20 log10`` of the magnitude mel (exact, no offset) or ``10 log10`` of
    the power mel (librosa's ``power_to_db``; offset by about ``10 log10(1 / filter weight)``, over 10 dB).
    """
    if name in _MAGNITUDE_SCALES:
        return True
    return name == "db" and abs(fit.get("intercept", math.inf)) < 3.0


def _scale_from_fit(fit: dict[str, Any], resampled: bool = False) -> MelFinding | None | str:
    """Name the mistake a fit's slope matches. ``None``: ours; the string ``"unknown"`` when nothing matches."""
    if not fit or not fit["r2"] > 0.5:
        return "unknown"
    a, r2 = fit["slope"], fit["r2"]
    confidence = "certain" if r2 > 0.95 else "high"
    if fit["domain"] == "linear":
        power = abs(math.log(max(a, 1e-9) / 2.0)) < abs(math.log(max(a, 1e-9)))
        return MelFinding(
            "missing_log",
            confidence,
            f"log(your values) = {a:.3f} x our log-mel (R^2 {r2:.3f}): a linear "
            f"{'power' if power else 'magnitude'} mel, the log is missing",
            scale=None if power else 1.0,
        )
    name = _nearest_scale(a, resampled)
    if name is None:
        return "unknown"
    label = _SCALE_LABEL.get(name, name)
    if label == "ok":
        return None
    what = {
        "power": "ln of the power |X|^2 (twice the natural-log magnitude)",
        "log10": "log10 instead of ln" + (" (of the power)" if name == "log10_power" else ""),
        "db": "decibels (20 log10 |X| = 10 log10 |X|^2 = 8.686 x ln |X|)",
    }[label]
    return MelFinding(
        label,
        confidence,
        f"your values = {a:.3f} x our log-mel (R^2 {r2:.3f}): {what}",
        scale=SCALE_CANDIDATES[name] if _invertible(name, fit) else None,
    )


def _frame_rate_findings(frames: int, n_samples: int) -> list[MelFinding]:
    """Name the sample rate / hop that turn ``n_samples`` 16 kHz samples into ``frames`` frames."""
    expected = n_samples / HOP
    if abs(frames - expected) <= max(2.0, 0.01 * expected):
        return []
    hop_eff = n_samples / max(frames, 1)  # 16 kHz samples per user frame
    best = None
    for sr in COMMON_RATES:
        for hop in COMMON_HOPS:
            pred = hop * SAMPLE_RATE / sr
            err = abs(math.log(hop_eff / pred))
            wrong = (sr != SAMPLE_RATE) + (hop != HOP)
            key = (round(err / 0.02), wrong)
            if err < 0.03 and (best is None or key < best[0]):
                best = (key, sr, hop)
    ratio = f"{frames} frames for {n_samples / SAMPLE_RATE:.2f} s of audio ({frames / (n_samples / SAMPLE_RATE):.1f} per s, expected 100)"
    if best is None:
        return [
            MelFinding("wrong_hop", "likely", f"{ratio}: an effective hop of {hop_eff:.1f} samples at 16 kHz")
        ]
    _, sr, hop = best
    out = []
    if sr != SAMPLE_RATE:
        out.append(MelFinding("wrong_sample_rate", "high", f"{ratio}: matches {sr} Hz audio with hop {hop}"))
    if hop != HOP:
        out.append(MelFinding("wrong_hop", "high", f"{ratio}: matches hop {hop} at {sr} Hz"))
    return out


def reference_log_mel(audio: Tensor, framing: Framing = "tacotron") -> Tensor:
    """Our ``(T, 64)`` natural-log mel of ``(N,)`` 16 kHz ``audio`` after the level step (float64)."""
    x = audio.detach().double().reshape(1, -1)
    normed, _ = normalize_level(x)
    return LogMelFrontend(framing).double()(normed)[0, 0]


def _orient(x: Tensor, n_samples: int | None) -> tuple[Tensor, str, list[MelFinding], int | None]:
    """Put a 2-D mel as ``(T, M)``; report transposition and a wrong band count."""
    d0, d1 = x.shape
    findings: list[MelFinding] = []
    expected_t = n_samples / HOP if n_samples else None
    if d1 == N_MELS and d0 != N_MELS:
        return x, f"(T={d0}, 64)", findings, None
    if d0 == N_MELS and d1 != N_MELS:
        findings.append(
            MelFinding(
                "transposed",
                "certain",
                f"shape ({d0}, {d1}): 64 mel bins on the first axis, time on the last",
            )
        )
        return x.T, f"(64, T={d1}) -> transposed", findings, None
    if d0 == N_MELS and d1 == N_MELS:
        return x, "(T=64, 64) (square: orientation checked against the audio when given)", findings, None
    # neither axis has 64 bins
    if expected_t is not None:
        time_axis = 0 if abs(d0 - expected_t) <= abs(d1 - expected_t) else 1
    elif (d0 in COMMON_N_MELS) != (d1 in COMMON_N_MELS):
        time_axis = 1 if d0 in COMMON_N_MELS else 0
    else:
        time_axis = 0 if d0 >= d1 else 1
    n_mels = x.shape[1 - time_axis]
    findings.append(
        MelFinding(
            "wrong_n_mels", "certain", f"{n_mels} mel bins (AudioLDM2 uses 64); shape {tuple(x.shape)}"
        )
    )
    if time_axis == 1:
        findings.append(
            MelFinding("transposed", "high", f"shape ({d0}, {d1}): the {n_mels} bins are on the first axis")
        )
        return x.T, f"({n_mels}, T={d1}) -> transposed", findings, n_mels
    return x, f"(T={d0}, {n_mels})", findings, n_mels


def _undo_scale(x: Tensor, finding: MelFinding | None) -> Tensor:
    """Undo a value-scale finding on a ``(T, 64)`` float64 mel: back to ``ln`` of the magnitude, floored."""
    if finding is None or finding.scale is None:
        y = x
    elif finding.mistake == "missing_log":
        y = torch.log(x.clamp(min=1e-5**finding.scale)) / finding.scale
    else:
        y = x / finding.scale
    return y.clamp(min=LOG_MEL_FLOOR)


def diagnose_mel(
    mel: Tensor | np.ndarray,
    audio: Tensor | np.ndarray | None = None,
    framing: Framing = "tacotron",
) -> MelVerdict:
    """Say which known front-end mistake a user-computed mel matches.

    Args:
        mel: the user's mel, any of ``(T, 64)``, ``(64, T)``, ``(1, T, 64)``, ``(B, 1, T, 64)``, ... (of a
            batch, item 0 is checked), any float dtype (kept: float16 is itself a finding).
        audio: optionally the ``(N,)`` 16 kHz waveform the mel was computed from. Our front-end runs on it
            and the user's values are fitted against ours, which makes the scale verdicts certain and
            enables the frame-rate (sample rate / hop) check.
        framing: our front-end's framing for that comparison.
    Returns:
        a :class:`MelVerdict`; ``verdict.mistake`` is the primary finding, ``"ok"`` when none.

    Checks, in order: non-finite values (float16 overflow, log of 0), float16 statistics overflow, layout
    (transposed, number of bins), constant values, frame rate (audio needed), value scale (natural log of
    the magnitude vs power / log10 / dB / linear), level.
    """
    raw = torch.as_tensor(mel)
    dtype = str(raw.dtype).replace("torch.", "")
    x2, notes = _squeeze_2d(raw)
    n_samples = None
    if audio is not None:
        audio_t = torch.as_tensor(audio).double().reshape(-1)
        n_samples = int(audio_t.numel())
    findings: list[MelFinding] = []
    checks = ["statistics"] + notes

    # 1. non-finite values and float16
    xd = x2.double()
    n_nan = int(torch.isnan(xd).sum())
    n_pos = int(torch.isposinf(xd).sum())
    n_neg = int(torch.isneginf(xd).sum())
    f16_max = float(torch.finfo(torch.float16).max)
    finite_vals = xd[torch.isfinite(xd)]
    at_f16_max = int((finite_vals.abs() >= f16_max).sum()) if finite_vals.numel() else 0
    if n_nan or n_pos or at_f16_max:
        where = (
            "a float16 tensor" if dtype == "float16" else "the tensor (made in float16 upstream, most likely)"
        )
        findings.append(
            MelFinding(
                "float16_overflow",
                "certain" if dtype == "float16" else "high",
                f"{n_nan} NaN, {n_pos} +inf, {n_neg} -inf, {at_f16_max} at float16's max 65504 in {where}: "
                "a linear or power spectrum above 65504 overflows float16 (e.g. int16-scale samples or no level step)",
            )
        )
    elif n_neg:
        findings.append(
            MelFinding("missing_floor", "certain", f"{n_neg} values are -inf: log of 0 without a clamp floor")
        )
    if dtype == "float16" and not (n_nan or n_pos or n_neg):
        with np.errstate(over="ignore", invalid="ignore"):
            std16 = float(np.std(x2.numpy()))
        if not math.isfinite(std16):
            findings.append(
                MelFinding(
                    "float16_overflow",
                    "certain",
                    "np.std of this float16 mel returns inf (the sum overflows float16's 65504): the seed's "
                    "std=inf; any normalisation built on it turns the mel to NaN or a constant",
                )
            )

    # 2. layout
    x, layout, layout_findings, bad_n_mels = _orient(x2, n_samples)
    findings += layout_findings
    stats = value_statistics(x)
    stats["frames"] = float(x.shape[0])
    stats["n_mels"] = float(x.shape[1])

    # 3. constant
    if math.isfinite(stats["std"]) and stats["std"] < 1e-6:
        findings.append(
            MelFinding(
                "constant",
                "certain",
                f"every value is {stats['min']:.3f} (the seed's [-4.000, -4.000]): a min-max/standardise of a flat "
                "or non-finite mel",
            )
        )

    fit: dict[str, Any] = {}
    scale_finding: MelFinding | None | str = None
    if audio is not None:
        # 4. frame rate: the frame count for the audio's duration (shape only)
        checks.append("front-end")
        findings += _frame_rate_findings(x.shape[0], n_samples)
    if stats["std"] >= 1e-6:
        values = x.double().numpy()
        xn = np.where(np.isfinite(values), values, np.nan)
        if audio is not None:
            # 5. value scale against our front-end on the same audio
            if bad_n_mels is None:
                refs = {f: reference_log_mel(audio_t, f).numpy() for f in ("tacotron", "hifigan")}
                candidates = [(framing, False)] + [(f, False) for f in refs if f != framing]
                if x.shape[0] == x.shape[1] == N_MELS:
                    candidates += [(f, True) for f in refs]
                best = None
                resampled = False
                for f, transpose in candidates:
                    u = xn.T if transpose else xn
                    r = refs[f]
                    if abs(u.shape[0] - r.shape[0]) > 2:  # another frame rate: compare on our time grid
                        u = _resample_time(u, r.shape[0])
                        resampled = True
                    t = min(u.shape[0], r.shape[0])
                    cand = _compare_values(u[:t], r[:t])
                    if cand and (best is None or cand["r2"] > best[0]["r2"]):
                        best = (cand, transpose, f)
                if best is not None:
                    fit = {**best[0], "framing": best[2]}
                    if best[1]:
                        findings.append(
                            MelFinding(
                                "transposed", "high", "square mel: it fits our front-end only transposed"
                            )
                        )
                        x = x.T
                scale_finding = _scale_from_fit(fit, resampled)
                if scale_finding == "unknown":
                    sf = _scale_from_statistics(stats)
                    scale_finding = sf if sf is not None else "unknown"
            else:
                scale_finding = _scale_from_statistics(stats)
        else:
            checks.append("note: without the audio the frame rate (sample rate / hop) cannot be checked")
            scale_finding = _scale_from_statistics(stats)
            if scale_finding is None and stats["min"] >= -5.0 - 1e-3 and stats["max"] <= 1.25:
                checks.append("note: these values also fit a log10 mel; pass the audio to be sure")
    if isinstance(scale_finding, MelFinding):
        findings.append(scale_finding)
    elif scale_finding == "unknown" and fit:
        findings.append(
            MelFinding(
                "unknown",
                "likely",
                f"does not match our front-end in any known way (slope {fit.get('slope', math.nan):.3f}, "
                f"R^2 {fit.get('r2', math.nan):.3f})",
            )
        )
    # 6. level (only when the scale is ours)
    names = [f.mistake for f in findings]
    if fit and fit.get("domain") == "log" and not set(names) - {"transposed"} and fit["r2"] > 0.9:
        b = fit["intercept"]
        if abs(b) > 0.25 and abs(fit["slope"] - 1.0) < 0.1:
            findings.append(
                MelFinding(
                    "not_level_normalized",
                    "high",
                    f"your log-mel sits {b:+.2f} nats from ours (x{math.exp(b):.2f} in amplitude): the level step "
                    "(DC removal, peak 0.5) was skipped or differs",
                )
            )

    corrected = _corrected(x, findings, fit)
    return MelVerdict(
        findings=findings,
        shape=tuple(raw.shape),
        dtype=dtype,
        layout=layout,
        stats=stats,
        checks=checks,
        fit=fit,
        corrected=corrected,
    )


def _resample_time(u: np.ndarray, t: int) -> np.ndarray:
    """Linear interpolation of ``(T', M)`` onto ``t`` frames (to compare values across frame rates)."""
    src = np.linspace(0.0, u.shape[0] - 1, t)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, u.shape[0] - 1)
    w = (src - lo)[:, None]
    return u[lo] * (1 - w) + u[hi] * w


def _corrected(x: Tensor, findings: Sequence[MelFinding], fit: dict[str, Any]) -> Tensor | None:
    """``(1, 1, T, 64)`` mel with invertible mistakes undone, ``None`` if any finding needs a recompute."""
    names = [f.mistake for f in findings]
    invertible = {
        "transposed",
        "power",
        "log10",
        "db",
        "missing_log",
        "missing_floor",
        "not_level_normalized",
    }
    if set(names) - invertible or x.shape[1] != N_MELS:
        return None
    scale = next((f for f in findings if f.mistake in ("power", "log10", "db", "missing_log")), None)
    if scale is not None and scale.scale is None:
        return None  # a power-based mel: recompute from the audio
    y = _undo_scale(x.double(), scale)
    if "not_level_normalized" in names and fit.get("intercept") is not None:
        y = (y - fit["intercept"]).clamp(min=LOG_MEL_FLOOR)
    return y.float()[None, None]


# ==========================================================================================================
# command line
# ==========================================================================================================
def _load_inputs(
    audio: Sequence[str], seconds: float | None
) -> tuple[list[tuple[str, str | None, Tensor]], list[dict[str, Any]]]:
    """``([(id, path, (N,) waveform)], failed rows)`` for files/folders/manifests, or the probe set."""
    from vaefix_pl.data.audio import AudioReadError, load_audio
    from vaefix_pl.data.inputs import discover_inputs
    from vaefix_pl.core.probes import probe_signals

    items: list[tuple[str, str | None, Tensor]] = []
    failed: list[dict[str, Any]] = []
    if not audio:
        for name, x in probe_signals(seconds=seconds or 4.0).items():
            items.append((name, None, torch.from_numpy(x)))
        return items, failed
    for entry in discover_inputs(list(audio)):
        if entry.error:
            failed.append({"id": entry.id, "path": entry.path, "error": entry.error})
            continue
        try:
            items.append((entry.id, entry.path, load_audio(entry.path, seconds=seconds)))
        except AudioReadError as exc:
            failed.append({"id": entry.id, "path": entry.path, "error": str(exc)})
    return items, failed


def _batches(items: Sequence[tuple[str, str | None, Tensor]], size: int):
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        lengths = torch.tensor([int(w.numel()) for _, _, w in chunk])
        wave = torch.zeros(len(chunk), int(lengths.max()))
        for i, (_, _, w) in enumerate(chunk):
            wave[i, : w.numel()] = w
        yield chunk, wave, lengths


def run_diagnosis(
    rec: Any,
    items: Sequence[tuple[str, str | None, Tensor]],
    out_dir: str | Path,
    chain: Any | None = None,
    batch_size: int = 4,
    write_audio: bool = True,
    log: Callable[[str], None] | None = print,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Decompose ``items`` in batches; write WAVs (original / ceiling / recon / post) under ``out_dir``.

    Returns ``(rows, items_json)``: the ``metrics.csv`` rows and one :meth:`Decomposition.item` per clip.
    """
    from vaefix_pl.data.audio import write_wav

    out = Path(out_dir)
    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    for chunk, wave, lengths in _batches(items, batch_size):
        d = decompose(rec, wave, lengths, chain=chain, ids=[c[0] for c in chunk])
        for i, (item_id, _path, _) in enumerate(chunk):
            n = int(lengths[i])
            if write_audio:
                for tag, w in d.audio.items():
                    write_wav(out / f"{item_id}.{tag}.wav", w[i, :n])
            if log is not None:
                log(format_verdicts(d, i))
        for row, (_, path, _) in zip(d.rows(), chunk):
            rows.append({"id": row.pop("id"), "path": path, **row})
        details += [d.item(i) for i in range(len(chunk))]
    return rows, details


def _write_tables(out: Path, rows: list[dict[str, Any]], failed: list[dict[str, Any]], extra: dict) -> dict:
    """``metrics.csv``, ``errors.csv``, ``summary.json``, ``summary.md`` in the writer's format."""
    from vaefix_pl.lightning.writer import write_run_tables

    return write_run_tables(out, rows + failed, extra, title="vaefix diagnose")


def is_full_size(rec: Any) -> bool:
    """True when the VAE and vocoder have AudioLDM2's full-size architecture (not the tiny test models)."""
    from vaefix_pl.testing import FULL_VAE_CONFIG, FULL_VOCODER_CONFIG

    vae = list(getattr(rec.vae.config, "block_out_channels", []))
    voc = getattr(getattr(rec.vocoder, "config", None), "upsample_initial_channel", None)
    return (
        vae == FULL_VAE_CONFIG["block_out_channels"]
        and voc == FULL_VOCODER_CONFIG["upsample_initial_channel"]
    )


def _diagnose_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vaefix diagnose",
        description="Stage-wise diagnosis of AudioLDM2 reconstruction: (a) vocoder on the true mel, (b) VAE round "
        "trip, (c) full pipeline, (d) + repair chain; numeric health per stage; figures and report.html.",
    )
    p.add_argument("audio", nargs="*", help="files, folders or manifests (none: the built-in probe set)")
    p.add_argument(
        "--model",
        default=None,
        help="diffusers folder or hub id (default: real weights if cached, "
        "else tiny random models, said loudly)",
    )
    p.add_argument("--out", default="outputs/diagnose", help="output folder")
    p.add_argument("--seed-repair", action="store_true", help="stage (d): the seed's final repair chain")
    p.add_argument(
        "--seconds", type=float, default=None, help="crop each file (probe set: length, default 4)"
    )
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--framing", default="tacotron", choices=["tacotron", "hifigan"])
    p.add_argument("--pad-frames-to", type=int, default=1024, help="canonical length multiple (frames)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--embed-audio", type=int, default=None, help="clips whose audio report.html embeds")
    p.add_argument("--no-report", action="store_true", help="skip figures and report.html")
    p.add_argument("--allow-download", action="store_true")
    p.add_argument("--json", action="store_true", help="print the per-clip diagnosis as JSON")
    return p


def diagnose_main(argv: Sequence[str]) -> int:
    """``vaefix diagnose AUDIO... [--model] [--out] [--seed-repair]``: prints the verdict per stage per clip,
    writes the WAVs of every stage, ``metrics.csv``, ``summary.json``, ``diagnosis.json``, figures and
    ``report.html``. Exit code 0, or 1 when no clip could be diagnosed."""
    args = _diagnose_parser().parse_args(list(argv))
    from vaefix_pl.cli.commands import resolve_demo_model
    from vaefix_pl.core.reconstruct import Reconstructor

    t0 = time.perf_counter()
    source, real = resolve_demo_model(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rec = Reconstructor.from_pretrained(
        source,
        precision=args.precision,
        device=device,
        allow_download=args.allow_download,
        framing=args.framing,
        pad_frames_to=args.pad_frames_to,
    )
    chain = None
    if args.seed_repair:
        from vaefix_pl.repair.chain import PostProcessChain

        chain = PostProcessChain.seed_final().to(device)
    items, failed = _load_inputs(args.audio, args.seconds)
    items = [(i, p, w.to(device)) for i, p, w in items]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = None if args.json else print
    rows, details = run_diagnosis(rec, items, out, chain=chain, batch_size=args.batch_size, log=log)
    wall = time.perf_counter() - t0
    audio_s = sum(r["seconds"] for r in rows)
    full_size = is_full_size(rec)
    settings = {
        "command": "diagnose",
        "model": source,
        "full_size_models": full_size,
        "real_weights": real and full_size,
        "reconstructor": rec.settings(),
        "postprocess": chain.describe() if chain is not None else None,
        "device": str(device),
    }
    summary = _write_tables(
        out,
        rows,
        failed,
        {"timing": {"wall_s": wall, "audio_s": audio_s}, "settings": settings},
    )
    from vaefix_pl.runs.files import atomic_write_text, jsonable

    atomic_write_text(
        out / "diagnosis.json", json.dumps(jsonable({"settings": settings, "items": details}), indent=2)
    )
    for f in failed:
        print(f"FAILED {f['id']}: {f['error']}")
    if args.json:
        print(json.dumps(jsonable(details), indent=2))
    if not args.no_report:
        from vaefix_pl.report.html import write_report

        kwargs = {} if args.embed_audio is None else {"embed_audio_clips": args.embed_audio}
        report = write_report(out, **kwargs)
        print(f"\nwrote {report}")
    print(
        f"{summary['n_ok']} clips diagnosed, {summary['n_failed']} failed; model {source} "
        f"({'full-size AudioLDM2 models' if full_size else 'TINY TEST MODELS: the numbers say nothing about AudioLDM2'})"
    )
    return 0 if rows else 1


def diagnose_mel_main(argv: Sequence[str]) -> int:
    """``vaefix diagnose-mel MEL [--audio AUDIO] [--key K] [--framing] [--json]``.

    Prints the verdict. Exit code 0 when the mel looks right, 1 when a mistake was found.
    """
    p = argparse.ArgumentParser(
        prog="vaefix diagnose-mel",
        description="Check a mel computed with your own front-end against AudioLDM2's (64-band natural-log "
        "magnitude mel, hop 160 at 16 kHz, (T, 64)). Give the audio it came from for a certain verdict.",
    )
    p.add_argument("mel", help=".npy, .npz, .pt or .pth file (a tensor or a dict holding one)")
    p.add_argument("--audio", default=None, help="the audio file the mel was computed from")
    p.add_argument("--key", default=None, help="which entry of a dict/npz file holds the mel")
    p.add_argument("--framing", default="tacotron", choices=["tacotron", "hifigan"])
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--save-corrected", default=None, help="write the corrected (1, 1, T, 64) mel here (.npy/.pt)"
    )
    args = p.parse_args(list(argv))
    mel = load_mel(args.mel, key=args.key)
    audio = None
    if args.audio:
        from vaefix_pl.data.audio import load_audio

        audio = load_audio(args.audio)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verdict = diagnose_mel(mel, audio, framing=args.framing)
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=2))
    else:
        print(verdict)
    if args.save_corrected:
        if verdict.corrected is None:
            print("no corrected mel: a finding needs the mel recomputed from the audio", file=sys.stderr)
        else:
            target = Path(args.save_corrected)
            if target.suffix == ".npy":
                np.save(target, verdict.corrected.numpy())
            else:
                torch.save(verdict.corrected, target)
            print(f"wrote {target}")
    return 0 if verdict.ok else 1


__all__ = [
    "DEFAULT_STAGE_METRICS",
    "Decomposition",
    "HealthWarning",
    "MISTAKES",
    "MelFinding",
    "MelVerdict",
    "STAGES",
    "decompose",
    "diagnose_main",
    "diagnose_mel",
    "diagnose_mel_main",
    "format_verdicts",
    "health_warnings",
    "load_mel",
    "masked_mel_error",
    "reference_log_mel",
    "row_warnings",
    "run_diagnosis",
    "stage_health",
    "stage_verdicts",
]
