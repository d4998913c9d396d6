"""The report's figures, pure functions (arrays in, matplotlib ``Figure`` out): waveforms, log-mels on an Hz axis, their difference and the added clicks of one clip."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from vaefix_pl.core.frontend import F_MAX, F_MIN, N_MELS, SAMPLE_RATE, LogMelFrontend, normalize_level
from vaefix_pl.core.geometry import geometry_for_rate

#: Okabe-Ito colours (colour-blind safe): original, reconstruction, repaired, clicks.
COLORS = {"original": "#0072B2", "recon": "#E69F00", "post": "#009E73", "clicks": "#D55E00"}
MEL_CMAP = "viridis"
DIFF_CMAP = "RdBu_r"


# ==========================================================================================================
# figures (pure: arrays in, Figure out)
# ==========================================================================================================
def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    mel = f / f_sp
    return np.where(
        f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-9) / min_log_hz) / logstep, mel
    )


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_band_centres_hz(n_mels: int = N_MELS, f_min: float = F_MIN, f_max: float = F_MAX) -> np.ndarray:
    """``(n_mels,)`` centre frequencies (Hz) of the Slaney mel bands AudioLDM2's front-end uses."""
    edges = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(f_min), _hz_to_mel_slaney(f_max), n_mels + 2))
    return edges[1:-1]


def _hz_ticks(
    ax: Any,
    n_mels: int = N_MELS,
    ticks_hz: Sequence[float] = (200, 500, 1000, 2000, 4000, 7000, 12000, 20000),
    f_min: float = F_MIN,
    f_max: float = F_MAX,
):
    """Label the mel-band axis of an image (band index on y) in Hz (ticks outside the bands are left out)."""
    centres = mel_band_centres_hz(n_mels, f_min, f_max)
    pos = [
        float(np.interp(f, centres, np.arange(n_mels))) for f in ticks_hz if centres[0] <= f <= centres[-1]
    ]
    labels = [
        f"{int(f)}" if f < 1000 else f"{f / 1000:g}k" for f in ticks_hz if centres[0] <= f <= centres[-1]
    ]
    ax.set_yticks(pos)
    ax.set_yticklabels(labels)
    ax.set_ylabel("frequency (Hz)")


def display_log_mels(
    original: Tensor | np.ndarray,
    estimate: Tensor | np.ndarray,
    framing: str = "tacotron",
    sample_rate: int = SAMPLE_RATE,
) -> tuple[np.ndarray, np.ndarray]:
    """``(T, n_mels)`` natural-log mels of ``(N,)`` original and estimate (the front-end of the geometry at
    ``sample_rate``: 64 mels at 16 kHz, 256 at 48 kHz), both at the original's level step.

    The level-step gain of the original is applied to both, so their difference shows what the
    reconstruction changed, not a level offset.
    """
    x = torch.as_tensor(original).double().reshape(1, -1)
    y = torch.as_tensor(estimate).double().reshape(1, -1)
    n = min(x.shape[1], y.shape[1])
    x, y = x[:, :n], y[:, :n]
    xn, gain = normalize_level(x)
    yn = (y - x.mean(dim=1, keepdim=True)) * gain[:, None]
    fe = LogMelFrontend(framing, geometry_for_rate(sample_rate)).double()  # type: ignore[arg-type]
    return fe(xn)[0, 0].numpy(), fe(yn)[0, 0].numpy()


def clip_figure(
    original: Tensor | np.ndarray,
    recon: Tensor | np.ndarray,
    post: Tensor | np.ndarray | None = None,
    clicks: Sequence[int] | np.ndarray | None = None,
    title: str = "",
    sample_rate: int = SAMPLE_RATE,
    dpi: int = 64,
) -> Figure:
    """The per-clip figure: log-mels of original and reconstruction, their difference, and one waveform
    panel each for the original, the reconstruction (added clicks marked) and the repaired output.

    Args:
        original, recon, post: ``(N,)`` waveforms at ``sample_rate`` (the model's: 16 or 48 kHz), same level.
        clicks: sample indices of clicks in ``recon`` to mark (e.g. from ``added_clicks``).
    Returns:
        a ``matplotlib.figure.Figure`` on the Agg canvas (save with :func:`figure_png`).
    """
    mo, mr = display_log_mels(original, recon, sample_rate=sample_rate)
    g = geometry_for_rate(sample_rate)
    t = mo.shape[0]
    dur = t * g.hop / sample_rate
    extent = (0.0, dur, -0.5, mo.shape[1] - 0.5)
    vmin, vmax = float(np.percentile(mo, 1)), float(max(mo.max(), mr.max()))
    diff = mr - mo
    lim = float(max(1.0, np.percentile(np.abs(diff), 99)))

    x = np.asarray(torch.as_tensor(original).double())
    y = np.asarray(torch.as_tensor(recon).double())
    n = min(x.shape[-1], y.shape[-1])
    waves = [("original", x[:n], COLORS["original"]), ("reconstruction", y[:n], COLORS["recon"])]
    if post is not None:
        waves.append(
            ("repaired (repair chain)", np.asarray(torch.as_tensor(post).double())[:n], COLORS["post"])
        )

    fig = Figure(figsize=(11, 7.2 + 1.3 * len(waves)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(
        3 + len(waves), 1, sharex=True, gridspec_kw={"height_ratios": [1, 1, 1] + [0.55] * len(waves)}
    )
    images = [
        (axes[0], mo, "original log-mel", MEL_CMAP, vmin, vmax, "ln mel (nats)"),
        (axes[1], mr, "reconstruction log-mel", MEL_CMAP, vmin, vmax, "ln mel (nats)"),
        (axes[2], diff, "difference: reconstruction - original", DIFF_CMAP, -lim, lim, "nats"),
    ]
    for ax, data, label, cmap, lo, hi, unit in images:
        im = ax.imshow(
            data.T,
            origin="lower",
            aspect="auto",
            cmap=cmap,
            vmin=lo,
            vmax=hi,
            extent=extent,
            interpolation="nearest",
        )
        ax.set_title(label, fontsize=10, loc="left")
        _hz_ticks(ax, data.shape[1], f_min=g.fmin, f_max=g.fmax)
        fig.colorbar(im, ax=ax, label=unit, pad=0.01, fraction=0.04)

    # one panel per waveform, same y scale, so a click or a level change is visible without overlap
    peak = float(max(max(np.abs(w).max(initial=0.0) for _, w, _ in waves), 1e-6))
    c = np.zeros(0, dtype=np.int64) if clicks is None else np.asarray(clicks, dtype=np.int64)
    c = c[(c >= 0) & (c < n)]
    for ax, (label, w, color) in zip(axes[3:], waves):
        ts, lo_env, hi_env = _envelope(w, sample_rate)
        ax.fill_between(ts, lo_env, hi_env, color=color, lw=0.4, step="mid")
        ax.set_ylim(-1.15 * peak, 1.15 * peak)
        ax.set_ylabel("amplitude", fontsize=8)
        heading = label
        if label == "reconstruction":
            for idx in c:
                ax.axvline(idx / sample_rate, color=COLORS["clicks"], lw=0.8, ls="--", alpha=0.8)
            heading += f": {len(c)} added click(s) marked (clicks the original does not explain)"
        ax.set_title(heading, fontsize=9, loc="left")
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0.0, max(dur, n / sample_rate))
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def _envelope(w: np.ndarray, sample_rate: int, bins: int = 1500) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Min/max per time bin ``(bins,)`` x 3: a drawn waveform that keeps every peak (clicks stay visible)
    at a fraction of the points (and of the PNG size) of plotting every sample."""
    n = w.shape[0]
    if n <= 2 * bins:
        ts = np.arange(n) / sample_rate
        return ts, w, w
    edges = np.linspace(0, n, bins + 1).astype(np.int64)
    lo = np.minimum.reduceat(w, edges[:-1])
    hi = np.maximum.reduceat(w, edges[:-1])
    ts = (edges[:-1] + edges[1:]) / 2 / sample_rate
    return ts, lo, hi


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure (Agg)."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def clip_clicks(original: np.ndarray, recon: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Sample indices of clicks in ``recon`` that ``original`` does not explain (empty without metrics)."""
    try:
        from vaefix_pl.metrics import added_clicks
    except ImportError:
        return np.zeros(0, dtype=np.int64)
    n = min(original.shape[-1], recon.shape[-1])
    ref = torch.as_tensor(original[:n]).float()[None]
    est = torch.as_tensor(recon[:n]).float()[None]
    return added_clicks(ref, est, torch.tensor([n]), sample_rate)[0].cpu().numpy()
