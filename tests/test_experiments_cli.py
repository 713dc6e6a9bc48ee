"""``python -m tvtheory.experiments.vision`` end to end on --synthetic (random tiny ViT, random images):
orchestration, result files, resumption and the report; no pretrained weights or real data needed."""

from __future__ import annotations

import json

import pytest
import torch

from tvtheory.experiments import vision

BASE = ["--synthetic", "--quick", "--tasks", "mnist,cars", "--optimizers", "gd,sgd", "--no-progress",
        "--lr-gd", "1e-3", "--lr-sgd", "1e-3"]


def test_finetune_resume_merge_report(tmp_path, capsys):
    art = tmp_path / "artifacts"                   # task vectors / checkpoints, apart from the JSON results
    res = ["--results", str(tmp_path), "--artifacts", str(art)]
    assert vision.main(["finetune", *BASE, *res, "--stop-after", "1"]) == 0          # "interrupted"
    assert not (tmp_path / "mnist" / "gd.json").exists()
    ckpt = torch.load(art / "mnist" / "gd" / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1
    tau1 = (art / "mnist" / "gd" / "tau_epoch001.safetensors").stat().st_mtime_ns
    assert vision.main(["finetune", *BASE, *res]) == 0                                 # resumed
    assert (art / "mnist" / "gd" / "tau_epoch001.safetensors").stat().st_mtime_ns == tau1
    for task in ("mnist", "cars"):
        for opt in ("gd", "sgd"):
            r = json.loads((tmp_path / task / f"{opt}.json").read_text())
            assert r["resumed_from_epoch"] == 1 and len(r["records"]) == vision.QUICK["epochs"]
            assert r["seed"] == 0 and "torch" in r["versions"] and r["config"]["finetune"]["optimizer"] == opt
            assert r["data"]["num_train"] == vision.QUICK["max_train"] and "capped by --max-train 256" in r["data"]["note"]
            assert "T4" in r and "does not apply" in r["T4"]
            assert r["task_vectors"][0] == str(art / task / opt / "tau_epoch001.safetensors")
            assert not (tmp_path / task / opt).exists()           # nothing large in the results folder
            e2 = r["analysis"]["E2"]
            assert len(e2["cos_update_k_tauK"]) == 3 and set(e2["per_layer"]["cos_tau1_tauK"]) == set(
                r["analysis"]["E2"]["per_layer"]["cos_neg_g_tauK"])
            assert r["analysis"]["expansion"]["second_order_computed"]
            assert set(r["accuracy"]) == {"pretrained", "one_epoch", "finetuned"}
    gd = json.loads((tmp_path / "mnist" / "gd.json").read_text())
    assert gd["t1_check"]["holds"]
    # E2 in the JSON is the cosine of the stored task vectors
    from safetensors.torch import load_file
    def flat(k):
        path = art / "mnist" / "gd" / f"tau_epoch{k:03d}.safetensors"
        return torch.cat([v.reshape(-1) for v in load_file(str(path)).values()])

    t1, tk = flat(1), flat(3)
    assert gd["analysis"]["E2"]["cos_tau1_tauK"] == pytest.approx(
        float(t1.double() @ tk.double() / (t1.double().norm() * tk.double().norm())), rel=1e-12)

    capsys.readouterr()
    assert vision.main(["finetune", *BASE, *res]) == 0                                 # finished: skipped
    assert "skipped" in capsys.readouterr().err
    assert vision.main(["merge", *BASE, *res]) == 0
    m = json.loads((tmp_path / "merge_gd.json").read_text())
    for which in ("one_epoch", "converged"):
        assert m[which]["alpha_1_over_T"]["alpha"] == 0.5
        assert m[which]["alpha_val"]["alpha"] in m[which]["alpha_grid"]
        assert set(m[which]["alpha_val"]["test_accuracy"]) == {"mnist", "cars"}
    assert set(m["pretrained_test_accuracy"]) == {"mnist", "cars"}
    assert vision.main(["report", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "E3 merge (gd)" in out and "mnist" in out and "does not apply" in out


def test_bad_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit):
        vision.main(["finetune", "--tasks", "imagenet"])
    assert "unknown" in capsys.readouterr().err


def test_pretrain_info_synthetic(capsys):
    assert vision.main(["pretrain-info", "--synthetic"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["encoder"]["config"]["dim"] == 16 and len(info["tasks"]) == 7


def test_same_command_under_torchrun_two_processes(tmp_path):
    """The CLI under ``torchrun --nproc_per_node 2`` (gloo on CPU): one process group, results written once,
    T1 holds for the all-reduced gradient, and the data-parallel run reproduces the one-process accuracies
    (predictions are argmaxes, stable under the float32 rounding differences of the sharded sums)."""
    import os
    import subprocess
    import sys

    args = ["finetune", "--synthetic", "--quick", "--tasks", "mnist", "--optimizers", "gd", "--no-progress",
            "--lr-gd", "1e-3", "--no-second-order"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tvtheory.experiments.vision", *args, "--results", str(tmp_path / "ddp"),
           "--artifacts", str(tmp_path / "ddp_art"), "--threads", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:          # end torchrun and its workers (their own process group)
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-3000:]
    assert vision.main([*args, "--results", str(tmp_path / "one"), "--artifacts", str(tmp_path / "one_art"),
                        "--threads", "1"]) == 0
    ddp = json.loads((tmp_path / "ddp" / "mnist" / "gd.json").read_text())
    one = json.loads((tmp_path / "one" / "mnist" / "gd.json").read_text())
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    assert ddp["t1_check"]["holds"]
    assert ddp["probe"]["num_examples"] == one["probe"]["num_examples"] == vision.QUICK["max_train"]
    assert ddp["accuracy"]["pretrained"] == one["accuracy"]["pretrained"]


def test_results_folder_of_another_data_config_is_refused(tmp_path):
    args = ["finetune", "--synthetic", "--quick", "--tasks", "mnist", "--optimizers", "gd", "--no-progress",
            "--no-second-order", "--results", str(tmp_path), "--artifacts", str(tmp_path)]
    assert vision.main([*args, "--stop-after", "1"]) == 0
    with pytest.raises(ValueError, match="another --max-train"):
        vision.main([a for a in args if a != "--quick"] + ["--max-train", "100", "--max-val", "20",
                                                           "--max-test", "20", "--epochs", "3"])


def test_missing_pretrained_weights_is_a_message(tmp_path, capsys):
    code = vision.main(["finetune", "--quick", "--tasks", "dtd10", "--results", str(tmp_path),
                        "--artifacts", str(tmp_path), "--data-root", str(tmp_path),
                        "--pretrained", str(tmp_path / "absent.safetensors")])
    assert code == 2 and "not found" in capsys.readouterr().err
