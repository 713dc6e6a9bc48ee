"""E3: task arithmetic of one-epoch vs converged task vectors, alpha chosen on validation splits.

Model for task t: encoder theta_0 + alpha * sum_t tau_t (``tvtheory.task_vectors.merge``) with task t's frozen
probe head. alpha maximises the mean validation accuracy over the merged tasks on a grid (ties: the smaller
alpha); the alpha = 1/T merge (for one-epoch GD task vectors exactly one multitask GD step, corollary C1) is
reported too. Two task vectors per task: the one-epoch tau^(1) and the converged tau^(conv) = tau^(k*) of the
same run, k* = ``converged_epoch(payload)``. Scores of a merge over its tasks S (``merge_scores``), with the
converged model finetuned on t alone as the reference for both merges:

- mean accuracy  (1/|S|) sum_{t in S} acc(merged, t);
- normalised accuracy  (1/|S|) sum_{t in S} acc(merged, t) / acc(finetuned on t, t);
- gain recovery  (mean_S acc(merged) - mean_S acc(pretrained)) / (mean_S acc(finetuned) - mean_S acc(pretrained)),
  the share of the finetuning gain the merge keeps, over the subset's means (1: all of it; 0: none).

Sweep across T (``sweep``): for each merge size T of ``config.merge_sizes`` (sizes above the number of tasks are
skipped and listed), ``config.merge_subsets`` distinct subsets of T tasks (all of them when there are no more,
e.g. the one subset of T = 7 of 7 tasks; ``draw_subsets``: a numpy Generator seeded by (config.seed, T)), the
same subsets for the one-epoch and the converged vectors, each merged with alpha chosen on its own tasks'
validation splits (``merge_and_evaluate``).

Cost: every accuracy is one pass of one merged encoder over one split of one task. ``evaluate_merges`` runs the
all-task merges and the sweep through one ``CachedAccuracy``, which computes each (theta, task, split) once,
keyed by theta's bytes, so the subset of T = number of tasks (the all-task merge again), a test evaluation at
alpha_val = 1/T and a tau^(conv) equal to tau^(1) (k* = 1) are not redone; the payload's "evaluations" counts the
passes and images computed and the calls answered from the cache. Per kind of vector, a subset of T tasks costs
T (|grid| + 2) passes at most: T |grid| over validation splits, 2 T over test splits.

``merge_and_evaluate`` is the computation on given task vectors and an accuracy function, ``evaluate_merges``
all of one optimizer's; ``merge`` runs them for the finished runs of a results folder
(``<results>/merge_<optimizer>.json``), ``merge_table`` prints one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import versions, write_json_atomic
from ..params import ParamLayout, flat_params, load_flat_
from ..task_vectors import merge as merge_vectors
from .config import DEFAULT_ALPHA_GRID, VisionConfig
from .dist import DistContext
from .encoders import Encoder
from .heads import Head, classifier, task_head
from .probe import FrozenHeadClassifier, split_accuracy
from .runs import result_path
from .storage import load_vector, tau_path
from .tasks import TaskData, load_task_data

# acc_fn(theta, task, split) -> accuracy of the encoder theta with task's head on split ("val" or "test")
AccuracyFn = Callable[[torch.Tensor, str, str], float]

#: The two task vectors of each task that E3 merges, in the order of the payload.
VECTORS = ("one_epoch", "converged")


class CachedAccuracy:
    """``acc_fn`` evaluated at most once per (theta, task, split): theta is keyed by its dtype, shape and bytes.

    ``passes`` counts the evaluations computed (each a forward pass of one merged encoder over one split of one
    task), ``images`` the images they forwarded (``split_size(task, split)`` each, when given), ``reused`` the
    calls answered from the cache. Consecutive calls with the same unmodified tensor (one merged theta, every
    task) hash it once.
    """

    def __init__(self, acc_fn: AccuracyFn, split_size: Callable[[str, str], int] | None = None):
        self._acc_fn, self._split_size = acc_fn, split_size
        self._cache: dict[tuple[str, str, str], float] = {}
        self._last: tuple[torch.Tensor, int, str] | None = None
        self.passes = self.images = self.reused = 0

    def _key(self, theta: torch.Tensor) -> str:
        last = self._last
        if last is not None and last[0] is theta and last[1] == theta._version:
            return last[2]
        digest = _digest(theta)
        self._last = (theta, theta._version, digest)
        return digest

    def __call__(self, theta: torch.Tensor, task: str, split: str) -> float:
        """acc_fn(theta, task, split), computed on the first call with these arguments, then read back."""
        key = (self._key(theta), task, split)
        if key in self._cache:
            self.reused += 1
            return self._cache[key]
        value = self._acc_fn(theta, task, split)
        self._cache[key] = value
        self.passes += 1
        if self._split_size is not None:
            self.images += self._split_size(task, split)
        return value

    def record(self) -> dict:
        """The counts as the payload's "evaluations"."""
        return {"passes": self.passes, "images": self.images, "reused": self.reused,
                "definition": "a pass is one merged encoder's forward pass over one split (val or test) of one "
                              "task; each (encoder, task, split) is computed once, 'reused' counts the repeats "
                              "answered from the cache"}


def _digest(theta: torch.Tensor) -> str:
    t = theta.detach().contiguous().cpu()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    return f"{t.dtype}{tuple(t.shape)}{hashlib.blake2b(raw, digest_size=16).hexdigest()}"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def merge_scores(acc: Mapping[str, float], pretrained: Mapping[str, float] | None,
                 finetuned: Mapping[str, float]) -> dict:
    """Mean accuracy, per-task and mean normalised accuracy and gain recovery (module docstring) of the test
    accuracies ``acc`` over its tasks; gain recovery is None without ``pretrained`` and NaN when the finetuned
    and pretrained means are equal; a normalised accuracy is NaN where the finetuned accuracy is 0.
    """
    tasks = list(acc)
    norm = {t: acc[t] / finetuned[t] if finetuned[t] > 0 else float("nan") for t in tasks}
    mean = _mean([acc[t] for t in tasks])
    gain: float | None = None
    if pretrained is not None:
        p, f = _mean([pretrained[t] for t in tasks]), _mean([finetuned[t] for t in tasks])
        gain = (mean - p) / (f - p) if f != p else float("nan")
    return {"test_accuracy": dict(acc), "mean_accuracy": mean, "normalised_accuracy": norm,
            "mean_normalised_accuracy": _mean(list(norm.values())), "gain_recovery": gain}


def _accs(theta: torch.Tensor, tasks: Sequence[str], split: str, acc_fn: AccuracyFn) -> dict[str, float]:
    return {t: acc_fn(theta, t, split) for t in tasks}


def merge_and_evaluate(theta0: torch.Tensor, task_vectors: Mapping[str, torch.Tensor], acc_fn: AccuracyFn,
                       finetuned_test_acc: Mapping[str, float], grid: Sequence[float] = DEFAULT_ALPHA_GRID,
                       pretrained_test_acc: Mapping[str, float] | None = None) -> dict:
    """Choose alpha on validation, evaluate on test at that alpha and at 1/T; per-task, mean, normalised and
    (with ``pretrained_test_acc``) gain recovery, ``merge_scores`` at each of the two alphas.
    """
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
        out[name] = {"alpha": alpha, **merge_scores(acc, pretrained_test_acc, finetuned_test_acc)}
    return out


def draw_subsets(tasks: Sequence[str], size: int, count: int, seed: int) -> list[tuple[str, ...]]:
    """``count`` distinct subsets of ``size`` of the tasks (each in sorted task order), all of them when there are
    at most ``count``: drawn with ``numpy.random.default_rng([seed, size])``, so a size's subsets depend on the seed
    and the size only, not on the other sizes of a sweep.
    """
    names = sorted(tasks)
    if not 1 <= size <= len(names) or count < 1:
        raise ValueError(f"cannot draw {count} subsets of {size} of {len(names)} tasks")
    if math.comb(len(names), size) <= count:
        return list(itertools.combinations(names, size))
    rng = np.random.default_rng([seed, size])
    drawn: list[tuple[str, ...]] = []
    while len(drawn) < count:
        pick = tuple(names[i] for i in sorted(int(i) for i in rng.choice(len(names), size=size, replace=False)))
        if pick not in drawn:
            drawn.append(pick)
    return drawn


def _subset_means(results: Sequence[dict]) -> dict:
    keys = ("mean_accuracy", "mean_normalised_accuracy", "gain_recovery")
    return {which: {k: _mean([r[which][k] if r[which][k] is not None else float("nan") for r in results])
                    for k in keys} for which in ("alpha_val", "alpha_1_over_T")}


def sweep(theta0: torch.Tensor, vectors: Mapping[str, Mapping[str, torch.Tensor]], acc_fn: AccuracyFn,
          finetuned_test_acc: Mapping[str, float], pretrained_test_acc: Mapping[str, float] | None,
          sizes: Sequence[int], count: int, seed: int, grid: Sequence[float] = DEFAULT_ALPHA_GRID) -> dict:
    """The merges across T (module docstring) of ``vectors`` ({"one_epoch": {task: tau}, "converged": ...}, the
    same tasks in each): per size, the subsets and, per kind of vector, one ``merge_and_evaluate`` per subset and
    the means over the subsets.
    """
    tasks = sorted(next(iter(vectors.values())))
    by_size, skipped = {}, []
    for size in sizes:
        if size > len(tasks):
            skipped.append(size)
            continue
        subsets = draw_subsets(tasks, size, count, seed)
        entry: dict = {"subsets": [list(s) for s in subsets]}
        for kind, taus in vectors.items():
            entry[kind] = [merge_and_evaluate(theta0, {t: taus[t] for t in s}, acc_fn, finetuned_test_acc, grid,
                                              pretrained_test_acc) for s in subsets]
        entry["mean_over_subsets"] = {kind: _subset_means(entry[kind]) for kind in vectors}
        by_size[str(size)] = entry
    return {"sizes": list(sizes), "subsets_per_size": count, "seed": seed, "sizes_skipped": skipped,
            "drawing": f"per size T, {count} distinct subsets of T tasks (all when there are no more), "
                       "numpy.random.default_rng([seed, T]); the same subsets for both kinds of task vector",
            "by_size": by_size}


def evaluate_merges(theta0: torch.Tensor, vectors: Mapping[str, Mapping[str, torch.Tensor]], acc_fn: AccuracyFn,
                    finetuned_test_acc: Mapping[str, float], pretrained_test_acc: Mapping[str, float] | None,
                    sizes: Sequence[int], count: int, seed: int, grid: Sequence[float] = DEFAULT_ALPHA_GRID,
                    split_size: Callable[[str, str], int] | None = None) -> dict:
    """Everything E3 merges for one optimizer: per kind of vector the all-task ``merge_and_evaluate``, then the
    ``sweep``, through one ``CachedAccuracy`` (so nothing is evaluated twice), and its counts as "evaluations".
    """
    cached = CachedAccuracy(acc_fn, split_size)
    out: dict = {kind: merge_and_evaluate(theta0, taus, cached, finetuned_test_acc, grid, pretrained_test_acc)
                 for kind, taus in vectors.items()}
    out["sweep"] = sweep(theta0, vectors, cached, finetuned_test_acc, pretrained_test_acc, sizes, count, seed, grid)
    out["evaluations"] = cached.record()
    return out


@dataclass(frozen=True)
class TaskModels:
    """What evaluating (or finetuning) encoders on several tasks needs: each task's data, frozen head and
    classifier (a copy of the pretrained encoder with that head), the parameter layout and theta_0; ``load`` builds
    it, ``accuracy(theta, task, split)`` evaluates the encoder theta with the task's head.
    """

    data: dict[str, TaskData]
    heads: dict[str, Head]
    models: dict[str, FrozenHeadClassifier]
    layout: ParamLayout
    theta0: torch.Tensor
    ctx: DistContext
    chunk_size: int
    prepare: Callable | None

    @classmethod
    def load(cls, tasks: Sequence[str], config: VisionConfig, encoder: Encoder, ctx: DistContext) -> TaskModels:
        """The tasks' data and heads (``tasks.load_task_data``, ``heads.task_head``) and a classifier each."""
        data = {t: load_task_data(t, config, encoder) for t in tasks}
        heads = {t: task_head(t, data[t], config, encoder, ctx) for t in tasks}
        models = {t: classifier(heads[t], encoder, ctx) for t in tasks}
        first = models[tasks[0]]
        return cls(data, heads, models, ParamLayout.of(first), flat_params(first), ctx, config.chunk_size,
                   encoder.prepare)

    def accuracy(self, theta: torch.Tensor, task: str, split: str) -> float:
        """Accuracy on ``split`` of ``task`` of the encoder ``theta`` with the task's head (an ``AccuracyFn``)."""
        load_flat_(self.models[task], theta)
        return split_accuracy(self.models[task], self.data[task].split(split), self.ctx, self.chunk_size,
                              self.prepare)

    def pretrained_test_accuracy(self) -> dict[str, float]:
        """{task: test accuracy at theta_0}, as recorded when its head was fitted."""
        return {t: h.info["pretrained_accuracy"]["test"] for t, h in self.heads.items()}


def converged_epoch(run: Mapping) -> int:
    """k* of a run, tau^(conv) = tau^(k*): ``run["stopping"]["converged_epoch"]``."""
    return int(run["stopping"]["converged_epoch"])


def finished_runs(config: VisionConfig, optimizer: str) -> dict[str, dict]:
    """{task: result payload} of the finished runs of ``optimizer`` among ``config.tasks``."""
    return {t: json.loads(result_path(config, t, optimizer).read_text()) for t in config.tasks
            if result_path(config, t, optimizer).exists()}


def merge_optimizer(optimizer: str, config: VisionConfig, encoder: Encoder, ctx: DistContext) -> dict | None:
    """E3 for one optimizer's finished runs (>= 2 tasks, else None): the all-task merges and the sweep across T,
    written to ``<results>/merge_<opt>.json``.
    """
    runs = finished_runs(config, optimizer)
    if len(runs) < 2:
        return None
    tasks = sorted(runs)
    tm = TaskModels.load(tasks, config, encoder, ctx)
    layout, theta0 = tm.layout, tm.theta0
    finetuned = {t: runs[t]["accuracy"]["finetuned"]["test"] for t in tasks}
    pretrained = tm.pretrained_test_accuracy()
    epochs = {"one_epoch": dict.fromkeys(tasks, 1), "converged": {t: converged_epoch(runs[t]) for t in tasks}}
    out = {"optimizer": optimizer, "versions": versions(), "config": config.to_dict(), "seed": config.seed,
           "finetuned_test_accuracy": finetuned,
           "one_epoch_test_accuracy": {t: runs[t]["accuracy"]["one_epoch"]["test"] for t in tasks},
           "pretrained_test_accuracy": pretrained, "task_vector_epochs": epochs,
           "normalisation": "merged accuracy on t / accuracy of the converged model finetuned on t",
           "gain_recovery": "(mean merged - mean pretrained) / (mean finetuned - mean pretrained) over the merged "
                            "tasks' test accuracies"}
    vectors = {kind: {t: load_vector(tau_path(Path(config.artifacts) / t / optimizer, epochs[kind][t]),
                                     layout).to(theta0.device) for t in tasks} for kind in VECTORS}
    out.update(evaluate_merges(theta0, vectors, tm.accuracy, finetuned, pretrained, config.merge_sizes,
                               config.merge_subsets, config.seed, config.alpha_grid,
                               lambda t, split: int(tm.data[t].split(split)[0].shape[0])))
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


def format_number(value: float | None, fmt: str) -> str:
    """``format(value, fmt)``, or "n/a" for an undefined number (None, as JSON stores NaN, or NaN)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def merge_table(m: dict) -> str:
    """The lines the command line prints for one merge payload: mean, mean normalised test accuracy and gain
    recovery of the all-task merges, then the sweep's means over the subsets of each size (alpha on validation).
    """
    lines = [f"E3 merge ({m['optimizer']}, seed {m.get('seed')}): mean acc / mean normalised acc / gain recovery"]
    for name in VECTORS:
        for which in ("alpha_val", "alpha_1_over_T"):
            r = m[name][which]
            lines.append(f"  {name:>9} {which:>14} alpha={r['alpha']:.3f}  acc={r['mean_accuracy']:.4f}  "
                         f"norm={format_number(r['mean_normalised_accuracy'], '.4f')}  "
                         f"gain={format_number(r.get('gain_recovery'), '.3f')}")
    sw = m.get("sweep")
    if sw:
        for size, entry in sw["by_size"].items():
            mean = entry["mean_over_subsets"]
            cells = "  ".join(f"{name} acc={mean[name]['alpha_val']['mean_accuracy']:.4f} "
                              f"norm={format_number(mean[name]['alpha_val']['mean_normalised_accuracy'], '.4f')} "
                              f"gain={format_number(mean[name]['alpha_val']['gain_recovery'], '.3f')}"
                              for name in VECTORS)
            lines.append(f"  T={size} ({len(entry['subsets'])} subsets): {cells}")
        if sw["sizes_skipped"]:
            lines.append(f"  T={','.join(map(str, sw['sizes_skipped']))}: skipped (more than the "
                         f"{len(m['one_epoch']['tasks'])} tasks)")
    ev = m.get("evaluations")
    if ev:
        lines.append(f"  evaluations: {ev['passes']} passes ({ev['images']} images), {ev['reused']} reused")
    return "\n".join(lines)
