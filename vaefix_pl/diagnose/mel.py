""":func:`diagnose_mel`: which known mistake a user's own mel matches (transposed, power, log10/dB, missing log, wrong rate or hop, wrong band count, float16 overflow), and the corrected mel where the mistake can be undone."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaefix_pl.core.errors import SettingsError
from vaefix_pl.core.frontend import (
    HOP,
    LOG_MEL_FLOOR,
    N_MELS,
    Framing,
    LogMelFrontend,
    normalize_level,
)
from vaefix_pl.diagnose.mistakes import (
    COMMON_N_MELS,
    MelFinding,
    MelVerdict,
    _compare_values,
    _frame_rate_findings,
    _scale_from_fit,
    _scale_from_statistics,
    _squeeze_2d,
    value_statistics,
)


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


def _check_mel_input(raw: Tensor) -> None:
    """Refuse what no check can judge: a 0-d value, an empty array, complex or non-numeric values."""
    if raw.dim() == 0:
        raise SettingsError("the mel is a single number (a 0-d array), not a (T, 64) mel")
    if raw.numel() == 0:
        raise SettingsError(f"the mel is empty (shape {tuple(raw.shape)}): there are no frames to check")
    if raw.is_complex():
        raise SettingsError(
            f"the mel is complex ({str(raw.dtype).replace('torch.', '')}): pass the magnitude's log-mel, a real array"
        )
    if not raw.is_floating_point() and raw.dtype not in (
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
    ):
        raise SettingsError(f"the mel has a non-numeric dtype ({raw.dtype})")


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
    _check_mel_input(raw)
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
                    "np.std of this float16 mel returns inf (the sum overflows float16's 65504): the original bug report's "
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
                f"every value is {stats['min']:.3f} (the original bug report's [-4.000, -4.000]): a min-max/standardise of a flat "
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
    return MelVerdict(findings, tuple(raw.shape), dtype, layout, stats, checks, fit, corrected)


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
