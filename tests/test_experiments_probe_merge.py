"""The frozen linear-probe head and the E3 merge evaluation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from cases import TINY_ENCODER, tiny_encoder

from tvtheory.experiments.merging import (
    CachedAccuracy,
    converged_epoch,
    draw_subsets,
    evaluate_merges,
    merge_and_evaluate,
    merge_scores,
    sweep,
)
from tvtheory.experiments.probe import TEMPERATURE_GRID, FrozenHeadClassifier, fit_probe
from tvtheory.losses import cross_entropy_terms


def test_probe_is_the_ridge_solution_with_the_best_temperature():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40, 5, generator=g, dtype=torch.float64) + 3.0
    y = torch.randint(0, 3, (40,), generator=g)
    w, b, info = fit_probe(z, y, 3, ridge=1e-3)
    # reference: centred ridge normal equations solved independently (lstsq on the augmented system)
    lam = info["ridge_lambda"]
    zc = z - z.mean(0)
    onehot = torch.nn.functional.one_hot(y, 3).double()
    aug = torch.cat([zc, lam ** 0.5 * torch.eye(5, dtype=torch.float64)])
    rhs = torch.cat([onehot - onehot.mean(0), torch.zeros(5, 3, dtype=torch.float64)])
    w_ref = torch.linalg.lstsq(aug, rhs).solution.T
    b_ref = onehot.mean(0) - w_ref @ z.mean(0)
    s = info["temperature"]
    assert s in TEMPERATURE_GRID
    # float32 output of a float64 solution: relative error <= 2^-24 per entry, plus the solvers' rounding
    # (condition number of the augmented system ~ 10, so ~1e-15): 1e-6 covers both, an O(1) error fails.
    assert torch.allclose(w.double(), s * w_ref, rtol=1e-6, atol=0)
    assert torch.allclose(b.double(), s * b_ref, rtol=1e-6, atol=1e-7 * float(b_ref.abs().max()))
    ces = [float(cross_entropy_terms(t * (z @ w_ref.T + b_ref), y).sum()) for t in TEMPERATURE_GRID]
    assert min(ces) == pytest.approx(info["train_ce"] * 40, rel=1e-12)


def test_frozen_head_has_encoder_parameters_only():
    enc = tiny_encoder()
    w, b = torch.randn(3, 16, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    model = FrozenHeadClassifier(enc, w, b)
    assert [n for n, _ in model.named_parameters()] == ["encoder." + n for n, _ in enc.named_parameters()]
    assert set(dict(model.named_buffers())) == {"head_weight", "head_bias"}
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert torch.equal(model(x), enc.encode(x) @ w.T + b)
    from tvtheory.models.vit import ViT
    with pytest.raises(ValueError, match="no head"):
        FrozenHeadClassifier(ViT(dataclasses.replace(TINY_ENCODER, num_classes=3)), torch.ones(3, 16), torch.zeros(3))


def test_merge_chooses_alpha_on_validation_and_normalises():
    theta0 = torch.zeros(2, dtype=torch.float64)
    taus = {"a": torch.tensor([1.0, 0.0], dtype=torch.float64), "b": torch.tensor([0.0, 1.0], dtype=torch.float64)}

    def acc_fn(theta, task, split):
        # validation peaks at alpha = 0.3 (theta = 0.3 * (1, 1)); test differs from validation, so choosing
        # alpha on test instead of validation would be visible
        x = float(theta[0] if task == "a" else theta[1])
        return (1 - abs(x - 0.3)) if split == "val" else (0.5 + x / 2)

    out = merge_and_evaluate(theta0, taus, acc_fn, {"a": 0.8, "b": 0.4}, grid=[0.1, 0.3, 0.5])
    assert out["alpha_val"]["alpha"] == 0.3
    assert out["alpha_val"]["test_accuracy"] == {"a": pytest.approx(0.65), "b": pytest.approx(0.65)}
    assert out["alpha_val"]["mean_normalised_accuracy"] == pytest.approx((0.65 / 0.8 + 0.65 / 0.4) / 2)
    assert out["alpha_1_over_T"]["alpha"] == 0.5
    assert out["alpha_1_over_T"]["mean_accuracy"] == pytest.approx(0.75)
    assert out["val_mean_accuracy"] == [pytest.approx(0.8), pytest.approx(1.0), pytest.approx(0.8)]


def test_merge_scores_are_the_hand_computed_ones():
    acc, pre, ft = {"a": 0.6, "b": 0.8}, {"a": 0.5, "b": 0.5}, {"a": 0.7, "b": 0.9}
    s = merge_scores(acc, pre, ft)
    assert s["mean_accuracy"] == pytest.approx(0.7)
    assert s["normalised_accuracy"] == {"a": pytest.approx(0.6 / 0.7), "b": pytest.approx(0.8 / 0.9)}
    assert s["mean_normalised_accuracy"] == pytest.approx((0.6 / 0.7 + 0.8 / 0.9) / 2)
    # over the subset's means: (0.7 - 0.5) / (0.8 - 0.5); the mean of the per-task ratios would be (0.5 + 0.75) / 2
    assert s["gain_recovery"] == pytest.approx(2 / 3)
    assert merge_scores(acc, None, ft)["gain_recovery"] is None
    assert math.isnan(merge_scores(acc, pre, pre)["gain_recovery"])        # nothing gained by finetuning


def test_merge_records_gain_recovery_at_both_alphas():
    theta0 = torch.zeros(2, dtype=torch.float64)
    taus = {"a": torch.tensor([1.0, 0.0], dtype=torch.float64), "b": torch.tensor([0.0, 1.0], dtype=torch.float64)}

    def acc_fn(theta, task, split):
        x = float(theta[0] if task == "a" else theta[1])
        return (1 - abs(x - 0.3)) if split == "val" else (0.5 + x / 2)

    out = merge_and_evaluate(theta0, taus, acc_fn, {"a": 0.8, "b": 0.7}, grid=[0.1, 0.3, 0.5],
                             pretrained_test_acc={"a": 0.5, "b": 0.5})
    assert out["alpha_val"]["gain_recovery"] == pytest.approx((0.65 - 0.5) / (0.75 - 0.5))
    assert out["alpha_1_over_T"]["gain_recovery"] == pytest.approx((0.75 - 0.5) / (0.75 - 0.5))


SEVEN = ("cars", "dtd10", "gtsrb", "mnist", "cifar10", "fashion_mnist", "animal_mnist")


@pytest.mark.parametrize("size", [2, 3, 5])
def test_subsets_are_distinct_sorted_deterministic_and_seeded(size):
    drawn = draw_subsets(SEVEN, size, 5, seed=0)
    assert len(drawn) == 5 and len(set(drawn)) == 5                          # distinct
    for s in drawn:
        assert len(s) == size == len(set(s)) and set(s) <= set(SEVEN)
        assert list(s) == sorted(s)                                          # the tasks in one order
    assert draw_subsets(list(reversed(SEVEN)), size, 5, seed=0) == drawn     # not the order given
    assert draw_subsets(SEVEN, size, 5, seed=0) == drawn                     # deterministic
    assert draw_subsets(SEVEN, size, 5, seed=1) != drawn                     # the seed draws them


def test_all_subsets_when_there_are_no_more_than_asked():
    assert draw_subsets(SEVEN, 7, 5, seed=3) == [tuple(sorted(SEVEN))]
    assert draw_subsets(("a", "b", "c"), 2, 5, seed=0) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert len(draw_subsets(SEVEN, 6, 7, seed=0)) == 7                      # C(7, 6) = 7: all of them
    with pytest.raises(ValueError):
        draw_subsets(("a", "b"), 3, 5, seed=0)


def _unit_vectors(tasks, scale):
    return {t: scale * torch.nn.functional.one_hot(torch.tensor(i), len(tasks)).double() for i, t in enumerate(tasks)}


def test_evaluate_merges_computes_each_point_once_and_counts_it():
    """Four tasks, one coordinate each: tau_t = e_t (one epoch) and 3 e_t (converged); theta = c sum_{t in S} e_t.
    Validation peaks at coordinate 0.5, so alpha_val = 0.5 for the one-epoch vectors (= 1/T for T = 2: one test
    pass, not two) and 0.1 for the converged ones (coordinates 0.3, 1.5, 3). The subset of all four tasks is the
    all-task merge again: answered from the cache. Passes by hand, per (kind, S, c, split), T each:
      all tasks, one epoch:  val c = .1, .5, 1 -> 12; test c = .5, .25 -> 8
      all tasks, converged:  val c = .3, 1.5, 3 -> 12; test c = .3, .75 -> 8
      each of 2 subsets of 2: one epoch val 6 + test c = .5 -> 2; converged val 6 + test c = .3, 1.5 -> 4
    = 76 passes (48 val, 28 test). Calls: per kind the all-task merge and the T = 4 subset 4 x (3 + 2) each and the
    two T = 2 subsets 2 x (3 + 2) each: 2 x 60 = 120, so 44 answered from the cache.
    """
    tasks = ("a", "b", "c", "d")
    index = {t: i for i, t in enumerate(tasks)}
    calls = []

    def acc_fn(theta, task, split):
        calls.append((tuple(theta.tolist()), task, split))
        x = float(theta[index[task]])
        return 1 - abs(x - 0.5) if split == "val" else 0.5 + x / 10

    vectors = {"one_epoch": _unit_vectors(tasks, 1.0), "converged": _unit_vectors(tasks, 3.0)}
    finetuned, pretrained = dict.fromkeys(tasks, 0.6), dict.fromkeys(tasks, 0.5)
    out = evaluate_merges(torch.zeros(4, dtype=torch.float64), vectors, acc_fn, finetuned, pretrained, sizes=(2, 4, 5),
                          count=2, seed=0, grid=(0.1, 0.5, 1.0), split_size=lambda t, split: 5 if split == "val" else 7)
    assert len(calls) == len(set(calls)) == 76                     # nothing evaluated twice
    ev = out["evaluations"]
    assert ev["passes"] == 76 and ev["reused"] == 120 - 76
    assert ev["images"] == 48 * 5 + 28 * 7
    assert out["one_epoch"]["alpha_val"]["alpha"] == 0.5 and out["converged"]["alpha_val"]["alpha"] == 0.1
    sw = out["sweep"]
    assert sw["sizes_skipped"] == [5] and set(sw["by_size"]) == {"2", "4"}
    assert sw["by_size"]["2"]["subsets"] == [list(s) for s in draw_subsets(tasks, 2, 2, 0)]
    assert sw["by_size"]["4"]["subsets"] == [list(tasks)]
    for kind in ("one_epoch", "converged"):
        assert sw["by_size"]["4"][kind] == [out[kind]]            # the T = 4 subset is the all-task merge
        subsets = sw["by_size"]["2"][kind]
        for r, s in zip(subsets, sw["by_size"]["2"]["subsets"], strict=True):
            assert r["tasks"] == s
        mean = sw["by_size"]["2"]["mean_over_subsets"][kind]["alpha_val"]
        for key in ("mean_accuracy", "mean_normalised_accuracy", "gain_recovery"):
            assert mean[key] == pytest.approx(sum(r["alpha_val"][key] for r in subsets) / 2)
    # one epoch, T = 2 at alpha 0.5: test accuracy 0.55 on both tasks, gain (0.55 - 0.5) / (0.6 - 0.5)
    assert sw["by_size"]["2"]["one_epoch"][0]["alpha_val"]["gain_recovery"] == pytest.approx(0.5)


def test_a_sizes_subsets_do_not_depend_on_the_other_sizes():
    tasks = SEVEN
    vectors = {"one_epoch": _unit_vectors(tasks, 1.0), "converged": _unit_vectors(tasks, 2.0)}
    common = dict(acc_fn=lambda theta, t, split: float(theta.sum()), finetuned_test_acc=dict.fromkeys(tasks, 1.0),
                  pretrained_test_acc=None, count=3, seed=4, grid=(0.5,))
    both = sweep(torch.zeros(7, dtype=torch.float64), vectors, sizes=(2, 3), **common)
    alone = sweep(torch.zeros(7, dtype=torch.float64), vectors, sizes=(3,), **common)
    assert both["by_size"]["3"]["subsets"] == alone["by_size"]["3"]["subsets"]
    assert both["by_size"]["2"]["subsets"] != both["by_size"]["3"]["subsets"]


def test_the_converged_epoch_is_the_runs_stopping_epoch():
    records = [{"epoch": k} for k in range(1, 7)]
    assert converged_epoch({"records": records, "stopping": {"converged_epoch": 3, "last_epoch": 6}}) == 3
    with pytest.raises(KeyError):                               # a run without early stopping has no k*
        converged_epoch({"records": records})


def test_the_cache_is_keyed_by_the_parameters_values():
    seen = []
    cached = CachedAccuracy(lambda theta, t, split: seen.append(float(theta.sum())) or float(theta.sum()),
                            split_size=lambda t, split: 3)
    theta = torch.zeros(4, dtype=torch.float64)
    assert cached(theta, "a", "val") == 0.0
    assert cached(theta.clone(), "a", "val") == 0.0          # equal values, another tensor: reused
    assert cached(theta, "a", "test") == 0.0 and cached(theta, "b", "val") == 0.0      # other split, other task
    theta.add_(1.0)                                          # the same tensor changed in place: a new point
    assert cached(theta, "a", "val") == 4.0
    assert cached(theta.float(), "a", "val") == 4.0          # another dtype: another encoder
    assert seen == [0.0, 0.0, 0.0, 4.0, 4.0]
    assert (cached.passes, cached.reused, cached.images) == (5, 1, 15)


def test_merge_table_reads_a_stored_merge_with_an_undefined_normalised_accuracy():
    """A task finetuned to 0 % makes its normalised accuracy NaN, stored as null: the table prints n/a (it had
    raised a TypeError in ``report``)."""
    from tvtheory.experiments.merging import merge_table

    scores = {"alpha": 0.1, "mean_accuracy": 0.5, "mean_normalised_accuracy": None, "gain_recovery": None}
    payload = {"optimizer": "sgd", "seed": 0, "one_epoch": {"alpha_val": scores, "alpha_1_over_T": scores,
                                                            "tasks": ["a", "b"]},
               "converged": {"alpha_val": scores, "alpha_1_over_T": scores}}
    table = merge_table(payload)
    assert "norm=n/a" in table and "acc=0.5000" in table
