"""``tvtheory.experiments.atm`` (``python -m tvtheory.experiments.vision atm``) on --synthetic runs: the payload,
T5(a) at scale (one GD step per task and round is one multitask GD step, to the rounding of the float32 model
below), resumption, and the refusals."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from tvtheory.experiments import atm as atm_mod
from tvtheory.experiments import vision
from tvtheory.experiments.encoders import load_encoder
from tvtheory.experiments.storage import load_tensors
from tvtheory.fp import unit_roundoff
from tvtheory.params import ParamLayout, flat_params

# two tasks, gd with the auto learning rate (a different eta_t per task, so the multitask weights matter) and sgd
DATA = ["--synthetic", "--tasks", "mnist,cars", "--seeds", "0", "--max-train", "48", "--max-val", "16",
        "--max-test", "16"]
FINETUNE = [*DATA, "--optimizers", "gd,sgd", "--gd-steps", "2", "--max-epochs", "3", "--patience", "1",
            "--batch-size", "16", "--no-progress", "--no-second-order"]


def _folders(root):
    return ["--results", str(root / "results"), "--artifacts", str(root / "artifacts")]


@pytest.fixture(scope="module")
def atm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("atm")
    assert vision.main(["finetune", *FINETUNE, *_folders(root)]) == 0
    assert vision.main(["merge", *DATA, "--optimizers", "gd,sgd", *_folders(root)]) == 0
    assert vision.main(["atm", *DATA, "--optimizers", "gd,sgd", "--no-progress", "--rounds", "2",
                        *_folders(root)]) == 0
    return root


def _payload(root, opt):
    return json.loads((root / "results" / "seed0" / f"atm_{opt}.json").read_text())


def test_the_payload_has_every_round_epoch_and_reference(atm_run):
    root = atm_run
    for opt in ("gd", "sgd"):
        p = _payload(root, opt)
        assert p["rounds"] == 2 and p["tasks"] == ["cars", "mnist"] and p["alpha"] == 0.5
        assert [r["round"] for r in p["atm"]] == [0, 1, 2] and [r["epoch"] for r in p["multitask"]] == [0, 1, 2]
        assert p["task_epochs"]["atm"] == p["task_epochs"]["multitask"] == 4
        assert p["task_epochs"]["task_arithmetic_one_epoch"] == 2
        assert p["atm"][0]["mean_accuracy"] == p["multitask"][0]["mean_accuracy"]    # both start at theta_0
        assert p["atm"][0]["distance"] == 0.0
        lrs = p["learning_rates"]
        assert math.isclose(sum(p["multitask_weights"][t] * p["multitask_lr"] for t in lrs), sum(lrs.values()))
        merge = json.loads((root / "results" / "seed0" / f"merge_{opt}.json").read_text())
        for kind in ("one_epoch", "converged"):
            assert p["task_arithmetic"][kind]["alpha_val"]["mean_accuracy"] == merge[kind]["alpha_val"][
                "mean_accuracy"]
    gd = _payload(root, "gd")
    assert gd["learning_rates"]["cars"] != gd["learning_rates"]["mnist"]                   # auto: eta_t per task


def _round_rounding_bound(root, p) -> tuple[torch.Tensor, torch.Tensor]:
    """|theta_ATM^(1) - theta_MT^(1)| and its float32 bound 2 gamma_{T+4} (|theta_0| + sum_t |eta_t g_t|): the two
    runs take the same gradients g_t (one full batch at theta_0, the same function) and differ in the order of
    at most T + 4 roundings of terms bounded by that sum, each relative u (unit_roundoff(float32))."""
    art = root / "artifacts" / "seed0" / "atm" / "gd"
    encoder = load_encoder(vision.config_from_args(vision.build_parser().parse_args(["atm", "--synthetic"])))
    head = load_tensors(root / "artifacts" / "seed0" / "mnist" / "head.safetensors")
    model = encoder.classifier(head["weight"], head["bias"], torch.device("cpu"))
    layout = ParamLayout.of(model)
    theta0 = flat_params(model)
    mt = layout.flatten(load_tensors(art / "multitask" / "theta_epoch001.safetensors"))
    grads = {t: layout.flatten(load_tensors(art / "round001" / t / "grad_epoch001.safetensors")) for t in p["tasks"]}
    steps = sum(p["learning_rates"][t] * grads[t].abs() for t in p["tasks"])
    taus = [layout.flatten(load_tensors(art / "round001" / t / "tau_epoch001.safetensors")) for t in p["tasks"]]
    atm1 = theta0 + sum(taus) * p["alpha"]
    T, u = len(p["tasks"]), unit_roundoff(torch.float32)
    gamma = (T + 4) * u / (1 - (T + 4) * u)
    return (atm1 - mt).abs(), 2 * gamma * (theta0.abs() + steps)


def test_one_gd_step_per_round_is_one_multitask_step_to_rounding(atm_run):
    """T5(a) on the vision pipeline, elementwise; the sgd rounds, with a second-order error, are farther."""
    root = atm_run
    gd, sgd = _payload(root, "gd"), _payload(root, "sgd")
    diff, bound = _round_rounding_bound(root, gd)
    assert (diff <= bound).all(), float((diff - bound).max())
    assert gd["atm"][1]["distance"] <= float(torch.linalg.vector_norm(bound.double()))   # the payload's number
    assert sgd["atm"][1]["relative_distance"] > 10 * gd["atm"][1]["relative_distance"]


def test_wrong_multitask_weights_break_the_gd_identity(atm_run, tmp_path, monkeypatch):
    """Mutation: multitask on the plain mean of the losses (w_t = 1) while the tasks' eta_t differ."""
    root = atm_run
    shutil.copytree(root, tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy" / "artifacts" / "seed0" / "atm")
    monkeypatch.setattr(atm_mod, "multitask_weights",
                        lambda configs: ({t: 1.0 for t in configs}, sum(c.lr for c in configs.values()) / len(configs)))
    assert vision.main(["atm", *DATA, "--optimizers", "gd", "--no-progress", "--rounds", "1",
                        *_folders(tmp_path / "copy")]) == 0
    diff, bound = _round_rounding_bound(tmp_path / "copy", _payload(tmp_path / "copy", "gd"))
    assert not (diff <= bound).all()


def test_a_rerun_resumes_and_gives_the_same_numbers(atm_run, capsys):
    root = atm_run
    before = {opt: _payload(root, opt) for opt in ("gd", "sgd")}
    assert vision.main(["atm", *DATA, "--optimizers", "gd,sgd", "--rounds", "2", *_folders(root)]) == 0
    for opt in ("gd", "sgd"):
        after = _payload(root, opt)
        for key in ("atm", "multitask", "task_arithmetic"):
            assert after[key] == before[opt][key]
    assert "ATM (alpha 1/T) vs multitask" in capsys.readouterr().out


def test_atm_before_merge_and_bad_rounds_are_one_line_exit_2(atm_run, tmp_path, capsys):
    root = atm_run
    assert vision.main(["atm", *DATA, "--rounds", "0", *_folders(root)]) == 2
    assert "--rounds" in capsys.readouterr().err
    shutil.copytree(root / "results", tmp_path / "results")
    (tmp_path / "results" / "seed0" / "merge_sgd.json").unlink()
    code = vision.main(["atm", *DATA, "--optimizers", "sgd", "--no-progress", "--results", str(tmp_path / "results"),
                        "--artifacts", str(root / "artifacts")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "run merge before atm" in err, err
