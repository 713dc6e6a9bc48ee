"""F1, norm dominance (E1): is the first epoch's gradient the largest?

For every task and optimizer, the full-batch gradient norm ||grad L(theta_{k-1})|| at the start of epoch k
(recorded by the vision pipeline), for the first ``epochs_shown`` epochs, divided by its sum over those
epochs: a task whose finetuning is dominated by its first epoch puts most of the mass on k = 1 (a constant
gradient norm would give 1/5 per epoch, the dotted line). One panel per optimizer; one line per task.
The numbers table also gives the mean mini-batch gradient norm per epoch, normalised the same way.
"""

from __future__ import annotations

from . import style, vision_runs
from .results import Table

NAME = "f1_norm_dominance"
TITLE = "F1: norm dominance of the first epoch (E1)"
SOURCE = "vision"
READS_RUNS = True
PRODUCER = "python -m tvtheory.experiments.vision finetune"
CONFIGS = {"quick": {"epochs_shown": 5}, "default": {"epochs_shown": 5}}


def steps(config: dict) -> int:
    return 1


def seeds(config: dict) -> int:
    return 0


def _shares(values: list[float]) -> list[float]:
    total = sum(values)
    return [v / total for v in values] if total > 0 else [float("nan")] * len(values)


def compute(config: dict, bar, folder) -> dict:
    loaded = vision_runs.load(folder)
    runs = loaded["runs"]
    rows = []
    for opt in vision_runs.optimizers_of(runs):
        for task in vision_runs.tasks_of(runs, opt):
            records = runs[(task, opt)]["records"][:config["epochs_shown"]]
            full = _shares([r["full_grad_norm_start"] for r in records])
            mini = _shares([r["minibatch_grad_norm_mean"] for r in records])
            row = {"optimizer": opt, "task": task, "epochs": len(records),
                   "epoch1_share": full[0], "epoch1_largest": full[0] == max(full),
                   "epoch1_share_minibatch": mini[0], "grad_norm_epoch1": records[0]["full_grad_norm_start"]}
            row.update({f"share_{k + 1}": v for k, v in enumerate(full)})
            rows.append(row)
    bar.update()
    return {"source": loaded["source"], "rows": rows}


def draw(result: dict):
    data = result["data"]
    rows = data["rows"]
    opts = [o for o in vision_runs.OPTIMIZERS if any(r["optimizer"] == o for r in rows)]
    fig, axes = style.figure(len(opts), height=4.6, sharey=True)
    for ax, opt in zip(axes[0], opts, strict=True):
        mine = [r for r in rows if r["optimizer"] == opt]
        for i, r in enumerate(mine):
            colour, marker = vision_runs.task_style(r["task"], i)
            ks = list(range(1, r["epochs"] + 1))
            ax.plot(ks, [r[f"share_{k}"] for k in ks], "-", color=colour, marker=marker, label=r["task"])
        n = max(r["epochs"] for r in mine)
        ax.axhline(1 / n, color=style.GREY, linestyle=":", linewidth=1.5)
        ax.set_xticks(range(1, n + 1))
        ax.set_xlabel("epoch $k$")
        ax.set_title(vision_runs.OPTIMIZER_LABELS[opt])
    axes[0][0].set_ylabel("$\\|\\nabla L(\\theta_{k-1})\\|$ / sum over shown epochs")
    axes[0][0].plot([], [], ":", color=style.GREY, label="equal shares")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), frameon=False)
    src = data["source"]
    fig.suptitle(f"Share of each epoch in the full-batch gradient norm\n({src['configuration']} runs: "
                 f"at most {src['max_train']} training images per task, {src['epochs']} epochs)")
    return fig


def tables(result: dict) -> list[Table]:
    n = max(r["epochs"] for r in result["data"]["rows"])
    return [Table("Share of epoch k in the full-batch gradient norm over the first epochs (rows: optimizer, task)",
                  "data.rows",
                  [("optimizer", "optimizer"), ("task", "task")]
                  + [(f"k = {k}", f"share_{k}") for k in range(1, n + 1)]
                  + [("epoch 1 largest", "epoch1_largest"), ("k = 1, mini-batch mean", "epoch1_share_minibatch"),
                     ("‖∇L(θ₀)‖", "grad_norm_epoch1")])]
