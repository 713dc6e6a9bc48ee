"""The recorder for any training loop (tvtheory.recorder), its report (tvtheory.report) and figure
(paper_figures.user_run): exact task vectors, T1 on full-batch GD (and its failure with a wrong learning rate or
weight decay), the gradient norms, E2 and the JSON.
"""

import json

import pytest
import torch
from torch import nn

from paper_figures import user_run
from tvtheory.experiments.storage import load_tensors
from tvtheory.recorder import RUN_JSON, FullBatch, Recorder, batch_size
from tvtheory.report import format_run, load_run
from tvtheory.report import main as report_main


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def data(n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def mean_loss(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def train(folder, epochs=3, batches=1, lr=0.1, weight_decay=0.0, stated_lr=None, select=None, full_batch=True):
    """A plain loop; returns the recorder and the parameters after every epoch (named, copied)."""
    model, (x, y) = net(), data()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    loader = list(zip(x.chunk(batches), y.chunk(batches), strict=True))
    recorder = Recorder(model, optimizer, folder, select=select, lr=stated_lr, config={"task": "toy"}, seed=7,
                        full_batch=FullBatch(loader, mean_loss) if full_batch else None)
    snapshots, norms = [{n: p.detach().clone() for n, p in model.named_parameters()}], []
    with recorder:
        train_epochs(recorder, model, optimizer, loader, select, epochs, snapshots, norms)
    return recorder, snapshots, norms


def train_epochs(recorder, model, optimizer, loader, select, epochs, snapshots, norms):
    for _ in range(epochs):
        with recorder.epoch():
            epoch_norms = []
            for batch in loader:
                optimizer.zero_grad()
                mean_loss(model, batch).backward()
                epoch_norms.append(float(torch.linalg.vector_norm(
                    torch.cat([p.grad.reshape(-1) for n, p in model.named_parameters()
                               if select is None or n.startswith(select)]))))
                optimizer.step()
            norms.append(sum(epoch_norms) / len(epoch_norms))
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})


def test_full_batch_gd_task_vectors_are_exact_and_t1_holds(tmp_path):
    recorder, snaps, norms = train(tmp_path)
    for k in range(1, 4):
        tau = load_tensors(tmp_path / f"tau_epoch{k:03d}.safetensors")
        assert set(tau) == set(snaps[0])
        assert all(torch.equal(tau[n], snaps[k][n] - snaps[0][n]) for n in tau)
    run = load_run(tmp_path / RUN_JSON)
    assert run["T1"]["holds"] and run["T1"]["max_ratio"] <= 1
    assert [r["steps"] for r in run["epochs"]] == [1, 1, 1]
    assert [r["minibatch_grad_norm_mean"] for r in run["epochs"]] == pytest.approx(norms, rel=1e-12)
    # full-batch GD: the full-batch gradient at the epoch start is the step's gradient (E1) ...
    assert [r["full_grad_norm_start"] for r in run["epochs"]] == pytest.approx(norms, rel=1e-12)
    # ... and update_k = -eta grad L(theta_{k-1}) (T1), so the two E2 cosine lists agree
    assert run["E2"]["cos_update_k_tauK"] == pytest.approx(run["E2"]["cos_neg_g_k_tauK"], abs=1e-12)
    assert run["config"] == {"task": "toy"} and run["seed"] == 7 and "torch" in run["versions"]
    assert run["optimizer"]["class"] == "SGD" and run["files"]["grads"][0] == "grad_epoch001.safetensors"


@pytest.mark.parametrize("change", [{"stated_lr": 0.1 * (1 + 1e-6)}, {"weight_decay": 1e-3}])
def test_t1_fails_with_a_wrong_learning_rate_or_weight_decay(tmp_path, change):
    recorder, _, _ = train(tmp_path, epochs=1, full_batch=False, **change)
    assert recorder.t1["holds"] is False and recorder.t1["max_ratio"] > 1
    assert "T1: FAILS" in format_run(recorder.summary())


def test_mini_batches_a_selected_subset_and_no_full_batch_extras(tmp_path):
    recorder, snaps, norms = train(tmp_path, epochs=2, batches=4, select="2.", full_batch=False)
    run = recorder.summary()
    assert run["tensors"] == ["2.weight", "2.bias"] and run["num_params"] == 27
    assert set(load_tensors(tmp_path / "tau_epoch002.safetensors")) == {"2.weight", "2.bias"}
    assert [r["steps"] for r in run["epochs"]] == [4, 4]
    assert [r["minibatch_grad_norm_mean"] for r in run["epochs"]] == pytest.approx(norms, rel=1e-12)
    assert run["epochs"][0]["full_grad_norm_start"] is None and "cos_neg_g_tauK" not in run["E2"]
    assert run["T1"] is None and "T1: n/a: the run is not full-batch GD (epoch 1 took 4 steps)" in format_run(run)
    assert run["E2"]["cos_tau_k_tauK"][-1] == pytest.approx(1.0)
    assert set(run["E2"]["per_layer"]["cos_tau1_tauK"]) == {"2.weight", "2.bias"}


def test_the_report_the_figure_and_bad_files(tmp_path, capsys):
    train(tmp_path, epochs=2)
    assert report_main([str(tmp_path / RUN_JSON)]) == 0
    out = capsys.readouterr().out
    assert "E1 (full-batch gradient norm): epoch 1 has share" in out and "T1: holds" in out
    assert user_run.main([str(tmp_path / RUN_JSON), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "user_f1_f2.png").stat().st_size > 0
    (tmp_path / "other.json").write_text(json.dumps({"config": {}}))
    assert report_main([str(tmp_path / "other.json")]) == 2
    assert report_main([str(tmp_path / "missing.json")]) == 2
    assert "not a run recorded by tvtheory.recorder" in capsys.readouterr().err


def test_epochs_must_be_opened_and_batches_sized(tmp_path):
    recorder = Recorder(net(), None, tmp_path)
    with pytest.raises(ValueError, match="end_epoch\\(\\) without start_epoch\\(\\)"):
        recorder.end_epoch()
    assert batch_size({"pixel_values": torch.zeros(5, 3)}) == 5 and batch_size((torch.zeros(2), 0)) == 2
    with pytest.raises(ValueError, match="cannot tell the size of a batch"):
        batch_size(3)


def test_a_step_given_a_closure_is_read_after_the_closure(tmp_path):
    model, (x, y) = net(), data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = Recorder(model, optimizer, tmp_path)

    def closure():
        optimizer.zero_grad()
        loss = mean_loss(model, (x, y))
        loss.backward()
        return loss

    with recorder.epoch():
        optimizer.step(closure)                 # the gradient exists only once the closure has run
    grad_norm = float(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in model.parameters()])))
    assert recorder.t1["holds"] and recorder.records[0]["minibatch_grad_norm_mean"] == pytest.approx(grad_norm)
