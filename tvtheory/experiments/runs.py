"""E1/E2 and the T2/T3 expansion of finetuning runs: ``finetune_tasks`` and its one-run step ``finetune_task``.

Per task: the data (``tasks.load_task_data``), the frozen head and, when a learning rate is "auto", the
curvature at theta_0 (``heads``); per optimizer: the resumable recording loop (``finetune.finetune``) into
``<artifacts>/<task>/<optimizer>/``, then the analysis of the stored task vectors and gradients, written to
``<results>/<task>/<optimizer>.json`` with ``config.to_dict()``. A run whose result file exists is skipped.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..io import versions, write_json_atomic
from ..params import ParamLayout, flat_params, load_flat_
from ..trajectory import DivergenceError
from .analysis import T4_NOTE, direction_stats, expansion_stats, norm_stats
from .config import VisionConfig, flag
from .dist import DistContext
from .encoders import Encoder
from .errors import VisionError
from .finetune import FinetuneConfig, finetune, make_batches
from .heads import Head, accuracies, classifier, task_head, task_sharpness
from .step_size import LR_SCALE, learning_rate
from .storage import grad_path, load_vector, tau_path
from .tasks import TaskData, load_task_data


def result_path(config: VisionConfig, task: str, optimizer: str) -> Path:
    """``<results>/<task>/<optimizer>.json``: the result file of one run."""
    return Path(config.results) / task / f"{optimizer}.json"


def finetune_config(optimizer: str, config: VisionConfig, lam: float | None = None) -> FinetuneConfig:
    """The loop settings of ``optimizer``: lr = LR_SCALE / lambda_hat when "auto", else the given number."""
    if config.auto_lr(optimizer):
        try:
            lr = learning_rate(lam if lam is not None else float("nan"), LR_SCALE[optimizer])
        except VisionError as e:
            raise VisionError(f"{optimizer}: {e}") from e
    else:
        lr = float(getattr(config, f"lr_{optimizer}"))
    return FinetuneConfig(optimizer, lr, config.epochs, batch_size=config.batch_size,
                          weight_decay=config.weight_decay if optimizer == "adamw" else 0.0, seed=config.seed,
                          chunk_size=config.chunk_size)


def finetune_task(task: str, optimizer: str, data: TaskData, head: Head, config: VisionConfig, encoder: Encoder,
                  ctx: DistContext, curvature: dict | None = None, stop_after: int | None = None) -> dict | None:
    """One run (module docstring); returns its result payload, or None when skipped or stopped early
    (``stop_after`` epochs in this call: the checkpoint stays, no result file).
    """
    out_json = result_path(config, task, optimizer)
    if out_json.exists():
        if ctx.is_main:
            print(f"{task}/{optimizer}: done ({out_json}), skipped", file=sys.stderr)
        return None
    t0 = time.perf_counter()
    try:
        cfg = finetune_config(optimizer, config, curvature["lambda"] if curvature else None)
    except VisionError as e:
        raise VisionError(f"{task}/{e}") from e
    run_dir = Path(config.artifacts) / task / optimizer
    model = classifier(head, encoder, ctx)
    layout = ParamLayout.of(model)
    theta0 = flat_params(model)
    x, y = data.train
    prep = encoder.prepare
    try:
        result = finetune(model, x, y, cfg, run_dir, ctx, prep, progress=config.progress, stop_after=stop_after,
                          desc=f"{task}/{optimizer}")
    except DivergenceError as e:
        raise DivergenceError(f"{task}/{optimizer}: {e} ({flag('lr_' + optimizer)})") from e
    if len(result.records) < cfg.epochs:
        return None
    taus = [load_vector(tau_path(run_dir, k), layout).to(theta0.device) for k in range(1, cfg.epochs + 1)]
    grads = [load_vector(grad_path(run_dir, k), layout).to(theta0.device) for k in range(1, cfg.epochs + 1)]
    analysis = {"E1": norm_stats(result.records), "E2": direction_stats(taus, grads, layout),
                "expansion": expansion_stats(model, x, y, make_batches(x.shape[0], cfg), theta0, taus, optimizer,
                                             cfg.lr, ctx, cfg.chunk_size, prep, second_order=config.second_order)}
    accs = {}
    for name, tau in (("one_epoch", taus[0]), ("finetuned", taus[-1])):
        load_flat_(model, theta0 + tau)
        accs[name] = accuracies(model, data, config, encoder, ctx)
    n = int(x.shape[0])
    payload = {
        "task": task, "optimizer": optimizer, "config": {**config.to_dict(), "finetune": cfg.to_dict()},
        "seed": config.seed, "task_vectors": [str(tau_path(run_dir, k)) for k in range(1, cfg.epochs + 1)],
        "versions": versions(), "device": str(ctx.device), "world_size": ctx.world_size,
        "data": {"num_train": n, "train_cap": config.max_train, "available_train": data.available_train,
                 "note": f"training set: {n} of the {data.available_train} train-split images left after the 10% "
                         f"validation split (seed 0), capped by --max-train {config.max_train} (0 = no cap) with "
                         f"a seeded subset (seed {config.seed})",
                 "num_val": int(data.val[0].shape[0]), "num_test": int(data.test[0].shape[0]),
                 "num_classes": data.num_classes, "num_batches": result.num_batches},
        "step_size": {"lr": cfg.lr,
                      "rule": f"auto: {LR_SCALE[optimizer]} / lambda_hat" if config.auto_lr(optimizer) else "given",
                      "sharpness": curvature},
        "num_params_encoder": layout.size, "probe": head.info, "records": result.records,
        "t1_check": result.t1_check, "resumed_from_epoch": result.resumed_from_epoch,
        "analysis": analysis, "accuracy": {"pretrained": head.info["pretrained_accuracy"], **accs},
        "T4": T4_NOTE, "wall_time_s": time.perf_counter() - t0,
    }
    if ctx.is_main:
        write_json_atomic(out_json, payload)
    ctx.barrier()
    return payload


def finetune_tasks(config: VisionConfig, encoder: Encoder, ctx: DistContext,
                   stop_after: int | None = None) -> dict[tuple[str, str], dict]:
    """Every (task, optimizer) run of ``config`` (module docstring); {(task, optimizer): payload} of the runs
    finished in this call (skipped and stopped ones are left out).
    """
    done = {}
    for task in config.tasks:
        data = load_task_data(task, config, encoder)
        head = task_head(task, data, config, encoder, ctx)
        auto = [o for o in config.optimizers if config.auto_lr(o) and not result_path(config, task, o).exists()]
        curvature = task_sharpness(task, data, head, config, encoder, ctx) if auto else None
        for opt in config.optimizers:
            payload = finetune_task(task, opt, data, head, config, encoder, ctx, curvature, stop_after)
            if payload is not None:
                done[(task, opt)] = payload
    return done
