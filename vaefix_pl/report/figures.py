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
    dpi: int = 80,
) -> Figure:
    """The per-clip figure: log-mels of original and reconstruction, their difference, the waveforms.

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

    fig = Figure(figsize=(11, 9.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(4, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1, 1, 0.9]})
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

    ax = axes[3]
    x = np.asarray(torch.as_tensor(original).double())
    y = np.asarray(torch.as_tensor(recon).double())
    n = min(x.shape[-1], y.shape[-1])
    ts = np.arange(n) / sample_rate
    ax.plot(ts, x[:n], color=COLORS["original"], lw=0.6, label="original")
    if post is not None:
        z = np.asarray(torch.as_tensor(post).double())[:n]
        ax.plot(ts[: z.shape[0]], z, color=COLORS["post"], lw=0.6, alpha=0.6, label="repaired")
    ax.plot(ts, y[:n], color=COLORS["recon"], lw=0.7, alpha=0.85, label="reconstruction")
    peak = float(max(np.abs(x[:n]).max(initial=0.0), np.abs(y[:n]).max(initial=0.0), 1e-6))
    if clicks is not None and len(clicks):
        c = np.asarray(clicks, dtype=np.int64)
        c = c[(c >= 0) & (c < n)]
        for idx in c:
            ax.axvline(idx / sample_rate, color=COLORS["clicks"], lw=0.8, ls="--", alpha=0.8)
        ax.plot(
            c / sample_rate,
            np.full(c.shape, 1.08 * peak),
            "v",
            color=COLORS["clicks"],
            ms=7,
            label=f"added clicks ({len(c)})",
        )
    else:
        ax.plot([], [], "v", color=COLORS["clicks"], label="added clicks (0)")
    ax.set_ylim(-1.2 * peak, 1.2 * peak)
    ax.set_ylabel("amplitude")
    ax.set_xlabel("time (s)")
    ax.set_title(
        "waveforms (clicks in the reconstruction that the original does not explain)", fontsize=10, loc="left"
    )
    ax.legend(loc="lower right", fontsize=8, ncol=4, framealpha=0.85)
    ax.set_xlim(0.0, max(dur, n / sample_rate))
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


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
