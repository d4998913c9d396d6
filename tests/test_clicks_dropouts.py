"""Dropouts (``vaefix_pl.metrics.dropouts``) next to pauses: where the estimate shows where its silence belongs.

Hand-built "words" (harmonic tones with a 1 ms attack after digital silence). A run of zeroed samples
at a word's start is a dropout when the estimate keeps the waveform (identity, a delayed copy) or when
it is a hole in the estimate (sound on both sides); a resynthesis that keeps neither the waveform nor
the pause and starts the word 3 ms late is not flagged (the two cannot be told apart there). The
dropout test alone is checked (``added_clicks``' transient tests may also see a zeroed run's edges).
"""

from __future__ import annotations

import numpy as np
import torch

from vaefix_pl.core.frontend import valid_mask
from vaefix_pl.metrics import added_clicks
from vaefix_pl.metrics.dropouts import dropout_flags

SR = 16000
WORDS = ((4800, 6400), (16000, 6400))  # (first sample, length): 0.3 s pause, 0.4 s word, 0.3 s pause, ...
N = 25600
TOL = int(0.005 * SR)


def _words(seed: int, late: int = 0) -> np.ndarray:
    """150 Hz harmonic tone (10 partials, phases from ``seed``) in each word, starting ``late`` samples late."""
    rng = np.random.default_rng(seed)
    t = np.arange(N) / SR
    tone = sum(np.sin(2 * np.pi * 150 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 11))
    env = np.zeros(N)
    attack = int(0.001 * SR)
    for start, length in WORDS:
        s = start + late
        env[s : s + attack] = np.linspace(0, 1, attack, endpoint=False)
        env[s + attack : start + length] = 1.0
    return 0.2 * tone * env


def _zeroed(x: np.ndarray, start: int, length: int) -> np.ndarray:
    y = x.copy()
    y[start : start + length] = 0.0
    return y


def _detect(
    refs: list[np.ndarray], ests: list[np.ndarray], lengths: list[int], lags: list[int]
) -> list[np.ndarray]:
    """Dropout onsets of :func:`dropout_flags` at the given envelope (and waveform) lags."""
    r = torch.tensor(np.stack(refs), dtype=torch.float32)
    e = torch.tensor(np.stack(ests), dtype=torch.float32)
    mask = valid_mask(torch.tensor(lengths), r.shape[-1])
    lag = torch.tensor(lags)
    flags = dropout_flags(r, e, mask, lag, SR, edge=320, waveform_lag=lag)
    return [torch.nonzero(f)[:, 0].numpy() for f in flags]


def _found(det: np.ndarray, start: int, length: int) -> bool:
    return bool(np.any((det >= start - TOL) & (det <= start + length + TOL)))


def test_dropout_of_a_word_start_is_found_where_the_waveform_is_kept():
    ref = _words(0)
    delay = 80  # 5 ms, the estimate's sample n is the reference's n - 80
    delayed = np.concatenate([np.zeros(delay), ref[:-delay]])
    first, second = WORDS[0][0] + 8, WORDS[1][0] + delay + 16  # 0.5 and 1 ms into each word
    ests = [_zeroed(ref, first, 32), _zeroed(delayed, second, 48), delayed]
    det = _detect([ref] * 3, ests, [N] * 3, [0, delay, delay])
    assert _found(det[0], first, 32) and det[0].size > 0, det[0]
    assert _found(det[1], second, 48) and det[1].size > 0, det[1]
    assert det[2].size == 0, det[2]  # the delayed pauses themselves are no dropouts
    whole = added_clicks(
        torch.tensor(np.stack([ref, ref]), dtype=torch.float32), torch.tensor(np.stack(ests[1:]))
    )
    assert whole[0].numel() == 1 and whole[1].numel() == 0  # end to end: one event, none on the clean copy


def test_late_onset_of_a_resynthesis_is_no_dropout_but_a_hole_is():
    ref = _words(0)
    other = _words(1, late=48)  # other phases (the waveform is not kept), words 3 ms late
    hole = WORDS[1][0] + 48  # 3 ms into an on-time word of the other-phase estimate: a 2 ms hole
    ests = [other, _zeroed(_words(1), hole, 32)]
    det = _detect([ref, ref], ests, [N, N], [0, 0])
    assert det[0].size == 0, det[0]
    assert _found(det[1], hole, 32) and det[1].size > 0, det[1]


def test_padded_batch_equals_items_alone():
    ref = _words(0)
    est = _zeroed(ref, WORDS[0][0] + 8, 32)
    short = 14000
    together = _detect([ref, ref], [est, est], [N, short], [0, 0])
    alone = _detect([ref[:short]], [est[:short]], [short], [0])
    assert together[0].size > 0 and together[1].size > 0
    np.testing.assert_array_equal(together[1], alone[0])
    np.testing.assert_array_equal(together[0], together[1])
