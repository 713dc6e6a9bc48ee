"""ATM on the vision tasks (issue 10, spec T5): R rounds of one epoch per task against task arithmetic and
multitask finetuning, per optimizer and seed.

The three ways to spend the tasks' data, all from theta_0 with the frozen heads of E1-E3 (``heads.task_head``)
and each task's own optimizer settings (its E3 run's ``FinetuneConfig``: learning rate eta_t, batch size, fixed
batch partition, AdamW's betas and weight decay):

- ATM (alternating tuning and merging, ``tvtheory.atm``): round r finetunes every task t for one epoch from
  theta^(r) (``finetune.finetune``, a fresh optimizer state each round), tau_t^(r) = theta_{t,end} - theta^(r),
  and merges theta^(r+1) = theta^(r) + (1/T) sum_t tau_t^(r) (``task_vectors.merge``, alpha = 1/T);
- multitask finetuning: R epochs of one optimizer on L_MT = (1/T) sum_t w_t L_t with w_t = eta_t / eta_MT,
  eta_MT = mean_t eta_t (w_t = 1 when the tasks share a learning rate, as AdamW's do); step s of an epoch takes
  batch s of every task's partition (batch s mod B_t of a task with fewer batches), so one epoch visits every
  task's data once, as one ATM round does. For SGD and GD (no weight decay) ATM's round is to first order in eta
  this epoch: theta^(r+1) = theta^(r) - eta_MT sum_s grad L_MT,s + (1/T) sum_t E_t^(r) (T3's error E_t of one
  epoch); for GD (one full batch, one step) exactly, up to rounding (T5(a)). The distance
  ||theta_ATM^(r) - theta_MT^(r)|| / ||theta_MT^(r) - theta_0|| measures what the second-order terms add up to;
- task arithmetic (E3, ``merging``): the all-task merges of the one-epoch and the converged task vectors of the
  E3 runs, read from ``<results>/merge_<optimizer>.json`` (alpha on validation and alpha = 1/T), with their
  distances to theta_MT^(1) and theta_MT^(R).

Budget in task-epochs (one epoch over one task's training images): ATM and multitask R T each, task arithmetic
of one-epoch vectors T (ATM's first round at alpha = 1/T is the same point), of converged vectors sum_t k*_t.
Scores are ``merging.merge_scores`` of the test accuracies (mean, normalised by the converged single-task
finetune, gain recovery).

Files: ``<results>/atm_<optimizer>.json``; under ``<artifacts>/atm/<optimizer>/``: ``round<r>/<task>/`` (each
task-round is a ``finetune`` run with its checkpoint) and ``multitask/`` (``checkpoint.pt`` and
``theta_epoch<r>.safetensors``). Every finished task-round and multitask epoch is kept, so an interrupted call
resumes where it stopped and reproduces the same numbers.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from ..io import versions, write_json_atomic
from ..params import ParamLayout, flat_params, load_flat_
from ..task_vectors import merge as merge_vectors
from ..task_vectors import norm, task_vector
from .config import VisionConfig
from .dist import DistContext
from .encoders import Encoder
from .errors import VisionError
from .finetune import FinetuneConfig, batch_gradient, finetune, make_batches, make_optimizer
from .merging import VECTORS, TaskModels, converged_epoch, finished_runs, format_number, merge_scores
from .probe import FrozenHeadClassifier
from .storage import load_vector, save_checkpoint, save_vector, tau_path
from .tasks import TaskData

#: ATM rounds (and multitask epochs) of ``python -m tvtheory.experiments.vision atm`` without ``--rounds``, and
#: under ``--quick``.
DEFAULT_ROUNDS = 5
QUICK_ROUNDS = 2


def check_rounds(rounds: int) -> int:
    """``rounds`` when it is an integer >= 1, else a VisionError naming ``--rounds``."""
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise VisionError(f"--rounds is {rounds!r}: must be an integer >= 1 (ATM rounds, multitask epochs)")
    return rounds


def rounds_for(config: VisionConfig) -> int:
    """The rounds without ``--rounds``: ``QUICK_ROUNDS`` for a quick config, else ``DEFAULT_ROUNDS``."""
    return QUICK_ROUNDS if config.quick else DEFAULT_ROUNDS


def round_config(run: Mapping) -> FinetuneConfig:
    """One epoch with the settings of the task's E3 run (its payload's ``config.finetune``), no early stopping."""
    fields = dict(run["config"]["finetune"])
    fields["betas"] = tuple(fields["betas"])
    return dataclasses.replace(FinetuneConfig(**fields), max_epochs=1, patience=None)


def multitask_weights(configs: Mapping[str, FinetuneConfig]) -> tuple[dict[str, float], float]:
    """({t: w_t}, eta_MT): w_t = eta_t / eta_MT with eta_MT the mean of the tasks' learning rates."""
    lr = sum(c.lr for c in configs.values()) / len(configs)
    return {t: c.lr / lr for t, c in configs.items()}, lr


def _check_settings(configs: Mapping[str, FinetuneConfig]) -> None:
    shared = {dataclasses.replace(c, lr=1.0, seed=0) for c in configs.values()}
    if len(shared) != 1:
        raise VisionError("the tasks' E3 runs used different optimizer settings (other than the learning rate); "
                          "ATM and multitask finetuning need one optimizer: rerun finetune with one setting")


def multitask_finetune(theta0: torch.Tensor, models: Mapping[str, FrozenHeadClassifier], data: Mapping[str, TaskData],
                       configs: Mapping[str, FinetuneConfig], epochs: int, run_dir: Path, ctx: DistContext,
                       prepare: Callable | None = None, progress: bool = True,
                       desc: str = "multitask") -> list[torch.Tensor]:
    """theta_MT^(r), r = 0..epochs, of multitask finetuning from ``theta0`` (module docstring); resumes from
    ``run_dir``. The models' parameters are overwritten.
    """
    _check_settings(configs)
    tasks = list(models)
    weights, lr = multitask_weights(configs)
    first = configs[tasks[0]]
    cfg = dataclasses.replace(first, lr=lr)
    stepper = models[tasks[0]]
    layout = ParamLayout.of(stepper)
    batches = {t: make_batches(data[t].train[0].shape[0], configs[t]) for t in tasks}
    steps = max(len(b) for b in batches.values())
    optimizer = make_optimizer(cfg, list(stepper.parameters()))
    state = {"config": cfg.to_dict(), "weights": weights}
    ckpt = run_dir / "checkpoint.pt"
    done = 0
    if ckpt.exists():
        saved = torch.load(ckpt, map_location=ctx.device, weights_only=False)
        if saved["config"] != state["config"] or saved["weights"] != weights:
            raise VisionError(f"{ckpt} was written by another config; delete {run_dir} to restart")
        optimizer.load_state_dict(saved["optimizer"])
        done = int(saved["epochs_done"])
    thetas = [theta0] + [load_vector(run_dir / f"theta_epoch{r:03d}.safetensors", layout).to(theta0.device)
                         for r in range(1, done + 1)]
    load_flat_(stepper, thetas[-1])
    for r in range(done, epochs):
        for s in range(steps):
            theta = flat_params(stepper)
            g = torch.zeros_like(theta)
            for t in tasks:
                load_flat_(models[t], theta)
                b = batches[t][s % len(batches[t])]
                g_t, _ = batch_gradient(models[t], *data[t].train, b, ctx, cfg.chunk_size, prepare)
                g += (weights[t] / len(tasks)) * g_t
            for p, gp in zip(stepper.parameters(), layout.unflatten(g).values(), strict=True):
                p.grad = gp.detach().clone()
            optimizer.step()
        theta = flat_params(stepper)
        if not torch.isfinite(theta).all():
            raise VisionError(f"{desc}: the parameters became non-finite in epoch {r + 1}: lower the learning rate")
        thetas.append(theta)
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_vector(run_dir / f"theta_epoch{r + 1:03d}.safetensors", theta, layout)
            save_checkpoint(ckpt, {**state, "epochs_done": r + 1, "optimizer": optimizer.state_dict()})
        ctx.barrier()
        if progress and ctx.is_main:
            print(f"{desc}: epoch {r + 1}/{epochs} done", file=sys.stderr, flush=True)
    for p in stepper.parameters():
        p.grad = None
    return thetas


def atm_rounds(theta0: torch.Tensor, models: Mapping[str, FrozenHeadClassifier], data: Mapping[str, TaskData],
               configs: Mapping[str, FinetuneConfig], rounds: int, run_dir: Path, ctx: DistContext,
               prepare: Callable | None = None, progress: bool = True, desc: str = "atm") -> list[torch.Tensor]:
    """theta^(r), r = 0..rounds, of ATM from ``theta0`` (module docstring): one ``finetune`` epoch per task and
    round, merged with alpha = 1/T; each task-round resumes from ``run_dir/round<r>/<task>``. The models'
    parameters are overwritten.
    """
    tasks = list(models)
    thetas = [theta0]
    for r in range(rounds):
        taus = []
        for t in tasks:
            load_flat_(models[t], thetas[-1])
            finetune(models[t], *data[t].train, configs[t], run_dir / f"round{r + 1:03d}" / t, ctx, prepare,
                     progress=progress, desc=f"{desc} round {r + 1}/{rounds} {t}")
            taus.append(task_vector(flat_params(models[t]), thetas[-1]))
        thetas.append(merge_vectors(thetas[-1], taus, 1.0 / len(tasks)))
    return thetas


def _distance(theta: torch.Tensor, reference: torch.Tensor, theta0: torch.Tensor) -> dict:
    d, scale = norm(theta - reference), norm(reference - theta0)
    return {"distance": d, "relative_distance": d / scale if scale > 0 else float("nan")}


def atm_optimizer(optimizer: str, config: VisionConfig, encoder: Encoder, ctx: DistContext,
                  rounds: int = DEFAULT_ROUNDS) -> dict | None:
    """ATM, multitask finetuning and task arithmetic for one optimizer's finished E3 runs and merge (>= 2 tasks,
    else None), written to ``<results>/atm_<optimizer>.json``.
    """
    check_rounds(rounds)
    runs = finished_runs(config, optimizer)
    merge_file = Path(config.results) / f"merge_{optimizer}.json"
    if len(runs) < 2:
        return None
    if not merge_file.exists():
        raise VisionError(f"{merge_file} is missing: run merge before atm (it compares with E3's merges)")
    ta = json.loads(merge_file.read_text())
    tasks = sorted(runs)
    if sorted(ta["one_epoch"]["tasks"]) != tasks:
        raise VisionError(f"{merge_file} merged {ta['one_epoch']['tasks']}, the finished runs are {tasks}: "
                          f"rerun merge")
    tm = TaskModels.load(tasks, config, encoder, ctx)
    data, models, layout, theta0 = tm.data, tm.models, tm.layout, tm.theta0
    configs = {t: round_config(runs[t]) for t in tasks}
    finetuned = {t: runs[t]["accuracy"]["finetuned"]["test"] for t in tasks}
    pretrained = tm.pretrained_test_accuracy()
    folder = Path(config.artifacts) / "atm" / optimizer

    def scores(theta: torch.Tensor) -> dict:
        return merge_scores({t: tm.accuracy(theta, t, "test") for t in tasks}, pretrained, finetuned)

    mt = multitask_finetune(theta0, models, data, configs, rounds, folder / "multitask", ctx, encoder.prepare,
                            config.progress, f"multitask/{optimizer}")
    atm = atm_rounds(theta0, models, data, configs, rounds, folder, ctx, encoder.prepare, config.progress,
                     f"atm/{optimizer}")
    rows: dict[str, list[dict]] = {"atm": [], "multitask": []}
    for r in range(rounds + 1):
        at_start = merge_scores(pretrained, pretrained, finetuned) if r == 0 else None
        rows["multitask"].append({"epoch": r, **(at_start or scores(mt[r]))})
        rows["atm"].append({"round": r, **(at_start or scores(atm[r])), **_distance(atm[r], mt[r], theta0),
                            "distance_note": "to theta_MT^(r), relative to ||theta_MT^(r) - theta_0||"})
    epochs = {"one_epoch": dict.fromkeys(tasks, 1), "converged": {t: converged_epoch(runs[t]) for t in tasks}}
    arithmetic: dict[str, dict] = {}
    for kind in VECTORS:
        taus = [load_vector(tau_path(Path(config.artifacts) / t / optimizer, epochs[kind][t]), layout)
                .to(theta0.device) for t in tasks]
        arithmetic[kind] = {"task_epochs": sum(epochs[kind].values())}
        for which in ("alpha_val", "alpha_1_over_T"):
            entry = ta[kind][which]
            theta = merge_vectors(theta0, taus, entry["alpha"])
            arithmetic[kind][which] = {
                "alpha": entry["alpha"], "mean_accuracy": entry["mean_accuracy"],
                "mean_normalised_accuracy": entry["mean_normalised_accuracy"],
                "gain_recovery": entry["gain_recovery"], "test_accuracy": entry["test_accuracy"],
                "to_multitask_epoch_1": _distance(theta, mt[1], theta0),
                f"to_multitask_epoch_{rounds}": _distance(theta, mt[rounds], theta0)}
    weights, lr_mt = multitask_weights(configs)
    out = {"optimizer": optimizer, "seed": config.seed, "versions": versions(), "config": config.to_dict(),
           "rounds": rounds, "tasks": tasks, "alpha": 1.0 / len(tasks),
           "learning_rates": {t: configs[t].lr for t in tasks}, "multitask_lr": lr_mt, "multitask_weights": weights,
           "task_epochs": {"atm": rounds * len(tasks), "multitask": rounds * len(tasks),
                           **{f"task_arithmetic_{k}": arithmetic[k]["task_epochs"] for k in VECTORS}},
           "pretrained_test_accuracy": pretrained, "finetuned_test_accuracy": finetuned,
           "atm": rows["atm"], "multitask": rows["multitask"], "task_arithmetic": arithmetic,
           "method": "ATM: one epoch per task and round from the merged point, alpha = 1/T; multitask: the same "
                     "optimizer on (1/T) sum_t (eta_t / eta_MT) L_t, step s on batch s of every task; task "
                     "arithmetic: E3's all-task merges (merge_<optimizer>.json)"}
    if ctx.is_main:
        write_json_atomic(Path(config.results) / f"atm_{optimizer}.json", out)
    ctx.barrier()
    return out


def atm(config: VisionConfig, encoder: Encoder, ctx: DistContext, rounds: int = DEFAULT_ROUNDS) -> dict[str, dict]:
    """``atm_optimizer`` for every optimizer of ``config`` with finished runs: {optimizer: payload}."""
    out = {}
    for opt in config.optimizers:
        payload = atm_optimizer(opt, config, encoder, ctx, rounds)
        if payload is not None:
            out[opt] = payload
    return out


def atm_table(payload: dict) -> str:
    """ATM per round beside multitask per epoch and the task-arithmetic references: mean test accuracy, gain
    recovery, ATM's relative distance to the multitask point.
    """
    opt, lines = payload["optimizer"], []
    lines.append(f"{opt}: ATM (alpha 1/T) vs multitask finetuning, mean test accuracy / gain recovery")
    for a, m in zip(payload["atm"], payload["multitask"], strict=True):
        lines.append(f"  r={a['round']}  atm {a['mean_accuracy']:.4f} / {format_number(a['gain_recovery'], '.3f')}   "
                     f"multitask {m['mean_accuracy']:.4f} / {format_number(m['gain_recovery'], '.3f')}   "
                     f"||atm - mt|| / ||mt - theta0|| {format_number(a['relative_distance'], '.2e')}")
    for kind, entry in payload["task_arithmetic"].items():
        e = entry["alpha_val"]
        lines.append(f"  task arithmetic {kind:>9} (alpha_val {e['alpha']:.3f}, {entry['task_epochs']} task-epochs): "
                     f"{e['mean_accuracy']:.4f} / {format_number(e['gain_recovery'], '.3f')}")
    return "\n".join(lines)


__all__: Sequence[str] = ("DEFAULT_ROUNDS", "QUICK_ROUNDS", "atm", "atm_optimizer", "atm_rounds", "atm_table",
                          "check_rounds", "multitask_finetune", "multitask_weights", "round_config", "rounds_for")
