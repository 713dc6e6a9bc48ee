"""F6, floating point (T1): one torch.optim.SGD step, the computed task vector against -eta g, per coordinate.

For every parameter coordinate i, the residual r_i = tau_i + eta g_i (tau = fl(theta_1 - theta_0), r computed
exactly by tvtheory.fp.exact_residual) is divided by the floating-point model of T1,
    model_i = u (1 + u) |theta_0,i| + gamma_4 |eta g_i| + 2 eta_min        (tvtheory.fp.step_residual_bound),
and the ratios |r_i| / model_i are histogrammed on log axes for float32 and float64. T1 holds when every
ratio is <= 1; the maximum is annotated (it equals tvtheory.fp.check_t1's max_ratio, recorded alongside).
Coordinates with r_i = 0 exactly have no place on a log axis; their share is reported instead.
"""

from __future__ import annotations

import math

import numpy as np

from . import style
from .results import Table, digits_data

NAME = "f6_floating_point"
TITLE = "F6: floating-point residual of one SGD step against the T1 model"
SOURCE = "theory"

_BASE = {"data": "digits", "samples": None, "widths": [64, 32, 10], "activation": "tanh", "loss": "ce",
         "optimizer": "torch.optim.SGD (foreach=False)", "dtypes": ["float32", "float64"],
         "bins_per_decade": 4, "min_log10": -4}
CONFIGS = {
    "quick": {**_BASE, "runs": [{"seed": 0, "lr": 0.1}, {"seed": 1, "lr": 1.0}]},
    "default": {**_BASE, "runs": [{"seed": 0, "lr": 0.1}, {"seed": 1, "lr": 0.01}, {"seed": 2, "lr": 1.0}]},
}


def steps(config: dict) -> int:
    return len(config["runs"]) * len(config["dtypes"])


def seeds(config: dict) -> list[int]:
    return [r["seed"] for r in config["runs"]]


def _key(dtype: str, seed: int, lr: float) -> str:
    return f"{dtype}/seed{seed}/lr{lr:g}"


def _ratios(config: dict, dtype_name: str, seed: int, lr: float):
    """Per-coordinate |r| / model for one torch.optim.SGD step, and tvtheory's own check of that step."""
    from tvtheory.fp import DTYPES, check_t1, exact_residual, step_residual_bound
    from tvtheory.models import make_mlp
    from tvtheory.optimizers import OptimizerSpec
    from tvtheory.problem import make_problem
    from tvtheory.trajectory import run_optimizer

    dtype = DTYPES[dtype_name]
    data = digits_data(config["samples"], seed, dtype)
    problem = make_problem(make_mlp(config["widths"], config["activation"], seed=seed, dtype=dtype),
                           config["loss"], data)
    traj = run_optimizer(problem.objective, problem.theta0, OptimizerSpec("gd", lr).make, 1, lr_for_messages=lr)
    theta0, theta1, g = traj.thetas[0], traj.thetas[1], traj.grads[0]
    residual = exact_residual(theta1 - theta0, g, lr)
    model = step_residual_bound(theta0, float(lr) * g.double().abs(), dtype)
    ratio = (residual.abs() / model).numpy()
    return ratio, check_t1(theta0, theta1, g, lr)


def compute(config: dict, bar) -> dict:
    from tvtheory.fp import DTYPES, unit_roundoff

    per_run, ratios = [], {}
    for dtype in config["dtypes"]:
        for run in config["runs"]:
            ratio, check = _ratios(config, dtype, run["seed"], run["lr"])
            key = _key(dtype, run["seed"], run["lr"])
            ratios[key] = ratio
            nonzero = ratio[ratio > 0]
            per_run.append({"series": key, "dtype": dtype, "seed": run["seed"], "lr": run["lr"],
                            "num_params": int(ratio.size), "max_ratio": float(ratio.max()),
                            "check_t1_max_ratio": check.max_ratio,
                            "median_nonzero_ratio": float(np.median(nonzero)) if nonzero.size else None,
                            "p99_ratio": float(np.percentile(ratio, 99)),
                            "exact_zero": int((ratio == 0).sum()),
                            "below_range": int(((ratio > 0) & (ratio < 10.0 ** config["min_log10"])).sum()),
                            "above_one": int((ratio > 1).sum()), "holds": bool(ratio.max() <= 1)})
            bar.update()
    bpd = config["bins_per_decade"]
    top = max(0.5, math.ceil(math.log10(max(r["max_ratio"] for r in per_run)) * bpd) / bpd)   # covers every ratio
    edges = 10.0 ** np.arange(config["min_log10"], top + 0.5 / bpd, 1.0 / bpd)
    counts = {key: np.histogram(r, bins=edges)[0] for key, r in ratios.items()}
    bins = [{"lo": float(edges[i]), "hi": float(edges[i + 1]), **{k: int(c[i]) for k, c in counts.items()}}
            for i in range(len(edges) - 1)]
    worst = {d: max((r for r in per_run if r["dtype"] == d), key=lambda r: r["max_ratio"]) for d in config["dtypes"]}
    summary = [{"dtype": d, "unit_roundoff": unit_roundoff(DTYPES[d]),
                "max_ratio": w["max_ratio"], "worst_series": w["series"],
                "coordinates": sum(r["num_params"] for r in per_run if r["dtype"] == d),
                "above_one": sum(r["above_one"] for r in per_run if r["dtype"] == d)} for d, w in worst.items()]
    return {"runs": per_run, "histogram": bins, "summary": summary}


def draw(result: dict):
    data, config = result["data"], result["config"]
    fig, axes = style.figure(len(config["dtypes"]), height=4.6, sharey=True)
    axes = axes[0]
    bins = data["histogram"]
    edges = np.array([b["lo"] for b in bins] + [bins[-1]["hi"]])
    colours = [style.BLUE, style.VERMILLION, style.GREEN, style.ORANGE, style.PURPLE, style.SKY]
    styles = ["-", "--", "-.", ":", "-", "--"]
    for ax, dtype in zip(axes, config["dtypes"], strict=True):
        runs = [r for r in data["runs"] if r["dtype"] == dtype]
        for i, run in enumerate(runs):
            share = 100.0 * np.array([b[run["series"]] for b in bins]) / run["num_params"]
            ax.stairs(share, edges, color=colours[i % len(colours)], linestyle=styles[i % len(styles)],
                      linewidth=2, label=f"seed {run['seed']}, $\\eta$ = {run['lr']:g}: max {run['max_ratio']:.3f}")
        ax.axvline(1.0, color=style.BLACK, linewidth=1.5, label="model: $|r|$ = bound")
        ax.set_xscale("log")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel("$|r_i|$ / model$_i$ per coordinate (dimensionless)")
        u = "2^{-24}" if dtype == "float32" else "2^{-53}"
        worst = max(runs, key=lambda r: r["max_ratio"])
        ymax = max(100.0 * max(b[r["series"]] for b in bins) / r["num_params"] for r in runs)
        ax.set_ylim(0, ymax * 2.0)          # head room for the legend (top left) above the bars
        # the largest ratio: a marker above its bin (clear of every run's bar), in the colour of its run;
        # the value is in the panel title and, per run, in the legend
        i = int(np.searchsorted(edges, worst["max_ratio"], side="right")) - 1
        i = min(max(i, 0), len(bins) - 1)
        top = max(100.0 * bins[i][r["series"]] / r["num_params"] for r in runs)
        colour = colours[runs.index(worst) % len(colours)]
        ax.plot([worst["max_ratio"]], [top + ymax * 0.07], "v", color=colour, markersize=10, zorder=5,
                label="largest ratio")
        ax.set_title(f"{dtype} ($u = {u}$): max $|r_i|$/model$_i$ = {worst['max_ratio']:.3f}")
        zeros = ", ".join(f"{100 * r['exact_zero'] / r['num_params']:.0f}%" for r in runs)
        below = sum(r["below_range"] for r in runs)
        lines = ["not shown: $r_i$ = 0 exactly", f"({zeros} of coordinates)"]
        if below:
            lines.append(f"and {below} with ratio < {edges[0]:.0e}")
        ax.text(0.03, 0.38, "\n".join(lines), transform=ax.transAxes, fontsize=11.5, va="center", ha="left",
                bbox=dict(boxstyle="round,pad=0.3", facecolor="white", edgecolor="0.7", alpha=0.9))
        ax.legend(loc="upper left", fontsize=11.5, title=f"P = {runs[0]['num_params']} coordinates",
                  title_fontsize=11.5)
    axes[0].set_ylabel("share of coordinates per bin (%)")
    fig.suptitle("T1: one torch.optim.SGD step, residual $r = \\tau + \\eta g$ vs the model "
                 "$u(1+u)|\\theta_0| + \\gamma_4|\\eta g|$", fontsize=13)
    return fig


def tables(result: dict) -> list[Table]:
    keys = [r["series"] for r in result["data"]["runs"]]
    return [
        Table("Maximum ratio per precision (T1 holds when <= 1)", "data.summary",
              [("dtype", "dtype"), ("u", "unit_roundoff"), ("max |r|/model", "max_ratio"),
               ("worst run", "worst_series"), ("coordinates", "coordinates"), ("ratios > 1", "above_one")]),
        Table("Per run", "data.runs",
              [("run", "series"), ("P", "num_params"), ("max |r|/model", "max_ratio"),
               ("check_t1 max_ratio", "check_t1_max_ratio"), ("median (r ≠ 0)", "median_nonzero_ratio"),
               ("99th percentile", "p99_ratio"), ("r = 0 exactly", "exact_zero"),
               (f"0 < ratio < 1e{result['config']['min_log10']}", "below_range"), ("ratio > 1", "above_one")]),
        Table("Histogram counts (coordinates per bin [lo, hi))", "data.histogram",
              [("lo", "lo"), ("hi", "hi")] + [(k, k) for k in keys]),
    ]
