"""``added_clicks`` on real speech (espeak-ng) and music (sox): recall by click type and level, false alarms.

The fast subset of ``benchmarks/clicks.py`` (3 speech + 2 music items, fixed seeds). A click is found
when an event onset lies within 5 ms of the samples it changed; its level is its peak over the clean
estimate's RMS in +-10 ms (``tests/real_audio.py``). Run with ``-s`` to see the measured table.
Every cell with at least 5 clicks asserts its target.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import real_audio as ra
import torch

from vaefix_pl.metrics import added_clicks

pytestmark = pytest.mark.skipif(
    bool(ra.missing_tools()), reason=f"needs {ra.missing_tools()} (apt-get install espeak-ng sox)"
)

SR = ra.SR
TOL = int(0.005 * SR)
SPEECH = ("en", "de", "en_f")
MUSIC = ("pluck", "piano")
RECALL_BASES = ("identity", "lowpass_delay", "griffin_lim")
TARGETS = {"0-10 dB": 0.8, ">=10 dB": 0.95}


@pytest.fixture(scope="module")
def pairs() -> dict[str, dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """{corpus: {item: {base: (reference, clean estimate)}}} for the recall bases."""
    return {
        "speech": {n: ra.bases(ra.speech(n), RECALL_BASES) for n in SPEECH},
        "music": {n: ra.bases(ra.music(n), RECALL_BASES) for n in MUSIC},
    }


@pytest.fixture(scope="module")
def recall(pairs) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(corpus, click type, level band) -> (found, total), all recall bases pooled."""
    out: dict[tuple[str, str, str], list[int]] = {}
    for corpus, items in pairs.items():
        refs, ests, truths = [], [], []
        for item, bases in items.items():
            for base, (ref, est) in bases.items():
                for kind in ra.CLICK_TYPES:
                    y, clicks = ra.insert_clicks(
                        est, kind, zlib.crc32(f"test/{corpus}/{item}/{base}/{kind}".encode())
                    )
                    refs.append(ref)
                    ests.append(y)
                    truths.append(clicks)
        for det, clicks in zip(ra.added_click_onsets(refs, ests), truths):
            found, _ = ra.match(det, clicks, TOL)
            for c, ok in zip(clicks, found):
                cell = out.setdefault((corpus, c.kind, ra.band_of(c.level_db)), [0, 0])
                cell[0] += int(ok)
                cell[1] += 1
    print("\nrecall (found/total) on identity, low-pass+delay, Griffin-Lim:")
    for key in sorted(out):
        print(f"  {key}: {out[key][0]}/{out[key][1]} = {out[key][0] / out[key][1]:.2f}")
    return {k: (v[0], v[1]) for k, v in out.items()}


def _cases():
    for corpus in ("speech", "music"):
        for kind in ra.CLICK_TYPES:
            for band in TARGETS:
                yield pytest.param(corpus, kind, band, id=f"{corpus}-{kind}-{band}")


@pytest.mark.parametrize("corpus,kind,band", list(_cases()))
def test_recall_targets(recall, corpus, kind, band):
    found, total = recall.get((corpus, kind, band), (0, 0))
    if total < 5:  # a dropout's level is the removed signal's crest factor: rarely >= 10 dB in music
        pytest.skip(f"only {total} clicks of this type in this band on the subset")
    assert found / total >= TARGETS[band], f"{found}/{total}"


@pytest.mark.parametrize("base", ["identity", "lowpass_delay", "griffin_lim", "tiny_hifigan"])
def test_false_clicks_on_clean_bases(base):
    refs, ests = [], []
    for x in [ra.speech(n) for n in SPEECH] + [ra.music(n) for n in MUSIC]:
        ref, est = ra.bases(x, (base,))[base]
        refs.append(ref)
        ests.append(est)
    seconds = sum(r.shape[-1] for r in refs) / SR
    false = sum(d.size for d in ra.added_click_onsets(refs, ests))
    print(f"\n{base}: {false} false clicks in {seconds:.1f} s")
    assert false / seconds <= 0.1


def _regression_position(x: np.ndarray) -> int:
    """The sample of English speech whose +-10 ms RMS is closest to 0.034 (a voiced stretch)."""
    grid = np.arange(int(0.05 * SR), x.shape[-1] - int(0.05 * SR), int(0.005 * SR))
    rms = np.array([ra.local_rms(x, int(p)) for p in grid])
    return int(grid[np.argmin(np.abs(rms - 0.034))])


def test_regression_impulse_23db_over_voiced_speech():
    """Issue 20: a 0.5 impulse where the local RMS is 0.034 (23 dB under it) was not flagged."""
    x = ra.speech("en")
    p = _regression_position(x)
    rms = ra.local_rms(x, p)
    assert abs(20 * np.log10(0.5 / rms) - 23.0) < 0.5
    y = x.copy()
    y[p] += 0.5
    det = ra.added_click_onsets([x, x], [y, x])
    assert np.any(np.abs(det[0] - p) <= TOL), (p, det[0])
    assert det[0].size == 1 and det[1].size == 0


def test_padded_batch_equals_items_alone():
    items = [ra.speech("en"), ra.music("pluck")[: 3 * SR], ra.speech("de")[: int(1.3 * SR)]]
    refs, ests = [], []
    for i, x in enumerate(items):
        for kind in ("impulse", "dropout"):
            y, _ = ra.insert_clicks(x, kind, seed=i)
            refs.append(x)
            ests.append(y)
    together = ra.added_click_onsets(refs, ests)
    assert sum(d.size for d in together) > 20
    for r, e, t in zip(refs, ests, together):
        alone = added_clicks(
            torch.tensor(r[None], dtype=torch.float32), torch.tensor(e[None], dtype=torch.float32)
        )
        np.testing.assert_array_equal(alone[0].numpy(), t)
