"""The recording loop of the vision experiments on a tiny random ViT (dim 16, depth 1) and synthetic images."""

from __future__ import annotations

import copy

import pytest
import torch
from cases import tiny_data, tiny_model

from tvtheory.experiments.finetune import FinetuneConfig, finetune, make_batches, make_optimizer
from tvtheory.experiments.storage import grad_path, load_vector, tau_path
from tvtheory.losses import get_loss
from tvtheory.objective import Objective
from tvtheory.params import ParamLayout, flat_params
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
