"""Deterministic synthetic signals, click insertion and smooth degradations for the metric tests.

All float64 NumPy at 16 kHz. Levels in dBFS are peak levels (0 dBFS = |x| of 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

SR = 16000


def db(level_db: float) -> float:
    return float(10.0 ** (level_db / 20.0))


def _peak(x: np.ndarray, peak_db: float) -> np.ndarray:
    return x * (db(peak_db) / max(np.abs(x).max(), 1e-12))


# ---------------------------------------------------------------------------------------------- backgrounds
def tone(n: int, freq: float, peak_db: float = -6.0, sr: int = SR, phase: float = 0.0) -> np.ndarray:
    return db(peak_db) * np.sin(2 * np.pi * freq * np.arange(n) / sr + phase)


def harmonic_tone(
    n: int, f0: float, partials: int = 12, peak_db: float = -6.0, seed: int = 0, sr: int = SR
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    ks = [k for k in range(1, partials + 1) if k * f0 < 0.45 * sr]
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in ks)
    return _peak(np.asarray(x), peak_db)


def chirp(n: int, f0: float = 100.0, f1: float = 7000.0, peak_db: float = -6.0, sr: int = SR) -> np.ndarray:
    t = np.arange(n) / sr
    return db(peak_db) * signal.chirp(t, f0=f0, t1=t[-1], f1=f1, method="logarithmic")


def steady_noise(n: int, rms_db: float, seed: int = 0, color: str = "white") -> np.ndarray:
    """Stationary Gaussian noise with the given RMS level (dB re full scale)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    if color == "pink":  # -3 dB/octave (Kellet's economy filter)
        x = signal.lfilter(
            [0.049922035, -0.095993537, 0.050612699, -0.004408786],
            [1, -2.494956002, 2.017265875, -0.522189400],
            x,
        )
    return x * (db(rms_db) / np.sqrt(np.mean(x**2)))


# ------------------------------------------------------------------------------------ speech- / music-like
def _resonator(x: np.ndarray, freq: float, bw: float, sr: int = SR) -> np.ndarray:
    r = np.exp(-np.pi * bw / sr)
    return signal.lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * freq / sr), r * r], x)


_VOWELS = (
    (730, 1090, 2440),
    (270, 2290, 3010),
    (530, 1840, 2480),
    (570, 840, 2410),
    (300, 870, 2240),
    (660, 1720, 2410),
)


def speech_like(n: int, seed: int = 0, peak_db: float = -6.0, sr: int = SR) -> np.ndarray:
    """Syllables of voiced formant pulse trains and fricatives, with pauses.

    Voiced: a jittered glottal pulse train (Rosenberg-like smooth pulses: about -12 dB/octave) with a
    gliding f0 of 90-240 Hz through four formant resonators of a random vowel, under a syllable envelope
    (15 ms attack/release). Unvoiced: band-passed noise (2.5-7 kHz) 25 dB under the vowels. Pauses of
    30-150 ms.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros(n)
    pos = int(rng.integers(0, int(0.05 * sr)))
    while pos < n:
        kind = rng.choice(["voiced", "voiced", "voiced", "fricative"])
        dur = int(rng.uniform(0.08, 0.3) * sr) if kind == "voiced" else int(rng.uniform(0.05, 0.15) * sr)
        dur = min(dur, n - pos)
        if dur < 64:
            break
        if kind == "voiced":
            f0 = np.linspace(rng.uniform(90, 240), rng.uniform(90, 240), dur)
            f0 *= 1 + 0.01 * rng.standard_normal(dur).cumsum() / np.sqrt(np.arange(1, dur + 1))
            phase = np.cumsum(f0 / sr)
            src = np.zeros(dur)
            edges = np.flatnonzero(np.diff(np.floor(phase)) > 0)
            src[edges] = 1.0 + 0.05 * rng.standard_normal(edges.size)
            # smooth glottal pulse: two leaky integrations (-12 dB/oct above ~100 Hz) of a differentiated train
            src = signal.lfilter([1, -1], [1], src)
            src = signal.lfilter([1], [1, -0.99], signal.lfilter([1], [1, -0.99], src))
            formants = _VOWELS[int(rng.integers(len(_VOWELS)))]
            y = sum(
                _resonator(src, f * rng.uniform(0.95, 1.05), bw, sr) * g
                for f, bw, g in zip((*formants, 3500), (80, 100, 140, 200), (1.0, 0.7, 0.35, 0.2))
            )
            level = 1.0
        else:
            y = signal.sosfilt(
                signal.butter(4, [2500, 7000], "bandpass", fs=sr, output="sos"), rng.standard_normal(dur)
            )
            level = db(-25.0)
        ramp = min(int(0.015 * sr), dur // 2)
        env = np.ones(dur)
        env[:ramp] = np.linspace(0, 1, ramp)
        env[dur - ramp :] = np.linspace(1, 0, ramp)
        y = np.asarray(y) * env
        out[pos : pos + dur] += level * y / max(np.abs(y).max(), 1e-12) * (0.5 + 0.5 * rng.uniform())
        pos += dur + int(rng.uniform(0.03, 0.15) * sr)
    return _peak(out, peak_db)


def music_like(n: int, seed: int = 0, peak_db: float = -6.0, sr: int = SR) -> np.ndarray:
    """Harmonic notes with sharp onsets: 2-8 ms attacks, exponential decays, overlapping voices.

    Each note: f0 from 80-1000 Hz, 6-20 partials with 1/k^1.3 amplitudes and slightly faster decay for
    higher partials, a new note every 80-400 ms, two voices so notes overlap.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros(n)
    for _voice in range(2):
        pos = int(rng.integers(0, int(0.1 * sr)))
        while pos < n - 256:
            dur = min(int(rng.uniform(0.15, 0.8) * sr), n - pos)
            t = np.arange(dur) / sr
            f0 = 80.0 * 2 ** rng.uniform(0, np.log2(1000 / 80))
            tau = rng.uniform(0.1, 0.6)
            note = np.zeros(dur)
            for k in range(1, int(rng.integers(6, 21)) + 1):
                if k * f0 >= 0.45 * sr:
                    break
                note += (
                    np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
                    * k**-1.3
                    * np.exp(-t * k**0.3 / tau)
                )
            attack = max(int(rng.uniform(0.002, 0.008) * sr), 2)
            note[:attack] *= np.linspace(0, 1, attack)
            release = min(int(0.01 * sr), dur // 4)
            note[dur - release :] *= np.linspace(1, 0, release)
            out[pos : pos + dur] += note * rng.uniform(0.4, 1.0)
            pos += int(rng.uniform(0.08, 0.4) * sr)
    return _peak(out, peak_db)


# --------------------------------------------------------------------------------------------------- clicks
@dataclass
class Clicks:
    positions: np.ndarray  # sample index of each click's start
    peaks_db: np.ndarray
    kinds: list[str]


def make_click(kind: str, peak_db: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """A single-sample impulse (``"impulse"``) or a 1-3 ms burst (``"burst"``), random sign, given peak."""
    if kind == "impulse":
        c = np.array([rng.choice([-1.0, 1.0])])
    elif kind == "burst":
        m = int(round(rng.uniform(0.001, 0.003) * sr))
        c = rng.standard_normal(m) * np.exp(-np.arange(m) / (m / 3))  # decaying broadband burst
    else:
        raise ValueError(kind)
    return c * (db(peak_db) / np.abs(c).max())


def insert_clicks(
    x: np.ndarray,
    count: int,
    seed: int,
    peak_range_db: tuple[float, float] = (-20.0, -6.0),
    min_gap_s: float = 0.15,
    margin_s: float = 0.06,
    sr: int = SR,
) -> tuple[np.ndarray, Clicks]:
    """Add ``count`` clicks (alternating impulse / burst) at random positions at least ``min_gap_s`` apart."""
    rng = np.random.default_rng(seed)
    n = x.shape[-1]
    lo, hi = int(margin_s * sr), n - int(margin_s * sr)
    slots = np.arange(lo, hi, int(min_gap_s * sr))
    if count > slots.size:
        raise ValueError(f"{count} clicks do not fit {slots.size} slots")
    chosen = np.sort(rng.choice(slots, size=count, replace=False))
    positions = chosen + rng.integers(0, int(0.3 * min_gap_s * sr), size=count)
    y = x.copy()
    kinds, peaks = [], []
    for i, p in enumerate(positions):
        kind = "impulse" if i % 2 == 0 else "burst"
        peak_db = float(rng.uniform(*peak_range_db))
        c = make_click(kind, peak_db, rng, sr)
        y[p : p + c.size] += c
        kinds.append(kind)
        peaks.append(peak_db)
    return y, Clicks(positions=positions, peaks_db=np.asarray(peaks), kinds=kinds)


def match_clicks(detected: np.ndarray, truth: np.ndarray, tolerance: int) -> tuple[int, int]:
    """(true clicks found, detections not within ``tolerance`` samples of any true click)."""
    detected = np.asarray(detected, dtype=np.int64)
    truth = np.asarray(truth, dtype=np.int64)
    if truth.size == 0:
        return 0, int(detected.size)
    if detected.size == 0:
        return 0, 0
    dist = np.abs(detected[:, None] - truth[None, :])
    hits = int((dist.min(axis=0) <= tolerance).sum())
    false = int((dist.min(axis=1) > tolerance).sum())
    return hits, false


# ------------------------------------------------------------------------------------- smooth degradations
def lowpass_delay(x: np.ndarray, cutoff: float = 7000.0, delay_s: float = 0.005, sr: int = SR) -> np.ndarray:
    """Zero-phase 8th-order Butterworth low-pass at ``cutoff`` then a pure delay (zeros shifted in)."""
    y = signal.sosfiltfilt(signal.butter(8, cutoff, "lowpass", fs=sr, output="sos"), x)
    d = int(round(delay_s * sr))
    return np.concatenate([np.zeros(d), y[: x.shape[-1] - d]])


def griffin_lim(
    x: np.ndarray, n_fft: int = 1024, hop: int = 256, n_iter: int = 16, seed: int = 0
) -> np.ndarray:
    """Magnitude-only round trip: torchaudio ``Spectrogram`` (power 1) then ``GriffinLim``."""
    import torch
    import torchaudio

    torch.manual_seed(seed)
    spec = torchaudio.transforms.Spectrogram(n_fft=n_fft, hop_length=hop, power=1.0)
    gl = torchaudio.transforms.GriffinLim(
        n_fft=n_fft, hop_length=hop, power=1.0, n_iter=n_iter, rand_init=True
    )
    xt = torch.as_tensor(x, dtype=torch.float32)
    y = gl(spec(xt)).double().numpy()
    out = np.zeros_like(x)
    m = min(x.shape[-1], y.shape[-1])
    out[:m] = y[:m]
    return out
