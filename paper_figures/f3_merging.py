"""F3, merging (E3): task arithmetic of one-epoch task vectors against converged ones, over seeds.

Per optimizer (columns), per task and on average: test accuracy of theta_0 + alpha sum_t tau_t over all tasks
with task t's frozen head, for the one-epoch task vectors tau^(1) and the converged ones tau^(conv), alpha chosen
on the validation splits (``seed<s>/merge_<optimizer>.json`` of the vision pipeline). Every number is the mean
over the seeds; the bars carry the 95 % Student-t interval over the seeds (``tvtheory.experiments.summary``:
mean +- t_{0.975, n-1} sd / sqrt(n)), none with one seed. References: the pretrained encoder (alpha = 0) and the
model finetuned on the task alone (converged). Top row: accuracy; middle row: normalised accuracy = merged /
individually finetuned (per seed, then the mean); bottom row: the difference one-epoch - converged merge in
accuracy points with its interval, the +-margin band of the equivalence verdict shaded; the "average" entry is
the E3 comparison of the summary over seeds (``e3_summary.json``: the same difference, interval and verdict).
The alpha = 1/T merges and the per-seed alphas are in the numbers tables.
"""

from __future__ import annotations

import numpy as np

from . import style, vision_runs
from .results import Table

NAME = "f3_merging"
TITLE = "F3: merging one-epoch against converged task vectors (E3), over seeds"
SOURCE = "vision"
READS_RUNS = True
PRODUCER = "python -m tvtheory.experiments.vision merge"
CONFIGS = {"quick": {}, "default": {}}
AVERAGE = "average"
KEYS = ("pretrained", "finetuned", "one_epoch_alone", "merged_one_epoch", "merged_converged",
        "merged_one_epoch_1_over_T", "merged_converged_1_over_T")
WITH_INTERVAL = ("merged_one_epoch", "merged_converged")


def steps(config: dict) -> int:
    return 1


def seeds(config: dict) -> int:
    return 0


def _task_values(m: dict, t: str) -> dict:
    """The accuracies of one seed's merge payload on task t."""
    return {"pretrained": m["pretrained_test_accuracy"][t], "finetuned": m["finetuned_test_accuracy"][t],
            "one_epoch_alone": m["one_epoch_test_accuracy"][t],
            "merged_one_epoch": m["one_epoch"]["alpha_val"]["test_accuracy"][t],
            "merged_converged": m["converged"]["alpha_val"]["test_accuracy"][t],
            "merged_one_epoch_1_over_T": m["one_epoch"]["alpha_1_over_T"]["test_accuracy"][t],
            "merged_converged_1_over_T": m["converged"]["alpha_1_over_T"]["test_accuracy"][t]}


def _row(opt: str, task: str, per_seed: list[dict]) -> dict:
    """Means over seeds of the per-seed values (accuracies and normalised accuracies), intervals of the merges
    and of the difference one-epoch - converged (points).
    """
    row: dict = {"optimizer": opt, "task": task, "seeds": len(per_seed)}
    for key in KEYS:
        for suffix in ("", "_normalised"):
            mean, lo, hi = vision_runs.mean_and_ends([v[key + suffix] for v in per_seed])
            row[key + suffix] = mean
            if key in WITH_INTERVAL:
                row[f"{key}{suffix}_ci_low"], row[f"{key}{suffix}_ci_high"] = lo, hi
    mean, lo, hi = vision_runs.mean_and_ends([100 * (v["merged_one_epoch"] - v["merged_converged"])
                                              for v in per_seed])
    row.update({"difference_points": mean, "difference_points_ci_low": lo, "difference_points_ci_high": hi})
    return row


def compute(config: dict, bar, folder) -> dict:
    loaded = vision_runs.load(folder)
    summary = loaded["summary"]
    rows, alphas, comparison = [], [], []
    for opt in vision_runs.OPTIMIZERS:
        merges = {s: v["merges"][opt] for s, v in loaded["seeds"].items() if opt in v["merges"]}
        if not merges:
            continue
        tasks = vision_runs.ordered_tasks(set.intersection(*(set(m["one_epoch"]["tasks"]) for m in merges.values())))
        per_seed_task = {}
        for s, m in merges.items():
            values = {t: _task_values(m, t) for t in tasks}
            for v in values.values():
                v.update({f"{k}_normalised": v[k] / v["finetuned"] if v["finetuned"] > 0 else float("nan")
                          for k in KEYS})
            values[AVERAGE] = {k: vision_runs.mean(values[t][k] for t in tasks) for k in values[tasks[0]]}
            per_seed_task[s] = values
        for t in [*tasks, AVERAGE]:
            rows.append(_row(opt, t, [per_seed_task[s][t] for s in merges]))
        for s, m in merges.items():
            for name in ("one_epoch", "converged"):
                for which in ("alpha_val", "alpha_1_over_T"):
                    r = m[name][which]
                    alphas.append({"optimizer": opt, "seed": s, "task_vectors": name, "alpha_rule": which,
                                   "alpha": r["alpha"], "mean_accuracy": r["mean_accuracy"],
                                   "mean_normalised_accuracy": r["mean_normalised_accuracy"],
                                   "gain_recovery": r.get("gain_recovery")})
        comparison.append(_comparison(opt, "all tasks", summary["optimizers"][opt]["all_tasks"], summary))
    if not rows:
        raise FileNotFoundError(f"no seed<s>/merge_<optimizer>.json in {loaded['source']['folder']}: run "
                                f"python -m tvtheory.experiments.vision merge")
    bar.update()
    return {"source": loaded["source"], "rows": rows, "merges": alphas, "comparison": comparison,
            "equivalence_margin": summary["equivalence_margin"], "definition": summary["definition"]}


def _comparison(opt: str, merge: str, entry: dict, summary: dict) -> dict:
    """One row of the comparison table: the summary's difference, interval and verdict."""
    d = entry["difference_points"]
    ci = d["ci95"]
    return {"optimizer": opt, "merge": merge, "seeds": d["n"], "difference_points": d["mean"],
            "sd": d["sd"] if not isinstance(ci, str) else None,
            "ci_low": None if isinstance(ci, str) else ci[0], "ci_high": None if isinstance(ci, str) else ci[1],
            "margin": summary["equivalence_margin"], "verdict": entry["verdict"]}


_BARS = (("merged_one_epoch", "merged, one-epoch $\\tau^{(1)}$", style.BLUE, None),
         ("merged_converged", "merged, converged $\\tau^{(conv)}$", style.SKY, "//"))


def draw(result: dict):
    data = result["data"]
    rows = data["rows"]
    margin = data["equivalence_margin"]
    opts = [o for o in vision_runs.OPTIMIZERS if any(r["optimizer"] == o for r in rows)]
    verdicts = {c["optimizer"]: c["verdict"] for c in data["comparison"]}
    fig, axes = style.plt.subplots(3, len(opts), figsize=(style.WIDTH + 1, 11.0), squeeze=False, sharey="row",
                                   height_ratios=(1.0, 1.0, 0.8))
    for j, opt in enumerate(opts):
        mine = [r for r in rows if r["optimizer"] == opt]
        x = np.arange(len(mine))
        labels = [r["task"].replace("_", " ") for r in mine]
        for i, suffix in enumerate(("", "_normalised")):
            ax = axes[i][j]
            width = 0.38
            for n, (key, label, colour, hatch) in enumerate(_BARS):
                ax.bar(x + (n - 0.5) * width, [style.value(r[key + suffix]) for r in mine], width, color=colour,
                       hatch=hatch, edgecolor="white", label=label, yerr=style.interval_errors(mine, key + suffix),
                       ecolor=style.BLACK, capsize=2.5, error_kw={"elinewidth": 1.0})
            ax.plot(x, [style.value(r["pretrained" + suffix]) for r in mine], "_", color=style.VERMILLION,
                    markersize=16, markeredgewidth=3, label="pretrained ($\\alpha$ = 0)")
            ax.plot(x, [style.value(r["finetuned" + suffix]) for r in mine], "_", color=style.BLACK,
                    markersize=16, markeredgewidth=3, label="finetuned on the task alone")
            ax.axvline(len(mine) - 1.5, color=style.GREY, linewidth=0.8)
            ax.set_xticks(x)
            ax.set_xticklabels([])
            ax.grid(axis="x", visible=False)
            if i == 0:
                ax.set_title(vision_runs.OPTIMIZER_LABELS[opt])
        ax = axes[2][j]
        ax.axhspan(-margin, margin, color=style.GREEN, alpha=0.12, linewidth=0,
                   label=f"equivalence margin $\\pm${margin:g} points")
        ax.axhline(0, color=style.GREY, linewidth=0.8)
        ax.errorbar(x, [style.value(r["difference_points"]) for r in mine],
                    yerr=style.interval_errors(mine, "difference_points"),
                    fmt="o", color=style.BLUE, ecolor=style.BLUE, capsize=3,
                    label="one-epoch $-$ converged merge (95% interval)")
        ax.axvline(len(mine) - 1.5, color=style.GREY, linewidth=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=10)
        ax.grid(axis="x", visible=False)
        style.note(ax, f"average: {verdicts.get(opt, '?')}", loc="upper left", fontsize=9)
        axes[0][j].set_ylim(0, 1.0)
        axes[1][j].set_ylim(0, 1.15)
    axes[0][0].set_ylabel("test accuracy")
    axes[1][0].set_ylabel("normalised accuracy\n(merged / finetuned alone)")
    axes[2][0].set_ylabel("one-epoch $-$ converged\n(accuracy points)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    h2, l2 = axes[2][0].get_legend_handles_labels()
    fig.legend(handles + h2, labels + l2, loc="outside lower center", ncol=3, frameon=False, fontsize=10)
    fig.suptitle(f"Task arithmetic of all tasks, $\\alpha$ chosen on validation "
                 f"({vision_runs.seed_spread(data['source'])})")
    return fig


def tables(result: dict) -> list[Table]:
    cols = [("optimizer", "optimizer"), ("task", "task"), ("seeds", "seeds"), ("pretrained", "pretrained"),
            ("finetuned", "finetuned"), ("one epoch alone", "one_epoch_alone"), ("merged τ⁽¹⁾", "merged_one_epoch"),
            ("merged τ⁽ᶜᵒⁿᵛ⁾", "merged_converged"), ("merged τ⁽¹⁾, α = 1/T", "merged_one_epoch_1_over_T"),
            ("merged τ⁽ᶜᵒⁿᵛ⁾, α = 1/T", "merged_converged_1_over_T")]
    intervals = [("optimizer", "optimizer"), ("task", "task"), ("seeds", "seeds")]
    for key, label in (("merged_one_epoch", "merged τ⁽¹⁾"), ("merged_converged", "merged τ⁽ᶜᵒⁿᵛ⁾")):
        intervals += [(f"{label} 95% low", f"{key}_ci_low"), (f"{label} 95% high", f"{key}_ci_high")]
    intervals += [("τ⁽¹⁾ − τ⁽ᶜᵒⁿᵛ⁾ (points)", "difference_points"), ("95% low", "difference_points_ci_low"),
                  ("95% high", "difference_points_ci_high")]
    return [
        Table("Test accuracy, mean over seeds (α chosen on validation unless marked 1/T)", "data.rows", cols),
        Table("Normalised accuracy (merged / finetuned alone), mean over seeds", "data.rows",
              cols[:3] + [(label, key + "_normalised") for label, key in cols[3:] if key != "finetuned"]),
        Table("95% Student-t intervals over seeds of the merges and of their difference", "data.rows", intervals),
        Table("E3 comparison over seeds: one-epoch − converged all-task merge (accuracy points), verdict",
              "data.comparison",
              [("optimizer", "optimizer"), ("merge", "merge"), ("seeds", "seeds"),
               ("difference", "difference_points"), ("sd", "sd"), ("95% low", "ci_low"), ("95% high", "ci_high"),
               ("margin", "margin"), ("verdict", "verdict")]),
        Table("Merge coefficients and means per seed", "data.merges",
              [("optimizer", "optimizer"), ("seed", "seed"), ("task vectors", "task_vectors"),
               ("α rule", "alpha_rule"), ("α", "alpha"), ("mean accuracy", "mean_accuracy"),
               ("mean normalised accuracy", "mean_normalised_accuracy"), ("gain recovery", "gain_recovery")]),
    ]
