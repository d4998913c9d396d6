"""Realistic deterministic test signals (float64 NumPy, 16 kHz unless told)."""

from __future__ import annotations

import numpy as np
from scipy import signal

SR = 16000


def noise(n: int, seed: int = 0, peak: float = 0.5) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(n)
    return peak * x / np.abs(x).max()


def tone(n: int, freq: float = 440.0, peak: float = 0.5, sr: int = SR) -> np.ndarray:
    return peak * np.sin(2 * np.pi * freq * np.arange(n) / sr)


def harmonic(
    n: int, f0: float = 196.0, partials: int = 12, seed: int = 0, peak: float = 0.5, sr: int = SR
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, partials + 1))
    return peak * x / np.abs(x).max()


def chirp(n: int, f0: float = 50.0, f1: float = 7900.0, peak: float = 0.5, sr: int = SR) -> np.ndarray:
    t = np.arange(n) / sr
    return peak * signal.chirp(t, f0=f0, t1=t[-1], f1=f1)


def formant_pulses(n: int, f0: float = 120.0, seed: int = 0, peak: float = 0.5, sr: int = SR) -> np.ndarray:
    """Speech-like: a jittered glottal pulse train through three vowel formants."""
    rng = np.random.default_rng(seed)
    period = sr / f0
    pulses = np.zeros(n)
    pos = 0.0
    while pos < n:
        pulses[int(pos)] = 1.0
        pos += period * (1 + 0.02 * rng.standard_normal())
    x = signal.lfilter([1.0], [1.0, -0.95], pulses)
    y = np.zeros(n)
    for f, bw in ((700, 80), (1200, 100), (2600, 120)):
        r = np.exp(-np.pi * bw / sr)
        y += signal.lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / sr), r * r], x)
    return peak * y / np.abs(y).max()


def all_kinds(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {
        "noise": noise(n, seed),
        "tone": tone(n, 440.0 + 10 * seed),
        "harmonic": harmonic(n, seed=seed),
        "chirp": chirp(n),
        "formants": formant_pulses(n, seed=seed),
    }
