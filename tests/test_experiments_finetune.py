"""The recording loop of the vision experiments on a tiny random ViT (dim 16, depth 1) and synthetic images."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from cases import tiny_data, tiny_model

from tvtheory.experiments.finetune import (
    EarlyStopping,
    FinetuneConfig,
    convergence_summary,
    finetune,
    make_batches,
    make_optimizer,
)
from tvtheory.experiments.storage import grad_path, load_vector, tau_path
from tvtheory.losses import get_loss
from tvtheory.objective import Objective
from tvtheory.params import ParamLayout, flat_params, load_flat_
from tvtheory.trajectory import DivergenceError, run_optimizer


@pytest.mark.parametrize("opt", ["gd", "sgd", "adamw"])
def test_iterates_equal_library_run_optimizer_bitwise(tmp_path, opt):
    """One process, one chunk per batch: the same arithmetic as tvtheory.trajectory.run_optimizer, bit for bit."""
    model = tiny_model()
    x, y = tiny_data(24)
    cfg = FinetuneConfig(opt, 0.01 if opt != "adamw" else 1e-3, 3, batch_size=8, chunk_size=1000)
    res = finetune(copy.deepcopy(model), x, y, cfg, tmp_path, progress=False)
    batches = make_batches(24, cfg)
    assert len(batches) == (1 if opt == "gd" else 3) and res.num_batches == len(batches)
    traj = run_optimizer(Objective(model, get_loss("ce"), x, y), flat_params(model),
                         lambda ps: make_optimizer(cfg, ps), 3, None if opt == "gd" else batches)
    layout = ParamLayout.of(model)
    for k in (1, 2, 3):
        assert torch.equal(load_vector(tau_path(tmp_path, k), layout), traj.task_vector(k))
    # E1 records: the full-batch gradient at each epoch start is the library's gradient there. float64, two
    # evaluation orders of one gradient (module backward of sum/N vs torch.func.grad of the mean): they differ
    # by rounding, ~1e-15 relative; rel=1e-12 separates that from a wrong point or batch (an O(1) difference).
    full = Objective(model, get_loss("ce"), x, y)
    for k, rec in enumerate(res.records):
        g = torch.func.grad(full)(traj.at_epoch(k))
        assert rec["full_grad_norm_start"] == pytest.approx(float(g.norm()), rel=1e-12)
    grads = traj.grads
    B = len(batches)
    for k, rec in enumerate(res.records):
        norms = [float(g.norm()) for g in grads[k * B:(k + 1) * B]]
        assert rec["minibatch_grad_norm_mean"] == pytest.approx(sum(norms) / B, rel=1e-12)


def test_gd_records_t1_and_only_encoder_moves(tmp_path):
    model = tiny_model(dtype=torch.float32)
    x, y = tiny_data(16, dtype=torch.float32)
    head = model.head_weight.clone()
    res = finetune(model, x, y, FinetuneConfig("gd", 0.05, 2), tmp_path, progress=False)
    assert res.t1_check["holds"] and res.t1_check["max_ratio"] <= 1.0
    assert torch.equal(model.head_weight, head)
    assert all(n.startswith("encoder.") for n in ParamLayout.of(model).names)
    # the gradient at each epoch start is stored; for GD, epoch k's update is -eta times it (T1)
    layout = ParamLayout.of(model)
    taus = [load_vector(tau_path(tmp_path, k), layout) for k in (1, 2)]
    grads = [load_vector(grad_path(tmp_path, k), layout) for k in (1, 2)]
    assert torch.allclose(taus[1] - taus[0], -0.05 * grads[1], rtol=0, atol=1e-6)
    assert torch.allclose(taus[0], -0.05 * grads[0], rtol=0, atol=1e-7)


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_resume_continues_without_redoing_epochs(tmp_path, opt):
    """Interrupted after epoch 1, resumed: same task vectors (AdamW's moments restored), epoch 1 not redone."""
    x, y = tiny_data(24)
    cfg = FinetuneConfig(opt, 0.01 if opt == "sgd" else 1e-3, 3, batch_size=8)
    full = finetune(tiny_model(), x, y, cfg, tmp_path / "full", progress=False)
    part = finetune(tiny_model(), x, y, cfg, tmp_path / "part", progress=False, stop_after=1)
    assert len(part.records) == 1 and not tau_path(tmp_path / "part", 2).exists()
    first_epoch_file = tau_path(tmp_path / "part", 1).stat().st_mtime_ns
    resumed = finetune(tiny_model(), x, y, cfg, tmp_path / "part", progress=False)
    assert resumed.resumed_from_epoch == 1 and len(resumed.records) == 3
    assert tau_path(tmp_path / "part", 1).stat().st_mtime_ns == first_epoch_file
    layout = ParamLayout.of(tiny_model())
    for k in (1, 2, 3):
        assert torch.equal(load_vector(tau_path(tmp_path / "full", k), layout),
                           load_vector(tau_path(tmp_path / "part", k), layout))
    strip = lambda recs: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in recs]  # noqa: E731
    assert strip(resumed.records) == strip(full.records)
    again = finetune(tiny_model(), x, y, cfg, tmp_path / "part", progress=False)   # finished: nothing to do
    assert again.resumed_from_epoch == 3 and len(again.records) == 3


def test_checkpoint_of_another_config_is_refused(tmp_path):
    x, y = tiny_data(16)
    finetune(tiny_model(), x, y, FinetuneConfig("sgd", 0.01, 2, batch_size=8), tmp_path, progress=False,
             stop_after=1)
    with pytest.raises(ValueError, match="another config"):
        finetune(tiny_model(), x, y, FinetuneConfig("sgd", 0.02, 2, batch_size=8), tmp_path, progress=False)
    with pytest.raises(ValueError, match="another pretrained point"):
        finetune(tiny_model(seed=5), x, y, FinetuneConfig("sgd", 0.01, 2, batch_size=8), tmp_path, progress=False)


def test_batches_partition_and_divergence(tmp_path):
    cfg = FinetuneConfig("sgd", 0.1, 1, batch_size=4, seed=3)
    b = make_batches(10, cfg)
    assert len(b) == 3 and sorted(torch.cat(b).tolist()) == list(range(10))
    assert max(map(len, b)) - min(map(len, b)) <= 1
    assert [t.tolist() for t in b] == [t.tolist() for t in make_batches(10, cfg)]
    with pytest.raises(ValueError, match="unknown optimizer"):
        FinetuneConfig("adam", 0.1, 1)
    x, y = tiny_data(8)
    with pytest.raises(DivergenceError, match="lower the learning rate"):
        finetune(tiny_model(), x, y, FinetuneConfig("gd", 1e12, 3), tmp_path, progress=False)


# ------------------------------------------------------------------------------------------ early stopping

def _stop_reference(val, patience, cap, restore_best=True, ties="first"):
    """The stopping rule written out non-incrementally: (last epoch K, converged epoch, stopped_by) of the curve
    val[0..] (val[0] the pretrained point). K is the first k with k - k*(k) >= patience, k*(k) the first epoch of
    the maximum of val[1..k] (the pretrained point is no candidate), else the cap; converged = k*(K) or K.
    ``ties="last"`` is the mutant "a tie counts as an improvement" (>= instead of >)."""
    def best(k):
        top = max(val[1:k + 1])
        hits = [j for j in range(1, k + 1) if val[j] == top]
        return hits[0] if ties == "first" else hits[-1]

    for k in range(1, cap + 1):
        if patience is not None and k - best(k) >= patience:
            return k, best(k) if restore_best else k, "patience"
        if k == cap:
            return k, best(k) if restore_best else k, "cap" if restore_best else "budget"
    raise AssertionError("unreachable")


def _drive(val, patience, cap, restore_best=True):
    stop = EarlyStopping(patience, cap, restore_best)
    stop.start(val[0])
    for k in range(1, len(val)):
        if stop.update(k, val[k]):
            break
    return stop


CURVE = [0.5, 0.6, 0.7, 0.7, 0.65, 0.7, 0.9, 0.85, 0.8, 0.8, 0.8]        # epochs 0 (pretrained), 1..10


@pytest.mark.parametrize(("val", "patience", "cap", "expected"), [
    # best 0.7 at epoch 2 (tied at 3 and 5: the earliest wins), 3 epochs without a strictly better one -> stop at 5;
    # the last epoch (5) is not the best
    (CURVE, 3, 10, (5, 2, "patience")),
    # patience 4 reaches epoch 6 (0.9); 7..10 are worse: patience runs out exactly at the cap
    (CURVE, 4, 10, (10, 6, "patience")),
    # still improving at the cap
    ([0.0, 0.1, 0.2, 0.3, 0.4], 2, 4, (4, 4, "cap")),
    # the pretrained point is the best: epoch 1 is still k* (a finetuned vector), the run stops after patience
    ([0.9, 0.5, 0.5, 0.4], 2, 10, (3, 1, "patience")),
    # patience reached exactly at the cap: the patience rule is named
    ([0.1, 0.5, 0.2, 0.3], 2, 3, (3, 1, "patience")),
])
def test_early_stopping_on_constructed_curves(val, patience, cap, expected):
    stop = _drive(val, patience, cap)
    assert (stop.last_epoch, stop.converged_epoch, stop.stopped_by) == expected
    assert _stop_reference(val, patience, cap) == expected
    assert stop.val_accuracy == val[:stop.last_epoch + 1]
    assert stop.best_val == max(val[1:stop.last_epoch + 1])


def test_early_stopping_mutations_are_detected():
    """On CURVE with patience 3, each mutant gives another (K, k*) than the expected (5, 2), so the test above
    fails under it: patience + 1, ties counted as improvements (>=), the last epoch as tau^(conv)."""
    ok = _drive(CURVE, 3, 10)
    expected = (ok.last_epoch, ok.converged_epoch)
    assert expected == (5, 2)
    mutants = {"patience + 1": _stop_reference(CURVE, 4, 10)[:2],
               ">= instead of >": _stop_reference(CURVE, 3, 10, ties="last")[:2],
               "last epoch": (ok.last_epoch, ok.last_epoch)}
    for name, outcome in mutants.items():
        assert outcome != expected, name


def test_early_stopping_equals_its_non_incremental_statement():
    """200 seeded random curves on a coarse grid (many ties), patience 1..4, caps 1..12, gd and restore-best."""
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        cap = int(torch.randint(1, 13, (1,), generator=g))
        patience = int(torch.randint(1, 5, (1,), generator=g))
        val = (torch.randint(0, 5, (cap + 1,), generator=g) / 4).tolist()
        for restore_best, p in ((True, patience), (False, None)):
            stop = _drive(val, p, cap, restore_best)
            assert (stop.last_epoch, stop.converged_epoch, stop.stopped_by) == _stop_reference(val, p, cap,
                                                                                               restore_best)
            assert stop.best_is_pretrained == (val[0] >= stop.best_val)
            assert EarlyStopping.from_dict(stop.to_dict()) == stop


def test_early_stopping_state_is_checked_and_guarded():
    stop = _drive([0.5, 0.6, 0.7, 0.6], 5, 10)
    bad = {**stop.to_dict(), "best_epoch": 3}
    with pytest.raises(ValueError, match="does not follow from its validation curve"):
        EarlyStopping.from_dict(bad)
    with pytest.raises(ValueError, match="epoch 5 after epoch 3"):
        stop.update(5, 0.1)
    with pytest.raises(ValueError, match="non-empty validation split"):
        EarlyStopping(2, 5).start(float("nan"))
    no_val = EarlyStopping(None, 2)
    assert not no_val.update(1, None) and no_val.update(2, None) and no_val.stopped_by == "cap"
    assert no_val.converged_epoch == 2 and no_val.best_is_pretrained is None
    with pytest.raises(ValueError, match="validation accuracy is given exactly"):
        EarlyStopping(None, 2).update(1, 0.5)
    with pytest.raises(ValueError, match="no early stopping"):
        FinetuneConfig("gd", 0.1, 3, patience=2)
    with pytest.raises(ValueError, match="patience must be None or an integer >= 1"):
        FinetuneConfig("sgd", 0.1, 3, patience=0)
    x, y = tiny_data(8)
    with pytest.raises(ValueError, match="needs a validation function"):
        finetune(tiny_model(), x, y, FinetuneConfig("sgd", 0.01, 3, batch_size=4, patience=1), "unused",
                 progress=False)


def _scripted_validation(tmp_path, cfg, x, y, values):
    """A validation function of the model's parameters that returns values[k] at theta_k, the iterates of this
    config's run (found by a reference run without early stopping): a constructed validation curve that is a
    deterministic function of theta, so it survives resumption like a real one."""
    thetas = []

    def record(m):
        thetas.append(flat_params(m).clone())
        return 0.0

    ref = dataclasses.replace(cfg, patience=None, max_epochs=len(values) - 1)
    finetune(tiny_model(), x, y, ref, tmp_path / "reference", progress=False, validate=record)

    def validate(m):
        theta = flat_params(m)
        k = next((i for i, t in enumerate(thetas) if torch.equal(t, theta)), None)
        assert k is not None, "the early-stopped run left the reference iterates"
        return values[k]

    return validate


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_finetune_stops_at_the_constructed_epoch_and_resumes_identically(tmp_path, opt):
    """Validation curve 0.3 | 0.4 0.6 0.5 0.6 0.55 0.9 (epochs 0 | 1..6), patience 3, cap 6: k* = 2 (tied with 4,
    the earliest), epochs 3, 4, 5 bring nothing strictly better: the run stops after epoch 5, never sees 0.9.
    Interrupted after epoch 2 and after epoch 4, the resumed run gives the same records, stopping state, task
    vectors and final point, and stops at the same epoch."""
    x, y = tiny_data(24)
    values = [0.3, 0.4, 0.6, 0.5, 0.6, 0.55, 0.9]
    cfg = FinetuneConfig(opt, 0.01 if opt == "sgd" else 1e-3, 6, batch_size=8, patience=3)
    validate = _scripted_validation(tmp_path, cfg, x, y, values)
    full = finetune(tiny_model(), x, y, cfg, tmp_path / "full", progress=False, validate=validate)
    assert full.finished and full.stopping["stopped_by"] == "patience"
    assert full.stopping["last_epoch"] == 5 and full.stopping["best_epoch"] == 2
    assert EarlyStopping(**full.stopping).converged_epoch == 2
    assert full.stopping["val_accuracy"] == values[:6] and [r["val_accuracy"] for r in full.records] == values[1:6]
    assert len(full.records) == 5 and tau_path(tmp_path / "full", 5).exists()
    assert not tau_path(tmp_path / "full", 6).exists()
    # the final point: loss and gradient norm at theta_5 (float64, two evaluation orders: rel 1e-12, module docs)
    f = Objective(tiny_model(), get_loss("ce"), x, y)
    theta5 = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["theta"]
    assert full.final["full_grad_norm"] == pytest.approx(float(torch.func.grad(f)(theta5).norm()), rel=1e-12)
    assert full.final["full_loss"] == pytest.approx(float(f(theta5)), rel=1e-12)

    part = tmp_path / "part"
    for stop_after in (2, 2):
        r = finetune(tiny_model(), x, y, cfg, part, progress=False, stop_after=stop_after, validate=validate)
        assert not r.finished and r.final is None
    assert len(r.records) == 4 and not tau_path(part, 5).exists()
    resumed = finetune(tiny_model(), x, y, cfg, part, progress=False, validate=validate)
    assert resumed.resumed_from_epoch == 4 and resumed.finished
    strip = lambda recs: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in recs]  # noqa: E731
    assert strip(resumed.records) == strip(full.records)
    assert resumed.stopping == full.stopping and resumed.final == full.final
    layout = ParamLayout.of(tiny_model())
    for k in range(1, 6):
        assert torch.equal(load_vector(tau_path(part, k), layout), load_vector(tau_path(tmp_path / "full", k), layout))
    # interrupted between the last epoch and the final point: the final point is measured on resumption
    ckpt = torch.load(part / "checkpoint.pt", weights_only=False)
    torch.save({**ckpt, "final": None}, part / "checkpoint.pt")
    again = finetune(tiny_model(), x, y, cfg, part, progress=False, validate=validate)
    assert again.resumed_from_epoch == 5 and again.final == full.final and len(again.records) == 5
    finetune(tiny_model(), x, y, dataclasses.replace(cfg, patience=None), tmp_path / "novalidate", progress=False,
             stop_after=1)
    with pytest.raises(ValueError, match="recorded without a validation function"):
        finetune(tiny_model(), x, y, dataclasses.replace(cfg, patience=None), tmp_path / "novalidate",
                 progress=False, validate=validate)


def test_gd_runs_its_budget_and_reports_how_far_from_convergence(tmp_path):
    """gd: no early stopping, the converged epoch is the last even when validation peaked earlier; the
    convergence summary is the curve's first / best / last, the best epoch and the full-batch ratios."""
    x, y = tiny_data(16)
    values = [0.2, 0.5, 0.7, 0.6, 0.6]
    cfg = FinetuneConfig("gd", 0.01, 4)
    validate = _scripted_validation(tmp_path, cfg, x, y, values)
    res = finetune(tiny_model(), x, y, cfg, tmp_path / "gd", progress=False, validate=validate)
    stop = EarlyStopping(**res.stopping)
    assert stop.stopped_by == "budget" and stop.last_epoch == 4 and stop.converged_epoch == 4
    assert stop.best_epoch == 2
    c = convergence_summary(stop, res.records, res.final)
    assert (c["val_accuracy_first"], c["val_accuracy_best"], c["val_accuracy_last"], c["best_epoch"]) == (
        0.5, 0.7, 0.6, 2)
    assert c["still_improving"] is False
    assert c["full_grad_norm_first"] == res.records[0]["full_grad_norm_start"]
    assert c["grad_norm_last_over_first"] == res.final["full_grad_norm"] / res.records[0]["full_grad_norm_start"]
    assert c["loss_last_over_first"] == res.final["full_loss"] / res.records[0]["full_loss_start"]
    assert res.final["full_loss"] < res.records[0]["full_loss_start"]        # GD at a small step: the loss falls


@pytest.mark.parametrize(("best", "K", "improving"), [(8, 10, False), (9, 10, True), (10, 10, True), (1, 1, True),
                                                      (24, 30, False), (25, 30, True), (3, 4, False), (4, 4, True)])
def test_still_improving_is_the_best_in_the_last_fifth(best, K, improving):
    """The last 20 % of K epochs are those k with k > 0.8 K (K = 10: 9 and 10; K = 30: 25..30; K = 4: 4)."""
    val = [0.0] + [0.5] * K
    val[best] = 0.9
    stop = _drive(val, None, K, restore_best=False)
    recs = [{"full_grad_norm_start": 1.0, "full_loss_start": 1.0}]
    assert convergence_summary(stop, recs, {"full_grad_norm": 0.5, "full_loss": 0.25})["still_improving"] is improving


def test_pipeline_payload_restores_the_best_epoch(tmp_path, monkeypatch):
    """runs.finetune_tasks, sgd on the --synthetic setup with a constructed validation curve (runs' validation
    function replaced; the payload's accuracies are still measured): 0.5 | 0.6 0.8 0.7 0.8 0.9 (epochs 0 | 1..5),
    patience 2: k* = 2 (the tie at 4 is later), stopped after epoch 4 by patience, never reaching 0.9. The
    stopping block, the task vectors 1..4, the accuracies of tau^(conv) = tau^(2) and E2's reference say so."""

    from tvtheory.experiments import heads, runs
    from tvtheory.experiments.config import VisionConfig
    from tvtheory.experiments.dist import DistContext
    from tvtheory.experiments.encoders import load_encoder
    from tvtheory.experiments.tasks import load_task_data

    curve = iter([0.5, 0.6, 0.8, 0.7, 0.8, 0.9])
    monkeypatch.setattr(runs, "split_accuracy", lambda *a, **k: next(curve))
    config = VisionConfig(synthetic=True, tasks=("mnist",), optimizers=("sgd",), lr_sgd=1e-4, batch_size=16,
                          max_epochs=6, patience=2, max_train=48, max_val=8, max_test=8, second_order=False,
                          progress=False, results=str(tmp_path / "results"), artifacts=str(tmp_path / "artifacts"))
    encoder, ctx = load_encoder(config), DistContext()
    r = runs.finetune_tasks(config, encoder, ctx)[("mnist", "sgd")]
    assert json.loads(runs.result_path(config, "mnist", "sgd").read_text()) == json.loads(json.dumps(r))
    st = r["stopping"]
    assert {"rule", "patience", "max_epochs", "converged_epoch", "last_epoch", "stopped_by", "val_accuracy",
            "best_val_accuracy", "convergence"} <= set(st)
    assert (st["patience"], st["max_epochs"], st["converged_epoch"], st["last_epoch"], st["stopped_by"]) == (
        2, 6, 2, 4, "patience")
    assert st["val_accuracy"] == [0.5, 0.6, 0.8, 0.7, 0.8] and st["best_val_accuracy"] == 0.8
    assert st["best_is_pretrained"] is False and "restore-best" in st["rule"]
    assert st["convergence"]["best_epoch"] == 2 and st["convergence"]["still_improving"] is False
    assert r["config"]["finetune"]["patience"] == 2 and r["config"]["finetune"]["max_epochs"] == 6
    assert len(r["records"]) == len(r["task_vectors"]) == 4
    assert [x["val_accuracy"] for x in r["records"]] == [0.6, 0.8, 0.7, 0.8]
    assert not (tmp_path / "artifacts" / "mnist" / "sgd" / "tau_epoch005.safetensors").exists()
    e2 = r["analysis"]["E2"]
    assert e2["reference_epoch"] == 2 and e2["cos_tau_k_tauK"][1] == pytest.approx(1.0, rel=1e-6)
    assert len(e2["cos_tau_k_tauK"]) == 4 and len(r["analysis"]["expansion"]["epochs"]) == 4
    assert len(r["analysis"]["E1"]["full_grad_norm_start"]["normalised"]) == 4

    layout = ParamLayout.of(heads.classifier(heads.task_head("mnist", load_task_data("mnist", config, encoder),
                                                            config, encoder, ctx), encoder, ctx))

    def flat(k):            # in the layout's order (a safetensors file lists its tensors sorted by name)
        return load_vector(r["task_vectors"][k - 1], layout).double()

    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    assert r["analysis"]["cos_tau1_tauconv"] == e2["cos_tau1_tauconv"] == e2["cos_tau1_tauK"]
    assert e2["cos_tau1_tauconv"] == pytest.approx(cos(flat(1), flat(2)), rel=1e-6)
    assert abs(cos(flat(1), flat(2)) - cos(flat(1), flat(4))) > 1e-4        # so the reference is not tau^(4)
    # accuracy.one_epoch / .finetuned are tau^(1)'s / tau^(2)'s, evaluated again here
    data = load_task_data("mnist", config, encoder)
    model = heads.classifier(heads.task_head("mnist", data, config, encoder, ctx), encoder, ctx)
    theta0 = flat_params(model)
    for name, k in (("one_epoch", 1), ("finetuned", 2)):
        load_flat_(model, theta0 + flat(k).to(theta0.dtype))
        assert r["accuracy"][name] == heads.accuracies(model, data, config, encoder, ctx), name
    # gd in the same pipeline: a budget of 3 steps, validation 0.5 | 0.7 0.6 0.65: tau^(conv) is step 3 anyway, and
    # stopping.convergence says the best was step 1 (not in the last 20 %) and how the full-batch numbers moved
    curve = iter([0.5, 0.7, 0.6, 0.65])
    monkeypatch.setattr(runs, "split_accuracy", lambda *a, **k: next(curve))
    gd_config = dataclasses.replace(config, optimizers=("gd",), lr_gd=1e-4, gd_steps=3)
    r = runs.finetune_tasks(gd_config, encoder, ctx)[("mnist", "gd")]
    st = r["stopping"]
    assert (st["patience"], st["max_epochs"], st["converged_epoch"], st["last_epoch"], st["stopped_by"]) == (
        None, 3, 3, 3, "budget")
    assert "budget" in st["rule"] and r["analysis"]["E2"]["reference_epoch"] == 3
    c = st["convergence"]
    assert (c["val_accuracy_first"], c["val_accuracy_best"], c["val_accuracy_last"], c["best_epoch"],
            c["still_improving"]) == (0.7, 0.7, 0.65, 1, False)
    assert c["full_grad_norm_first"] == r["records"][0]["full_grad_norm_start"]
    assert c["full_grad_norm_last"] == r["final_point"]["full_grad_norm"]
    assert c["loss_last_over_first"] == r["final_point"]["full_loss"] / r["records"][0]["full_loss_start"]
    assert len(r["task_vectors"]) == 3 and r["t1_check"]["holds"]
