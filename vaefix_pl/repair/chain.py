"""The seed report's repair chain as batched tensor ops (any device), plus :class:`PostProcessChain`.

The seed (``shared/seed/``, sections 阶段1-3) ran these in NumPy/SciPy on the CPU, one clip at a time.
Here every function takes a batch with per-item valid lengths and treats each item exactly as the seed
treated a clip of that length: padding never enters a statistic, a fade or a filter's edge, and the
padded part of a waveform output is zero.

* :func:`normalize_mel` -- mel step before the vocoder: ``"guard"`` (non-finite repair + clamp to the
  trained range), ``"standardize"`` (seed's ``safe_normalize_mel``), ``"minmax"`` (seed's
  ``simple_safe_normalize``).
* :func:`repair_outliers` -- k-sigma outliers replaced by a median filter (``scipy.ndimage`` edges).
* :func:`fade` -- square-root fade in/out at each item's own ends.
* :func:`bandpass` -- elliptic band-pass, zero-phase, equal to ``scipy.signal.sosfiltfilt`` (odd
  extension, ``sosfilt_zi`` initial conditions) and run with ``torchaudio.functional.lfilter``.
* :func:`soft_compress` -- the seed's soft knee above a threshold.

Waveforms are ``(B, N)`` with ``lengths (B,)`` valid sample counts; mels are ``(B, 1, T, M)`` with
``frames (B,)`` valid frame counts.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import scipy.signal
import torch
import torchaudio
from torch import Tensor, nn

from vaefix_pl.core.frontend import LOG_MEL_FLOOR, SAMPLE_RATE, TRAINED_LOG_MEL_RANGE, valid_mask

MelMode = Literal["guard", "standardize", "minmax", "none"]
MEL_MODES: tuple[str, ...] = ("guard", "standardize", "minmax", "none")

#: Block length (samples) of the matmul form of the band-pass when ``block_size="auto"`` (see
#: :func:`sosfiltfilt`). Measured: 5.6x faster than torchaudio's sequential ``lfilter`` on 2 CPU cores
#: (16 x 10.24 s, float64), and see docs/PERFORMANCE.md for the GPU.
DEFAULT_BLOCK_SIZE = 128

BlockSize = int | Literal["auto"] | None


def _full_lengths(x: Tensor, lengths: Tensor | None) -> Tensor:
    if x.ndim != 2:
        raise ValueError(f"waveform must be (B, N), got shape {tuple(x.shape)}")
    b, n = x.shape
    if lengths is None:
        return torch.full((b,), n, dtype=torch.long, device=x.device)
    lengths = torch.as_tensor(lengths, device=x.device).long()
    if lengths.shape != (b,):
        raise ValueError(f"lengths must be ({b},), got shape {tuple(lengths.shape)}")
    if bool(((lengths < 0) | (lengths > n)).any()):
        raise ValueError(f"lengths must lie in [0, {n}], got {lengths.tolist()}")
    return lengths


# --------------------------------------------------------------------------------------------------
# 1. mel normalisation
# --------------------------------------------------------------------------------------------------


def normalize_mel(
    mel: Tensor,
    frames: Tensor | None = None,
    mode: MelMode = "guard",
    target_mean: float = -5.0,
    target_std: float = 5.0,
    target_range: Sequence[float] = (-10.0, 10.0),
    guard_range: Sequence[float] = TRAINED_LOG_MEL_RANGE,
) -> Tensor:
    """Normalise a decoded log-mel ``(B, 1, T, M)`` (time on dim -2) per item over its valid frames.

    Modes:

    * ``"guard"``: NaN -> ``log(1e-5)``, +inf -> ``guard_range[1]``, -inf -> ``guard_range[0]``, then
      clamp to ``guard_range``. Elementwise, so it is exactly a no-op on finite in-range input; it is
      applied to every frame, padded ones included, so nothing non-finite reaches the vocoder.
    * ``"standardize"``: the seed's ``safe_normalize_mel``: ``nan_to_num(nan=target_mean, posinf=0,
      neginf=-50)`` (only if something is non-finite), float64 mean/std (population, like ``np.std``),
      ``(x - mean) / std * target_std + target_mean``; if std is not finite or <= 1e-6, min-max to
      ``[target_mean - target_std, target_mean + target_std]``; if flat, ``target_mean``.
    * ``"minmax"``: the seed's ``simple_safe_normalize``: ``nan_to_num(nan=0, posinf=0, neginf=-50)``,
      min-max to ``target_range``; if flat, the middle of ``target_range``.
    * ``"none"``: returned unchanged.

    The seed normalised one clip at a time, so the statistics here are per item over its ``frames``
    valid frames (all channels and mel bins). In the statistical modes padded frames of the output are 0.

    Args:
        mel: ``(B, C, T, M)`` log-mel (natural log), any float dtype.
        frames: ``(B,)`` valid frame counts (``None``: all ``T`` valid).
    Returns:
        Same shape and dtype as ``mel``.
    """
    if mode not in MEL_MODES:
        raise ValueError(f"mode must be one of {MEL_MODES}, got {mode!r}")
    if mel.ndim < 3:
        raise ValueError(f"mel must be (B, ..., T, M), got shape {tuple(mel.shape)}")
    if mode == "none":
        return mel
    if mode == "guard":
        lo, hi = float(guard_range[0]), float(guard_range[1])
        out = torch.nan_to_num(mel, nan=LOG_MEL_FLOOR, posinf=hi, neginf=lo)
        return out.clamp(lo, hi)

    b, t = mel.shape[0], mel.shape[-2]
    if frames is None:
        frames = torch.full((b,), t, dtype=torch.long, device=mel.device)
    frames = torch.as_tensor(frames, device=mel.device).long()
    if frames.shape != (b,):
        raise ValueError(f"frames must be ({b},), got shape {tuple(frames.shape)}")
    # (B, 1, ..., T, 1) mask of valid frames, broadcast over channels and mel bins.
    mask = valid_mask(frames, t).reshape((b,) + (1,) * (mel.ndim - 3) + (t, 1)).expand_as(mel)
    reduce_dims = tuple(range(1, mel.ndim))
    count = mask.sum(dim=reduce_dims).clamp(min=1).to(torch.float64)
    view = (b,) + (1,) * (mel.ndim - 1)
    x = mel.to(torch.float64)

    def _minmax(v: Tensor, lo: Tensor | float, span: Tensor | float, flat_value: float) -> Tensor:
        vmin = torch.where(mask, v, math.inf).amin(dim=reduce_dims).reshape(view)
        vmax = torch.where(mask, v, -math.inf).amax(dim=reduce_dims).reshape(view)
        ok = vmax > vmin
        scale = torch.where(ok, vmax - vmin, torch.ones_like(vmax))
        return torch.where(ok, (v - vmin) / scale * span + lo, torch.full_like(v, flat_value))

    if mode == "standardize":
        nonfinite = (~torch.isfinite(x) & mask).flatten(1).any(dim=1).reshape(view)
        repaired = torch.nan_to_num(x, nan=float(target_mean), posinf=0.0, neginf=-50.0)
        x = torch.where(nonfinite, repaired, x)
        xm = torch.where(mask, x, 0.0)
        mean = (xm.sum(dim=reduce_dims) / count).reshape(view)
        var = (torch.where(mask, x - mean, 0.0) ** 2).sum(dim=reduce_dims) / count
        std = var.sqrt().reshape(view)
        use_std = torch.isfinite(std) & (std > 1e-6)
        standardized = (x - mean) / torch.where(use_std, std, torch.ones_like(std))
        standardized = standardized * target_std + target_mean
        fallback = _minmax(x, target_mean - target_std, 2 * target_std, float(target_mean))
        out = torch.where(use_std, standardized, fallback)
    else:  # minmax
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=-50.0)
        lo, hi = float(target_range[0]), float(target_range[1])
        out = _minmax(x, lo, hi - lo, (lo + hi) / 2)
    return torch.where(mask, out, 0.0).to(mel.dtype)


# --------------------------------------------------------------------------------------------------
# 2. outlier repair
# --------------------------------------------------------------------------------------------------


def _reflect_index(j: Tensor, n: Tensor) -> Tensor:
    """Half-sample-symmetric reflection of index ``j`` into ``[0, n)`` (``scipy.ndimage`` 'reflect',
    i.e. ``d c b a | a b c d | d c b a``), repeated as needed so it also holds when ``n`` is tiny."""
    n = n.clamp(min=1)
    period = 2 * n
    m = torch.remainder(j, period)
    return torch.where(m < n, m, period - 1 - m)


def median_filter(x: Tensor, lengths: Tensor | None = None, size: int = 5) -> Tensor:
    """``scipy.ndimage.median_filter(x_b[:L_b], size)`` for every item, padded output 0.

    ``(B, N)`` -> ``(B, N)``. Edges reflect at each item's own ends ('reflect' = half-sample
    symmetric), never into padding. ``size`` must be odd (the seed uses 5; for even sizes scipy's
    window placement and rank convention are not the plain centred median).
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer, got {size}")
    lengths = _full_lengths(x, lengths)
    b, n = x.shape
    h = size // 2
    # Padded copy (B, N + 2h): the middle is x; the h samples before each item's start and after its
    # own end are filled with the reflected samples (the right ones overwrite that item's padding).
    xp = torch.nn.functional.pad(x, (h, h))
    if h > 0 and n > 0:
        offs = torch.arange(1, h + 1, device=x.device)
        ln = lengths[:, None]
        src_left = _reflect_index(-offs[None, :].expand(b, h), ln).clamp(max=n - 1)  # x[-1], x[-2], ...
        xp[:, :h] = x.gather(1, src_left).flip(1)
        src_right = _reflect_index(ln - 1 + offs[None, :], ln).clamp(max=n - 1)  # x[L], x[L+1], ...
        xp.scatter_(1, ln + h + offs[None, :] - 1, x.gather(1, src_right))
    med = xp.unfold(1, size, 1).median(dim=-1).values  # (B, N); odd size: the exact middle value
    return med * valid_mask(lengths, n)


def repair_outliers(x: Tensor, lengths: Tensor | None = None, k: float = 3.0, size: int = 5) -> Tensor:
    """Seed's 3-sigma outlier repair, per item: samples with ``|x - mean| > k * std`` take the value of
    a size-``size`` median filter (``scipy.ndimage.median_filter`` of the item alone).

    Mean and population std (``np.std``) in float64 over the item's valid samples. The median is only
    evaluated at the outliers (a fraction of a percent of the samples), with the same per-item reflected
    windows as :func:`median_filter`. ``(B, N)`` -> ``(B, N)`` in the input's dtype; padded samples 0.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer, got {size}")
    lengths = _full_lengths(x, lengths)
    mask = valid_mask(lengths, x.shape[1])
    count = lengths.clamp(min=1).to(torch.float64)[:, None]
    x64 = x.to(torch.float64)
    mean = torch.where(mask, x64, 0.0).sum(dim=1, keepdim=True) / count
    dev = (x64 - mean).abs()
    std = torch.where(mask, dev, 0.0).square().sum(dim=1, keepdim=True).div(count).sqrt()
    outliers = (dev > k * std) & mask
    out = x * mask
    rows, cols = torch.nonzero(outliers, as_tuple=True)
    if rows.numel():
        offsets = torch.arange(-(size // 2), size // 2 + 1, device=x.device)
        src = _reflect_index(cols[:, None] + offsets, lengths[rows][:, None])  # (K, size)
        out[rows, cols] = x[rows[:, None], src].median(dim=1).values
    return out


# --------------------------------------------------------------------------------------------------
# 3. fades
# --------------------------------------------------------------------------------------------------


def fade(x: Tensor, lengths: Tensor | None = None, fade_samples: int = 1024) -> Tensor:
    """Seed's square-root fades at each item's own ends.

    ``f = min(fade_samples, L // 8)``; only if ``L > 2 f``: the first ``f`` samples times
    ``linspace(0, 1, f) ** 0.5`` and the item's last ``f`` valid samples times ``linspace(1, 0, f) ** 0.5``.
    Items with ``f == 0`` (``L < 8``) are left as they are (the seed's NumPy code would fail on them:
    ``audio[-0:]`` is the whole clip). ``(B, N)`` -> ``(B, N)``, padded samples 0.
    """
    lengths = _full_lengths(x, lengths)
    b, n = x.shape
    out = x * valid_mask(lengths, n)
    width = min(int(fade_samples), n // 8)  # no item's fade is longer (f <= L // 8 <= N // 8)
    if width <= 0:
        return out
    t = torch.arange(width, device=x.device)[None, :]  # (1, F)
    ln = lengths[:, None]
    f = torch.clamp(ln // 8, max=int(fade_samples))
    apply = (ln > 2 * f) & (f > 0)
    f64 = f.to(torch.float64)
    step = 1.0 / (f64 - 1).clamp(min=1)  # np.linspace(0, 1, f) = arange(f) * (1 / (f - 1)); f == 1 -> [0]
    # fade-in on the first F samples (gain 1 past each item's own f)
    ramp_in = torch.where(f > 1, t * step, 0.0).sqrt()
    head = torch.where(apply & (t < f), ramp_in, 1.0)
    out[:, :width] = (out[:, :width].to(torch.float64) * head).to(x.dtype)
    # fade-out on the F samples ending at each item's own end; u = position inside its fade-out
    u = t - (width - f)
    ramp_out = torch.where(f > 1, (1.0 - u * step).clamp(min=0.0), 1.0).sqrt()  # linspace(1, 0, f)
    tail = torch.where(apply & (u >= 0), ramp_out, 1.0)
    # Inactive entries may clamp to the same index; they all write back the value they read (gain 1),
    # and an active one never lands on 0 (it needs L > 2 f, so L - f + u > 0).
    pos = (ln - width + t).clamp(min=0)
    out.scatter_(1, pos, (out.gather(1, pos).to(torch.float64) * tail).to(x.dtype))
    return out


# --------------------------------------------------------------------------------------------------
# 4. zero-phase band-pass (sosfiltfilt on torchaudio)
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _design_cached(
    sample_rate: float, low_hz: float, high_hz: float, order: int, ripple_db: float, stop_db: float
) -> np.ndarray:
    nyq = sample_rate / 2
    if not 0 < low_hz < high_hz < nyq:
        raise ValueError(f"need 0 < low_hz < high_hz < {nyq} Hz, got {low_hz}, {high_hz}")
    sos = scipy.signal.ellip(
        order, ripple_db, stop_db, [low_hz / nyq, high_hz / nyq], btype="band", output="sos"
    )
    sos = np.ascontiguousarray(sos, dtype=np.float64)
    sos.setflags(write=False)
    return sos


def design_bandpass(
    sample_rate: float = SAMPLE_RATE,
    low_hz: float = 60.0,
    high_hz: float = 7000.0,
    order: int = 5,
    ripple_db: float = 1.0,
    stop_db: float = 60.0,
) -> np.ndarray:
    """The seed's elliptic band-pass as second-order sections ``(n_sections, 6)`` (float64, cached).

    ``scipy.signal.ellip(order, ripple_db, stop_db, [low, high] / nyquist, btype="band", output="sos")``.
    The seed designed the same filter as one transfer function ``(b, a)``; a 10th-order polynomial is
    numerically fragile (badly so in float32), sections are not.
    """
    sos = _design_cached(
        float(sample_rate), float(low_hz), float(high_hz), int(order), float(ripple_db), float(stop_db)
    )
    return sos.copy()  # writable: SciPy's sosfilt refuses read-only coefficient arrays


def default_padlen(sos: np.ndarray) -> int:
    """``scipy.signal.sosfiltfilt``'s default edge extension (samples at each end).

    From SciPy's source: ``ntaps = 2 * n_sections + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum())``
    and ``padlen = 3 * ntaps`` (33 for the seed's filter, equal to ``filtfilt``'s ``3 * max(len(a), len(b))``).
    """
    sos = np.asarray(sos)
    ntaps = 2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return 3 * ntaps


class _RowPlan:
    """Constants of the whole-row path (``block_size=None``): each section's coefficients, its
    zero-input responses to the unit DF2T states over ``length`` samples, and ``sosfilt_zi``."""

    def __init__(self, sos: np.ndarray, length: int, device: torch.device, dtype: torch.dtype) -> None:
        self.n_sections = len(sos)
        self.dtype = dtype
        self.b = torch.tensor(sos[:, :3], dtype=dtype, device=device)
        self.a = torch.tensor(sos[:, 3:], dtype=dtype, device=device)
        # Zero-input responses to the DF2T states (1, 0) and (0, 1) (SciPy's sosfilt state convention).
        g = np.empty((len(sos), 2, length))
        zeros = np.zeros(length)
        for j, s in enumerate(sos):
            for k in range(2):
                zi = np.zeros((1, 2))
                zi[0, k] = 1.0
                g[j, k] = scipy.signal.sosfilt(s[None, :].copy(), zeros, zi=zi)[0]
        self.g = torch.tensor(g, dtype=dtype, device=device)
        self.zi = torch.tensor(scipy.signal.sosfilt_zi(sos), dtype=torch.float64, device=device)


def _cascade_matrices(sos: np.ndarray, m: int) -> tuple[np.ndarray, ...]:
    """The whole cascade over one block of ``m`` samples as linear maps (float64), in row-vector form.

    The state is every section's DF2T state ``(z0, z1)`` (SciPy's ``sosfilt`` convention), flattened to
    ``S = 2 * n_sections``. Returns ``T (m, m)`` (zero-state output of the block's input: ``y = u @ T``),
    ``E (m, S)`` (end state from the input), ``G (S, m)`` (zero-input output of the entering state) and
    ``P (S, S)`` (end state from the entering state). Built by running the DF2T recursion once on
    ``m + S`` unit excitations at a time (all linear, so this is exact to float64 rounding).
    """
    n_sec = len(sos)
    s_dim = 2 * n_sec
    k = m + s_dim
    z = np.zeros((n_sec, 2, k))
    for j in range(n_sec):
        z[j, 0, m + 2 * j] = 1.0
        z[j, 1, m + 2 * j + 1] = 1.0
    y = np.empty((m, k))
    for t in range(m):
        v = np.zeros(k)
        v[t] = 1.0
        for j, (b0, b1, b2, _, a1, a2) in enumerate(sos):
            out = b0 * v + z[j, 0]
            z[j, 0] = b1 * v - a1 * out + z[j, 1]
            z[j, 1] = b2 * v - a2 * out
            v = out
        y[t] = v
    zf = z.reshape(s_dim, k)
    return y[:, :m].T.copy(), zf[:, :m].T.copy(), y[:, m:].T.copy(), zf[:, m:].T.copy()


class _BlockPlan:
    """Per-(sections, block length, device, dtype) constants of the block-parallel cascade: the block
    maps of :func:`_cascade_matrices`, the transition over ``block * 2**k`` samples for the scan, and
    the flattened ``sosfilt_zi``."""

    def __init__(self, sos: np.ndarray, block: int, device: torch.device, dtype: torch.dtype) -> None:
        self.block = block
        self.dtype = dtype
        t, e, g, p = _cascade_matrices(sos, block)
        self.t = torch.tensor(t, dtype=dtype, device=device)
        self.e = torch.tensor(e, dtype=dtype, device=device)
        self.g = torch.tensor(g, dtype=dtype, device=device)
        # powers[k] = P^(2^k); with every pole inside the unit circle they decay to 0, 40 is plenty.
        powers = np.zeros((40, *p.shape))
        for i in range(40):
            powers[i] = p
            p = p @ p
        self.powers = torch.tensor(powers, dtype=dtype, device=device)
        self.zi = torch.tensor(scipy.signal.sosfilt_zi(sos).reshape(-1), dtype=dtype, device=device)


_PLANS: OrderedDict[tuple[Any, ...], _RowPlan | _BlockPlan] = OrderedDict()
_MAX_PLANS = 16  # a row plan holds (n_sections, 2, length) responses: 13 MB for a 10 s row in float64


def _plan(kind: type, sos: np.ndarray, size: int, device: torch.device, dtype: torch.dtype) -> Any:
    key = (kind.__name__, sos.tobytes(), sos.shape, size, str(device), dtype)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = kind(sos, size, device, dtype)
        while len(_PLANS) > _MAX_PLANS:
            _PLANS.popitem(last=False)
    _PLANS.move_to_end(key)
    return plan


@contextlib.contextmanager
def _exact_matmul(dtype: torch.dtype) -> Iterator[None]:
    """float32 matmuls at full precision (no TF32) inside, whatever the run set globally."""
    if dtype != torch.float32:
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _cascade_rows(u: Tensor, x0: Tensor, plan: _RowPlan) -> Tensor:
    """``scipy.signal.sosfilt(sos, u, zi=sosfilt_zi(sos) * x0)`` for every row of ``u (B, W)``, one
    sequential ``torchaudio.functional.lfilter`` per section (it takes no initial state, so the state's
    zero-input response ``zi[0] g_1 + zi[1] g_2`` is added to its zero-state output: all linear)."""
    x0 = x0.to(torch.float64)[:, None]
    for j in range(plan.n_sections):
        v = torchaudio.functional.lfilter(u, plan.a[j], plan.b[j], clamp=False)
        z = (plan.zi[j][None, :] * x0).to(plan.dtype)
        u = torch.addcmul(torch.addcmul(v, z[:, 0:1], plan.g[j, 0]), z[:, 1:2], plan.g[j, 1])
    return u


def _cascade_blocked(u: Tensor, x0: Tensor, plan: _BlockPlan) -> Tensor:
    """The same as :func:`_cascade_rows` for ``u (B, C*M)``, as matmuls instead of a recursion.

    Hand-written because no library runs an IIR in parallel over time: torchaudio's ``lfilter`` is
    one sequential thread per row on the GPU. Each row is cut into ``C`` blocks of ``M`` samples
    (``B*C`` rows); the whole cascade over a block from zero state is one ``(M, M)`` matmul with the
    cascade's impulse-response Toeplitz matrix; the state entering each block follows from a log-depth
    scan ``z_{c+1} = z_c P + u_c E`` and adds its zero-input response ``z_c G``. Everything is linear,
    so this equals one sequential pass to rounding; the matmuls run on tensor cores (float64 DMMA on
    an H100), about 2M flops a sample per pass.
    """
    m = plan.block
    bsz, w = u.shape
    c = w // m
    with _exact_matmul(plan.dtype):
        ub = u.reshape(bsz, c, m)
        y = ub @ plan.t  # (B, C, M) zero-state outputs
        z0 = plan.zi[None, None, :] * x0.to(plan.dtype)[:, None, None]  # (B, 1, S)
        if c > 1:
            ends = ub[:, :-1] @ plan.e  # (B, C-1, S) end states of the zero-state runs
            z = torch.cat((z0, ends), dim=1)  # q_0 = s0, q_c = e_{c-1}
            d, k = 1, 0
            while d < c:  # inclusive Hillis-Steele scan: z_c <- z_c + z_{c-d} P^d
                z = torch.cat((z[:, :d], z[:, d:] + z[:, :-d] @ plan.powers[k]), dim=1)
                d, k = 2 * d, k + 1
        else:
            z = z0
        y = y + z @ plan.g
    return y.reshape(bsz, w)


def sosfiltfilt(
    x: Tensor,
    sos: np.ndarray,
    lengths: Tensor | None = None,
    padlen: int | None = None,
    block_size: BlockSize = "auto",
    compute_dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``scipy.signal.sosfiltfilt(sos, x_b[:L_b], padtype="odd", padlen=padlen)`` for every item.

    ``(B, N)`` -> ``(B, N)`` in the input's dtype, padded samples 0. Each item's valid span gets its own
    odd extension of ``padlen`` samples (default: SciPy's, :func:`default_padlen`), a forward pass from
    the state ``sosfilt_zi * first extended sample``, a backward pass from ``sosfilt_zi * last forward
    output``, and is cropped back, independently of its batch-mates (gathers, no per-item loops).

    Items with ``L <= padlen`` (SciPy raises on those) are returned unfiltered, with a warning naming them.

    ``compute_dtype``: the filter runs in float64 by default whatever the input dtype. With poles at
    radius 0.9983 (the 60 Hz edge), float32 is off by ~1e-4 on a peak-0.5 tone and the seed's tolerance
    is not met; float64 costs little (on an H100 the blocked path's matmuls run on float64 tensor
    cores). With ``compute_dtype=torch.float32`` on a GPU and ``block_size=None``, also switch cuDNN's
    TF32 off: torchaudio runs the numerator as a conv1d (the blocked path forces full-precision matmuls).

    ``block_size``: rows are cut into blocks of this many samples and the whole cascade runs as matmuls
    (:func:`_cascade_blocked`); ``None`` runs each row through torchaudio's sequential ``lfilter``, one
    section at a time (:func:`_cascade_rows`); ``"auto"``: :data:`DEFAULT_BLOCK_SIZE`. The matmuls
    cost ~4M flops a sample against ~20 for the recursion, but they run in parallel and on tensor
    cores, the recursion one dependent step at a time.
    """
    # Autocast off: lfilter's conv1d and the matmuls must not drop to half precision.
    with torch.autocast(x.device.type, enabled=False):
        return _sosfiltfilt(x, sos, lengths, padlen, block_size, compute_dtype)


def _sosfiltfilt(
    x: Tensor,
    sos: np.ndarray,
    lengths: Tensor | None,
    padlen: int | None,
    block_size: BlockSize,
    compute_dtype: torch.dtype,
) -> Tensor:
    lengths = _full_lengths(x, lengths)
    sos = np.asarray(sos, dtype=np.float64)
    p = default_padlen(sos) if padlen is None else int(padlen)
    b, n = x.shape
    too_short = lengths <= p
    if bool(too_short.any()):
        bad = torch.nonzero(too_short & (lengths > 0)).flatten().tolist()
        if bad:
            warnings.warn(
                f"sosfiltfilt: items {bad} have <= padlen={p} samples; left unfiltered",
                RuntimeWarning,
                stacklevel=3,
            )
    ln = torch.where(too_short, torch.zeros_like(lengths), lengths)  # filtered lengths (0: skipped)
    if n == 0 or int(ln.max()) == 0:
        return x * valid_mask(lengths, n)

    xc = x.to(compute_dtype)
    lext = ln + 2 * p  # extended length per item
    w = int(lext.max())
    if block_size == "auto":
        block_size = DEFAULT_BLOCK_SIZE
    if block_size is None:
        # One block per row, rounded up to whole 4096s so that batches of similar lengths share a plan
        # (the zeros appended after each item's end cannot reach back into it: the filter is causal).
        m = -(-w // 4096) * 4096
    elif int(block_size) >= 2:
        m = int(block_size)
    else:
        raise ValueError(f"block_size must be 'auto', None or >= 2, got {block_size!r}")
    w = -(-w // m) * m  # round up to whole blocks
    if block_size is None:
        plan = _plan(_RowPlan, sos, m, x.device, compute_dtype)
        cascade = _cascade_rows
    else:
        plan = _plan(_BlockPlan, sos, m, x.device, compute_dtype)
        cascade = _cascade_blocked

    # Odd extension, left-aligned: e[k] = 2 x[0] - x[p - k] (k < p), x[k - p], 2 x[L-1] - x[2L + p - 2 - k].
    k = torch.arange(w, device=x.device)[None, :]
    lc = ln[:, None]
    left, right, inside = k < p, k >= p + lc, k < lc + 2 * p
    src = torch.where(left, p - k, torch.where(right, 2 * lc + p - 2 - k, k - p)).clamp(0, max(n - 1, 0))
    vals = xc.gather(1, src)
    first = xc[:, :1]
    last = xc.gather(1, (lc - 1).clamp(min=0))
    ext = torch.where(left, 2 * first - vals, torch.where(right, 2 * last - vals, vals))
    ext = torch.where(inside, ext, 0.0)

    fwd = cascade(ext, ext[:, 0], plan)
    # Reverse each item's own extended span: rev[k] = fwd[Lext - 1 - k].
    rev_src = (lext[:, None] - 1 - k).clamp(min=0)
    rev = torch.where(inside, fwd.gather(1, rev_src), 0.0)
    bwd = cascade(rev, rev[:, 0], plan)
    # Output sample i = reversed-back sample p + i = bwd[Lext - 1 - p - i] = bwd[L + p - 1 - i].
    i = torch.arange(n, device=x.device)[None, :]
    out_src = (lc + p - 1 - i).clamp(min=0)
    out = bwd.gather(1, out_src).to(x.dtype)
    out = torch.where(too_short[:, None], x, out)
    return out * valid_mask(lengths, n)


def bandpass(
    x: Tensor,
    lengths: Tensor | None = None,
    sample_rate: float = SAMPLE_RATE,
    low_hz: float = 60.0,
    high_hz: float = 7000.0,
    order: int = 5,
    ripple_db: float = 1.0,
    stop_db: float = 60.0,
    block_size: BlockSize = "auto",
    compute_dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Seed's zero-phase elliptic band-pass (``ellip(5, 1, 60, [60, 7000] Hz)``), ``(B, N)`` -> ``(B, N)``.

    Equals ``scipy.signal.sosfiltfilt(design_bandpass(...), item)`` per item; see :func:`sosfiltfilt`.
    """
    sos = design_bandpass(sample_rate, low_hz, high_hz, order, ripple_db, stop_db)
    return sosfiltfilt(x, sos, lengths, block_size=block_size, compute_dtype=compute_dtype)


# --------------------------------------------------------------------------------------------------
# 5. soft compression
# --------------------------------------------------------------------------------------------------


def soft_compress(
    x: Tensor, threshold: float = 0.7, ratio: float = 0.3, lengths: Tensor | None = None
) -> Tensor:
    """Seed's soft knee: ``|x| > t -> sign(x) (t + (|x| - t) ratio)``, else unchanged. ``(B, N)``; padded 0."""
    mag = x.abs()
    out = torch.where(mag > threshold, torch.sign(x) * (threshold + (mag - threshold) * ratio), x)
    if lengths is not None:
        out = out * valid_mask(_full_lengths(x, lengths), x.shape[1])
    return out


# --------------------------------------------------------------------------------------------------
# 6. the chain
# --------------------------------------------------------------------------------------------------


class PostProcessChain(nn.Module):
    """The seed's repair chain, each stage switchable, built from plain values (LightningCLI/YAML).

    :meth:`process_mel` is the mel step (applied to the decoded mel before the vocoder);
    :meth:`forward` runs the waveform stages in the seed's order: outliers, fades, band-pass,
    compression. No learnable parameters; runs on whatever device its input is on.

    The defaults are the project's safe chain (mel ``"guard"`` only, which never alters a healthy mel);
    :meth:`seed_final` gives the seed's final run.
    """

    def __init__(
        self,
        mel_mode: MelMode = "guard",
        target_mean: float = -5.0,
        target_std: float = 5.0,
        target_range: tuple[float, float] = (-10.0, 10.0),
        guard_range: tuple[float, float] = TRAINED_LOG_MEL_RANGE,
        outliers: bool = True,
        outlier_k: float = 3.0,
        outlier_size: int = 5,
        fade: bool = True,
        fade_samples: int = 1024,
        bandpass: bool = True,
        low_hz: float = 60.0,
        high_hz: float = 7000.0,
        order: int = 5,
        ripple_db: float = 1.0,
        stop_db: float = 60.0,
        compress: bool = True,
        threshold: float = 0.7,
        ratio: float = 0.3,
        sample_rate: int = SAMPLE_RATE,
        block_size: BlockSize = "auto",
    ) -> None:
        super().__init__()
        if mel_mode not in MEL_MODES:
            raise ValueError(f"mel_mode must be one of {MEL_MODES}, got {mel_mode!r}")
        if outlier_size < 1 or outlier_size % 2 == 0:
            raise ValueError(f"outlier_size must be a positive odd integer, got {outlier_size}")
        self.mel_mode = mel_mode
        self.target_mean = float(target_mean)
        self.target_std = float(target_std)
        self.target_range = (float(target_range[0]), float(target_range[1]))
        self.guard_range = (float(guard_range[0]), float(guard_range[1]))
        self.outliers = bool(outliers)
        self.outlier_k = float(outlier_k)
        self.outlier_size = int(outlier_size)
        self.fade = bool(fade)
        self.fade_samples = int(fade_samples)
        self.bandpass = bool(bandpass)
        self.low_hz = float(low_hz)
        self.high_hz = float(high_hz)
        self.order = int(order)
        self.ripple_db = float(ripple_db)
        self.stop_db = float(stop_db)
        self.compress = bool(compress)
        self.threshold = float(threshold)
        self.ratio = float(ratio)
        self.sample_rate = int(sample_rate)
        if block_size not in (None, "auto") and int(block_size) < 2:
            raise ValueError(f"block_size must be 'auto', None or >= 2, got {block_size!r}")
        self.block_size: BlockSize = block_size if block_size in (None, "auto") else int(block_size)
        if self.bandpass:
            design_bandpass(
                self.sample_rate, self.low_hz, self.high_hz, self.order, self.ripple_db, self.stop_db
            )

    @classmethod
    def seed_final(cls, **overrides: Any) -> PostProcessChain:
        """The seed's final run (``SEED_FINAL_SETTINGS``): every stage on at the seed's values, and the
        mel min-max normalised to ``(-8, 2)``: the seed's final report gives the HiFiGAN input range as
        ``[-8.000, 2.000]``, which is exactly what ``simple_safe_normalize(target_range=(-8, 2))`` yields.
        """
        return cls(**{**SEED_FINAL_SETTINGS, **overrides})

    def describe(self) -> dict[str, Any]:
        """Settings as a plain dict (for run summaries); ``PostProcessChain(**chain.describe())`` rebuilds it."""
        return {
            "mel_mode": self.mel_mode,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "target_range": list(self.target_range),
            "guard_range": list(self.guard_range),
            "outliers": self.outliers,
            "outlier_k": self.outlier_k,
            "outlier_size": self.outlier_size,
            "fade": self.fade,
            "fade_samples": self.fade_samples,
            "bandpass": self.bandpass,
            "low_hz": self.low_hz,
            "high_hz": self.high_hz,
            "order": self.order,
            "ripple_db": self.ripple_db,
            "stop_db": self.stop_db,
            "compress": self.compress,
            "threshold": self.threshold,
            "ratio": self.ratio,
            "sample_rate": self.sample_rate,
            "block_size": self.block_size,
        }

    def extra_repr(self) -> str:
        stages = [f"mel={self.mel_mode}"]
        stages += [name for name, on in (("outliers", self.outliers), ("fade", self.fade)) if on]
        if self.bandpass:
            stages.append(f"bandpass({self.low_hz:g}-{self.high_hz:g} Hz)")
        if self.compress:
            stages.append(f"compress(t={self.threshold:g}, r={self.ratio:g})")
        return ", ".join(stages)

    def process_mel(self, mel: Tensor, frames: Tensor | None = None) -> Tensor:
        """``(B, 1, T, M)`` decoded log-mel -> same, per :func:`normalize_mel` with this chain's mode."""
        return normalize_mel(
            mel,
            frames,
            mode=self.mel_mode,  # type: ignore[arg-type]
            target_mean=self.target_mean,
            target_std=self.target_std,
            target_range=self.target_range,
            guard_range=self.guard_range,
        )

    def forward(self, waveform: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(B, N)`` waveform (and ``(B,)`` valid lengths) -> ``(B, N)``; padded samples 0."""
        lengths = _full_lengths(waveform, lengths)
        x = waveform * valid_mask(lengths, waveform.shape[1])
        if self.outliers:
            x = repair_outliers(x, lengths, k=self.outlier_k, size=self.outlier_size)
        if self.fade:
            x = fade(x, lengths, fade_samples=self.fade_samples)
        if self.bandpass:
            x = bandpass(
                x,
                lengths,
                sample_rate=self.sample_rate,
                low_hz=self.low_hz,
                high_hz=self.high_hz,
                order=self.order,
                ripple_db=self.ripple_db,
                stop_db=self.stop_db,
                block_size=self.block_size,
            )
        if self.compress:
            x = soft_compress(x, self.threshold, self.ratio, lengths)
        return x


#: The seed's final settings (``vae_final_noise_fix.py``): all waveform stages at the seed's values, and
#: the mel min-max normalised to (-8, 2), the HiFiGAN input range its final run reports.
SEED_FINAL_SETTINGS: dict[str, Any] = {
    "mel_mode": "minmax",
    "target_range": (-8.0, 2.0),
    "outliers": True,
    "outlier_k": 3.0,
    "outlier_size": 5,
    "fade": True,
    "fade_samples": 1024,
    "bandpass": True,
    "low_hz": 60.0,
    "high_hz": 7000.0,
    "order": 5,
    "ripple_db": 1.0,
    "stop_db": 60.0,
    "compress": True,
    "threshold": 0.7,
    "ratio": 0.3,
    "sample_rate": SAMPLE_RATE,
}
