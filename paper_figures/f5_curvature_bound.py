"""F5, tightness of the curvature bound T4: bound / ||hess L(theta_0)||_2 across depth, width and activation.

The bound is tvtheory.bounds.mlp_hessian_bound (with layer_norms at theta_0, the seeded initialisation);
the true value is tvtheory.curvature.hessian_norm (dense eigvalsh for P <= 200, else Lanczos on
Hessian-vector products, which converges from below, so a Lanczos ratio can only overstate the tightness
ratio by the Lanczos error, tol 1e-8). Data: scikit-learn's digits (or a seeded subset), CE and MSE losses.
Depth L counts affine layers (L = 1 is a linear model, L = 2 is the default 64,32,10 network).
"""

from __future__ import annotations

import statistics

from . import style
from .results import Table, digits_data

NAME = "f5_curvature_bound"
TITLE = "F5: tightness of the curvature bound (T4)"
SOURCE = "theory"

ACTIVATIONS = ["tanh", "sigmoid", "softplus", "gelu", "silu"]
CONFIGS = {
    "quick": {"data": "digits", "samples": 512, "subset_seed": 0, "seeds": [0], "losses": ["ce", "mse"],
              "depths": [1, 2, 3, 5], "depth_width": 32, "widths": [4, 16, 64, 128], "width_depth": 2,
              "activations": ACTIVATIONS, "base_activation": "tanh", "base_widths": [64, 32, 10]},
    "default": {"data": "digits", "samples": None, "subset_seed": 0, "seeds": [0, 1, 2], "losses": ["ce", "mse"],
                "depths": [1, 2, 3, 4, 5], "depth_width": 32, "widths": [4, 8, 16, 32, 64, 128], "width_depth": 2,
                "activations": ACTIVATIONS, "base_activation": "tanh", "base_widths": [64, 32, 10]},
}
SWEEPS = ("depth", "width", "activation")


def _settings(config: dict) -> list[tuple[str, object, list[int], str]]:
    """(sweep, setting, widths, activation) for every network of the three sweeps."""
    n_in, n_out, act = 64, 10, config["base_activation"]
    out = [("depth", L, [n_in] + [config["depth_width"]] * (L - 1) + [n_out], act) for L in config["depths"]]
    hidden = config["width_depth"] - 1
    out += [("width", w, [n_in] + [w] * hidden + [n_out], act) for w in config["widths"]]
    out += [("activation", a, list(config["base_widths"]), a) for a in config["activations"]]
    return out


def steps(config: dict) -> int:
    return len(_settings(config)) * len(config["losses"]) * len(config["seeds"])


def seeds(config: dict) -> list[int]:
    return config["seeds"]


def compute(config: dict, bar) -> dict:
    from tvtheory.bounds import layer_norms, mlp_hessian_bound
    from tvtheory.curvature import hessian_norm
    from tvtheory.models import make_mlp
    from tvtheory.problem import make_problem

    data = digits_data(config["samples"], config["subset_seed"])
    rows, done = [], {}
    for sweep, setting, widths, act in _settings(config):
        for loss in config["losses"]:
            for seed in config["seeds"]:
                key = (tuple(widths), act, loss, seed)      # the sweeps share their base network
                if key not in done:
                    problem = make_problem(make_mlp(widths, act, seed=seed), loss, data)
                    f, theta0, mlp = problem.objective, problem.theta0, problem.model.config
                    true = hessian_norm(f, theta0).value
                    bound = mlp_hessian_bound(mlp, problem.loss, f.x, f.target, layer_norms(mlp, theta0)).mean
                    done[key] = {"num_params": problem.num_params,
                                 "method": "dense" if problem.num_params <= 200 else "lanczos",
                                 "hessian_norm": true, "bound": bound, "tightness": bound / true,
                                 "bound_holds": bound >= true}
                rows.append({"sweep": sweep, "setting": setting, "widths": "-".join(map(str, widths)),
                             "activation": act, "loss": loss, "seed": seed, **done[key]})
                bar.update()
    summary = []
    for sweep, setting, widths, act in _settings(config):
        for loss in config["losses"]:
            t = [r["tightness"] for r in rows if r["sweep"] == sweep and r["setting"] == setting and r["loss"] == loss]
            summary.append({"sweep": sweep, "setting": setting, "widths": "-".join(map(str, widths)),
                            "activation": act, "loss": loss, "seeds": len(t), "median": statistics.median(t),
                            "min": min(t), "max": max(t)})
    everything = [v["tightness"] for v in done.values()]
    overall = {"networks": len(done), "min_tightness": min(everything), "max_tightness": max(everything),
               "bound_holds_everywhere": all(v["bound_holds"] for v in done.values()),
               "num_examples": len(data)}
    return {"rows": rows, "summary": summary, "overall": overall}


_LOSS_STYLE = {"ce": (style.BLUE, "o", "cross-entropy"), "mse": (style.VERMILLION, "s", "MSE")}
_PANEL = {"depth": ("(a) depth, hidden width {w}", "depth $L$ (affine layers)"),
          "width": ("(b) width, depth $L$ = {d}", "hidden width $n_1$ (units)"),
          "activation": ("(c) activation, widths {bw}", "activation $\\sigma$")}


def draw(result: dict):
    data, config = result["data"], result["config"]
    # three panels side by side: larger type than the other figures, so it stays readable at ~700 px
    fig, axes = style.figure(3, height=5.0, width=11.0, sharey=True)
    axes = axes[0]
    for ax, sweep in zip(axes, SWEEPS, strict=True):
        settings = list(dict.fromkeys(s["setting"] for s in data["summary"] if s["sweep"] == sweep))
        categorical = sweep == "activation"
        for j, loss in enumerate(config["losses"]):
            colour, marker, label = _LOSS_STYLE.get(loss, (style.GREEN, "^", loss))
            offset = (j - (len(config["losses"]) - 1) / 2) * 0.18 if categorical else 0.0
            xs = {s: (i + offset if categorical else s) for i, s in enumerate(settings)}
            summ = [s for s in data["summary"] if s["sweep"] == sweep and s["loss"] == loss]
            x = [xs[s["setting"]] for s in summ]
            y = [s["median"] for s in summ]
            lo = [s["median"] - s["min"] for s in summ]
            hi = [s["max"] - s["median"] for s in summ]
            if categorical:
                ax.errorbar(x, y, yerr=[lo, hi], fmt=marker, color=colour, capsize=3, label=label, markersize=7)
            else:
                ax.errorbar(x, y, yerr=[lo, hi], fmt="-" + marker, color=colour, capsize=3, label=label,
                            markersize=6)
        if categorical:
            ax.set_xticks(range(len(settings)))
            ax.set_xticklabels(settings, rotation=30, ha="right", rotation_mode="anchor")
            ax.set_xlim(-0.5, len(settings) - 0.5)
        elif sweep == "width":
            ax.set_xscale("log", base=2)
            ax.set_xticks(settings)
            ax.set_xticklabels([str(s) for s in settings])
            ax.minorticks_off()
        else:
            ax.set_xticks(settings)
        ax.axhline(1.0, color=style.BLACK, linestyle="--", linewidth=1.2, label="bound = true value")
        title, xlabel = _PANEL[sweep]
        ax.set_title(title.format(w=config["depth_width"], d=config["width_depth"],
                                  bw=",".join(map(str, config["base_widths"]))), fontsize=14)
        ax.set_xlabel(xlabel, fontsize=15)
        ax.tick_params(labelsize=14)
        ax.set_yscale("log")
    axes[0].set_ylabel("bound / $\\|\\nabla^2 L(\\theta_0)\\|_2$ (dimensionless)", fontsize=15)
    lo = min(r["tightness"] for r in data["rows"])
    hi = max(r["tightness"] for r in data["rows"])
    axes[0].set_ylim(min(0.5, lo / 2), hi * 3)
    axes[1].legend(loc="upper center", fontsize=13)       # panel (b) has empty space above its data
    n = data["overall"]["num_examples"]
    seeds_note = f"median of {len(config['seeds'])} seeds, bars min–max" if len(config["seeds"]) > 1 else \
        f"seed {config['seeds'][0]}"
    fig.suptitle(f"T4: bound / exact $\\|H\\|_2$ at initialisation (digits, N = {n}; {seeds_note})",
                 fontsize=15)
    return fig


def tables(result: dict) -> list[Table]:
    return [
        Table("Overall", "data.overall", [("networks", "networks"), ("N", "num_examples"),
                                           ("min bound/‖H‖", "min_tightness"), ("max bound/‖H‖", "max_tightness"),
                                           ("bound ≥ ‖H‖ everywhere", "bound_holds_everywhere")]),
        Table("Plotted: tightness per setting (median, min, max over seeds)", "data.summary",
              [("sweep", "sweep"), ("setting", "setting"), ("widths", "widths"), ("σ", "activation"),
               ("loss", "loss"), ("seeds", "seeds"), ("median", "median"), ("min", "min"), ("max", "max")]),
        Table("Every network", "data.rows",
              [("sweep", "sweep"), ("setting", "setting"), ("widths", "widths"), ("σ", "activation"),
               ("loss", "loss"), ("seed", "seed"), ("P", "num_params"), ("method", "method"),
               ("‖H‖₂", "hessian_norm"), ("bound", "bound"), ("bound/‖H‖₂", "tightness")]),
    ]
