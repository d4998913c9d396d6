"""Numeric health per stage (:func:`stage_health`), the warnings that name a probable cause (:func:`health_warnings`), and the same warnings read back from a ``metrics.csv`` row (:func:`row_warnings`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vaefix_pl.core.frontend import (
    TRAINED_LOG_MEL_RANGE,
)
from vaefix_pl.core.health import tensor_health
from vaefix_pl.diagnose.stages import CLICKS_WARN_PER_S, OUT_OF_RANGE_WARN, SATURATION_PEAK


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
            overflow them: the original bug report's ``std=inf`` came from float16 statistics).
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
            "the original bug report's std=inf) and keep the VAE in float32",
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
                f"constant vocoder input [{value_s}, {value_s}] (the original bug report's [-4.000, -4.000] symptom): made by "
                f"the repair chain's mel_mode={mel_mode!r} step (min-max/standardise of a flat or non-finite "
                "mel returns a constant); feed the decoded mel to the vocoder unchanged",
            )
        elif stage in ("vocoder_input", "repaired_vocoder_input", "decoded_mel"):
            add(
                "fault",
                f"constant {stage.replace('_', ' ')} [{value_s}, {value_s}] (the original bug report's [-4.000, -4.000] "
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
