"""``python -m tvtheory.experiments.vision`` end to end on --synthetic (random tiny ViT, random images):
orchestration, result files, resumption, the report, and every user error as one line with its exit status;
no pretrained weights or real data needed. The CLI runs in-process through ``vision.main(argv)``."""

from __future__ import annotations

import json

import pytest
import torch

from tvtheory.experiments import vision
from tvtheory.experiments.config import QUICK

BASE = ["--synthetic", "--quick", "--tasks", "mnist,cars", "--optimizers", "gd,sgd", "--seeds", "0"]
FINETUNE = [*BASE, "--no-progress", "--lr-gd", "1e-3", "--lr-sgd", "1e-3"]


def _tiny(tmp_path, *extra, optimizers="gd"):
    """finetune arguments of a seconds-long synthetic run (one task, tiny caps) writing under tmp_path; 48 training
    images, more than the 16 features, so the probe cannot fit them exactly (a zero loss would leave no gradient)."""
    return ["finetune", "--synthetic", "--tasks", "mnist", "--optimizers", optimizers, "--gd-steps", "2",
            "--max-train", "48", "--max-val", "8", "--max-test", "8", "--no-second-order", "--seeds", "0",
            "--results", str(tmp_path / "results"), "--artifacts", str(tmp_path / "artifacts"), *extra]


def _one_error_line(capsys, *needles) -> str:
    """The captured stderr: exactly one line, no traceback, containing every needle."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_finetune_resume_merge_report(tmp_path, capsys):
    art = tmp_path / "artifacts"                   # task vectors / checkpoints, apart from the JSON results
    res = ["--results", str(tmp_path), "--artifacts", str(art)]
    seed_res, seed_art = tmp_path, art                 # the folders given; seed 0 writes into their seed0/
    tmp_path, art = tmp_path / "seed0", art / "seed0"
    assert vision.main(["finetune", *FINETUNE, *res, "--stop-after", "1"]) == 0          # "interrupted"
    assert not (tmp_path / "mnist" / "gd.json").exists()
    ckpt = torch.load(art / "mnist" / "gd" / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1
    tau1 = (art / "mnist" / "gd" / "tau_epoch001.safetensors").stat().st_mtime_ns
    assert vision.main(["finetune", *FINETUNE, *res]) == 0                                 # resumed
    assert (art / "mnist" / "gd" / "tau_epoch001.safetensors").stat().st_mtime_ns == tau1
    for task in ("mnist", "cars"):
        for opt in ("gd", "sgd"):
            r = json.loads((tmp_path / task / f"{opt}.json").read_text())
            K = r["stopping"]["last_epoch"]
            assert r["resumed_from_epoch"] == 1 and len(r["records"]) == K == len(r["task_vectors"])
            assert K == QUICK["gd_steps"] if opt == "gd" else QUICK["patience"] < K <= QUICK["max_epochs"]
            assert r["seed"] == 0 and "torch" in r["versions"] and r["config"]["finetune"]["optimizer"] == opt
            assert r["config"]["quick"] and r["config"]["synthetic"] and r["config"]["max_train"] == QUICK["max_train"]
            assert r["data"]["num_train"] == QUICK["max_train"]
            assert f"capped by --max-train {QUICK['max_train']}" in r["data"]["note"]
            assert "T4" in r and "does not apply" in r["T4"]
            assert r["task_vectors"][0] == str(art / task / opt / "tau_epoch001.safetensors")
            assert not (tmp_path / task / opt).exists()           # nothing large in the results folder
            e2 = r["analysis"]["E2"]
            assert len(e2["cos_update_k_tauK"]) == K and set(e2["per_layer"]["cos_tau1_tauK"]) == set(
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

    t1, tk = flat(1), flat(gd["stopping"]["converged_epoch"])
    assert gd["analysis"]["E2"]["cos_tau1_tauK"] == pytest.approx(
        float(t1.double() @ tk.double() / (t1.double().norm() * tk.double().norm())), rel=1e-12)
    assert not list(art.rglob("*.tmp")) and not list(tmp_path.glob("**/.*"))     # every file written atomically

    capsys.readouterr()
    assert vision.main(["finetune", *FINETUNE, *res]) == 0                                 # finished: skipped
    assert "skipped" in capsys.readouterr().err
    assert vision.main(["merge", *BASE, *res]) == 0
    m = json.loads((tmp_path / "merge_gd.json").read_text())
    assert set(m["sweep"]["by_size"]) == {"2"} and m["sweep"]["sizes_skipped"] == [3, 5, 7]
    for which in ("one_epoch", "converged"):
        assert m[which]["alpha_1_over_T"]["alpha"] == 0.5
        assert m[which]["alpha_val"]["alpha"] in m[which]["alpha_grid"]
        assert set(m[which]["alpha_val"]["test_accuracy"]) == {"mnist", "cars"}
    assert set(m["pretrained_test_accuracy"]) == {"mnist", "cars"}
    assert m["config"]["alpha_grid"] == m["one_epoch"]["alpha_grid"]
    assert vision.main(["report", "--results", str(seed_res)]) == 0
    out = capsys.readouterr().out
    assert "seed 0" in out and "E3 merge (gd, seed 0)" in out and "mnist" in out and "does not apply" in out
    assert not (seed_res / "mnist").exists() and not (seed_art / "mnist").exists()


def test_merge_with_nothing_to_merge_exits_1(tmp_path, capsys):
    code = vision.main(["merge", *BASE, "--results", str(tmp_path), "--artifacts", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "nothing merged" in err and "needs finished runs of >= 2 tasks" in err


def test_bad_arguments_are_one_line_and_status_2(capsys):
    assert vision.main(["finetune", "--tasks", "imagenet"]) == 2
    _one_error_line(capsys, "unknown ['imagenet']", "--tasks")
    for argv, needle in ((["finetune", "--lr-gd", "-1"], "positive"), (["finetune", "--bogus"], "--bogus"),
                         (["merge", "--max-epochs", "3"], "--max-epochs"), (["merge", "--gd-steps", "3"], "--gd-steps"),
                         (["finetune", "--epochs", "3"], "--epochs"), (["frobnicate"], "invalid choice")):
        with pytest.raises(SystemExit) as e:                # argparse's own errors: also one line, status 2
            vision.main(argv)
        assert e.value.code == 2
        _one_error_line(capsys, needle, "--help")


def test_every_subcommand_has_its_own_help_for_every_flag(capsys):
    parser = vision.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"pretrain-info", "finetune", "merge", "atm", "summary", "report"}
    for name, p in sub.choices.items():
        assert p.description, name
        for action in p._actions:
            if action.help == "==SUPPRESS==":        # the tests' hidden --stop-after
                continue
            assert action.help and len(action.help) > 10, (name, action.option_strings)
        with pytest.raises(SystemExit) as e:
            vision.main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert p.description.split()[0] in out
        if name not in ("report", "summary"):
            assert "TVTHEORY_DATA" in out and "../shared/data" in out       # where --data-root defaults from


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
            "--lr-gd", "1e-3", "--no-second-order", "--seeds", "0"]
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
    ddp = json.loads((tmp_path / "ddp" / "seed0" / "mnist" / "gd.json").read_text())
    one = json.loads((tmp_path / "one" / "seed0" / "mnist" / "gd.json").read_text())
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    assert ddp["t1_check"]["holds"]
    assert ddp["probe"]["num_examples"] == one["probe"]["num_examples"] == QUICK["max_train"]
    assert ddp["accuracy"]["pretrained"] == one["accuracy"]["pretrained"]


def test_results_folder_of_another_data_config_is_refused(tmp_path, capsys):
    args = ["finetune", "--synthetic", "--tasks", "mnist", "--optimizers", "gd", "--no-progress",
            "--no-second-order", "--lr-gd", "1e-3", "--seeds", "0", "--results", str(tmp_path), "--artifacts",
            str(tmp_path)]
    assert vision.main([*args, "--quick", "--stop-after", "1"]) == 0
    capsys.readouterr()
    assert vision.main([*args, "--max-train", "100", "--max-val", "20", "--max-test", "20", "--gd-steps", "3"]) == 2
    _one_error_line(capsys, f"was fitted on {QUICK['max_train']} training images", "this run has 100",
                    "another --max-train")


def test_missing_pretrained_weights_is_a_message(tmp_path, capsys):
    code = vision.main(["finetune", "--quick", "--tasks", "dtd10", "--results", str(tmp_path),
                        "--artifacts", str(tmp_path), "--data-root", str(tmp_path),
                        "--pretrained", str(tmp_path / "absent.safetensors")])
    assert code == 2
    _one_error_line(capsys, "not found")


@pytest.mark.parametrize("lam", [float("nan"), 0.0, float("inf")])
def test_a_flat_or_broken_curvature_estimate_is_a_message(tmp_path, capsys, monkeypatch, lam):
    from tvtheory.experiments import heads

    monkeypatch.setattr(heads, "sharpness", lambda *a, **k: {"lambda": lam, "subset": 48, "iterations": 10,
                                                             "history": []})
    assert vision.main(_tiny(tmp_path, "--no-progress")) == 2
    _one_error_line(capsys, "mnist/gd", f"the curvature estimate is {lam}", "pass a number to --lr-gd")
    assert not (tmp_path / "artifacts" / "mnist" / "gd").exists()       # refused before the run started


def test_a_diverging_run_is_a_message(tmp_path, capsys):
    assert vision.main(_tiny(tmp_path, "--no-progress", "--lr-gd", "1e12")) == 2
    _one_error_line(capsys, "mnist/gd", "lower the learning rate", "(--lr-gd)")


def test_settings_are_validated_before_any_work(tmp_path, capsys, monkeypatch):
    """--gd-steps 0 and --max-train 1 (and the like) are refused before the encoder is loaded or any data read."""
    def no_work(*a, **k):
        raise AssertionError("work started before the settings were validated")

    monkeypatch.setattr(vision, "load_encoder", no_work)
    for extra, needles in ((["--gd-steps", "0"], ("--gd-steps", ">= 1")),
                           (["--max-epochs", "0"], ("--max-epochs", ">= 1")),
                           (["--patience", "0"], ("--patience", ">= 1")),
                           (["--max-train", "1"], ("--max-train", "at least 2")),
                           (["--max-train", "1", "--lr-gd", "0.1"], ("--max-train",)),
                           (["--batch-size", "0"], ("--batch-size",)),
                           (["--optimizers", "gd,gd"], ("at most once",))):
        assert vision.main(_tiny(tmp_path, *extra, "--no-progress")) == 2, extra     # the last --max-train wins
        _one_error_line(capsys, *needles)
    assert not (tmp_path / "results").exists() and not (tmp_path / "artifacts").exists()


def test_a_training_set_of_one_class_is_refused(tmp_path, capsys):
    """Two training images of two classes: the 10% validation split takes one, one class is left."""
    from cases import write_image_folder

    root = write_image_folder(tmp_path / "shapes", classes=("circle", "square"), counts=(("train", 1), ("test", 2)))
    assert vision.main(["finetune", "--synthetic", "--task-folder", f"shapes={root}", "--optimizers", "gd",
                        "--max-train", "0", "--max-val", "0", "--max-test", "4", "--lr-gd", "1e-3", "--no-progress",
                        "--results", str(tmp_path / "r"), "--artifacts", str(tmp_path / "a")]) == 2
    _one_error_line(capsys, "task shapes", "1 class", "raise --max-train")
    assert not (tmp_path / "a").exists()                     # refused before the probe was fitted


def test_quick_with_a_size_flag_is_refused(tmp_path, capsys):
    """--quick is a preset: together with a flag it sets, one of the two would be silently ignored, and the run
    would be labelled 'quick' in the figures while not being the preset; so it is an error, not a warning."""
    for flag in ("--max-epochs", "--patience", "--gd-steps", "--max-train"):
        assert vision.main(["finetune", *FINETUNE, flag, "5", "--results", str(tmp_path)]) == 2
        _one_error_line(capsys, "--quick sets", f"would override {flag}", "drop --quick")
    assert not any(tmp_path.iterdir())


def test_flags_that_do_nothing_are_warned_about(tmp_path, capsys):
    """--weight-decay without adamw (and the like) is said, then the command goes on (here: to a missing file)."""
    assert vision.main(["finetune", "--optimizers", "gd", "--weight-decay", "0.05", "--batch-size", "32",
                        "--lr-adamw", "1e-3", "--results", str(tmp_path),
                        "--pretrained", str(tmp_path / "absent.safetensors")]) == 2
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if line.startswith("warning: ")]
    assert len(warnings) == 3 and err[-1].startswith("error: ") and "not found" in err[-1]
    assert any("--weight-decay 0.05 applies to adamw only" in w for w in warnings)
    assert any("--batch-size 32" in w and "gd takes the full batch" in w for w in warnings)
    assert any("--lr-adamw" in w for w in warnings)


def test_ctrl_c_is_one_line_and_status_130(tmp_path, capsys, monkeypatch):
    from tvtheory.experiments import runs

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "finetune", interrupted)          # as if Ctrl-C arrived inside the training loop
    assert vision.main(_tiny(tmp_path, "--lr-gd", "1e-3", "--no-progress")) == 130
    assert _one_error_line(capsys) == vision.INTERRUPTED
    assert vision.INTERRUPTED == "interrupted; rerun the same command to resume from the last finished epoch"


def test_progress_is_plain_lines_off_a_terminal_and_named_bars_on_one(tmp_path, capsys, monkeypatch):
    import sys

    assert vision.main(_tiny(tmp_path / "log", "--lr-gd", "1e-3")) == 0          # capsys: not a terminal
    err = capsys.readouterr().err
    assert "mnist/gd: epoch 1/2" in err and "mnist/gd: epoch 2/2" in err and "\r" not in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert vision.main(_tiny(tmp_path / "tty", "--lr-gd", "1e-3")) == 0
    err = capsys.readouterr().err
    assert "mnist/gd epochs" in err and "epoch 1/2" not in err                   # a tqdm bar named task/optimizer


def _folder_run(tmp_path, *extra):
    """finetune arguments for a tiny gd run writing under tmp_path."""
    return ["finetune", "--optimizers", "gd", "--gd-steps", "2", "--max-train", "16", "--max-val", "8",
            "--max-test", "16", "--lr-gd", "1e-3", "--no-progress", "--seeds", "0",
            "--results", str(tmp_path / "results"), "--artifacts", str(tmp_path / "artifacts"), *extra]


def test_task_folder_end_to_end(tmp_path):
    """A --task-folder task goes through the built-in tasks' path: 10 % validation split, caps, probe, analysis;
    its images are read at the encoder's image size (12 px PNGs, an 8 px encoder)."""
    from cases import tiny_encoder, write_image_folder

    from tvtheory.models.pretrained import save_encoder

    root = write_image_folder(tmp_path / "shapes")                       # 3 classes, 10 train + 3 test each
    weights = save_encoder(tiny_encoder(), tmp_path / "tiny.safetensors")
    assert vision.main(_folder_run(tmp_path, "--pretrained", str(weights), "--task-folder", f"shapes={root}")) == 0
    r = json.loads((tmp_path / "results" / "seed0" / "shapes" / "gd.json").read_text())
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
    _one_error_line(capsys, str(root / "train"), str(root / "test"), "'moon'", "'star'")
    for folder, message in ((f"mnist={root}", "built-in task"), (f"a={tmp_path / 'nope'}", "no folders")):
        assert vision.main(_folder_run(tmp_path, "--synthetic", "--task-folder", folder)) == 2
        _one_error_line(capsys, message)
    for folder in ("a", f"../a={root}"):                        # argparse's: the form NAME=PATH
        with pytest.raises(SystemExit) as e:
            vision.main(_folder_run(tmp_path, "--synthetic", "--task-folder", folder))
        assert e.value.code == 2
        _one_error_line(capsys, "expected NAME=PATH")
    # --tasks knows the folder tasks and the built-in ones
    good = write_image_folder(tmp_path / "good")
    assert vision.main(_folder_run(tmp_path, "--synthetic", "--task-folder", f"shapes={good}", "--tasks",
                                   "shapes,x")) == 2
    _one_error_line(capsys, "unknown ['x']")
    config = vision.config_from_args(vision.build_parser().parse_args(
        ["finetune", "--task-folder", f"shapes={good}", "--tasks", "all"]))
    assert config.tasks[-1] == "shapes" and len(config.tasks) == 8
    assert not (tmp_path / "artifacts").exists()


def test_task_folder_with_an_empty_training_class_is_refused_before_any_work(tmp_path, capsys):
    from cases import write_image_folder

    root = write_image_folder(tmp_path / "shapes")
    for image in (root / "train" / "square").iterdir():
        image.unlink()
    assert vision.main(_folder_run(tmp_path, "--synthetic", "--task-folder", f"shapes={root}")) == 2
    _one_error_line(capsys, f"--task-folder shapes={root}", str(root / "train" / "square"), "has no images")
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "results").exists()


def test_stopping_flags_reach_the_config_and_are_warned_about(tmp_path, capsys):
    ns = vision.build_parser().parse_args(["finetune", "--max-epochs", "7", "--patience", "2", "--gd-steps", "5"])
    config = vision.config_from_args(ns)
    assert (config.max_epochs, config.patience, config.gd_steps) == (7, 2, 5)
    help_text = vision.build_parser()._subparsers._group_actions[0].choices["finetune"].format_help()
    for flag in ("--max-epochs", "--patience", "--gd-steps"):
        assert flag in help_text
    assert "--epochs " not in help_text
    assert vision.main(["finetune", "--optimizers", "sgd", "--gd-steps", "5", "--results", str(tmp_path),
                        "--pretrained", str(tmp_path / "absent.safetensors")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("warning: ")] == [
        "warning: --gd-steps 5 applies to gd only and --optimizers sgd has no gd: it does nothing"]
    assert vision.main(["finetune", "--optimizers", "gd", "--patience", "5", "--max-epochs", "9",
                        "--pretrained", str(tmp_path / "absent.safetensors")]) == 2
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2 and all("applies to sgd and adamw" in w for w in warnings)


def test_old_seed_flag_is_refused_not_abbreviated(capsys):
    """--seed was replaced by --seeds; without abbreviations an old command line is an error, not seed 1 only."""
    with pytest.raises(SystemExit) as e:
        vision.main(["finetune", "--seed", "1", "--synthetic"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unrecognized arguments: --seed 1" in err[0]
