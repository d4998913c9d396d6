"""The built-in probe set: deterministic 16 kHz signals that stress the known failure modes.

Each is something a person can listen to and that a specific fault shows up on: pitch tracking
(vibrato tone), onsets and decays (piano-like notes), the whole band including the 7-8 kHz edge the
the bug report's band-pass removes (chirp), speech-like formants and voicing, silence between events
(noise bursts: padding and fades), sharp transients (the click detectors' hardest case) and
near-silence (the log floor, level normalisation of almost nothing).
"""

from __future__ import annotations

import numpy as np

from vaefix_pl.core.frontend import SAMPLE_RATE

PROBE_NAMES: tuple[str, ...] = (
    "vibrato_tone",
    "piano_notes",
    "chirp",
    "speech_like",
    "noise_bursts",
    "transients",
    "near_silence",
)


def _envelope(n: int, sr: int, attack: float = 0.02, release: float = 0.05) -> np.ndarray:
    env = np.ones(n)
    a, r = max(1, int(attack * sr)), max(1, int(release * sr))
    env[:a] = np.linspace(0, 1, a)
    env[-r:] = np.linspace(1, 0, r)
    return env


def vibrato_tone(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """220 Hz tone with 8 harmonics (1/k), 5.5 Hz vibrato of +/-1.5 %."""
    t = np.arange(n) / sr
    f0 = 220.0 * (1 + 0.015 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 9))
    return x * _envelope(n, sr)


def piano_notes(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """C4-E4-G4-C5-G4 notes, fast attack, exponential decay, slightly inharmonic partials."""
    x = np.zeros(n)
    notes = [261.63, 329.63, 392.0, 523.25, 392.0]
    step = n // len(notes)
    for i, f in enumerate(notes):
        m = n - i * step
        t = np.arange(m) / sr
        b = 4e-4  # string inharmonicity
        tone = sum(
            np.exp(-t * (2.5 + 1.5 * k)) / k * np.sin(2 * np.pi * f * k * np.sqrt(1 + b * k * k) * t)
            for k in range(1, 11)
        )
        attack = np.minimum(1.0, t / 0.003)
        x[i * step :] += tone * attack
    return x


def chirp(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Linear chirp 50 Hz -> 7.9 kHz over the clip."""
    from scipy import signal  # scipy.signal costs seconds to import: only when probes are made

    t = np.arange(n) / sr
    return signal.chirp(t, f0=50.0, t1=t[-1], f1=7900.0, method="linear") * _envelope(n, sr, 0.01, 0.01)


def speech_like(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Glottal pulse train (110-160 Hz intonation, jitter) through vowel formants, in syllables."""
    from scipy import signal  # scipy.signal costs seconds to import: only when probes are made

    t = np.arange(n) / sr
    f0 = 135 + 25 * np.sin(2 * np.pi * 0.7 * t) + 3 * rng.standard_normal(n).cumsum() / np.sqrt(n)
    phase = np.cumsum(f0 / sr)
    pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per period
    glottal = signal.lfilter([1.0], [1.0, -0.97], pulses)  # spectral tilt of voicing
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480)]
    syll = max(1, int(0.25 * sr))
    out = np.zeros(n)
    for s in range(0, n, syll):
        seg = glottal[s : s + syll]
        y = np.zeros_like(seg)
        for f, bw in zip(vowels[(s // syll) % len(vowels)], (80, 100, 120)):
            r = np.exp(-np.pi * bw / sr)
            a = [1.0, -2 * r * np.cos(2 * np.pi * f / sr), r * r]
            y += signal.lfilter([1 - r], a, seg)
        out[s : s + len(seg)] = y * np.hanning(len(seg)) ** 0.5
    return out


def noise_bursts(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """200 ms bursts of pink-ish noise with 300 ms of digital silence between them."""
    from scipy import signal  # scipy.signal costs seconds to import: only when probes are made

    x = np.zeros(n)
    burst, gap = int(0.2 * sr), int(0.3 * sr)
    white = rng.standard_normal(n)
    pink = signal.lfilter(
        [0.049922, -0.095993, 0.050612, -0.004408], [1, -2.494956, 2.017265, -0.522189], white
    )
    for s in range(gap // 2, n, burst + gap):
        e = min(n, s + burst)
        x[s:e] = pink[s:e] * np.hanning(e - s) ** 0.25
    return x


def transients(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Sharp events: single-sample impulses, 2 ms bursts, snare-like decays, a step, over a soft pad."""
    t = np.arange(n) / sr
    x = 0.02 * np.sin(2 * np.pi * 330 * t)
    events = np.linspace(0.15, t[-1] - 0.15, 12)
    for i, te in enumerate(events):
        s = int(te * sr)
        kind = i % 4
        if kind == 0:
            x[s] += 1.0
        elif kind == 1:
            m = int(0.002 * sr)
            x[s : s + m] += rng.uniform(-1, 1, m)
        elif kind == 2:
            m = int(0.15 * sr)
            d = rng.standard_normal(m) * np.exp(-np.arange(m) / (0.02 * sr))
            x[s : s + m] += 0.6 * d[: len(x[s : s + m])]
        else:
            m = int(0.05 * sr)
            x[s : s + m] += 0.5  # a DC step: a discontinuity at each end
    return x


def near_silence(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Dither-level noise (about -90 dBFS) with a faint 1 kHz tone 30 dB above it."""
    t = np.arange(n) / sr
    return 3e-5 * rng.standard_normal(n) + 1e-3 * np.sin(2 * np.pi * 1000 * t)


_GENERATORS = {
    "vibrato_tone": vibrato_tone,
    "piano_notes": piano_notes,
    "chirp": chirp,
    "speech_like": speech_like,
    "noise_bursts": noise_bursts,
    "transients": transients,
    "near_silence": near_silence,
}


def probe_signals(
    seconds: float = 4.0, sample_rate: int = SAMPLE_RATE, seed: int = 0
) -> dict[str, np.ndarray]:
    """The probe set: ``{name: (N,) float32}`` at ``sample_rate``, deterministic from ``seed``.

    Every signal except ``near_silence`` is scaled to a peak of 0.5 (-6 dBFS); ``near_silence``
    keeps its tiny level on purpose.
    """
    n = int(round(seconds * sample_rate))
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(PROBE_NAMES):
        rng = np.random.default_rng([seed, i])
        x = _GENERATORS[name](n, sample_rate, rng)
        if name != "near_silence":
            x = 0.5 * x / (np.abs(x).max() + 1e-12)
        out[name] = x.astype(np.float32)
    return out
