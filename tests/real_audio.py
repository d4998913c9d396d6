"""Real speech and music made at test time with Debian tools, and known clicks inserted into them.

Speech: ``espeak-ng`` (formant synthesis: real voiced/unvoiced structure, prosody and a speech-like
dynamic range) in several languages. Music: ``sox`` ``synth`` (plucked-string chords, organ and
piano-like tones, shaped pink/brown noise textures). Everything is rendered into a temporary folder
through ``subprocess`` (sox with ``-R``, so its noise generators repeat), read with soundfile,
resampled to 16 kHz (scipy ``resample_poly``) and scaled to a peak of 0.5. Used by ``tests/test_clicks_real.py`` and ``benchmarks/clicks.py``; callers skip when
:func:`missing_tools` is not empty.

Clicks (:func:`insert_clicks`) are added to a signal about every 0.2 s at a fixed seed:

* ``impulse``: one sample; ``burst``: 0.5-5 ms of Hann-shaped white noise; ``step``: a DC jump that
  relaxes with a 20 ms time constant (an AC-coupled step: one discontinuity, no second edge);
  peaks uniform in ``peak_range_db`` dBFS.
* ``dropout``: 1-5 ms of samples set to zero. Its peak is that of the removed signal; a dropout in
  digital silence (peak under -120 dBFS) changes nothing and is not counted as a click.

Each click's ``level_db`` is the peak of what it adds (``clicked - clean``) over the RMS of the clean
signal in the +-10 ms around it: the "level relative to the local RMS" of the click benchmark.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SR = 16000
PEAK = 0.5
TOOLS = ("espeak-ng", "sox")

# (name, espeak-ng voice, speed in words/min, text)
SPEECH: tuple[tuple[str, str, int, str], ...] = (
    (
        "en",
        "en-us",
        165,
        "The quick brown fox jumps over the lazy dog. Please call Stella and ask her to bring "
        "these things with her from the store.",
    ),
    (
        "en_f",
        "en+f3",
        150,
        "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her "
        "brother Bob.",
    ),
    (
        "de",
        "de",
        160,
        "Der schnelle braune Fuchs springt über den faulen Hund. Heute ist das Wetter schön und "
        "wir gehen spazieren.",
    ),
    (
        "fr",
        "fr-fr",
        160,
        "Le vif renard brun saute par-dessus le chien paresseux. Il fait beau aujourd'hui, allons "
        "nous promener.",
    ),
    (
        "es",
        "es",
        160,
        "El veloz murciélago hindú comía feliz cardillo y kiwi. La cigüeña tocaba el saxofón "
        "detrás del palenque de paja.",
    ),
    ("cmn", "cmn", 150, "今天天气很好，我们一起去公园散步吧。我喜欢听音乐，也喜欢看书。"),
)

_NOTES = {"C": -9, "D": -7, "E": -5, "F": -4, "G": -2, "A": 0, "B": 2}


def _hz(note: str) -> float:
    """``"C4"`` / ``"F#3"`` -> frequency in Hz (A4 = 440 Hz)."""
    semis = _NOTES[note[0]] + (1 if "#" in note else 0) + 12 * (int(note[-1]) - 4)
    return 440.0 * 2.0 ** (semis / 12.0)


_CHORDS = (
    ("C3", "E3", "G3", "C4"),
    ("A2", "E3", "A3", "C4"),
    ("F2", "C3", "A3", "F4"),
    ("G2", "D3", "B3", "G4"),
)


def _sox_music(kind: str) -> list[list[str]]:
    """sox effect chains, one per segment (concatenated in order) for the music ``kind``."""
    segments = []
    if kind == "pluck":  # plucked-string chords, 0.55 s each
        for chord in _CHORDS * 2:
            tones = [w for n in chord for w in ("pluck", f"{_hz(n):.2f}")]
            segments.append(["synth", "0.55", *tones, "remix", "-"])
    elif kind == "organ":  # sustained harmonic chords with drawbar-like partials
        for chord in _CHORDS:
            tones = []
            for n in chord[1:]:
                f = _hz(n)
                tones += ["sine", f"{f:.2f}", "sine", f"{2 * f:.2f}", "sine", f"{3 * f:.2f}"]
            segments.append(["synth", "1.0", *tones, "remix", "-", "fade", "q", "0.03", "1.0", "0.05"])
    elif kind == "piano":  # bright triangle/square partials, fast attack, logarithmic decay
        for i, n in enumerate(("C4", "E4", "G4", "C5", "A3", "F4", "D4", "B3", "G3", "E4")):
            f = _hz(n)
            wave = ("triangle", "square")[i % 2]
            segments.append(
                [
                    "synth",
                    "0.45",
                    wave,
                    f"{f:.2f}",
                    "sine",
                    f"{2 * f:.2f}",
                    "remix",
                    "-",
                    "lowpass",
                    "4000",
                    "fade",
                    "l",
                    "0.004",
                    "0.45",
                    "0.42",
                ]
            )
    elif kind == "noise":  # noise-like textures: shaped pink and brown noise
        segments.append(["synth", "1.5", "pinknoise", "band", "1500", "800", "tremolo", "3", "70"])
        segments.append(["synth", "1.5", "brownnoise", "tremolo", "5", "60"])
        segments.append(["synth", "1.5", "pinknoise", "lowpass", "3000", "fade", "q", "0.3", "1.5", "0.5"])
    else:
        raise ValueError(f"unknown music kind {kind!r}")
    return segments


MUSIC: tuple[str, ...] = ("pluck", "organ", "piano", "noise")


def missing_tools(tools: tuple[str, ...] = TOOLS) -> list[str]:
    """The command-line tools of ``tools`` that are not on ``PATH``."""
    return [t for t in tools if shutil.which(t) is None]


def _read(path: Path) -> np.ndarray:
    x, sr = sf.read(str(path), dtype="float64", always_2d=True)
    x = x.mean(axis=1)
    if sr != SR:
        g = gcd(SR, sr)
        x = resample_poly(x, SR // g, sr // g)
    return x


def _normalise(x: np.ndarray) -> np.ndarray:
    return x * (PEAK / max(float(np.abs(x).max()), 1e-12))


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)


@functools.cache
def speech(name: str) -> np.ndarray:
    """espeak-ng speech ``name`` of :data:`SPEECH` at 16 kHz, peak 0.5, float64 ``(N,)``."""
    _, voice, wpm, text = next(s for s in SPEECH if s[0] == name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        _run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(path), text])
        x = _read(path)
    return _normalise(x).astype(np.float64)


@functools.cache
def music(kind: str) -> np.ndarray:
    """sox-synthesised music ``kind`` of :data:`MUSIC` at 16 kHz, peak 0.5, float64 ``(N,)``."""
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, chain in enumerate(_sox_music(kind)):
            path = Path(tmp) / f"seg{i}.wav"
            _run(["sox", "-R", "-n", "-r", str(SR), "-b", "32", "-e", "floating-point", str(path), *chain])
            parts.append(_read(path))
    return _normalise(np.concatenate(parts)).astype(np.float64)


def corpus(kind: str, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """``{name: signal}`` of the ``"speech"`` or ``"music"`` items (all, or ``names``)."""
    if kind == "speech":
        return {n: speech(n) for n in (names or tuple(s[0] for s in SPEECH))}
    if kind == "music":
        return {n: music(n) for n in (names or MUSIC)}
    raise ValueError(f"kind must be 'speech' or 'music', got {kind!r}")


# --------------------------------------------------------------------------------------------- clicks
CLICK_TYPES: tuple[str, ...] = ("impulse", "burst", "step", "dropout")
LEVEL_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<0 dB", -np.inf, 0.0),
    ("0-10 dB", 0.0, 10.0),
    (">=10 dB", 10.0, np.inf),
)


NO_CHANGE = 1e-6  # a click whose peak is under this (-120 dBFS) changes nothing: it is not counted


@dataclass
class Click:
    start: int  # first sample the click changes
    end: int  # one past the last sample it changes (a step: start + 1, its discontinuity)
    kind: str
    peak_db: float  # dBFS peak of what it adds
    level_db: float  # that peak over the clean signal's RMS in the +-10 ms around ``start``


def local_rms(x: np.ndarray, centre: int, half: int = int(0.01 * SR)) -> float:
    """RMS of ``x`` in the ``+-half`` samples around ``centre`` (clipped to the signal)."""
    seg = x[max(0, centre - half) : centre + half + 1]
    return float(np.sqrt(np.mean(seg**2))) if seg.size else 0.0


def insert_clicks(
    x: np.ndarray,
    kind: str,
    seed: int,
    every_s: float = 0.2,
    peak_range_db: tuple[float, float] = (-40.0, -6.0),
    margin_s: float = 0.05,
    sr: int = SR,
) -> tuple[np.ndarray, list[Click]]:
    """Add one click of ``kind`` per ``every_s`` slot (random offset in its first half), fixed ``seed``.

    Returns ``(clicked copy of x, clicks)``. Clicks stay ``margin_s`` from both ends.
    """
    rng = np.random.default_rng(seed)
    n = x.shape[-1]
    y = x.copy()
    clicks = []
    slot = int(every_s * sr)
    for s in range(int(margin_s * sr), n - int(margin_s * sr) - slot, slot):
        p = s + int(rng.integers(0, slot // 2))
        peak = float(rng.uniform(*peak_range_db))
        amp = 10.0 ** (peak / 20.0)
        if kind == "impulse":
            add, end = np.array([amp * rng.choice([-1.0, 1.0])]), p + 1
        elif kind == "burst":
            m = max(int(round(rng.uniform(0.0005, 0.005) * sr)), 3)
            c = rng.standard_normal(m) * np.hanning(m + 2)[1:-1]
            add, end = c * (amp / np.abs(c).max()), p + m
        elif kind == "step":
            m = int(0.1 * sr)  # 5 time constants
            add = amp * rng.choice([-1.0, 1.0]) * np.exp(-np.arange(m) / (0.02 * sr))
            end = p + 1
        elif kind == "dropout":
            m = int(round(rng.uniform(0.001, 0.005) * sr))
            add, end = -x[p : p + m], p + m
        else:
            raise ValueError(f"unknown click kind {kind!r}")
        m = min(add.size, n - p)
        y[p : p + m] += add[:m]
        peak_abs = float(np.abs(add[:m]).max()) if m else 0.0
        if peak_abs < NO_CHANGE:  # a dropout in digital silence changes nothing: no click to find
            continue
        rms = local_rms(x, p)
        peak_db = 20 * np.log10(max(peak_abs, 1e-12))
        level = 20 * np.log10(max(peak_abs, 1e-12) / max(rms, 1e-12))
        clicks.append(Click(p, end, kind, peak_db, level))
    return y, clicks


def match(detected: np.ndarray, clicks: list[Click], tolerance: int) -> tuple[np.ndarray, int]:
    """``(found (len(clicks),) bool, false detections)``.

    A click is found when a detected event onset lies in ``[start - tolerance, end + tolerance]``; a
    detection is false when it lies in no click's window.
    """
    det = np.asarray(detected, dtype=np.int64)
    if not clicks:
        return np.zeros(0, bool), int(det.size)
    lo = np.array([c.start - tolerance for c in clicks])
    hi = np.array([c.end + tolerance for c in clicks])
    inside = (det[:, None] >= lo[None, :]) & (det[:, None] <= hi[None, :])
    return inside.any(axis=0), int((~inside.any(axis=1)).sum())


def band_of(level_db: float) -> str:
    return next(name for name, lo, hi in LEVEL_BANDS if lo <= level_db < hi)


# ---------------------------------------------------------------------------------------------- bases
def lowpass_delay(x: np.ndarray) -> np.ndarray:
    """Zero-phase 8th-order Butterworth low-pass at 7 kHz, then a 5 ms delay."""
    import metric_signals as ms

    return ms.lowpass_delay(x, cutoff=7000.0, delay_s=0.005)


def griffin_lim(x: np.ndarray) -> np.ndarray:
    """torchaudio magnitude-only round trip (n_fft 1024, hop 256, 32 iterations, fixed seed)."""
    import metric_signals as ms

    return ms.griffin_lim(x, n_fft=1024, hop=256, n_iter=32, seed=0)


@functools.lru_cache(maxsize=2)
def _tiny_reconstructor(precision: str):
    from vaefix_pl.core.reconstruct import Reconstructor
    from vaefix_pl.testing import write_tiny_audioldm2

    folder = write_tiny_audioldm2(tempfile.mkdtemp(prefix="tiny_audioldm2_"), seed=0)
    return Reconstructor.from_pretrained(str(folder), precision=precision)


def tiny_model(x: np.ndarray, precision: str = "fp32") -> np.ndarray:
    """Reconstruction of ``x`` by the tiny random AudioLDM2-shaped VAE + HiFi-GAN (float64 ``(N,)``).

    Not scaled: its output is about 35 dB quieter than its input; :func:`bases` rescales it.
    """
    import torch

    with torch.no_grad():
        out = _tiny_reconstructor(precision)(torch.tensor(x, dtype=torch.float32)[None])
    return out.waveform[0].double().numpy()


def bases(x: np.ndarray, names: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{base: (reference, clean estimate)}`` for the clean item ``x``.

    ``identity``: (x, x); ``lowpass_delay``, ``griffin_lim``: (x, f(x)); ``tiny_hifigan``: (x, tiny fp32
    reconstruction scaled to x's RMS); ``bf16_vs_fp32``: (fp32, bf16 reconstruction), both with that gain.
    """
    out = {}
    fp32 = gain = None
    for name in names:
        if name in ("tiny_hifigan", "bf16_vs_fp32") and fp32 is None:
            fp32 = tiny_model(x, "fp32")
            gain = np.sqrt(np.mean(x**2) / max(np.mean(fp32**2), 1e-30))
        if name == "identity":
            out[name] = (x, x.copy())
        elif name == "lowpass_delay":
            out[name] = (x, lowpass_delay(x))
        elif name == "griffin_lim":
            out[name] = (x, griffin_lim(x))
        elif name == "tiny_hifigan":
            out[name] = (x, gain * fp32)
        elif name == "bf16_vs_fp32":
            out[name] = (gain * fp32, gain * tiny_model(x, "bf16"))
        else:
            raise ValueError(f"unknown base {name!r}")
    return out


BASES: tuple[str, ...] = ("identity", "lowpass_delay", "griffin_lim", "tiny_hifigan", "bf16_vs_fp32")


def pad_batch(signals: list[np.ndarray]):
    """``(B, N) float32`` zero-padded batch and ``lengths (B,)`` of 1-D float arrays."""
    import torch

    lengths = torch.tensor([s.shape[-1] for s in signals])
    x = torch.zeros(len(signals), int(lengths.max()))
    for i, s in enumerate(signals):
        x[i, : s.shape[-1]] = torch.as_tensor(s, dtype=torch.float32)
    return x, lengths


def added_click_onsets(references: list[np.ndarray], estimates: list[np.ndarray]) -> list[np.ndarray]:
    """``added_clicks`` onsets of each (reference, estimate) pair, run as one padded batch."""
    from vaefix_pl.metrics import added_clicks

    r, lengths = pad_batch(references)
    e, _ = pad_batch(estimates)
    return [o.cpu().numpy() for o in added_clicks(r, e, lengths, SR)]


def adeclick_onsets(x: np.ndarray, merge_s: float = 0.002) -> np.ndarray:
    """Click events FFmpeg ``adeclick`` (defaults) repairs in ``x``: onset sample indices.

    ``adeclick`` returns repaired audio, not its detections, and its overlap-add is not bit-exact, so
    the changed samples are found against a run with ``threshold=100`` (its maximum, which flags
    nothing) that goes through the same overlap-add: samples where the two outputs differ by more
    than 1e-6 are repaired ones, and repaired samples closer than ``merge_s`` form one event.
    """
    outs = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.wav"
        sf.write(str(src), x.astype(np.float32), SR, subtype="FLOAT")
        for t in (2, 100):
            dst = Path(tmp) / f"out{t}.wav"
            _run(
                [
                    "ffmpeg",
                    "-y",
                    "-v",
                    "error",
                    "-i",
                    str(src),
                    "-af",
                    f"adeclick=t={t}",
                    "-c:a",
                    "pcm_f32le",
                    str(dst),
                ]
            )
            outs.append(sf.read(str(dst), dtype="float64")[0][: x.shape[-1]])
    changed = np.flatnonzero(np.abs(outs[0] - outs[1]) > 1e-6)
    if changed.size == 0:
        return changed
    gap = int(round(merge_s * SR))
    return changed[np.concatenate([[True], np.diff(changed) > gap])]
