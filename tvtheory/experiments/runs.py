"""E1/E2 and the T2/T3 expansion of finetuning runs: ``finetune_tasks`` and its one-run step ``finetune_task``.

Per task: the data (``tasks.load_task_data``), the frozen head and, when a learning rate is "auto", the
curvature at theta_0 (``heads``); per optimizer: the resumable recording loop (``finetune.finetune``) into
``<artifacts>/<task>/<optimizer>/``, then the analysis of the stored task vectors and gradients, written to
``<results>/<task>/<optimizer>.json`` with ``config.to_dict()``. A run whose result file exists is skipped.

How long a run is (``finetune.EarlyStopping``, on the accuracy of the task's validation split after every
epoch): sgd and adamw stop after ``patience`` epochs without a strictly better validation accuracy, at most
``max_epochs``, and their converged task vector tau^(conv) is the best-validation epoch k* (restore-best);
gd takes ``gd_steps`` full-batch steps and tau^(conv) is the last (budget-limited: ``stopping.convergence``
says how far from convergence it ended). The payload's ``stopping`` holds the rule, the epochs and the
validation curve; ``accuracy.finetuned`` and E2's reference direction are tau^(conv), ``accuracy.one_epoch``
tau^(1) of the same run; E1, E2 and the expansion cover every epoch 1..K of the run.
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
from .finetune import EarlyStopping, FinetuneConfig, convergence_summary, finetune, make_batches
from .heads import Head, accuracies, classifier, task_head, task_sharpness
from .probe import split_accuracy
from .step_size import LR_SCALE, learning_rate
from .storage import grad_path, load_vector, tau_path
from .tasks import TaskData, load_task_data


def result_path(config: VisionConfig, task: str, optimizer: str) -> Path:
    """``<results>/<task>/<optimizer>.json``: the result file of one run."""
    return Path(config.results) / task / f"{optimizer}.json"


def finetune_config(optimizer: str, config: VisionConfig, lam: float | None = None) -> FinetuneConfig:
    """The loop settings of ``optimizer``: lr = LR_SCALE / lambda_hat when "auto", else the given number; gd runs
    ``gd_steps`` epochs (one step each), sgd and adamw at most ``max_epochs`` with ``patience``.
    """
    if config.auto_lr(optimizer):
        try:
            lr = learning_rate(lam if lam is not None else float("nan"), LR_SCALE[optimizer])
        except VisionError as e:
            raise VisionError(f"{optimizer}: {e}") from e
    else:
        lr = float(getattr(config, f"lr_{optimizer}"))
    gd = optimizer == "gd"
    return FinetuneConfig(optimizer, lr, config.gd_steps if gd else config.max_epochs, batch_size=config.batch_size,
                          weight_decay=config.weight_decay if optimizer == "adamw" else 0.0, seed=config.seed,
                          chunk_size=config.chunk_size, patience=None if gd else config.patience)


def stopping_rule(cfg: FinetuneConfig) -> str:
    """The payload's one-sentence statement of how long a run of ``cfg`` runs and which epoch is tau^(conv)."""
    if cfg.restore_best:
        return (f"early stopping with restore-best on the validation accuracy: the run stops once {cfg.patience} "
                f"epochs pass without a strictly better validation accuracy than the best finetuned epoch so far "
                f"(epoch 1 always counts as better; the pretrained point is recorded, not a candidate), or at the "
                f"cap of {cfg.max_epochs} epochs; tau^(conv) is the task vector of the best-validation epoch "
                f"(ties: the earliest)")
    return (f"a fixed budget of {cfg.max_epochs} full-batch GD steps (one per epoch), no early stopping; "
            f"tau^(conv) is the last step's task vector, limited by the budget, not by convergence "
            f"(stopping.convergence says how far from convergence it ended)")


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
    def validate(m) -> float:
        return split_accuracy(m, data.split("val"), ctx, config.chunk_size, prep)

    try:
        result = finetune(model, x, y, cfg, run_dir, ctx, prep, progress=config.progress, stop_after=stop_after,
                          desc=f"{task}/{optimizer}", validate=validate)
    except DivergenceError as e:
        raise DivergenceError(f"{task}/{optimizer}: {e} ({flag('lr_' + optimizer)})") from e
    if not result.finished:
        return None
    stop = EarlyStopping(**result.stopping)
    K, k_conv = stop.last_epoch, stop.converged_epoch
    taus = [load_vector(tau_path(run_dir, k), layout).to(theta0.device) for k in range(1, K + 1)]
    grads = [load_vector(grad_path(run_dir, k), layout).to(theta0.device) for k in range(1, K + 1)]
    e2 = direction_stats(taus, grads, layout, reference=k_conv)
    analysis = {"E1": norm_stats(result.records), "E2": e2, "cos_tau1_tauconv": e2["cos_tau1_tauconv"],
                "reference": f"tau^(conv) = tau^({k_conv}), the converged epoch (stopping.converged_epoch); the "
                             f"keys named tauK mean tau^(conv)",
                "expansion": expansion_stats(model, x, y, make_batches(x.shape[0], cfg), theta0, taus, optimizer,
                                             cfg.lr, ctx, cfg.chunk_size, prep, second_order=config.second_order)}
    accs = {}
    for name, tau in (("one_epoch", taus[0]), ("finetuned", taus[k_conv - 1])):
        load_flat_(model, theta0 + tau)
        accs[name] = accuracies(model, data, config, encoder, ctx)
    stopping = {"rule": stopping_rule(cfg), "patience": cfg.patience, "max_epochs": cfg.max_epochs,
                "converged_epoch": k_conv, "last_epoch": K, "stopped_by": stop.stopped_by,
                "val_accuracy": stop.val_accuracy, "best_val_accuracy": stop.best_val,
                "best_epoch": stop.best_epoch, "pretrained_val_accuracy": stop.val_accuracy[0],
                "best_is_pretrained": stop.best_is_pretrained,
                "convergence": convergence_summary(stop, result.records, result.final)}
    n = int(x.shape[0])
    payload = {
        "task": task, "optimizer": optimizer, "config": {**config.to_dict(), "finetune": cfg.to_dict()},
        "seed": config.seed, "task_vectors": [str(tau_path(run_dir, k)) for k in range(1, K + 1)],
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
        "t1_check": result.t1_check, "resumed_from_epoch": result.resumed_from_epoch, "stopping": stopping,
        "final_point": result.final, "analysis": analysis,
        "accuracy": {"pretrained": head.info["pretrained_accuracy"], **accs},
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
