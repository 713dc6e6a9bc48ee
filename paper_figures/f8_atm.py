"""F8, ATM against task arithmetic and multitask finetuning (issue 10, spec T5), over seeds.

Per optimizer (columns), from ``seed<s>/atm_<optimizer>.json`` of the vision pipeline
(``python -m tvtheory.experiments.vision atm``, ``tvtheory.experiments.atm``). Top row: the mean test accuracy
over the tasks against r, the epochs each task's data was visited: ATM after r rounds (one epoch per task and
round, merged with alpha = 1/T) and multitask finetuning after r epochs on the union of the tasks; horizontal
references: task arithmetic of the one-epoch and of the converged task vectors (E3's all-task merges, alpha on
validation), the tasks finetuned alone (converged) and the pretrained encoder. Bottom row: the distance of ATM's
iterate to the multitask one, ||theta_ATM^(r) - theta_MT^(r)|| / ||theta_MT^(r) - theta_0|| (log scale; for GD
rounding only, T5(a); for SGD the accumulated second-order terms, T5(b)-(c)), each seed and their mean (a
t-interval of three positive numbers reaches below zero, which a log scale cannot show; the tables have it).
The accuracies are means over seeds with their 95 % Student-t interval (``summary.mean_interval``), none with one
seed.
"""

from __future__ import annotations

import numpy as np

from . import style, vision_runs
from .results import Table

NAME = "f8_atm"
TITLE = "F8: ATM against task arithmetic and multitask finetuning (T5), over seeds"
SOURCE = "vision"
READS_RUNS = True
PRODUCER = "python -m tvtheory.experiments.vision atm"
CONFIGS = {"quick": {}, "default": {}}
CURVES = (("atm", "ATM, $\\alpha = 1/T$", style.BLUE, "o", "-"),
          ("multitask", "multitask finetuning", style.VERMILLION, "s", "--"))
REFERENCES = (("ta_one_epoch", "task arithmetic, one-epoch $\\tau^{(1)}$", style.SKY, "-."),
              ("ta_converged", "task arithmetic, converged $\\tau^{(conv)}$", style.GREEN, ":"),
              ("finetuned", "finetuned alone (converged)", style.BLACK, ":"),
              ("pretrained", "pretrained", style.GREY, "-"))


def steps(config: dict) -> int:
    return 1


def seeds(config: dict) -> int:
    return 0


def compute(config: dict, bar, folder) -> dict:
    loaded = vision_runs.load(folder)
    per_opt: dict[str, list[dict]] = {}
    for _seed, v in sorted(loaded["seeds"].items()):
        for opt, payload in v["atm"].items():
            per_opt.setdefault(opt, []).append(payload)
    if not per_opt:
        raise FileNotFoundError(f"no seed<s>/atm_<optimizer>.json in {loaded['source']['folder']}: run "
                                f"{PRODUCER}")
    rows, references = [], []
    for opt in [o for o in vision_runs.OPTIMIZERS if o in per_opt]:
        payloads = per_opt[opt]
        rounds = min(p["rounds"] for p in payloads)
        for r in range(rounds + 1):
            row = {"optimizer": opt, "r": r}
            for curve, *_ in CURVES:
                for key in ("mean_accuracy", "mean_normalised_accuracy", "gain_recovery"):
                    row[f"{curve}_{key}"], row[f"{curve}_{key}_ci_low"], row[f"{curve}_{key}_ci_high"] = (
                        vision_runs.mean_and_ends([p[curve][r][key] for p in payloads]))
            per_seed = [p["atm"][r]["relative_distance"] for p in payloads] if r else None
            row["relative_distance"], row["relative_distance_ci_low"], row["relative_distance_ci_high"] = (
                vision_runs.mean_and_ends(per_seed) if per_seed else (None, None, None))
            row["relative_distance_per_seed"] = per_seed
            row["seeds"] = len(payloads)
            rows.append(row)
        ref = {"optimizer": opt, "seeds": len(payloads), "rounds": rounds,
               "atm_task_epochs": rounds * len(payloads[0]["tasks"])}
        for kind, key in (("one_epoch", "ta_one_epoch"), ("converged", "ta_converged")):
            ta = [p["task_arithmetic"][kind] for p in payloads]
            ref[key], ref[f"{key}_ci_low"], ref[f"{key}_ci_high"] = vision_runs.mean_and_ends(
                [t["alpha_val"]["mean_accuracy"] for t in ta])
            ref[f"{key}_task_epochs"] = vision_runs.mean(t["task_epochs"] for t in ta)
            end = [t["alpha_val"][f"to_multitask_epoch_{p['rounds']}"]["relative_distance"]
                   for t, p in zip(ta, payloads, strict=True)]
            ref[f"{key}_to_multitask_end"] = vision_runs.mean(end)
        ref["finetuned"] = vision_runs.mean(vision_runs.mean(p["finetuned_test_accuracy"].values()) for p in payloads)
        ref["pretrained"] = vision_runs.mean(vision_runs.mean(p["pretrained_test_accuracy"].values()) for p in payloads)
        references.append(ref)
    bar.update()
    return {"source": loaded["source"], "rows": rows, "references": references}


def draw(result: dict):
    data = result["data"]
    opts = [ref["optimizer"] for ref in data["references"]]
    fig, axes = style.plt.subplots(2, len(opts), figsize=(style.WIDTH, 7.0), squeeze=False, sharex=True)
    for j, opt in enumerate(opts):
        rows = [r for r in data["rows"] if r["optimizer"] == opt]
        ref = next(x for x in data["references"] if x["optimizer"] == opt)
        r_axis = np.array([r["r"] for r in rows], dtype=float)
        ax = axes[0][j]
        for n, (curve, label, colour, marker, line) in enumerate(CURVES):
            key = f"{curve}_mean_accuracy"
            ax.errorbar(r_axis + (n - 0.5) * 0.08, [style.value(r[key]) for r in rows],
                        yerr=style.interval_errors(rows, key), color=colour, marker=marker, linestyle=line,
                        capsize=3, label=label)
        for key, label, colour, line in REFERENCES:
            ax.axhline(ref[key], color=colour, linestyle=line, linewidth=1.0, label=label)
        ax.set_title(vision_runs.OPTIMIZER_LABELS[opt])
        if j == 0:
            ax.set_ylabel("mean test accuracy")
        ax = axes[1][j]
        later = [r for r in rows if r["r"] > 0]
        for n, per_seed in enumerate(zip(*(r["relative_distance_per_seed"] for r in later), strict=True)):
            ax.plot([r["r"] for r in later], per_seed, color=style.SKY, linewidth=0.8, marker=".",
                    label="one seed" if n == 0 else None)
        ax.plot([r["r"] for r in later], [style.value(r["relative_distance"]) for r in later], color=style.BLUE,
                marker="o", label="mean over seeds")
        ax.set_yscale("log")
        ax.set_xlabel("epochs per task $r$")
        ax.set_xticks(r_axis)
        if j == 0:
            ax.set_ylabel("$\\|\\theta_{ATM}^{(r)} - \\theta_{MT}^{(r)}\\| / \\|\\theta_{MT}^{(r)} - \\theta_0\\|$")
    axes[1][0].legend(loc="best", frameon=False, fontsize="small")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(f"ATM against task arithmetic and multitask finetuning on the same heads\n"
                 f"({vision_runs.seed_spread(data['source'])})")
    return fig


def tables(result: dict) -> list[Table]:
    cols = [("optimizer", "optimizer"), ("r", "r"), ("seeds", "seeds")]
    for curve, label in (("atm", "ATM"), ("multitask", "multitask")):
        key = f"{curve}_mean_accuracy"
        cols += [(f"{label} acc", key), ("95% low", f"{key}_ci_low"), ("95% high", f"{key}_ci_high"),
                 (f"{label} gain recovery", f"{curve}_gain_recovery")]
    cols += [("ATM-MT rel. distance", "relative_distance"), ("95% low", "relative_distance_ci_low"),
             ("95% high", "relative_distance_ci_high")]
    return [
        Table("ATM after r rounds and multitask finetuning after r epochs: mean test accuracy over the tasks, "
              "mean over seeds with the 95% t-interval", "data.rows", cols),
        Table("References: task arithmetic (alpha on validation), finetuned alone, pretrained; task-epochs spent",
              "data.references",
              [("optimizer", "optimizer"), ("seeds", "seeds"), ("ATM task-epochs", "atm_task_epochs"),
               ("TA one-epoch acc", "ta_one_epoch"), ("95% low", "ta_one_epoch_ci_low"),
               ("95% high", "ta_one_epoch_ci_high"), ("task-epochs", "ta_one_epoch_task_epochs"),
               ("TA converged acc", "ta_converged"), ("95% low", "ta_converged_ci_low"),
               ("95% high", "ta_converged_ci_high"), ("task-epochs", "ta_converged_task_epochs"),
               ("TA conv. to MT end (rel.)", "ta_converged_to_multitask_end"), ("finetuned", "finetuned"),
               ("pretrained", "pretrained")]),
    ]
