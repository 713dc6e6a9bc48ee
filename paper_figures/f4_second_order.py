"""F4, second-order error (T2, T3) on the default MLP (digits, widths 64,32,10, tanh, CE, float64).

Left: for k = 1..K epochs of full-batch GD, ||E_k|| = ||tau_k + k eta g||, the second-order prediction
||eta^2 C(k,2) H g||, what is left after it, ||E_k - eta^2 C(k,2) H g||, and the a-posteriori bound T2(c),
eta sum_{j<k} M_j ||theta_j - theta_0||, twice: with M_j from T6 (tvtheory.certificate: M_j >= sup of ||H|| on
[theta_0, theta_j], all j together with failure probability <= delta over the certificate's own draws) and with
M_j from T4 (deterministic). The tables add the dominance numbers eta k max_j M_j of both and the M_j themselves.
Right: ||R|| = ||tau - first - second order|| against eta on log-log axes, for GD after k epochs (T2(a)) and for
one epoch of B-batch SGD (T3), eta = eta_max / 2^i from the asymptotic regime eta_max ||H|| k = 0.1; the fitted
slopes (expected 3) are printed on the plot.
All numbers come from tvtheory (step_curvature_certificates, epoch_rows, resolved_slope), not re-derived here.
"""

from __future__ import annotations

import math

import numpy as np

from . import style
from .results import Table, digits_data

NAME = "f4_second_order"
TITLE = "F4: second-order error of the task vector (T2, T3)"
SOURCE = "theory"

# "certificate": the parameters of tvtheory.certificate.CertificateConfig set here (the rest: its defaults,
# recorded in the result's summary); epsilon: a point certificate is (1 + epsilon) x an accepted level, delta: the
# failure probability of all of the trajectory's M_j together, seed: the certificate's draws
_BASE = {"data": "digits", "samples": None, "widths": [64, 32, 10], "activation": "tanh", "loss": "ce",
         "lr": 0.1, "seed": 0, "dtype": "float64", "certificate": {"epsilon": 0.1, "delta": 1e-9, "seed": 0}}
CONFIGS = {
    "quick": {**_BASE, "epochs": 6, "remainder_epochs": 5, "halvings": 5, "t3_batches": 4},
    "default": {**_BASE, "epochs": 10, "remainder_epochs": 5, "halvings": 8, "t3_batches": 4},
}


def steps(config: dict) -> int:
    return 6


def seeds(config: dict) -> int:
    return config["seed"]


def _problem(config: dict):
    from tvtheory.fp import DTYPES
    from tvtheory.models import make_mlp
    from tvtheory.problem import make_problem

    dtype = DTYPES[config["dtype"]]
    data = digits_data(config["samples"], config["seed"], dtype)
    model = make_mlp(config["widths"], config["activation"], seed=config["seed"], dtype=dtype)
    return make_problem(model, config["loss"], data, 1, config["seed"])


def compute(config: dict, bar) -> dict:
    import dataclasses

    from tvtheory.certificate import CertificateConfig, step_curvature_certificates
    from tvtheory.curvature import hessian_norm
    from tvtheory.optimizers import OptimizerSpec
    from tvtheory.remainder import RESOLVED_FACTOR, resolved_slope
    from tvtheory.table import epoch_rows
    from tvtheory.trajectory import gradient_descent

    lr, K = config["lr"], config["epochs"]
    problem = _problem(config)
    traj = gradient_descent(problem.objective, problem.theta0, lr, K)
    bar.update()
    certificate = CertificateConfig(**config["certificate"])
    certs = step_curvature_certificates(problem, traj, certificate)      # T6's M_j (T4's beside them)
    bar.update()
    rows = epoch_rows(problem, OptimizerSpec("gd", lr), traj, certificates=certs)
    bar.update()
    h0 = hessian_norm(problem.objective, problem.theta0).value
    bar.update()
    k, B = config["remainder_epochs"], config["t3_batches"]
    series = [(f"T2(a): GD, k = {k:d} epochs", "T2", problem, k, 1),
              (f"T3: SGD, 1 epoch of B = {B:d} batches", "T3", problem.with_batches(B, config["seed"]), 1, B)]
    points, fits = [], []
    for label, statement, p, epochs, batches in series:
        fit = resolved_slope(p, lr, h0, epochs, config["halvings"])     # the grid verify_t2 / verify_t3 use
        eta_max = fit["grid"]["eta_max"]
        bar.update()
        for q in fit["points"]:
            points.append({"series": statement, "eta": q["eta"], "remainder": q["remainder"],
                           "allowance": q["allowance"], "fitted": q["remainder"] > RESOLVED_FACTOR * q["allowance"]})
        fits.append({"series": statement, "label": label, "epochs": epochs, "batches": batches, "eta_max": eta_max,
                     "points": len(fit["points"]), "resolved": fit["resolved"], "slope": fit["slope"]})
    return {
        "summary": {"num_params": problem.num_params, "num_examples": len(problem.objective), "lr": lr,
                    "hessian_norm_theta0": h0, "resolved_factor": RESOLVED_FACTOR,
                    "certificate_config": dataclasses.asdict(certificate),
                    "certificate_failure": certs.failure, "certificate_products": certs.products,
                    "certificate_grid_points": sum(len(seg.points) for seg in certs.segments)},
        "epochs": [{key: r.get(key) for key in ("k", "tau_norm", "first_order_norm", "error_norm",
                                                "second_order_norm", "second_order_residual_norm", "bound",
                                                "bound_ratio", "bound_t4", "bound_ratio_t4", "dominance",
                                                "dominance_t4", "rounding_allowance")} for r in rows],
        # M_j of step j (on [theta_0, theta_j]): T6's certificate, its parts, and T4's bound; grid_max is None
        # where the grid was not tested (theta_0's certificate + remainder >= T4: M_j is T4's)
        "steps": [{"j": j, "M_t6": seg.value, "M_t4": seg.t4,
                   "grid_max": seg.grid_max if math.isfinite(seg.grid_max) else None, "remainder": seg.remainder,
                   "pieces": seg.pieces, "points": len(seg.points), "products": seg.products}
                  for j, seg in enumerate(certs.segments)],
        "remainder": points,
        "fits": fits,
    }


def _positive(xs, ys):
    keep = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and y > 0]
    return [x for x, _ in keep], [y for _, y in keep]


def draw(result: dict):
    data, config = result["data"], result["config"]
    fig, axes = style.figure(2, height=6.4)
    left, right = axes[0]

    # ---- left: E_k, its second-order prediction, what is left, and the T2(c) bound, against k
    rows = [r for r in data["epochs"] if r["k"] >= 2]          # E_1 = 0 exactly (T1): nothing to draw on log axes
    ks = [r["k"] for r in rows]
    bound = "T2(c) bound $\\eta\\,\\Sigma_j M_j\\|\\theta_j-\\theta_0\\|$"  # inline sum: one-line legend entry
    lines = [("bound_t4", f"{bound}, $M_j$: T4", style.GREEN, "^", "-", True),
             ("bound", f"{bound}, $M_j$: T6 certificate", style.PURPLE, "v", "-", True),
             ("error_norm", "$\\|E_k\\|$ (measured)", style.BLACK, "o", "-", True),
             ("second_order_norm", "2nd-order prediction $\\|\\eta^2\\binom{k}{2}Hg\\|$", style.BLUE, "s", "--", False),
             ("second_order_residual_norm", "$\\|E_k - \\eta^2\\binom{k}{2}Hg\\|$", style.VERMILLION, "D", "-", True)]
    for key, label, colour, marker, ls, filled in lines:
        x, y = _positive(ks, [r[key] for r in rows])
        left.plot(x, y, ls, color=colour, marker=marker, label=label, markersize=7 if not filled else 6,
                  markerfacecolor=colour if filled else "none", markeredgewidth=1.5)
    left.set_yscale("log")
    left.set_xlim(0.5, max(r["k"] for r in data["epochs"]) + 0.5)
    left.set_xticks([r["k"] for r in data["epochs"]])
    left.set_xlabel("epoch $k$ (full-batch GD steps)")
    left.set_ylabel("norm in parameter space (dimensionless)")
    left.set_title(f"T2: $k$ epochs of GD, $\\eta$ = {config['lr']:g}")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), fontsize=12, ncol=1, frameon=False)
    e1 = data["epochs"][0]["error_norm"]
    style.note(left, f"$k$ = 1: $E_1$ = 0 (T1);\nmeasured {e1:.1e} (rounding)", "upper left", fontsize=10)
    ratios = []
    for key, name in (("bound_ratio", "T6"), ("bound_ratio_t4", "T4")):
        r = [row[key] for row in data["epochs"] if row.get(key) is not None]
        if r:
            ratios.append(f"{name}: {min(r):.3g}–{max(r):.3g}")
    if ratios:
        style.note(left, "bound / $\\|E_k\\|$ over $k$\n" + "\n".join(ratios), "lower right", fontsize=10)

    # ---- right: ||R|| against eta, log-log, with fitted slopes and a slope-3 reference
    colours = {"T2": style.BLUE, "T3": style.VERMILLION}
    markers = {"T2": "o", "T3": "s"}
    slopes = []
    for fit in data["fits"]:
        pts = [p for p in data["remainder"] if p["series"] == fit["series"]]
        c, m = colours.get(fit["series"], style.GREEN), markers.get(fit["series"], "^")
        eta = np.array([p["eta"] for p in pts])
        rem = np.array([p["remainder"] for p in pts])
        used = np.array([p["fitted"] for p in pts])
        right.plot(eta, rem, "-", color=c, alpha=0.5, linewidth=1.2)
        right.plot(eta[used], rem[used], m, color=c, label=fit["label"])
        slopes.append(f"{fit['series']}: fitted slope {fit['slope']:.3f}" if fit["slope"] is not None
                      else f"{fit['series']}: too few resolved points")
        if (~used).any():
            right.plot(eta[~used], rem[~used], m, color=c, markerfacecolor="none", markeredgewidth=1.5)
    # slope-3 reference through the largest T2 point, shifted down a decade so it does not hide data
    ref = [p for p in data["remainder"] if p["series"] == data["fits"][0]["series"]]
    e = np.array([ref[0]["eta"], ref[-1]["eta"]])
    right.plot(e, ref[0]["remainder"] / 10 * (e / e[0]) ** 3, ":", color=style.GREY, linewidth=2,
               label="slope 3 reference")
    right.plot([p["eta"] for p in ref], [data["summary"]["resolved_factor"] * p["allowance"] for p in ref],
               "--", color=style.GREY, linewidth=1,
               label=f"{data['summary']['resolved_factor']:g} × rounding allowance (T2)")
    if any(not p["fitted"] for p in data["remainder"]):
        right.plot([], [], "o", color=style.GREY, markerfacecolor="none", markeredgewidth=1.5,
                   label="not fitted (below that line)")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("learning rate $\\eta$ (dimensionless)")
    right.set_ylabel("$\\|R\\|$ = $\\|\\tau$ − 1st − 2nd order$\\|$ (dimensionless)")
    right.set_title("remainder is $O(\\eta^3)$")
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), fontsize=12, ncol=1, frameon=False)
    style.note(right, "\n".join(slopes) + "\n(expected 3)", "upper left", fontsize=12)
    return fig


def tables(result: dict) -> list[Table]:
    return [
        Table("Problem", "data.summary", [("P", "num_params"), ("N", "num_examples"), ("η", "lr"),
                                          ("‖H(θ₀)‖₂ (Lanczos)", "hessian_norm_theta0")]),
        Table("Left panel: error of the first-order prediction after k epochs of GD", "data.epochs",
              [("k", "k"), ("‖E_k‖", "error_norm"), ("‖η²C(k,2)Hg‖", "second_order_norm"),
               ("‖E_k − 2nd order‖", "second_order_residual_norm"), ("T2(c) bound, T6's M_j", "bound"),
               ("bound/‖E_k‖ (T6)", "bound_ratio"), ("T2(c) bound, T4's M_j", "bound_t4"),
               ("bound/‖E_k‖ (T4)", "bound_ratio_t4"), ("η k max M_j (T6)", "dominance"),
               ("η k max M_j (T4)", "dominance_t4"),
               ("‖τ_k‖", "tau_norm"), ("‖kηg‖", "first_order_norm")]),
        Table("Left panel: M_j on [θ₀, θ_j], T6 certificate (min of T4 and grid maximum + remainder h²K₄/8) and T4 "
              "bound",
              "data.steps", [("j", "j"), ("M_j (T6)", "M_t6"), ("M_j (T4)", "M_t4"), ("grid max", "grid_max"),
                             ("remainder", "remainder"), ("pieces", "pieces"), ("points tested", "points"),
                             ("HVPs", "products")]),
        Table("T6 certificate of the M_j", "data.summary",
              [("failure probability (all M_j)", "certificate_failure"), ("HVPs", "certificate_products"),
               ("grid points", "certificate_grid_points")]),
        Table("Right panel: remainder against the learning rate", "data.remainder",
              [("series", "series"), ("η", "eta"), ("‖R‖", "remainder"), ("rounding allowance", "allowance"),
               ("in fit", "fitted")]),
        Table("Right panel: fitted log-log slopes (expected 3)", "data.fits",
              [("series", "series"), ("epochs", "epochs"), ("batches", "batches"), ("η_max", "eta_max"),
               ("points", "points"), ("resolved", "resolved"), ("slope", "slope")]),
    ]
