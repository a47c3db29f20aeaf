"""Multi-scale variable-batch sampler: batch formula, DDP sharding, determinism (spec mobilevit.md §4)."""
from __future__ import annotations

import random

import pytest

from hybridvit.data.sampler import MultiScaleBatchSampler, batch_size_for, multi_scale_resolutions

MOBILEVIT_SCALES = [160, 192, 256, 288, 320]


def test_resolutions_match_mobilevit():
    assert multi_scale_resolutions() == MOBILEVIT_SCALES


@pytest.mark.parametrize(
    "rule, expected",
    [("v0.1", [327, 227, 128, 128, 128]), ("head", [327, 227, 128, 101, 81])],  # spec §4.3 table (before make_divisible by 8 GPUs)
)
def test_batch_sizes_follow_formula(rule, expected):
    assert [batch_size_for(r, 256, 128, rule) for r in MOBILEVIT_SCALES] == expected
    for r, b in zip(MOBILEVIT_SCALES, expected):  # b_t = b * H_n W_n / (H_t W_t), floored at b by v0.1
        formula = 128 * 256**2 / r**2
        assert b == (max(128, int(formula)) if rule == "v0.1" else int(formula))


def test_unknown_batch_rule():
    with pytest.raises(ValueError, match="unknown batch rule 'x'"):
        batch_size_for(160, 256, 128, "x")


def _batches(n, world, rank, seed=0, epoch=0, drop_last=False, rule="head", start_step=0):
    sampler = MultiScaleBatchSampler(n, [16, 24, 32], 24, 6, rule, world, rank, seed, drop_last=drop_last)
    sampler.set_epoch(epoch, start_step)
    return sampler, list(sampler)


def test_batches_carry_resolution_and_matching_size():
    sampler, batches = _batches(300, 1, 0, drop_last=True)
    sizes = dict(zip(sampler.resolutions, sampler.batch_sizes))
    assert sizes == {16: 13, 24: 6, 32: 3}
    assert {len({c for _, c in b}) for b in batches} == {1}  # one resolution per batch
    assert all(len(b) == sizes[sampler.resolutions[b[0][1]]] for b in batches)
    assert len({sampler.resolutions[b[0][1]] for b in batches}) == 3


def test_two_ranks_disjoint_cover_and_in_step():
    s0, b0 = _batches(240, 2, 0)
    s1, b1 = _batches(240, 2, 1)
    idx0 = [i for b in b0 for i, _ in b]
    idx1 = [i for b in b1 for i, _ in b]
    assert not set(idx0) & set(idx1)
    assert sorted(idx0 + idx1) == list(range(240))
    assert len(b0) == len(b1) == len(s0) == len(s1)
    assert [b[0][1] for b in b0] == [b[0][1] for b in b1]  # same resolution at every step
    assert [len(b) for b in b0] == [len(b) for b in b1]


def test_uneven_dataset_keeps_ranks_in_step():
    # 241 samples over 2 ranks: the shards are padded to equal length, so step counts still agree.
    _, b0 = _batches(241, 2, 0, drop_last=True, epoch=3)
    _, b1 = _batches(241, 2, 1, drop_last=True, epoch=3)
    assert [(len(a), a[0][1]) for a in b0] == [(len(b), b[0][1]) for b in b1]


def test_same_seed_same_schedule_and_epochs_reshuffle():
    assert _batches(200, 1, 0, seed=5)[1] == _batches(200, 1, 0, seed=5)[1]
    assert _batches(200, 1, 0, seed=5)[1] != _batches(200, 1, 0, seed=6)[1]
    epoch0, epoch1 = _batches(200, 1, 0, epoch=0)[1], _batches(200, 1, 0, epoch=1)[1]
    assert epoch0 != epoch1
    assert [b[0][1] for b in epoch0] != [b[0][1] for b in epoch1]  # resolution order reshuffled per epoch


def test_global_random_untouched():
    random.seed(123)
    before = random.getstate()
    _batches(200, 2, 1, epoch=4)
    assert random.getstate() == before


def test_start_step_resumes_mid_epoch():
    _, full = _batches(200, 2, 1, epoch=2)
    _, rest = _batches(200, 2, 1, epoch=2, start_step=3)
    assert rest == full[3:]
