"""Unit tests of tvtheory.data: digits, synthetic tasks, partitions into batches and tasks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tvtheory.data import Dataset, digits, partition, split_by_label, synthetic


@pytest.fixture(scope="module")
def digits64():
    return digits()


def test_digits_shape_range_and_labels(digits64):
    d = digits64
    assert d.name == "digits" and len(d) == 1797
    assert d.x.shape == (1797, 64) and d.x.dtype == torch.float64
    assert d.y.shape == (1797,) and d.y.dtype == torch.int64
    assert float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0     # pixel values 0..16 scaled by 1/16
    assert torch.equal(d.x * 16, torch.round(d.x * 16))               # exactly k/16
    assert d.num_classes == 10 and set(d.y.tolist()) == set(range(10))
    assert digits(torch.float32).x.dtype == torch.float32


def test_synthetic_is_deterministic_per_seed():
    a, b, c = synthetic(100, 5, 3, seed=1), synthetic(100, 5, 3, seed=1), synthetic(100, 5, 3, seed=2)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    assert a.x.shape == (100, 5) and a.y.shape == (100,) and a.num_classes == 3
    assert int(a.y.min()) >= 0 and int(a.y.max()) < 3
    # float32 is the float64 draw rounded: the same task in another precision
    assert torch.equal(synthetic(100, 5, 3, seed=1, dtype=torch.float32).x, a.x.float())


def test_synthetic_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    synthetic(10, 3, 2, seed=5)
    assert torch.equal(torch.rand(2), expected)


@settings(deadline=None, derandomize=True, max_examples=60)
@given(n=st.integers(1, 300), data=st.data())
def test_partition_gives_equal_disjoint_batches(n, data):
    B = data.draw(st.integers(1, n))
    seed = data.draw(st.integers(0, 10))
    batches = partition(n, B, seed)
    size = n // B
    assert len(batches) == B
    assert all(b.shape == (size,) and b.dtype == torch.int64 for b in batches)
    used = torch.cat(batches)
    assert len(set(used.tolist())) == B * size                    # disjoint
    assert all(0 <= i < n for i in used.tolist())
    assert n - B * size == n % B                                  # exactly n mod B dropped
    again = partition(n, B, seed)
    assert all(torch.equal(x, y) for x, y in zip(batches, again, strict=True))  # seeded


def test_partition_depends_on_the_seed_and_shuffles():
    a, b = partition(100, 4, seed=0), partition(100, 4, seed=1)
    assert not torch.equal(torch.cat(a), torch.cat(b))
    assert not torch.equal(torch.cat(a), torch.arange(100))


@pytest.mark.parametrize("n, B, match", [(10, 0, ">= 1"), (10, -1, ">= 1"), (3, 4, "cannot split 3 examples")])
def test_partition_errors(n, B, match):
    with pytest.raises(ValueError, match=match):
        partition(n, B)


@pytest.mark.parametrize("T", [1, 2, 3, 10])
def test_split_by_label_is_a_partition(digits64, T):
    tasks = split_by_label(digits64, T)
    assert len(tasks) == T
    assert sum(len(t) for t in tasks) == len(digits64)
    for t, task in enumerate(tasks):
        assert torch.all(task.y % T == t)
        assert task.num_classes == 10
        assert task.name == f"digits[y%{T}=={t}]"
    # every example lands in exactly one task, unchanged
    rows = torch.cat([task.x for task in tasks])
    labels = torch.cat([task.y for task in tasks])
    order = torch.cat([torch.nonzero(digits64.y % T == t).squeeze(1) for t in range(T)])
    assert torch.equal(rows, digits64.x[order]) and torch.equal(labels, digits64.y[order])


@pytest.mark.parametrize("T", [0, 11])
def test_split_by_label_errors(digits64, T):
    with pytest.raises(ValueError, match=r"num_tasks must be in 1\.\.10"):
        split_by_label(digits64, T)


def test_targets_one_hot_for_mse_and_labels_for_ce():
    d = synthetic(40, 4, 5, seed=3, dtype=torch.float32)
    t = d.targets("mse")
    assert t.shape == (40, 5) and t.dtype == torch.float32
    assert torch.equal(t.argmax(1), d.y)
    assert torch.equal(t.sum(1), torch.ones(40))
    assert set(t.unique().tolist()) == {0.0, 1.0}
    assert d.targets("ce") is d.y


def test_dataset_validation_subset_and_to():
    with pytest.raises(ValueError, match="x must be N x d"):
        Dataset("bad", torch.zeros(5), torch.zeros(5, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="x must be N x d"):
        Dataset("bad", torch.zeros(5, 2), torch.zeros(4, dtype=torch.int64), 2)
    d = synthetic(20, 3, 2)
    s = d.subset(torch.tensor([3, 1]), "two")
    assert s.name == "two" and torch.equal(s.x, d.x[[3, 1]]) and torch.equal(s.y, d.y[[3, 1]])
    assert d.subset(torch.tensor([0])).name == d.name
    f = d.to(torch.float32)
    assert f.x.dtype == torch.float32 and f.y.dtype == torch.int64 and torch.equal(f.y, d.y)
