"""PESQ / STOI / ESTOI on the CPU, off the GPU's critical path, with NaN + reason instead of crashes.

The scores come from torchmetrics' functional forms, which call the reference packages (``pesq`` by
ludlows: ITU-T P.862.2 wide-band at 16 kHz; ``pystoi``: STOI and extended STOI). Those are single-threaded
C/NumPy code that take ~0.1-0.3 s per 10 s clip, so :class:`PerceptualScorer` runs them in a process pool
(``forkserver`` or ``spawn`` context: ``fork`` after CUDA or with live threads is unsafe) fed with NumPy
arrays; ``submit`` returns at once and ``poll``/``drain`` hand back finished rows.

Every clip gives exactly one row ``{"id", "tag", "pesq", "pesq_error", "stoi", "stoi_error", "estoi",
"estoi_error"}``. A clip a metric cannot score (silent or non-finite reference, shorter than PESQ's
0.25 s, no utterance found by PESQ's VAD, too few non-silent frames for STOI, package missing, worker
crash) gets NaN and a readable reason; the row is never dropped.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import math
import multiprocessing as mp
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from vaefix_pl.core.metric_names import PERCEPTUAL_METRICS

__all__ = ["PERCEPTUAL_METRICS", "PerceptualScorer", "perceptual_scores"]

_INSTALL_HINT = "pip install vaefix-pl[metrics]"
_PACKAGE = {"pesq": "pesq", "stoi": "pystoi", "estoi": "pystoi"}
PESQ_MIN_SECONDS = 0.25  # the pesq package refuses shorter buffers (BufferTooShortError)


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(names)
    unknown = [n for n in names if n not in PERCEPTUAL_METRICS]
    if unknown:
        raise ValueError(f"unknown perceptual metric(s) {unknown}; valid: {list(PERCEPTUAL_METRICS)}")
    return names


def _message(exc: BaseException) -> str:
    parts = []
    for arg in exc.args:
        parts.append(arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg))
    text = "; ".join(p for p in parts if p) or repr(exc)
    first = next((line.strip() for line in text.splitlines() if line.strip()), text)  # one line per reason
    return f"{type(exc).__name__}: {first[:200]}"


def _pesq(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
    import torch
    from torchmetrics.functional.audio import perceptual_evaluation_speech_quality

    if sample_rate not in (8000, 16000):
        # PESQ is defined at 8/16 kHz only: other rates (48 kHz models) are scored wide-band on a
        # 16 kHz copy (SciPy's polyphase resampler, Kaiser-windowed anti-aliasing)
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(int(sample_rate), 16000)
        reference = resample_poly(reference, 16000 // g, int(sample_rate) // g)
        estimate = resample_poly(estimate, 16000 // g, int(sample_rate) // g)
        sample_rate = 16000
    mode = "wb" if sample_rate == 16000 else "nb"
    if reference.shape[-1] < PESQ_MIN_SECONDS * sample_rate:
        raise _Unscorable(
            f"too short for PESQ ({reference.shape[-1] / sample_rate:.3f} s < {PESQ_MIN_SECONDS} s)"
        )
    value = perceptual_evaluation_speech_quality(
        torch.from_numpy(estimate), torch.from_numpy(reference), fs=sample_rate, mode=mode
    )
    return float(value)


def _stoi(reference: np.ndarray, estimate: np.ndarray, sample_rate: int, extended: bool) -> float:
    import torch
    from torchmetrics.functional.audio import short_time_objective_intelligibility

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = short_time_objective_intelligibility(
            torch.from_numpy(estimate), torch.from_numpy(reference), fs=sample_rate, extended=extended
        )
    for w in caught:  # pystoi returns 1e-5 with a RuntimeWarning when it cannot score
        if "Not enough STFT frames" in str(w.message):
            raise _Unscorable("too few non-silent frames for STOI (needs 30 frames of 25.6 ms after VAD)")
    return float(value)


class _Unscorable(Exception):
    """A clip the metric cannot score; the message is the row's reason."""


def perceptual_scores(
    reference: np.ndarray,
    estimate: np.ndarray,
    sample_rate: int = 16000,
    names: Sequence[str] = PERCEPTUAL_METRICS,
) -> dict[str, Any]:
    """Score one clip synchronously: ``{name: float | nan, name + "_error": "" | reason}``.

    ``reference``/``estimate``: 1-D arrays (valid samples only), same length (a longer one is cut to
    the shorter). Never raises for a bad clip: the reason goes to ``<name>_error``.
    """
    names = _check_names(names)
    row: dict[str, Any] = {}
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    est = np.asarray(estimate, dtype=np.float64).reshape(-1)
    n = min(ref.shape[0], est.shape[0])
    ref, est = np.ascontiguousarray(ref[:n]), np.ascontiguousarray(est[:n])
    common = ""
    if n == 0:
        common = "empty clip"
    elif not (np.isfinite(ref).all() and np.isfinite(est).all()):
        common = "non-finite samples in " + ("reference" if not np.isfinite(ref).all() else "estimate")
    elif not np.any(ref):
        common = "silent reference (all zeros): undefined"
    for name in names:
        value, reason = math.nan, common
        if not reason and not _installed(_PACKAGE[name]):
            reason = f"{_PACKAGE[name]} not installed ({_INSTALL_HINT})"
        if not reason:
            try:
                if name == "pesq":
                    value = _pesq(ref, est, sample_rate)
                else:
                    value = _stoi(ref, est, sample_rate, extended=(name == "estoi"))
                if not math.isfinite(value):
                    value, reason = math.nan, f"{name} returned a non-finite value"
            except _Unscorable as exc:
                reason = str(exc)
            except Exception as exc:  # noqa: BLE001 - any backend failure becomes the row's reason
                reason = _message(exc)
        row[name] = value
        row[f"{name}_error"] = reason
    return row


def _score_task(clip_id: str, tag: str, reference: np.ndarray, estimate: np.ndarray, sample_rate: int, names):
    """Worker entry point (module level so that spawn/forkserver workers can import it)."""
    row: dict[str, Any] = {"id": clip_id, "tag": tag}
    row.update(perceptual_scores(reference, estimate, sample_rate, names))
    return row


def _default_context() -> mp.context.BaseContext:
    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


class PerceptualScorer:
    """Asynchronous PESQ/STOI/ESTOI scoring in a CPU process pool.

    As with any spawn/forkserver pool (and Lightning's DDP), a script that creates one must keep its
    top-level code under ``if __name__ == "__main__":`` (workers re-import the main module); the
    ``vaefix`` console script and notebooks are fine.

    ``submit`` queues clips and returns at once; ``poll`` returns the rows finished so far (never
    blocks); ``drain`` waits for the rest. Rows come back in completion order, one per submitted clip,
    with NaN and a reason for clips that cannot be scored (also when a worker dies). ``max_workers=0``
    scores inline in ``submit`` (debugging, tiny runs). Use as a context manager or call ``close``.

    Args:
        names: subset of ``("pesq", "stoi", "estoi")``.
        sample_rate: of the arrays (PESQ: 8000 narrow-band, 16000 wide-band, any other rate is
            resampled to 16000 wide-band; STOI/ESTOI: pystoi resamples to its own 10 kHz).
        max_workers: pool size; default ``max(1, cpu_count // 2)`` so the data loader keeps cores.
        mp_context: multiprocessing context; default ``forkserver`` where available, else ``spawn``.
    """

    def __init__(
        self,
        names: Sequence[str] = PERCEPTUAL_METRICS,
        sample_rate: int = 16000,
        max_workers: int | None = None,
        mp_context: mp.context.BaseContext | str | None = None,
    ) -> None:
        self.names = _check_names(names)
        self.sample_rate = int(sample_rate)
        self.max_workers = max(1, (os.cpu_count() or 2) // 2) if max_workers is None else int(max_workers)
        if isinstance(mp_context, str):
            mp_context = mp.get_context(mp_context)
        self._context = mp_context
        self._executor: cf.ProcessPoolExecutor | None = None
        self._pending: dict[cf.Future, tuple[str, str]] = {}
        self._inline: list[dict[str, Any]] = []
        self._closed = False

    # -- pool management ---------------------------------------------------------------------------
    def _pool(self) -> cf.ProcessPoolExecutor:
        if self._executor is None:
            self._executor = cf.ProcessPoolExecutor(
                max_workers=self.max_workers, mp_context=self._context or _default_context()
            )
        return self._executor

    @property
    def pending(self) -> int:
        """Clips submitted but not yet returned by ``poll``/``drain``."""
        return len(self._pending)

    def _failed_row(self, clip_id: str, tag: str, reason: str) -> dict[str, Any]:
        row: dict[str, Any] = {"id": clip_id, "tag": tag}
        for name in self.names:
            row[name] = math.nan
            row[f"{name}_error"] = reason
        return row

    # -- API -----------------------------------------------------------------------------------------
    def submit(
        self,
        ids: Sequence[str],
        reference: Sequence[np.ndarray],
        estimate: Sequence[np.ndarray],
        tag: str = "recon",
    ) -> None:
        """Queue one clip per id (1-D arrays of valid samples; torch tensors are moved to NumPy)."""
        if self._closed:
            raise RuntimeError("PerceptualScorer is closed")
        if not (len(ids) == len(reference) == len(estimate)):
            raise ValueError(f"{len(ids)} ids, {len(reference)} references and {len(estimate)} estimates")
        for clip_id, ref, est in zip(ids, reference, estimate):
            ref_np = _to_numpy(ref)
            est_np = _to_numpy(est)
            if self.max_workers == 0:
                self._inline.append(
                    _score_task(str(clip_id), tag, ref_np, est_np, self.sample_rate, self.names)
                )
                continue
            fut = self._queue(str(clip_id), tag, ref_np, est_np)
            if fut is None:
                continue
            self._pending[fut] = (str(clip_id), tag)

    def _queue(self, clip_id: str, tag: str, ref: np.ndarray, est: np.ndarray) -> cf.Future | None:
        args = (_score_task, clip_id, tag, ref, est, self.sample_rate, self.names)
        for attempt in range(2):
            try:
                return self._pool().submit(*args)
            except Exception as exc:  # noqa: BLE001 - a broken pool: start a fresh one once, then give up
                self._executor = None
                if attempt == 1:
                    self._inline.append(self._failed_row(clip_id, tag, f"could not queue: {_message(exc)}"))
        return None

    def _collect(self, futures) -> list[dict[str, Any]]:
        rows = []
        for fut in futures:
            clip_id, tag = self._pending.pop(fut)
            try:
                rows.append(fut.result())
            except Exception as exc:  # noqa: BLE001 - worker crash, pickling error, ...
                rows.append(self._failed_row(clip_id, tag, f"worker failed: {_message(exc)}"))
                if isinstance(exc, cf.process.BrokenProcessPool):
                    self._executor = None  # the next submit starts a fresh pool
        return rows

    def poll(self) -> list[dict[str, Any]]:
        """Rows finished so far (non-blocking)."""
        rows, self._inline = self._inline, []
        done = [f for f in list(self._pending) if f.done()]
        return rows + self._collect(done)

    def drain(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Wait for every queued clip (up to ``timeout`` seconds) and return the rows not yet returned.

        Clips still running at the timeout stay pending and come back from a later ``poll``/``drain``.
        """
        rows, self._inline = self._inline, []
        if self._pending:
            done, _ = cf.wait(list(self._pending), timeout=timeout)
            rows += self._collect(done)
        return rows

    def close(self, wait: bool = True) -> list[dict[str, Any]]:
        """Finish (``wait``) or cancel the queue, shut the pool down, and return the remaining rows.

        Cancelled clips come back as NaN rows with reason ``"cancelled"``.
        """
        rows: list[dict[str, Any]] = []
        if wait:
            rows = self.drain()
        else:
            rows, self._inline = self._inline, []
            for fut, (clip_id, tag) in list(self._pending.items()):
                if fut.cancel():
                    self._pending.pop(fut)
                    rows.append(self._failed_row(clip_id, tag, "cancelled"))
            rows += self.drain()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=not wait)
            self._executor = None
        self._closed = True
        return rows

    def __enter__(self) -> PerceptualScorer:
        return self

    def __exit__(self, *exc) -> None:
        if not self._closed:
            self.close(wait=exc[0] is None)

    def __del__(self) -> None:  # best effort: never leave worker processes behind
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor on any device and dtype (bf16/fp16 go through float32)
        import torch

        x = x.detach().to("cpu")
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        x = x.numpy()
    return np.ascontiguousarray(np.asarray(x).reshape(-1))
