"""E3: task arithmetic of one-epoch vs converged task vectors, alpha chosen on validation splits.

Model for task t: encoder theta_0 + alpha * sum_t tau_t (``tvtheory.task_vectors.merge``) with task t's frozen
probe head. alpha maximises the mean validation accuracy over the tasks on a grid; the alpha = 1/T merge
(for one-epoch GD task vectors exactly one multitask GD step, corollary C1) is reported too.
Normalised accuracy = mean_t acc(merged, t) / acc(finetuned on t, t), with the converged finetuned model
as the reference for both merges.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from ..task_vectors import merge

# finer near 0: with 7 tasks the best alpha on validation is small (0.1, the smallest of 0.1..1.0, in a first run)
DEFAULT_ALPHA_GRID = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)

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
        v = _accs(merge(theta0, taus, a), tasks, "val", acc_fn)
        val_curve[a] = sum(v.values()) / len(v)
    best = max(grid, key=lambda a: (val_curve[a], -a))      # ties: the smaller alpha
    out = {"tasks": tasks, "alpha_grid": list(grid), "val_mean_accuracy": [val_curve[a] for a in grid]}
    for name, alpha in (("alpha_val", best), ("alpha_1_over_T", 1.0 / len(tasks))):
        acc = _accs(merge(theta0, taus, alpha), tasks, "test", acc_fn)
        norm = {t: acc[t] / finetuned_test_acc[t] if finetuned_test_acc[t] > 0 else float("nan") for t in tasks}
        out[name] = {"alpha": alpha, "test_accuracy": acc, "mean_accuracy": sum(acc.values()) / len(acc),
                     "normalised_accuracy": norm, "mean_normalised_accuracy": sum(norm.values()) / len(norm)}
    return out
