"""What a task fixes at the pretrained point theta_0: its frozen head (``config.head``) and its curvature estimate.

Both are computed once per task and kept under ``<artifacts>/<task>/`` (``head.safetensors`` + ``head.json``,
``sharpness.json``), so every optimizer's run and the merge use the same head; a later call reads them.
A head of another kind or fitted on another training set (other caps, another seed) is refused with a
VisionError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import write_json_atomic
from .config import VisionConfig
from .dist import DistContext, shard
from .encoders import Encoder
from .errors import VisionError
from .probe import FrozenHeadClassifier, features, fit_probe, fit_prototypes, split_accuracy
from .step_size import sharpness
from .storage import load_tensors, save_tensors
from .tasks import TaskData

#: Power iterations of the curvature estimate lambda_hat (``step_size.sharpness``).
SHARPNESS_ITERATIONS = 10


@dataclass(frozen=True)
class Head:
    """A task's frozen head (weight (C, dim), bias (C,)) and its fit's record: the info of
    ``probe.fit_prototypes`` or ``probe.fit_probe``, its kind ``head`` (``config.head``) and
    ``pretrained_accuracy`` on the validation and test splits.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    info: dict


def classifier(head: Head, encoder: Encoder, ctx: DistContext) -> FrozenHeadClassifier:
    """A fresh copy of the pretrained encoder with ``head``, on this rank's device."""
    return encoder.classifier(head.weight, head.bias, ctx.device)


def accuracies(model: FrozenHeadClassifier, data: TaskData, config: VisionConfig, encoder: Encoder,
               ctx: DistContext) -> dict[str, float]:
    """{"val": ..., "test": ...} accuracy of ``model`` on the task's splits (over all ranks)."""
    return {s: split_accuracy(model, data.split(s), ctx, config.chunk_size, encoder.prepare) for s in ("val", "test")}


def task_head(task: str, data: TaskData, config: VisionConfig, encoder: Encoder, ctx: DistContext) -> Head:
    """The frozen probe of ``task``: fitted once at theta_0 (all ranks), then read from the artifacts folder."""
    folder = Path(config.artifacts) / task
    path, meta = folder / "head.safetensors", folder / "head.json"
    if not path.exists():
        enc = encoder.copy(ctx.device)
        x, y = data.train
        mine = shard(torch.arange(x.shape[0]), ctx)
        z = features(enc, x[mine], config.chunk_size, encoder.prepare)
        fit = fit_prototypes if config.head == "prototype" else fit_probe
        w, b, info = fit(z, y[mine], data.num_classes, ctx)
        info["head"] = config.head
        info["pretrained_accuracy"] = accuracies(FrozenHeadClassifier(enc, w, b), data, config, encoder, ctx)
        if ctx.is_main:
            write_json_atomic(meta, info)           # before the head: a head file implies its record
            save_tensors(path, {"weight": w, "bias": b})
        ctx.barrier()
    t = load_tensors(path)
    info = json.loads(meta.read_text())
    n = int(data.train[0].shape[0])
    if info.get("head") != config.head:
        raise VisionError(f"{path} is a {info.get('head', 'probe')} head and this run asks for --head {config.head}: "
                          f"use other --results and --artifacts folders, or delete {folder}")
    if info["num_examples"] != n or t["weight"].shape[0] != data.num_classes:
        raise VisionError(f"{path} was fitted on {info['num_examples']} training images of {t['weight'].shape[0]} "
                          f"classes, this run has {n} of {data.num_classes} (another --max-train / --quick / "
                          f"--seeds?): use other --results and --artifacts folders, or delete {folder}")
    return Head(t["weight"], t["bias"], info)


def task_sharpness(task: str, data: TaskData, head: Head, config: VisionConfig, encoder: Encoder,
                   ctx: DistContext) -> dict:
    """lambda_hat of the task at theta_0 (``step_size.sharpness``), computed once and kept beside the head."""
    path = Path(config.artifacts) / task / "sharpness.json"
    wanted = {"subset": min(config.sharpness_subset, int(data.train[0].shape[0])),
              "iterations": SHARPNESS_ITERATIONS, "seed": config.seed}
    if path.exists():
        stored = json.loads(path.read_text())
        if {k: stored.get(k) for k in wanted} == wanted:
            return stored
    out = {**sharpness(classifier(head, encoder, ctx), *data.train, ctx, config.chunk_size, encoder.prepare,
                       subset=config.sharpness_subset, iterations=SHARPNESS_ITERATIONS, seed=config.seed),
           "seed": config.seed}
    if ctx.is_main:
        write_json_atomic(path, out)
    ctx.barrier()
    return out
