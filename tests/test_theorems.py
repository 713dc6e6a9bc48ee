"""Unit tests of tvtheory.theorems: verdicts of T1, C1, T2, T3, T4 and the optimizer check, the refusal of
T2-T4 for ReLU, T2(b) reported as proven by the suite, and the same checks on a tiny ViT (T4 and the
T2(c)/T3 bounds n/a). The measurements they judge are tested in test_table.py and test_remainder.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import tvtheory.theorems as theorems
from tvtheory.bounds import T4_NOTE
from tvtheory.certificate import T6_NOTE
from tvtheory.data import split_by_label
from tvtheory.optimizers import OptimizerSpec
from tvtheory.theorems import (
    QUADRATIC_SERIES,
    Verdict,
    verify_c1,
    verify_optimizer,
    verify_t1,
    verify_t2,
    verify_t3,
    verify_t4,
    verify_t6,
)
from tvtheory.trajectory import gradient_descent, run_optimizer

ROOT = Path(__file__).resolve().parents[1]


def test_verdict_to_dict_and_label():
    v = Verdict("T9", True, 0.5, "msg", {"extra": 1})
    assert v.to_dict() == {"holds": True, "applicable": True, "margin": 0.5, "message": "msg", "extra": 1}
    assert v.label == "holds"
    assert Verdict("T9", False, 2.0, "m").label == "FAILS"
    na = Verdict("T9", None, None, "m")
    assert na.label == "n/a" and na.to_dict()["applicable"] is False and na.to_dict()["holds"] is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_verify_t1_holds(make_small_problem, dtype, activation):
    p = make_small_problem(activation=activation, dtype=dtype)
    v = verify_t1(p, 0.1)
    assert v.theorem == "T1" and v.holds is True
    assert 0 <= v.margin <= 1
    assert v.details["torch_sgd"]["holds"] and v.details["functional"]["holds"]
    assert v.margin == max(v.details["torch_sgd"]["max_ratio"], v.details["functional"]["max_ratio"])
    assert str(dtype) in v.message and "P = 51" in v.message


@pytest.mark.parametrize("T", [1, 2, 3])
def test_verify_c1_holds(make_small_problem, T):
    p = make_small_problem(n=60)
    v = verify_c1(p, 0.1, split_by_label(p.data, T))
    assert v.theorem == "C1" and v.holds is True and v.margin <= 1
    assert v.details["num_tasks"] == T
    # alpha = 1/T merge vs one multitask GD step: equal up to rounding (a relative gap of a few u)
    assert v.details["alpha_1_over_T_relative_gap"] <= 1e3 * 2.0 ** -53


def test_verify_c1_fails_for_a_wrong_learning_rate_claim(small_problem, monkeypatch):
    """The C1 check is sharp: measuring the residual against lr * (1 + 1e-9) instead of lr makes it fail."""
    p = small_problem
    tasks = split_by_label(p.data, 2)
    assert verify_c1(p, 0.1, tasks).holds
    real = theorems.exact_residual
    monkeypatch.setattr(theorems, "exact_residual", lambda tau, grads, lr: real(tau, grads, lr * (1 + 1e-9)))
    assert verify_c1(p, 0.1, tasks).holds is False


def test_verify_c1_judges_the_merge_against_one_multitask_step(small_problem, monkeypatch):
    """The alpha = 1/T merge is judged against one multitask GD step (autograd of L_MT) with its model: a
    multitask gradient off by a relative 1e-3 (as from a wrong alpha or a wrong task weighting) fails it."""
    p = small_problem
    tasks = split_by_label(p.data, 2)
    ok = verify_c1(p, 0.1, tasks)
    assert ok.holds and 0 < ok.details["merge_gap"]["ratio"] <= 1
    real = theorems.gradient
    monkeypatch.setattr(theorems, "gradient", lambda f, theta: real(f, theta) * (1 + 1e-3))
    off = verify_c1(p, 0.1, tasks)
    assert off.holds is False and off.details["check"]["holds"] and not off.details["merge_gap"]["holds"]


def test_verify_t4_holds_and_reports_tightness(small_problem):
    p = small_problem
    traj = gradient_descent(p.objective, p.theta0, 0.5, 3)
    v = verify_t4(p, [traj.theta0, traj.thetas[-1]])
    assert v.theorem == "T4" and v.holds is True
    assert len(v.details["points"]) == 2
    for point in v.details["points"]:
        assert point["bound"] >= point["hessian_norm"] > 0
        assert point["tightness"] == point["bound"] / point["hessian_norm"]
    assert v.margin == min(pt["tightness"] for pt in v.details["points"]) >= 1
    # a Hessian norm passed in is used as is (a larger one than the bound makes it fail)
    fake = verify_t4(p, [traj.theta0], [1e9])
    assert fake.holds is False and fake.details["points"][0]["hessian_norm"] == 1e9


def test_verify_t6_holds_and_reports_tightness(small_problem):
    p = small_problem
    traj = gradient_descent(p.objective, p.theta0, 0.5, 3)
    v = verify_t6(p, [traj.theta0, traj.thetas[-1]])
    assert v.theorem == "T6" and v.holds is True and len(v.details["points"]) == 2
    t4 = verify_t4(p, [traj.theta0, traj.thetas[-1]])
    for point, p4 in zip(v.details["points"], t4.details["points"], strict=True):
        assert p4["bound"] >= point["certificate"] >= point["hessian_norm"] > 0     # never above T4's bound
        assert point["tightness"] == point["certificate"] / point["hessian_norm"]
    assert v.margin == min(pt["tightness"] for pt in v.details["points"]) >= 1
    assert 0 < v.details["failure"] <= 1e-9
    fake = verify_t6(p, [traj.theta0], [1e9])            # a norm passed in is used as is: above the certificate
    assert fake.holds is False and fake.details["points"][0]["hessian_norm"] == 1e9


@pytest.mark.parametrize("check", ["T2", "T3", "T4", "T6"])
def test_curvature_statements_are_not_applicable_for_relu(make_small_problem, check):
    p = make_small_problem(activation="relu")
    if check == "T2":
        v = verify_t2(p, 0.1, 2)
    elif check == "T3":
        v = verify_t3(p, 0.1, 4)
    elif check == "T4":
        v = verify_t4(p, [p.theta0])
    else:
        v = verify_t6(p, [p.theta0])
    assert v.theorem == check and v.holds is None and v.margin is None and v.label == "n/a"
    assert "relu is not C^2" in v.message and "T1 still holds" in v.message


def test_verify_t2_and_t3_hold_on_a_small_problem(small_problem):
    t2 = verify_t2(small_problem, 0.1, 3)
    assert t2.theorem == "T2" and t2.holds is True and t2.margin >= 1
    assert t2.details["bound_holds"] and t2.details["slope"]["slope"] > 2.7
    t3 = verify_t3(small_problem, 0.1, 4)
    assert t3.theorem == "T3" and t3.holds is True and t3.details["num_batches"] == 4
    assert t3.details["epoch"]["error_norm"] <= t3.details["epoch"]["bound"]


@pytest.mark.parametrize("lr", [1e-7, 1e-4])
def test_small_learning_rates_do_not_fail_the_slope_checks(small_problem, lr):
    """At a small lr the remainders at lr are rounding; the grid is raised until they are resolved."""
    for v in (verify_t2(small_problem, lr, 3), verify_t3(small_problem, lr, 4)):
        assert v.holds is True and v.details["slope_holds"] is True, v.message
        assert v.details["slope"]["grid"]["raised"] and "grid raised from lr" in v.message


def test_an_unresolvable_slope_is_not_judged(small_problem):
    """With a (claimed) ||H|| so large that no grid resolves the remainders, (a) is "not resolvable": the
    verdict rests on the bound alone (still judged), instead of failing on a NaN slope."""
    for v in (verify_t2(small_problem, 0.1, 3, hessian_norm=1e12),
              verify_t3(small_problem, 0.1, 4, hessian_norm=1e12)):
        assert v.details["slope_holds"] is None and "not resolvable" in v.message
        assert v.holds is v.details["bound_holds"] is True


def test_verify_t2_reports_t2b_as_proven_by_the_suite_without_rerunning_it(small_problem, monkeypatch):
    """T2(b) does not depend on the problem: the verdict carries the fixed statement naming the test of
    verification/ that proves it, and no sympy proof runs per call."""
    import tvtheory.symbolic as symbolic

    def not_per_call(*args, **kwargs):
        raise AssertionError("verify_t2 re-ran the symbolic proof")

    monkeypatch.setattr(symbolic, "prove_quadratic_series", not_per_call)
    v = verify_t2(small_problem, 0.1, 2)
    assert v.holds is True and v.details["quadratic_series"] == QUADRATIC_SERIES
    assert "(b) quadratic series: a library property, proven symbolically by pytest verification/" in v.message


def test_the_test_named_for_t2b_exists_and_runs_the_proof():
    """QUADRATIC_SERIES names file::test; that test must exist and call prove_quadratic_series."""
    path, name = re.search(r"(verification/\S+\.py)::(\w+)", QUADRATIC_SERIES).groups()
    tree = ast.parse((ROOT / path).read_text())
    tests = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert name in tests, (path, name)
    calls = {n.func.id for n in ast.walk(tests[name]) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "prove_quadratic_series" in calls


def test_verify_t2_is_full_batch_whatever_the_problems_batches(make_small_problem):
    """T2 is about full-batch GD: a problem split into 4 batches must give the same verdict as B = 1
    (regression: the rows once used batch 0's gradient and Hessian bound as if they were the full ones)."""
    one, four = make_small_problem(batches=1), make_small_problem(batches=4)
    a, b = verify_t2(one, 0.1, 2), verify_t2(four, 0.1, 2)
    assert a.holds is True and b.holds is True
    assert a.margin == b.margin


@pytest.mark.parametrize("name, exact", [("gd", True), ("momentum", True), ("adam", False)])
def test_verify_optimizer(small_problem, name, exact):
    p = small_problem
    spec = OptimizerSpec(name, 0.05 if name != "adam" else 1e-3)
    traj = run_optimizer(p.objective, p.theta0, spec.make, 2, lr_for_messages=spec.lr)
    v = verify_optimizer(p, spec, traj)
    assert v.theorem == "optimizer" and v.holds is True
    assert v.details["exact_t1"] is exact
    assert -1 <= v.details["cos_tau_K_neg_g"] <= 1 + 1e-15
    if name == "momentum":
        assert v.details["momentum_c_k"] == [1.0, 1.0 + 1.9]
    if name == "adam":
        assert "direction changed" in v.message


def test_t1_c1_and_the_optimizer_hold_on_a_vit(make_vit_problem):
    p = make_vit_problem()
    t1 = verify_t1(p, 0.1)
    assert t1.holds is True and "P = 827" in t1.message
    assert verify_c1(p, 0.1, split_by_label(p.data, 2)).holds is True
    spec = OptimizerSpec("momentum", 0.05)
    traj = run_optimizer(p.objective, p.theta0, spec.make, 2, lr_for_messages=spec.lr)
    assert verify_optimizer(p, spec, traj).holds is True


def test_verify_t2_on_a_vit_measures_slope_3_without_a_bound(make_vit_problem):
    """T2(a) and (b) need only C^2 and HVPs; (c) needs T4's M_j, which a ViT does not have."""
    v = verify_t2(make_vit_problem(), 0.1, 3)
    assert v.theorem == "T2" and v.holds is True
    slope = v.details["slope"]
    assert slope["resolved"] >= 3 and slope["slope"] == pytest.approx(3.0, abs=0.1)
    assert v.margin == slope["slope"]
    assert v.details["bound_holds"] is None and v.details["min_bound_ratio"] is None
    assert v.message.startswith("(c) n/a: no T4 bound M_j for this network; (a) slope of ||R_3|| vs eta = ")


def test_verify_t3_on_a_vit_measures_slope_3_without_a_bound(make_vit_problem):
    v = verify_t3(make_vit_problem(), 0.1, 4)
    assert v.holds is True and v.margin == v.details["slope"]["slope"] == pytest.approx(3.0, abs=0.1)
    assert v.details["bound_holds"] is None and v.details["epoch"]["bound"] is None
    assert "bound n/a (no T4 bound M_b for this network)" in v.message


def test_verify_t4_is_not_applicable_to_a_vit(make_vit_problem):
    p = make_vit_problem()
    v = verify_t4(p, [p.theta0])
    assert v.theorem == "T4" and v.holds is None and v.margin is None and v.message == T4_NOTE
    assert v.to_dict()["applicable"] is False


def test_verify_t6_is_not_applicable_to_a_vit(make_vit_problem):
    p = make_vit_problem()
    v = verify_t6(p, [p.theta0])
    assert v.theorem == "T6" and v.holds is None and v.margin is None and v.message == T6_NOTE
    assert v.to_dict()["applicable"] is False
