"""F7, merging across T (E3): where task arithmetic works and where interference takes over.

Per optimizer (columns): the merges of subsets of T tasks (``merge_sizes``, ``merge_subsets`` subsets per size,
drawn per seed; ``merging.sweep``), alpha chosen on the validation splits of each subset's own tasks, for the
one-epoch task vectors tau^(1) and the converged ones tau^(conv) (the same subsets for both). Top row: mean
normalised accuracy (merged / finetuned alone, averaged over the subset's tasks); bottom row: gain recovery
(mean merged - mean pretrained) / (mean finetuned - mean pretrained) over the subset (1: the merge keeps all of
the finetuning gain; 0: none of it). Each point is the mean over seeds of the seed's mean over its subsets, with
the 95 % Student-t interval over seeds (none with one seed), from the summary over seeds
(``tvtheory.experiments.summary``, ``e3_summary.json``). The numbers tables add the mean accuracy and the
difference one-epoch - converged per T (accuracy points) with its interval and verdict.
"""

from __future__ import annotations

import numpy as np

from . import style, vision_runs
from .results import Table

NAME = "f7_merge_sweep"
TITLE = "F7: merging subsets of T tasks, one-epoch against converged task vectors (E3), over seeds"
SOURCE = "vision"
READS_RUNS = True
PRODUCER = "python -m tvtheory.experiments.vision merge"
CONFIGS = {"quick": {}, "default": {}}
SCORES = ("mean_normalised_accuracy", "gain_recovery", "mean_accuracy")
KINDS = (("one_epoch", "one-epoch $\\tau^{(1)}$", style.BLUE, "o", "-"),
         ("converged", "converged $\\tau^{(conv)}$", style.SKY, "s", "--"))


def steps(config: dict) -> int:
    return 1


def seeds(config: dict) -> int:
    return 0


def compute(config: dict, bar, folder) -> dict:
    loaded = vision_runs.load(folder)
    summary = loaded["summary"]
    if summary is None:
        raise FileNotFoundError(f"no seed<s>/merge_<optimizer>.json in {loaded['source']['folder']}: run "
                                "python -m tvtheory.experiments.vision merge")
    rows, differences = [], []
    for opt, o in summary["optimizers"].items():
        for size, entry in sorted(o["sweep"].items(), key=lambda kv: int(kv[0])):
            for kind, *_ in KINDS:
                row = {"optimizer": opt, "T": int(size), "task_vectors": kind, "seeds": len(entry["seeds"]),
                       "subsets": min(entry["subsets"].values())}
                for score in SCORES:
                    r = entry[kind][score]
                    row[score] = r["mean"]
                    row[f"{score}_ci_low"], row[f"{score}_ci_high"] = vision_runs.interval_ends(r)
                rows.append(row)
            d = entry["difference_points"]
            lo, hi = vision_runs.interval_ends(d)
            differences.append({"optimizer": opt, "T": int(size), "seeds": d["n"], "difference_points": d["mean"],
                                "ci_low": lo, "ci_high": hi, "margin": summary["equivalence_margin"],
                                "verdict": entry["verdict"]})
    if not rows:
        raise FileNotFoundError(f"the merges in {loaded['source']['folder']} have no sweep across T: rerun "
                                "python -m tvtheory.experiments.vision merge")
    bar.update()
    return {"source": loaded["source"], "rows": rows, "differences": differences,
            "equivalence_margin": summary["equivalence_margin"]}


def draw(result: dict):
    data = result["data"]
    rows = data["rows"]
    opts = [o for o in vision_runs.OPTIMIZERS if any(r["optimizer"] == o for r in rows)]
    fig, axes = style.plt.subplots(2, len(opts), figsize=(style.WIDTH, 7.0), squeeze=False, sharey="row",
                                   sharex=True)
    sizes = sorted({r["T"] for r in rows})
    for j, opt in enumerate(opts):
        for i, (score, ylabel) in enumerate((("mean_normalised_accuracy", "normalised accuracy\n(merged / "
                                              "finetuned alone)"),
                                             ("gain_recovery", "gain recovery\n(share of the finetuning gain)"))):
            ax = axes[i][j]
            for n, (kind, label, colour, marker, line) in enumerate(KINDS):
                mine = [r for r in rows if r["optimizer"] == opt and r["task_vectors"] == kind]
                x = np.array([r["T"] for r in mine], dtype=float) + (n - 0.5) * 0.12
                ax.errorbar(x, [style.value(r[score]) for r in mine], yerr=style.interval_errors(mine, score),
                            color=colour, marker=marker, linestyle=line, capsize=3, label=label)
            ax.axhline(1.0, color=style.BLACK, linewidth=0.8, linestyle=":")
            if score == "gain_recovery":
                ax.axhline(0.0, color=style.VERMILLION, linewidth=0.8, linestyle=":")
                ax.set_xlabel("tasks merged, $T$")
            else:
                ax.set_title(vision_runs.OPTIMIZER_LABELS[opt])
            ax.set_xticks(sizes)
            if j == 0:
                ax.set_ylabel(ylabel)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False)
    fig.suptitle(f"Task arithmetic of subsets of $T$ tasks, $\\alpha$ chosen on their validation splits\n"
                 f"({vision_runs.seed_spread(data['source'])})")
    return fig


def tables(result: dict) -> list[Table]:
    cols = [("optimizer", "optimizer"), ("T", "T"), ("task vectors", "task_vectors"), ("seeds", "seeds"),
            ("subsets per seed", "subsets")]
    for score, label in (("mean_normalised_accuracy", "normalised acc"), ("gain_recovery", "gain recovery"),
                         ("mean_accuracy", "mean acc")):
        cols += [(label, score), (f"{label} 95% low", f"{score}_ci_low"), (f"{label} 95% high", f"{score}_ci_high")]
    return [
        Table("Merges of T tasks: mean over seeds of the mean over each seed's subsets, 95% t-interval over seeds",
              "data.rows", cols),
        Table("One-epoch − converged merge of T tasks, mean accuracy (accuracy points), verdict", "data.differences",
              [("optimizer", "optimizer"), ("T", "T"), ("seeds", "seeds"), ("difference", "difference_points"),
               ("95% low", "ci_low"), ("95% high", "ci_high"), ("margin", "margin"), ("verdict", "verdict")]),
    ]
