"""Unit tests of tvtheory.table: the per-epoch rows of a run (keys, values, what is n/a for ReLU, other
optimizers and a ViT), and the refusal of a trajectory whose batches are not the problem's."""

from __future__ import annotations

import pytest
import torch

from tvtheory.optimizers import OptimizerSpec
from tvtheory.table import EpochRow, epoch_rows
from tvtheory.trajectory import gradient_descent, run_optimizer

ROW_KEYS = set(EpochRow.__annotations__)


def test_row_keys_are_the_json_schema():
    """The JSON report's "epochs" entries (README's schema) are exactly these keys, in this order."""
    assert list(EpochRow.__annotations__) == [
        "k", "tau_norm", "first_order_norm", "error_norm", "second_order_norm", "second_order_residual_norm",
        "bound", "bound_ratio", "bound_t4", "bound_ratio_t4", "cos_tau_neg_g", "dominance", "dominance_t4",
        "rounding_allowance", "error_resolved"]


def test_epoch_rows_refuses_a_trajectory_with_other_batches(make_small_problem):
    p = make_small_problem(batches=4)
    traj = gradient_descent(p.objective, p.theta0, 0.1, 2)            # one step per epoch
    with pytest.raises(ValueError, match="steps per epoch"):
        epoch_rows(p, OptimizerSpec("gd", 0.1), traj)


@pytest.mark.parametrize("name", ["gd", "momentum", "adam"])
def test_epoch_rows_keys_and_values(small_problem, name):
    p = small_problem
    spec = OptimizerSpec(name, 0.05 if name != "adam" else 1e-3)
    traj = run_optimizer(p.objective, p.theta0, spec.make, 3, lr_for_messages=spec.lr)
    rows = epoch_rows(p, spec, traj)
    assert [r["k"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["tau_norm"] == float(torch.linalg.vector_norm(traj.task_vector(r["k"]).double()))
        assert -1 <= r["cos_tau_neg_g"] <= 1 + 1e-15
    if name == "gd":
        assert rows[0]["bound"] == 0.0 and rows[0]["bound_ratio"] is None      # E_1 = 0 exactly: T1
        assert rows[0]["second_order_norm"] == 0.0
        for r in rows[1:]:
            assert r["error_norm"] <= r["bound"] + r["rounding_allowance"]
            assert r["second_order_residual_norm"] < r["error_norm"]          # the second-order term explains E_k
            assert r["dominance"] > 0
    else:
        assert all(r["bound"] is None and r["second_order_norm"] is None and r["dominance"] is None for r in rows)


def test_epoch_rows_for_relu_have_no_curvature_columns(make_small_problem):
    p = make_small_problem(activation="relu")
    spec = OptimizerSpec("gd", 0.1)
    rows = epoch_rows(p, spec, gradient_descent(p.objective, p.theta0, 0.1, 2))
    assert all(r["bound"] is None and r["second_order_residual_norm"] is None for r in rows)
    assert rows[0]["error_norm"] < 1e-12 * rows[0]["tau_norm"]


def test_epoch_rows_of_a_vit_have_the_second_order_term_but_no_bound(make_vit_problem):
    p = make_vit_problem()
    rows = epoch_rows(p, OptimizerSpec("gd", 0.01), gradient_descent(p.objective, p.theta0, 0.01, 3))
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["bound"] is None and r["bound_ratio"] is None and r["dominance"] is None
        assert r["rounding_allowance"] > 0        # the GD rounding model applies to any network
    assert rows[0]["error_resolved"] is False and all(r["error_resolved"] for r in rows[1:])
    for r in rows[1:]:
        assert r["second_order_residual_norm"] < 0.25 * r["error_norm"]   # the second-order term explains E_k
