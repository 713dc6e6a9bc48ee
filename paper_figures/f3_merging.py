"""F3, merging (E3): task arithmetic of one-epoch task vectors against converged ones.

Per optimizer (columns), per task and on average: test accuracy of theta_0 + alpha sum_t tau_t with task t's
frozen head, for the one-epoch task vectors tau^(1) and the converged ones tau^(K), alpha chosen on the
validation splits (``merge_<optimizer>.json`` of the vision pipeline). References: the pretrained encoder
(alpha = 0) and the model finetuned on the task alone (converged). Top row: accuracy; bottom row:
normalised accuracy = merged / individually finetuned. The alpha = 1/T merges are in the numbers table.
"""

from __future__ import annotations

import numpy as np

from . import style, vision_runs
from .results import Table

NAME = "f3_merging"
TITLE = "F3: merging one-epoch against converged task vectors (E3)"
SOURCE = "vision"
READS_RUNS = True
PRODUCER = "python -m tvtheory.experiments.vision merge"
CONFIGS = {"quick": {}, "default": {}}
AVERAGE = "average"


def steps(config: dict) -> int:
    return 1


def seeds(config: dict) -> int:
    return 0


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def compute(config: dict, bar, folder) -> dict:
    loaded = vision_runs.load(folder)
    rows, alphas = [], []
    for opt in vision_runs.OPTIMIZERS:
        m = loaded["merges"].get(opt)
        if m is None:
            continue
        tasks = vision_runs.ordered_tasks(m["one_epoch"]["tasks"])
        per_task = {}
        for t in tasks:
            ft = m["finetuned_test_accuracy"][t]
            per_task[t] = {
                "pretrained": m["pretrained_test_accuracy"][t], "finetuned": ft,
                "one_epoch_alone": m["one_epoch_test_accuracy"][t],
                "merged_one_epoch": m["one_epoch"]["alpha_val"]["test_accuracy"][t],
                "merged_converged": m["converged"]["alpha_val"]["test_accuracy"][t],
                "merged_one_epoch_1_over_T": m["one_epoch"]["alpha_1_over_T"]["test_accuracy"][t],
                "merged_converged_1_over_T": m["converged"]["alpha_1_over_T"]["test_accuracy"][t],
            }
        per_task[AVERAGE] = {key: _mean(v[key] for v in per_task.values()) for key in per_task[tasks[0]]}
        for t, v in per_task.items():
            normalised = {f"{key}_normalised": (v[key] / v["finetuned"] if t != AVERAGE else
                                                _mean(per_task[s][key] / per_task[s]["finetuned"] for s in tasks))
                          for key in v}
            rows.append({"optimizer": opt, "task": t, **v, **normalised})
        for name in ("one_epoch", "converged"):
            for which in ("alpha_val", "alpha_1_over_T"):
                r = m[name][which]
                alphas.append({"optimizer": opt, "task_vectors": name, "alpha_rule": which, "alpha": r["alpha"],
                               "mean_accuracy": r["mean_accuracy"],
                               "mean_normalised_accuracy": r["mean_normalised_accuracy"]})
    if not rows:
        raise FileNotFoundError(f"no merge_<optimizer>.json in {loaded['source']['folder']}: run "
                                f"python -m tvtheory.experiments.vision merge")
    bar.update()
    return {"source": loaded["source"], "rows": rows, "merges": alphas}


_BARS = (("merged_one_epoch", "merged, one-epoch $\\tau^{(1)}$", style.BLUE, None),
         ("merged_converged", "merged, converged $\\tau^{(K)}$", style.SKY, "//"))


def draw(result: dict):
    data = result["data"]
    rows = data["rows"]
    opts = [o for o in vision_runs.OPTIMIZERS if any(r["optimizer"] == o for r in rows)]
    fig, axes = style.plt.subplots(2, len(opts), figsize=(style.WIDTH + 1, 8.0), squeeze=False, sharey="row")
    for j, opt in enumerate(opts):
        mine = [r for r in rows if r["optimizer"] == opt]
        x = np.arange(len(mine))
        for i, suffix in enumerate(("", "_normalised")):
            ax = axes[i][j]
            width = 0.38
            for n, (key, label, colour, hatch) in enumerate(_BARS):
                ax.bar(x + (n - 0.5) * width, [r[key + suffix] for r in mine], width, color=colour, hatch=hatch,
                       edgecolor="white", label=label)
            ax.plot(x, [r["pretrained" + suffix] for r in mine], "_", color=style.VERMILLION, markersize=16,
                    markeredgewidth=3, label="pretrained ($\\alpha$ = 0)")
            ax.plot(x, [r["finetuned" + suffix] for r in mine], "_", color=style.BLACK, markersize=16,
                    markeredgewidth=3, label="finetuned on the task alone")
            ax.axvline(len(mine) - 1.5, color=style.GREY, linewidth=0.8)
            ax.set_xticks(x)
            ax.set_xticklabels([r["task"].replace("_", " ") for r in mine], rotation=45, ha="right",
                               rotation_mode="anchor", fontsize=10)
            ax.grid(axis="x", visible=False)
            if i == 0:
                ax.set_title(vision_runs.OPTIMIZER_LABELS[opt])
        axes[0][j].set_ylim(0, 1.0)
        axes[1][j].set_ylim(0, 1.15)
    axes[0][0].set_ylabel("test accuracy")
    axes[1][0].set_ylabel("normalised accuracy\n(merged / finetuned alone)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False)
    src = data["source"]
    fig.suptitle(f"Task arithmetic of all tasks, $\\alpha$ chosen on validation ({src['configuration']} runs, "
                 f"K = {src['epochs']} epochs)")
    return fig


def tables(result: dict) -> list[Table]:
    cols = [("optimizer", "optimizer"), ("task", "task"), ("pretrained", "pretrained"), ("finetuned", "finetuned"),
            ("one epoch alone", "one_epoch_alone"), ("merged τ⁽¹⁾", "merged_one_epoch"),
            ("merged τ⁽ᴷ⁾", "merged_converged"), ("merged τ⁽¹⁾, α = 1/T", "merged_one_epoch_1_over_T"),
            ("merged τ⁽ᴷ⁾, α = 1/T", "merged_converged_1_over_T")]
    return [
        Table("Test accuracy (α chosen on validation unless marked 1/T)", "data.rows", cols),
        Table("Normalised accuracy (merged / finetuned alone)", "data.rows",
              cols[:2] + [(label, key + "_normalised") for label, key in cols[2:] if key != "finetuned"]),
        Table("Merge coefficients and means", "data.merges",
              [("optimizer", "optimizer"), ("task vectors", "task_vectors"), ("α rule", "alpha_rule"),
               ("α", "alpha"), ("mean accuracy", "mean_accuracy"),
               ("mean normalised accuracy", "mean_normalised_accuracy")]),
    ]
