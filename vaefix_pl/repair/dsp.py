"""The the bug report's zero-phase elliptic band-pass as tensor code: :func:`sosfiltfilt` equal to ``scipy.signal.sosfiltfilt`` (odd extension, ``sosfilt_zi`` initial conditions), per item of a ``(B, N)`` batch with ``(B,)`` lengths, in a blocked matmul form or torchaudio's ``lfilter``."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
import torchaudio
from torch import Tensor

from vaefix_pl.core.frontend import SAMPLE_RATE, valid_mask
from vaefix_pl.core.lengths import full_lengths

#: Block length (samples) of the matmul form of the band-pass when ``block_size="auto"`` (see
#: :func:`sosfiltfilt`). Measured: 5.6x faster than torchaudio's sequential ``lfilter`` on 2 CPU cores
#: (16 x 10.24 s, float64), and see docs/PERFORMANCE.md for the GPU.
DEFAULT_BLOCK_SIZE = 128

BlockSize = int | Literal["auto"] | None


# --------------------------------------------------------------------------------------------------
# 4. zero-phase band-pass (sosfiltfilt on torchaudio)
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _design_cached(
    sample_rate: float, low_hz: float, high_hz: float, order: int, ripple_db: float, stop_db: float
) -> np.ndarray:
    import scipy.signal  # deferred: seconds to import, needed only when a filter is designed

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
    """The the bug report's elliptic band-pass as second-order sections ``(n_sections, 6)`` (float64, cached).

    ``scipy.signal.ellip(order, ripple_db, stop_db, [low, high] / nyquist, btype="band", output="sos")``.
    The bug report designed the same filter as one transfer function ``(b, a)``; a 10th-order polynomial is
    numerically fragile (badly so in float32), sections are not.
    """
    sos = _design_cached(
        float(sample_rate), float(low_hz), float(high_hz), int(order), float(ripple_db), float(stop_db)
    )
    return sos.copy()  # writable: SciPy's sosfilt refuses read-only coefficient arrays


def default_padlen(sos: np.ndarray) -> int:
    """``scipy.signal.sosfiltfilt``'s default edge extension (samples at each end).

    From SciPy's source: ``ntaps = 2 * n_sections + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum())``
    and ``padlen = 3 * ntaps`` (33 for the bug report's filter, equal to ``filtfilt``'s ``3 * max(len(a), len(b))``).
    """
    sos = np.asarray(sos)
    ntaps = 2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return 3 * ntaps


class _RowPlan:
    """Constants of the whole-row path (``block_size=None``): each section's coefficients, its
    zero-input responses to the unit DF2T states over ``length`` samples, and ``sosfilt_zi``."""

    def __init__(self, sos: np.ndarray, length: int, device: torch.device, dtype: torch.dtype) -> None:
        import scipy.signal

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
        import scipy.signal

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
    radius 0.9983 (the 60 Hz edge), float32 is off by ~1e-4 on a peak-0.5 tone and the bug report's tolerance
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
    lengths = full_lengths(x, lengths)
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
    block_size: BlockSize = "auto",
    compute_dtype: torch.dtype = torch.float64,
    **design: Any,
) -> Tensor:
    """The bug report's zero-phase elliptic band-pass (``ellip(5, 1, 60, [60, 7000] Hz)``), ``(B, N)`` -> ``(B, N)``;
    ``design``: :func:`design_bandpass`'s keywords (``sample_rate``, ``low_hz``, ``high_hz``, ``order``, ...).

    Equals ``scipy.signal.sosfiltfilt(design_bandpass(...), item)`` per item; see :func:`sosfiltfilt`.
    """
    sos = design_bandpass(**design)
    return sosfiltfilt(x, sos, lengths, block_size=block_size, compute_dtype=compute_dtype)
