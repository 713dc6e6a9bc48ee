"""F2, direction dominance (E2): how early does finetuning point where it ends?

Against epoch k, for every task (one colour each) and optimizer (columns), three cosines with the final
task vector tau^(K) (recorded by the vision pipeline, ``analysis.E2``):
    top:    cos(tau^(k), tau^(K))                 the task vector after k epochs (1 at k = K);
    middle: cos(update_k, tau^(K))                the k-th epoch's own move, tau^(k) - tau^(k-1);
    bottom: cos(-grad L(theta_{k-1}), tau^(K))    the full-batch negative gradient at the epoch start
                                                  (k = 1: cos(-g, tau^(K)) of the paper).
For full-batch GD the middle and bottom rows agree (update_k = -eta grad L(theta_{k-1}), T1).
"""

from __future__ import annotations

from . import style, vision_runs
from .results import Table

NAME = "f2_direction_dominance"
TITLE = "F2: direction dominance of the first epoch (E2)"
SOURCE = "vision"
READS_RUNS = True
PRODUCER = "python -m tvtheory.experiments.vision finetune"
CONFIGS = {"quick": {}, "default": {}}

QUANTITIES = (("cos_tau_k_tauK", "cos($\\tau^{(k)}$, $\\tau^{(K)}$)"),
              ("cos_update_k_tauK", "cos(update$_k$, $\\tau^{(K)}$)"),
              ("cos_neg_g_k_tauK", "cos($-\\nabla L(\\theta_{k-1})$, $\\tau^{(K)}$)"))


def steps(config: dict) -> int:
    return 1


def seeds(config: dict) -> int:
    return 0


def compute(config: dict, bar, folder) -> dict:
    loaded = vision_runs.load(folder)
    runs = loaded["runs"]
    rows, summary = [], []
    for opt in vision_runs.optimizers_of(runs):
        for task in vision_runs.tasks_of(runs, opt):
            e2 = runs[(task, opt)]["analysis"]["E2"]
            K = len(e2["cos_update_k_tauK"])
            for k in range(K):
                rows.append({"optimizer": opt, "task": task, "k": k + 1,
                             **{key: e2[key][k] for key, _ in QUANTITIES}})
            summary.append({"optimizer": opt, "task": task, "epochs": K, "cos_tau1_tauK": e2["cos_tau1_tauK"],
                            "cos_neg_g_tauK": e2["cos_neg_g_tauK"]})
    bar.update()
    return {"source": loaded["source"], "rows": rows, "summary": summary}


def draw(result: dict):
    data = result["data"]
    rows = data["rows"]
    opts = [o for o in vision_runs.OPTIMIZERS if any(r["optimizer"] == o for r in rows)]
    fig, axes = style.plt.subplots(len(QUANTITIES), len(opts), figsize=(style.WIDTH, 9.5), squeeze=False,
                                   sharex=True, sharey=True)
    for j, opt in enumerate(opts):
        tasks = vision_runs.ordered_tasks({r["task"] for r in rows if r["optimizer"] == opt})
        for i, (key, label) in enumerate(QUANTITIES):
            ax = axes[i][j]
            for n, task in enumerate(tasks):
                mine = [r for r in rows if r["optimizer"] == opt and r["task"] == task]
                colour, marker = vision_runs.task_style(task, n)
                ax.plot([r["k"] for r in mine], [r[key] for r in mine], "-", color=colour, marker=marker,
                        markersize=5, label=task)
            ax.axhline(0, color=style.GREY, linewidth=0.8)
            if i == 0:
                ax.set_title(vision_runs.OPTIMIZER_LABELS[opt])
            if j == 0:
                ax.set_ylabel(label)
            if i == len(QUANTITIES) - 1:
                ax.set_xlabel("epoch $k$")
    K = max(r["k"] for r in rows)
    axes[0][0].set_xticks(range(1, K + 1, 1 if K <= 10 else 2))
    axes[0][0].set_ylim(-0.25, 1.05)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(7, len(labels)), frameon=False)
    src = data["source"]
    fig.suptitle(f"Cosine with the final task vector $\\tau^{{(K)}}$, K = {src['epochs']} "
                 f"({src['configuration']} runs, at most {src['max_train']} training images per task)")
    return fig


def tables(result: dict) -> list[Table]:
    return [
        Table("cos(τ⁽¹⁾, τ⁽ᴷ⁾) and cos(−g, τ⁽ᴷ⁾) per run", "data.summary",
              [("optimizer", "optimizer"), ("task", "task"), ("K", "epochs"), ("cos(τ⁽¹⁾, τ⁽ᴷ⁾)", "cos_tau1_tauK"),
               ("cos(−g, τ⁽ᴷ⁾)", "cos_neg_g_tauK")]),
        Table("Per epoch", "data.rows",
              [("optimizer", "optimizer"), ("task", "task"), ("k", "k")]
              + [("cos(τ⁽ᵏ⁾, τ⁽ᴷ⁾)", "cos_tau_k_tauK"), ("cos(update_k, τ⁽ᴷ⁾)", "cos_update_k_tauK"),
                 ("cos(−∇L(θ_{k−1}), τ⁽ᴷ⁾)", "cos_neg_g_k_tauK")]),
    ]
