"""VisionConfig: validated once at construction (messages name the field, its flag and the fix), the quick preset,
the settings that do nothing, and the JSON form written into every result file."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tvtheory.experiments.config import DEFAULT_ALPHA_GRID, QUICK, VisionConfig
from tvtheory.experiments.errors import VisionError
from tvtheory.experiments.finetune import FINETUNE_OPTIMIZERS
from tvtheory.vision.datasets import TASKS


def test_defaults_and_json_form():
    c = VisionConfig()
    assert c.tasks == tuple(TASKS) and c.optimizers == FINETUNE_OPTIMIZERS and c.alpha_grid == DEFAULT_ALPHA_GRID
    d = c.to_dict()
    assert json.loads(json.dumps(d)) == d                  # plain JSON types
    assert d["tasks"] == list(TASKS) and d["task_folder"] == {} and d["quick"] is False
    # the keys the figures and the report read keep their names
    assert {"synthetic", "quick", "max_train", "max_epochs", "patience", "gd_steps", "seed", "lr_gd",
            "alpha_grid"} <= set(d)
    assert "epochs" not in d                                   # replaced by max_epochs / patience / gd_steps
    assert VisionConfig(**{k: v for k, v in d.items()}) == c               # the dict rebuilds the config


def test_quick_preset_is_the_preset():
    q = VisionConfig.quick_preset(synthetic=True, tasks=["mnist"])
    assert q.quick and all(getattr(q, k) == v for k, v in QUICK.items()) and q.tasks == ("mnist",)
    assert (q.max_epochs, q.patience, q.gd_steps) == (QUICK["max_epochs"], QUICK["patience"], QUICK["gd_steps"])
    assert q.patience + 1 < q.max_epochs                       # the quick runs can stop early, too
    for name in ("max_epochs", "patience", "gd_steps"):
        with pytest.raises(VisionError, match=f"the quick preset sets {name}"):
            VisionConfig.quick_preset(**{name: 5})
    with pytest.raises(VisionError, match=r"quick=True \(--quick\) is the preset.*'max_train': 100.*--max-train"):
        dataclasses.replace(q, max_train=100)


@pytest.mark.parametrize(("fields", "needles"), [
    ({"max_epochs": 0}, ("max_epochs (--max-epochs) is 0", ">= 1", "cap")),
    ({"patience": 0}, ("patience (--patience) is 0", ">= 1")),
    ({"patience": True}, ("--patience",)),
    ({"patience": 2.5}, ("--patience", "integer")),
    ({"gd_steps": 0}, ("gd_steps (--gd-steps) is 0", ">= 1", "full-batch steps")),
    ({"max_train": 1}, ("--max-train", "at least 2")),
    ({"max_train": -1}, ("--max-train", ">= 0")),
    ({"batch_size": 0}, ("--batch-size",)),
    ({"chunk_size": 0}, ("--chunk-size",)),
    ({"sharpness_subset": 0}, ("--sharpness-subset",)),
    ({"seed": -1}, ("--seed",)),
    ({"lr_gd": 0.0}, ("--lr-gd", "'auto'")),
    ({"lr_sgd": "fast"}, ("--lr-sgd",)),
    ({"lr_adamw": float("nan")}, ("--lr-adamw",)),
    ({"weight_decay": -0.1}, ("--weight-decay",)),
    ({"dtype": "float16"}, ("--dtype", "float64")),
    ({"alpha_grid": ()}, ("--alpha-grid",)),
    ({"optimizers": ("gd", "momentum")}, ("--optimizers", "momentum")),
    ({"optimizers": ()}, ("--optimizers",)),
    ({"tasks": ("mnist", "imagenet")}, ("--tasks", "unknown ['imagenet']")),
    ({"tasks": ("mnist", "mnist")}, ("--tasks", "at most once")),
    ({"synthetic": True, "max_test": 0}, ("--max-test", "random images")),
    ({"synthetic": True, "pretrained": "x.safetensors"}, ("--synthetic", "--pretrained")),
    ({"pretrained": "open_clip:ViT-B-32"}, ("--pretrained", "open_clip:<model_name>:<checkpoint_path>")),
    ({"task_folder": {"mnist": "."}}, ("--task-folder mnist=.", "built-in task")),
])
def test_invalid_settings_are_refused_with_the_flag_and_the_fix(fields, needles):
    with pytest.raises(VisionError) as e:
        VisionConfig(**fields)
    assert isinstance(e.value, ValueError)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_task_folders(tmp_path):
    from cases import write_image_folder

    root = write_image_folder(tmp_path / "shapes")
    c = VisionConfig(task_folder={"shapes": root})
    assert c.tasks == ("shapes",) and c.folders == {"shapes": str(root)} and c.to_dict()["task_folder"] == c.folders
    assert VisionConfig(task_folder=[("shapes", str(root))]) == c
    with pytest.raises(VisionError, match="no folders"):
        VisionConfig(task_folder={"other": tmp_path / "nope"})


def test_settings_that_do_nothing_are_listed():
    assert VisionConfig().unused_settings() == [] and VisionConfig.quick_preset().unused_settings() == []
    lines = VisionConfig(optimizers=("gd",), weight_decay=0.05, lr_adamw=1e-3, lr_sgd=0.01, batch_size=32,
                         sharpness_subset=64).unused_settings()
    assert len(lines) == 4 and "--weight-decay 0.05 applies to adamw only" in lines[0]
    assert any("--batch-size 32" in line for line in lines) and any("--lr-sgd" in line for line in lines)
    lines = VisionConfig(optimizers=("adamw",), sharpness_subset=64, second_order=False).unused_settings()
    assert any("--sharpness-subset 64" in line for line in lines) and any("--no-second-order" in line for line in lines)
    assert VisionConfig(optimizers=("gd",), lr_gd=0.1, sharpness_subset=64).unused_settings()[0].startswith(
        "--sharpness-subset")
    assert VisionConfig(synthetic=True, data_root="/data").unused_settings()[0].startswith("--data-root")
    # the stopping settings: gd takes --gd-steps, sgd / adamw --patience and --max-epochs
    assert VisionConfig(optimizers=("sgd", "adamw"), gd_steps=5).unused_settings() == [
        "--gd-steps 5 applies to gd only and --optimizers sgd,adamw has no gd: it does nothing"]
    lines = VisionConfig(optimizers=("gd",), patience=5, max_epochs=50).unused_settings()
    assert len(lines) == 2 and lines[0].startswith("--patience 5 applies to sgd and adamw")
    assert lines[1].startswith("--max-epochs 50 applies to sgd and adamw")
    assert VisionConfig(optimizers=("gd", "sgd"), gd_steps=5, patience=5, max_epochs=50).unused_settings() == []
    for patience, max_epochs, warned in ((3, 4, True), (3, 5, False), (10, 4, True)):
        lines = VisionConfig(patience=patience, max_epochs=max_epochs).unused_settings()
        assert (lines != [] and "always run to the cap" in lines[0]) is warned, (patience, max_epochs, lines)
    # under the quick preset the preset's own values are not "changed"
    assert VisionConfig.quick_preset(optimizers=("gd",)).unused_settings() == []
