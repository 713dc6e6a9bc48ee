"""The GPU scale check end to end on the CPU: a fake shared data folder, packed, then the tiny configuration."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from tvtheory.experiments.gpu_check import (
    RESULT_NAME,
    GPUCheckConfig,
    build_encoder,
    exact_checks,
    gd_steps,
    load_tasks,
    main,
    markdown_snippet,
    probe_classifier,
    run_gpu_check,
)
from tvtheory.experiments.gpu_pack import pack_data
from tvtheory.fp import check_t1, detectable_lr_error
from tvtheory.vision.datasets import TASKS

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", *TASKS["cifar10"].classes]
FAKE = {"cifar10": (CIFAR_CLASSES, 3, 32), "mnist": ([str(i) for i in range(10)], 1, 28)}
TASK_NAMES = ("cifar10", "mnist")


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A fake shared folder (cifar10 and mnist, 6 train / 2 test images a class, learnable by brightness),
    packed with cifar10 capped: the folder the device run reads."""
    src = tmp_path_factory.mktemp("shared")
    rng = np.random.default_rng(0)
    datasets = []
    for name, (classes, channels, size) in FAKE.items():
        splits = {"train": 6, "test": 2}
        with zipfile.ZipFile(src / f"{name}.zip", "w") as zf:
            for split, n in splits.items():
                for k, cname in enumerate(classes):
                    for i in range(n):
                        shape = (size, size) if channels == 1 else (size, size, 3)
                        a = rng.integers(0, 100, shape, dtype=np.uint8) + np.uint8(15 * k)
                        zf.writestr(f"{split}/{k:03d}_{cname}/{i:04d}.png", _png(a))
        datasets.append({"name": name, "file": f"{name}.zip", "classes": classes, "channels": channels,
                         "splits": {s: n * len(classes) for s, n in splits.items()}})
    (src / "manifest.json").write_text(json.dumps({"datasets": datasets}))
    dest = tmp_path_factory.mktemp("gpu_data")
    manifest = pack_data(src, dest, caps={"cifar10": (20, 6), "mnist": (None, None)})
    return dest, manifest


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TVTHEORY_CACHE", str(tmp_path / "cache"))


def tiny(packed, tmp_path, **kw) -> GPUCheckConfig:
    return GPUCheckConfig.tiny_preset(out=str(tmp_path / "gpu"), data_root=str(packed[0]), tasks=TASK_NAMES,
                                      progress=False, **kw)


def test_pack_keeps_task_classes_and_caps(packed):
    entries = {d["name"]: d for d in packed[1]["datasets"]}
    cifar = entries["cifar10"]
    assert cifar["splits"] == {"train": 20, "test": 6}
    assert cifar["native_splits"] == {"train": 30, "test": 10}          # the 5 task classes only
    assert sum(cifar["class_counts"]["train"][:5]) == 0                 # no pretraining class
    assert entries["mnist"]["splits"] == entries["mnist"]["native_splits"] == {"train": 60, "test": 20}


def test_pack_refuses_over_budget(packed, tmp_path):
    with pytest.raises(ValueError, match="MiB"):
        pack_data(packed[0], tmp_path / "small", caps={"mnist": (None, None)}, max_mib=1e-4)


def test_run_end_to_end(packed, tmp_path, capsys):
    assert main(["--tiny", "--out", str(tmp_path / "gpu"), "--data-root", str(packed[0]), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("error: ")             # seven tasks asked, two in the fake folder
    payload = run_gpu_check(tiny(packed, tmp_path))
    stored = json.loads((tmp_path / "gpu" / RESULT_NAME).read_text())
    assert set(stored) == {"config", "seed", "versions", "device", "encoder", "finetune", "checks", "holds",
                           "wall_time_s"}
    assert stored["device"]["type"] == "cpu" and "torch" in stored["versions"]
    assert set(stored["finetune"]["tasks"]) == set(TASK_NAMES)
    for r in stored["finetune"]["tasks"].values():
        assert r["steps"] >= 1 and r["images_per_s"] > 0 and 0 <= r["test_accuracy"] <= 1
    c = payload["checks"]
    assert c["T1"]["holds"] and payload["holds"] == {"T1": True, "T2_resolved": True}
    t2 = c["T2_k2"]
    assert t2["rounding_allowance"] < t2["residual_norm"] < t2["E2_norm"]
    assert "| cifar10 |" in markdown_snippet(payload)


def test_second_order_difference_is_third_order(packed, tmp_path):
    """||E_2 - eta^2 H g|| / ||E_2|| = O(eta): halving eta halves it (to first order)."""
    rel = []
    for scale in (0.02, 0.01):
        cfg = tiny(packed, tmp_path, check_lr_scale=scale)
        enc = build_encoder(cfg)
        data = load_tasks(cfg, enc)["cifar10"]
        model = probe_classifier(enc, data, cfg, torch.device("cpu"), torch.float64)
        rel.append(exact_checks(model, data, cfg, enc)["T2_k2"]["relative_difference"])
    assert 0.4 < rel[1] / rel[0] < 0.6


def test_t1_fails_with_a_wrong_learning_rate(packed, tmp_path):
    cfg = tiny(packed, tmp_path, check_dtype="float32")
    enc = build_encoder(cfg)
    data = load_tasks(cfg, enc)["cifar10"]
    model = probe_classifier(enc, data, cfg, torch.device("cpu"), torch.float32)
    x, y = data.train
    lr = 0.1
    run = gd_steps(model, x, y, lr, 1, cfg.chunk_size, enc.prepare)
    before, after, g = run.thetas[0], run.thetas[1], run.grads[0]
    assert check_t1(before, after, g, lr).holds
    wrong = lr * (1 + 2 * detectable_lr_error(before, g, lr))
    assert not check_t1(before, after, g, wrong).holds
