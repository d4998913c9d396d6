"""The user-mel mistake catalogue and its evidence: known mistakes, value statistics and fits against our front-end (used by :func:`~vaefix_pl.diagnose.mel.diagnose_mel`)."""

from __future__ import annotations

import math
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
    SAMPLE_RATE,
    TRAINED_LOG_MEL_RANGE,
)
from vaefix_pl.diagnose.decompose import _num

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
