"""BalancedDistributedSampler: audio seconds balanced over ranks, every index exactly once, under real DDP too."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from ddp import run_ddp_predict
from signals import harmonic
from torch.utils.data import DistributedSampler

from vaefix_pl.data.sampler import BalancedDistributedSampler, balance_by_duration, entry_seconds

ROOT = Path(__file__).resolve().parents[1]


def _log_uniform(n: int, seed: int, lo: float = 0.5, hi: float = 60.0) -> np.ndarray:
    return np.exp(np.random.default_rng(seed).uniform(np.log(lo), np.log(hi), n))


def _check_split(parts: list[list[int]], n: int) -> None:
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n))  # every index once: no padding repeats, none lost


@pytest.mark.parametrize("ranks", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_lengths_balanced_within_the_longest_item(ranks, seed):
    d = _log_uniform(997, seed)
    parts = balance_by_duration(d, ranks)
    _check_split(parts, d.size)
    totals = np.array([d[p].sum() for p in parts])
    assert totals.max() - totals.min() <= d.max() + 1e-9
    # the short items come last and even the totals out: far tighter than the bound, and than dealing
    # round-robin (torch's split), which ignores the lengths
    rr = np.array([d[r::ranks].sum() for r in range(ranks)])
    assert totals.max() - totals.min() <= d.min() * 2 < rr.max() - rr.min()


def test_spread_bound_holds_for_adversarial_lengths():
    """One very long item and many short ones: the bound is the long item, and it is reached."""
    d = np.array([100.0] + [1.0] * 10)
    parts = balance_by_duration(d, 2)
    _check_split(parts, d.size)
    totals = sorted(d[p].sum() for p in parts)
    assert totals == [10.0, 100.0]  # the long item alone; every short one on the other rank


def test_hand_computed_assignment():
    # longest first to the least-loaded rank: 7 -> r0, 5 -> r1, 4 -> r1 (5 < 7), 3 -> r0 (7 < 9), 1 -> r1 (9 < 10)
    d = [3.0, 7.0, 1.0, 5.0, 4.0]
    assert balance_by_duration(d, 2) == [[1, 0], [3, 4, 2]]  # totals 10 and 10; each list longest first


def test_equal_lengths_split_counts_evenly_and_interleaved():
    d = np.full(10, 10.24)
    parts = balance_by_duration(d, 3)
    assert [len(p) for p in parts] == [4, 3, 3]
    assert parts[0] == [0, 3, 6, 9]  # ties go round-robin in index order, like Lightning's own split


def test_every_rank_gets_an_item_when_there_are_enough():
    d = [50.0, 0.5, 0.5, 0.5]
    parts = balance_by_duration(d, 4)
    assert all(len(p) == 1 for p in parts)
    parts = balance_by_duration([0.0, 0.0, 0.0], 3)  # zero-cost items (failed ones) still spread out
    assert all(len(p) == 1 for p in parts)


def test_fewer_items_than_ranks_and_empty():
    assert balance_by_duration([2.0], 3) == [[0], [], []]
    assert balance_by_duration([], 2) == [[], []]
    # a rank with no input still gets one (empty) batch: Lightning refuses a rank with none beside others
    assert [list(BalancedDistributedSampler([2.0], 3, r)) for r in range(3)] == [[0], [None], [None]]
    assert [len(BalancedDistributedSampler([], 2, r)) for r in range(2)] == [0, 0]  # all ranks skip alike


def test_placeholder_collates_to_an_empty_batch(tmp_path):
    from vaefix_pl.data.inputs import AudioDataset, AudioEntry, collate_audio

    sf.write(tmp_path / "a.wav", harmonic(4000, f0=200), 16000)
    ds = AudioDataset([AudioEntry(id="a", path=str(tmp_path / "a.wav"), seconds=0.25)])
    batch = collate_audio([ds[i] for i in BalancedDistributedSampler([0.25], 2, 1)])
    assert batch["ids"] == [] and batch["errors"] == [] and batch["waveform"].shape[0] == 0


def test_whole_batches_keep_one_short_batch_at_most():
    """``batch_size``: each rank gets whole batches; only one short batch in the whole run."""
    d = np.full(3000, 10.24)
    parts = balance_by_duration(d, 2, batch_size=64)
    _check_split(parts, d.size)
    short = [len(p) % 64 for p in parts if len(p) % 64]
    assert short == [3000 % 64]
    d = _log_uniform(500, 3)
    parts = balance_by_duration(d, 3, batch_size=16)
    _check_split(parts, d.size)
    assert sum(1 for p in parts if len(p) % 16) <= 1
    order = np.argsort(-d, kind="stable")
    heaviest = max(d[order[j : j + 16]].sum() for j in range(0, d.size, 16))
    totals = np.array([d[p].sum() for p in parts])
    assert totals.max() - totals.min() <= heaviest + 1e-9


def test_deterministic_and_independent_of_rank():
    d = _log_uniform(300, 7)
    a = [BalancedDistributedSampler(d, 3, r) for r in range(3)]
    b = [BalancedDistributedSampler(d.copy(), 3, r) for r in range(3)]
    assert [list(s) for s in a] == [list(s) for s in b]
    assert [list(s) for s in a] == balance_by_duration(d, 3)
    assert list(a[1]) == list(a[1])  # iterating twice gives the same order


def test_sampler_is_a_distributed_sampler_without_padding():
    d = _log_uniform(11, 0)
    samplers = [BalancedDistributedSampler(d, 4, r) for r in range(4)]
    assert all(isinstance(s, DistributedSampler) for s in samplers)  # so Lightning does not wrap it
    assert sum(len(s) for s in samplers) == 11  # torch's would give 4 x 3 = 12 (one repeat)
    assert sum(s.seconds for s in samplers) == pytest.approx(d.sum())
    for s in samplers:  # each rank's order is longest first: batches group similar lengths
        assert list(d[list(s)]) == sorted(d[list(s)], reverse=True)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        BalancedDistributedSampler([1.0], 2, 2)
    with pytest.raises(ValueError):
        balance_by_duration([1.0, float("nan")], 2)
    with pytest.raises(ValueError):
        balance_by_duration([1.0, -1.0], 2)
    with pytest.raises(ValueError):
        balance_by_duration([1.0], 0)


def test_entry_seconds():
    E = SimpleNamespace
    entries = [E(seconds=12.0, error=None), E(seconds=None, error=None), E(seconds=3.0, error="broken")]
    assert entry_seconds(entries) == [12.0, 4.0, 0.0]
    assert entry_seconds(entries, offset=1.0, default=2.0) == [11.0, 1.0, 0.0]
    assert entry_seconds(entries, seconds=10.24) == [10.24, 10.24, 0.0]  # every clip cropped/padded
    assert entry_seconds([E(seconds=0.5, error=None)], offset=2.0) == [0.0]


def test_datamodule_uses_it_only_under_ddp(tmp_path):
    from vaefix_pl import AudioDataModule

    for i, n in enumerate([16000, 4000, 32000]):
        sf.write(tmp_path / f"c{i}.wav", harmonic(n, f0=200), 16000)
    dm = AudioDataModule(str(tmp_path), batch_size=2, num_workers=0)
    assert not isinstance(dm.predict_dataloader().sampler, DistributedSampler)  # no trainer: all, in order
    module = SimpleNamespace(config=SimpleNamespace(speed="auto"), sample_rate=16000)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1, lightning_module=module)
    sampler = dm.predict_dataloader().sampler
    assert isinstance(sampler, BalancedDistributedSampler)
    assert [dm.dataset.entries[i].id for i in sampler] == ["c0", "c1"]  # 1 s + 0.25 s vs the 2 s item


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_ddp_one_input_two_processes_finishes(tmp_path, tiny_model_dir):
    """Fewer inputs than ranks (e.g. a resumed run with one left): the run finishes, the input once."""
    out = run_ddp_predict(tmp_path, tiny_model_dir, [12000])
    assert [r["id"] for r in _read_csv(out / "metrics.csv")] == ["clip0"]
    assert len(list(out.rglob("*.recon.wav"))) == 1
    ranks = json.loads((out / "summary.json").read_text())["timing"]["ranks"]
    assert sorted(r["items"] for r in ranks) == [0, 1]


@pytest.mark.slow
def test_ddp_two_processes_balanced_exactly_once(tmp_path, tiny_model_dir):
    """2 gloo processes, mixed lengths: every input once in metrics.csv and on disk, ranks balanced."""
    rng = np.random.default_rng(5)
    lengths = [int(s * 16000) for s in np.exp(rng.uniform(np.log(0.1), np.log(3.0), 9))] + [60000]
    out = run_ddp_predict(tmp_path, tiny_model_dir, lengths)
    rows = _read_csv(out / "metrics.csv")
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(lengths)
    assert set(ids) == {f"clip{i}" for i in range(len(lengths))}
    assert len(list(out.rglob("*.recon.wav"))) == len(list(out.rglob("*.original.wav"))) == len(lengths)
    # per-rank audio from the ranks' own WAV-write logs (path, samples), independent of the writer
    per_rank = []
    for log in sorted((tmp_path / "out_writes").glob("rank*.log")):
        lines = [line.split("\t") for line in log.read_text().splitlines()]
        per_rank.append(sum(int(n) for p, n in lines if p.endswith(".original.wav")) / 16000)
    assert len(per_rank) == 2 and sum(per_rank) == pytest.approx(sum(lengths) / 16000)
    assert abs(per_rank[0] - per_rank[1]) <= max(lengths) / 16000
    # the same split as the sampler's, computed here from the lengths alone
    d = np.array(lengths) / 16000
    expected = sorted(d[p].sum() for p in balance_by_duration(d, 2))
    assert sorted(per_rank) == pytest.approx(expected)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_ok"] == len(lengths) and summary["timing"]["world_size"] == 2
    ranks = summary["timing"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and sum(r["items"] for r in ranks) == len(lengths)
    assert sorted(r["audio_s"] for r in ranks) == pytest.approx(expected)
    assert min(r["waited_at_end_s"] for r in ranks) == 0.0
