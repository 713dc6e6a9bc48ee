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


def _folder_run(tmp_path, *extra):
    """finetune arguments for a tiny gd run writing under tmp_path."""
    return ["finetune", "--optimizers", "gd", "--epochs", "2", "--max-train", "16", "--max-val", "8",
            "--max-test", "16", "--batch-size", "8", "--lr-gd", "1e-3", "--no-progress",
            "--results", str(tmp_path / "results"), "--artifacts", str(tmp_path / "artifacts"), *extra]


def test_task_folder_end_to_end(tmp_path):
    """A --task-folder task goes through the built-in tasks' path: 10 % validation split, caps, probe, analysis;
    its images are read at the encoder's image size (12 px PNGs, an 8 px encoder)."""
    from cases import tiny_encoder, write_image_folder

    from tvtheory.models.vit import save_encoder

    root = write_image_folder(tmp_path / "shapes")                       # 3 classes, 10 train + 3 test each
    weights = save_encoder(tiny_encoder(), tmp_path / "tiny.safetensors")
    assert vision.main(_folder_run(tmp_path, "--pretrained", str(weights), "--task-folder", f"shapes={root}")) == 0
    r = json.loads((tmp_path / "results" / "shapes" / "gd.json").read_text())
    assert r["task"] == "shapes" and r["config"]["tasks"] == ["shapes"]
    assert r["config"]["task_folder"] == {"shapes": str(root)}
    assert r["data"]["num_classes"] == 3 and r["data"]["num_test"] == 9
    assert r["data"]["available_train"] == 27 and r["data"]["num_train"] == 16    # 30 - 3 validation, capped
    assert r["data"]["num_val"] == 3 and len(r["records"]) == 2 and r["t1_check"]["holds"]


def test_task_folder_errors(tmp_path, capsys):
    from cases import write_image_folder

    root = write_image_folder(tmp_path / "shapes", counts=(("train", 2),))
    write_image_folder(root, classes=("circle", "square", "moon"), counts=(("test", 1),))
    assert vision.main(_folder_run(tmp_path, "--synthetic", "--task-folder", f"shapes={root}")) == 2
    err = capsys.readouterr().err
    assert str(root / "train") in err and str(root / "test") in err and "'moon'" in err and "'star'" in err
    for folder, message in ((f"mnist={root}", "built-in task"), (f"a={tmp_path / 'nope'}", "no folders"),
                            ("a", "expected NAME=PATH"), (f"../a={root}", "expected NAME=PATH")):
        with pytest.raises(SystemExit) as e:
            vision.main(_folder_run(tmp_path, "--synthetic", "--task-folder", folder))
        assert e.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:                       # --tasks knows the folder tasks and the built-in ones
        vision.main(_folder_run(tmp_path, "--synthetic", "--task-folder", f"shapes={root}", "--tasks", "shapes,x"))
    assert e.value.code == 2 and "unknown ['x']" in capsys.readouterr().err
    args = vision.parse_args(["finetune", "--task-folder", f"shapes={root}", "--tasks", "all"])
    assert args.tasks[-1] == "shapes" and len(args.tasks) == 8
