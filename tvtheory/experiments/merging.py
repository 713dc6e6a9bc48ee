"""E3: task arithmetic of one-epoch vs converged task vectors, alpha chosen on validation splits.

Model for task t: encoder theta_0 + alpha * sum_t tau_t (``tvtheory.task_vectors.merge``) with task t's frozen
probe head. alpha maximises the mean validation accuracy over the tasks on a grid; the alpha = 1/T merge
(for one-epoch GD task vectors exactly one multitask GD step, corollary C1) is reported too.
Normalised accuracy = mean_t acc(merged, t) / acc(finetuned on t, t), with the converged finetuned model
as the reference for both merges.

``merge_and_evaluate`` is the computation on given task vectors and an accuracy function; ``merge`` runs it
for the finished runs of a results folder (``<results>/merge_<optimizer>.json``), ``merge_table`` prints one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from ..io import versions, write_json_atomic
from ..params import ParamLayout, flat_params, load_flat_
from ..task_vectors import merge as merge_vectors
from .config import DEFAULT_ALPHA_GRID, VisionConfig
from .dist import DistContext
from .encoders import Encoder
from .heads import classifier, task_head
from .probe import split_accuracy
from .runs import result_path
from .storage import load_vector, tau_path
from .tasks import load_task_data

# acc_fn(theta, task, split) -> accuracy of the encoder theta with task's head on split ("val" or "test")
AccuracyFn = Callable[[torch.Tensor, str, str], float]


def _accs(theta: torch.Tensor, tasks: Sequence[str], split: str, acc_fn: AccuracyFn) -> dict[str, float]:
    return {t: acc_fn(theta, t, split) for t in tasks}


def merge_and_evaluate(theta0: torch.Tensor, task_vectors: Mapping[str, torch.Tensor], acc_fn: AccuracyFn,
                       finetuned_test_acc: Mapping[str, float], grid: Sequence[float] = DEFAULT_ALPHA_GRID) -> dict:
    """Choose alpha on validation, evaluate on test at that alpha and at 1/T; per-task, mean, normalised."""
    tasks = list(task_vectors)
    taus = [task_vectors[t] for t in tasks]
    val_curve = {}
    for a in grid:
        v = _accs(merge_vectors(theta0, taus, a), tasks, "val", acc_fn)
        val_curve[a] = sum(v.values()) / len(v)
    best = max(grid, key=lambda a: (val_curve[a], -a))      # ties: the smaller alpha
    out = {"tasks": tasks, "alpha_grid": list(grid), "val_mean_accuracy": [val_curve[a] for a in grid]}
    for name, alpha in (("alpha_val", best), ("alpha_1_over_T", 1.0 / len(tasks))):
        acc = _accs(merge_vectors(theta0, taus, alpha), tasks, "test", acc_fn)
        norm = {t: acc[t] / finetuned_test_acc[t] if finetuned_test_acc[t] > 0 else float("nan") for t in tasks}
        out[name] = {"alpha": alpha, "test_accuracy": acc, "mean_accuracy": sum(acc.values()) / len(acc),
                     "normalised_accuracy": norm, "mean_normalised_accuracy": sum(norm.values()) / len(norm)}
    return out


def finished_runs(config: VisionConfig, optimizer: str) -> dict[str, dict]:
    """{task: result payload} of the finished runs of ``optimizer`` among ``config.tasks``."""
    return {t: json.loads(result_path(config, t, optimizer).read_text()) for t in config.tasks
            if result_path(config, t, optimizer).exists()}


def merge_optimizer(optimizer: str, config: VisionConfig, encoder: Encoder, ctx: DistContext) -> dict | None:
    """E3 for one optimizer's finished runs (>= 2 tasks, else None), written to ``<results>/merge_<opt>.json``."""
    runs = finished_runs(config, optimizer)
    if len(runs) < 2:
        return None
    tasks = sorted(runs)
    data = {t: load_task_data(t, config, encoder) for t in tasks}
    heads = {t: task_head(t, data[t], config, encoder, ctx) for t in tasks}
    models = {t: classifier(heads[t], encoder, ctx) for t in tasks}
    layout = ParamLayout.of(models[tasks[0]])
    theta0 = flat_params(models[tasks[0]])

    def acc_fn(theta: torch.Tensor, t: str, split: str) -> float:
        load_flat_(models[t], theta)
        return split_accuracy(models[t], data[t].split(split), ctx, config.chunk_size, encoder.prepare)

    finetuned = {t: runs[t]["accuracy"]["finetuned"]["test"] for t in tasks}
    epochs = {t: runs[t]["config"]["finetune"]["epochs"] for t in tasks}
    out = {"optimizer": optimizer, "versions": versions(), "config": config.to_dict(), "seed": config.seed,
           "finetuned_test_accuracy": finetuned,
           "one_epoch_test_accuracy": {t: runs[t]["accuracy"]["one_epoch"]["test"] for t in tasks},
           "pretrained_test_accuracy": {t: heads[t].info["pretrained_accuracy"]["test"] for t in tasks},
           "normalisation": "merged accuracy on t / accuracy of the converged model finetuned on t"}
    for name, epoch_of in (("one_epoch", dict.fromkeys(tasks, 1)), ("converged", epochs)):
        taus = {t: load_vector(tau_path(Path(config.artifacts) / t / optimizer, epoch_of[t]), layout).to(theta0.device)
                for t in tasks}
        out[name] = merge_and_evaluate(theta0, taus, acc_fn, finetuned, config.alpha_grid)
    if ctx.is_main:
        write_json_atomic(Path(config.results) / f"merge_{optimizer}.json", out)
    ctx.barrier()
    return out


def merge(config: VisionConfig, encoder: Encoder, ctx: DistContext) -> dict[str, dict]:
    """E3 for every optimizer of ``config`` with finished runs of >= 2 tasks: {optimizer: merge payload}."""
    merged = {}
    for opt in config.optimizers:
        out = merge_optimizer(opt, config, encoder, ctx)
        if out is not None:
            merged[opt] = out
    return merged


def merge_table(m: dict) -> str:
    """The lines the command line prints for one merge payload: mean and mean normalised test accuracy."""
    lines = [f"E3 merge ({m['optimizer']}): mean acc / mean normalised acc"]
    for name in ("one_epoch", "converged"):
        for which in ("alpha_val", "alpha_1_over_T"):
            r = m[name][which]
            lines.append(f"  {name:>9} {which:>14} alpha={r['alpha']:.3f}  acc={r['mean_accuracy']:.4f}  "
                         f"norm={r['mean_normalised_accuracy']:.4f}")
    return "\n".join(lines)
