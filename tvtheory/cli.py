"""Command line: check T1-T4 on a network, data and schedule, and print the per-epoch table.

    python -m tvtheory.bound --arch mlp --widths 64,32,10 --activation tanh --loss ce --lr 0.1 --epochs 5
    python -m tvtheory.bound --arch vit --vit 16,1,2,32

Prints, for k = 1..K: ||tau_k||, ||first-order term|| (= ||k eta B g|| for GD/SGD), ||E_k||, ||E_k - second-order
term||, the T2(c)/T3 bound (M from T4), bound/||E_k||, cos(tau_k, -g) and the dominance number eta M k;
then one verdict per statement (T1, C1, T2, T3, T4) and for the optimizer run. ``--json PATH`` writes the
same with the config and library versions (schema in README.md). For ``--arch vit`` (a ViT classifier on
1x8x8 images) T4, and with it the bound and dominance columns, is n/a (``bounds.T4_NOTE``).
Exit status: 0 when every applicable statement holds, 1 when one fails, 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from .activations import ACTIVATIONS, get_activation
from .curvature import hessian_spectral_norm
from .data import Dataset, contiguous_batches, digits, split_by_label, synthetic
from .fp import DTYPES
from .io import versions, write_json_atomic
from .losses import LOSSES
from .models import make_mlp, make_vit
from .models.vit import ViTConfig
from .optimizers import OPTIMIZERS, OptimizerSpec
from .problem import make_problem
from .theorems import Verdict, epoch_rows, verify_c1, verify_optimizer, verify_t1, verify_t2, verify_t3, verify_t4
from .trajectory import DivergenceError, run_optimizer

DATASETS = ("digits", "synthetic")
MLP_DEFAULTS = {"widths": "64,32,10", "activation": "tanh"}
VIT_DEFAULT = "16,1,2,32"
VIT_IMAGE = {"channels": 1, "image_size": 8, "patch_size": 4}   # digits' 64 features as one 8x8 image
VIT_SYNTHETIC_CLASSES = 10                                      # --data synthetic for the ViT: digits' shapes
VIT_INPUT = (f"{VIT_IMAGE['channels']}x{VIT_IMAGE['image_size']}x{VIT_IMAGE['image_size']} images in "
             f"{VIT_IMAGE['patch_size']}x{VIT_IMAGE['patch_size']} patches")
ARCHITECTURES = {"mlp": "feed-forward network h_l = sigma(W_l h_{l-1} + b_l), the network of T4",
                 "vit": f"ViT classifier (tvtheory.models.vit) on {VIT_INPUT}, exact GELU; no T4"}


class UsageError(ValueError):
    """Bad command-line input; the message names the problem and the fix."""


def parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise UsageError(f"--widths must be comma-separated integers like 64,32,10, got {text!r}") from None
    if len(widths) < 2 or min(widths) < 1:
        raise UsageError(f"--widths needs an input and an output size, all >= 1, got {text!r}")
    return widths


def parse_vit(text: str) -> dict[str, int]:
    """--vit dim,depth,heads,mlp_dim -> the ViTConfig sizes."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or min(values) < 1:
        raise UsageError(f"--vit needs 4 comma-separated integers dim,depth,heads,mlp_dim, all >= 1, like "
                         f"{VIT_DEFAULT}, got {text!r}")
    sizes = dict(zip(("dim", "depth", "heads", "mlp_dim"), values))
    if sizes["dim"] % sizes["heads"]:
        raise UsageError(f"--vit: dim {sizes['dim']} must be a multiple of heads {sizes['heads']} (each head gets "
                         f"dim/heads features), got {text!r}")
    return sizes


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the defaults, except None (a per-architecture default, given in the help text)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tvtheory.bound", description=__doc__.split("\n\n")[0],
                                formatter_class=_HelpFormatter)
    p.add_argument("--arch", default="mlp", help=f"architecture: {', '.join(ARCHITECTURES)}")
    p.add_argument("--widths", help="mlp only: n_0,...,n_L: input size, hidden sizes, output size "
                                    f"(default: {MLP_DEFAULTS['widths']})")
    p.add_argument("--activation", help=f"mlp only: one of {', '.join(ACTIVATIONS)} (default: "
                                        f"{MLP_DEFAULTS['activation']}); the ViT uses exact GELU")
    p.add_argument("--vit", metavar="DIM,DEPTH,HEADS,MLP_DIM",
                   help=f"vit only: width, blocks, attention heads, MLP hidden size of a ViT on {VIT_INPUT} "
                        f"(default: {VIT_DEFAULT})")
    p.add_argument("--loss", default="ce", help=f"one of {', '.join(LOSSES)}")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate eta")
    p.add_argument("--epochs", type=int, default=5, help="K, epochs of finetuning")
    p.add_argument("--batches", type=int, default=1, help="B, equal batches per epoch (1 = full batch)")
    p.add_argument("--optimizer", default="gd", help=f"one of {', '.join(OPTIMIZERS)}")
    p.add_argument("--momentum", type=float, default=0.9, help="heavy-ball momentum for --optimizer momentum")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay lambda (breaks T1)")
    p.add_argument("--dtype", default="float64", help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the batch split")
    p.add_argument("--data", default="digits", help="digits (scikit-learn's bundled 8x8 digits) or synthetic "
                                                    "(Gaussian inputs, linear teacher; n_0 features and n_L classes "
                                                    "for mlp, digits' 64 features and 10 classes for vit)")
    p.add_argument("--samples", type=int, default=512, help="examples of --data synthetic")
    p.add_argument("--tasks", type=int, default=2, help="T, tasks (label classes mod T) for corollary C1")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def validate(args: argparse.Namespace) -> OptimizerSpec:
    """Reject bad input with a message naming the problem and the fix, and fill in the architecture's size
    defaults (--widths and --activation for mlp, --vit for vit); returns the optimizer spec (whose
    constructor checks the optimizer name, momentum and weight decay).
    """
    if not (args.lr > 0 and args.lr < float("inf")):
        raise UsageError(f"--lr must be a positive finite number, got {args.lr}")
    spec = OptimizerSpec(args.optimizer, args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    if args.arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {args.arch!r}; known architectures: {', '.join(ARCHITECTURES)}")
    if args.arch == "mlp":
        if args.vit is not None:
            raise UsageError("--vit sets the size of a ViT; with --arch mlp use --widths (or use --arch vit)")
        args.widths = MLP_DEFAULTS["widths"] if args.widths is None else args.widths
        args.activation = MLP_DEFAULTS["activation"] if args.activation is None else args.activation
    else:
        if args.widths is not None:
            raise UsageError("--widths sets the layer sizes of an MLP; with --arch vit use --vit dim,depth,heads,"
                             "mlp_dim")
        if args.activation not in (None, "gelu"):
            raise UsageError(f"--activation {args.activation} applies to --arch mlp only: the ViT uses exact (erf) "
                             "GELU, which is C^2; drop --activation")
        args.activation = "gelu"
        args.vit = VIT_DEFAULT if args.vit is None else args.vit
    get_activation(args.activation)
    if args.loss not in LOSSES:
        raise UsageError(f"unknown loss {args.loss!r}; known losses: {', '.join(LOSSES)}")
    if args.dtype not in DTYPES:
        raise UsageError(f"unknown dtype {args.dtype!r}; use one of {', '.join(DTYPES)}")
    if args.data not in DATASETS:
        raise UsageError(f"unknown data {args.data!r}; use one of {', '.join(DATASETS)}")
    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    if args.batches < 1:
        raise UsageError(f"--batches must be >= 1, got {args.batches}")
    if args.optimizer == "gd" and args.batches != 1:
        raise UsageError("--optimizer gd is full-batch gradient descent; use --optimizer sgd with --batches > 1")
    return spec


def build_model(args: argparse.Namespace, dtype: torch.dtype) -> tuple[nn.Module, Dataset]:
    """The network and the data of a validated run: the MLP of --widths, or the ViT of --vit on VIT_INPUT
    (--data synthetic: widths[0] features and widths[-1] classes for the MLP, digits' shapes for the ViT).
    """
    def data(features: int, classes: int) -> Dataset:
        return digits(dtype) if args.data == "digits" else synthetic(args.samples, features, classes, args.seed, dtype)

    if args.arch == "mlp":
        widths = parse_widths(args.widths)
        task = data(widths[0], widths[-1])
        d, classes = task.x.shape[1], task.num_classes
        if d != widths[0]:
            raise UsageError(f"the data has {d} input features but the first width is {widths[0]}: "
                             f"use --widths {d},...,{widths[-1]}")
        if widths[-1] != classes:
            raise UsageError(f"the data has {classes} classes but the last width is {widths[-1]}: "
                             f"use --widths {widths[0]},...,{classes}")
        return make_mlp(widths, args.activation, seed=args.seed, dtype=dtype), task
    task = data(VIT_IMAGE["channels"] * VIT_IMAGE["image_size"] ** 2, VIT_SYNTHETIC_CLASSES)
    config = ViTConfig(**VIT_IMAGE, **parse_vit(args.vit), num_classes=task.num_classes)
    return make_vit(config, seed=args.seed, dtype=dtype), task


def run(args: argparse.Namespace) -> dict:
    """Build the problem, run the optimizer, and check every statement; returns the JSON report."""
    spec = validate(args)
    started = time.perf_counter()
    model, data = build_model(args, DTYPES[args.dtype])
    problem = make_problem(model, args.loss, data, args.batches, args.seed)
    n, B = len(problem.objective), problem.num_batches
    batches = None if B == 1 else contiguous_batches(n, B)
    smooth = model.act.is_c2
    stages = tqdm(total=8, desc="tvtheory.bound", disable=args.no_progress, leave=False)

    def stage(name):
        stages.set_postfix_str(name)
        stages.update(1)

    traj = run_optimizer(problem.objective, problem.theta0, spec.make, args.epochs, batches, lr_for_messages=args.lr)
    stage("per-epoch table")
    rows = epoch_rows(problem, spec, traj)
    stage("Hessian norm")
    p64 = problem.to(torch.float64)
    h0 = hessian_spectral_norm(p64.objective, p64.theta0) if smooth else None
    B3 = B if B > 1 else 4
    checks = [
        ("T1", "one full-batch GD step", lambda: verify_t1(problem, args.lr)),
        ("C1", f"one GD step on each of {args.tasks} tasks",
         lambda: verify_c1(problem, args.lr, split_by_label(problem.data, args.tasks))),
        ("T2", f"{args.epochs} epochs of full-batch GD", lambda: verify_t2(problem, args.lr, args.epochs, h0)),
        ("T3", f"one epoch of SGD with {B3} batches",
         lambda: verify_t3(problem, args.lr, B3, hessian_norm=h0 if B == 1 else None)),
        ("T4", "the curvature bound", lambda: verify_t4(problem, [traj.theta0, traj.thetas[-1]], [h0, None])),
        ("optimizer", f"the {args.optimizer} run", lambda: verify_optimizer(problem, spec, traj)),
    ]
    verdicts: list[Verdict] = []
    for name, what, check in checks:
        stage(name)
        try:
            verdicts.append(check())
        except (ValueError, DivergenceError) as err:
            raise type(err)(f"{name} check ({what}): {err}") from err
    stages.close()
    config = {k: v for k, v in vars(args).items() if k not in ("json", "no_progress")}
    sizes = {"widths": None if args.widths is None else list(parse_widths(args.widths)),
             "vit": None if args.vit is None else list(parse_vit(args.vit).values())}
    return {
        "config": {**config, **sizes, "num_params": problem.num_params, "num_examples": n, "num_batches": B},
        "versions": versions(),
        "hessian_norm_theta0": h0,
        "measured_dominance": None if h0 is None else args.lr * h0 * args.epochs * B,
        "epochs": rows,
        "verdicts": {v.theorem: v.to_dict() for v in verdicts},
        "wall_time_s": time.perf_counter() - started,
    }


def _fmt(value, spec: str = ".4g") -> str:
    return "n/a" if value is None else format(value, spec)


def format_report(report: dict) -> str:
    """The per-epoch table and one verdict line per statement."""
    c = report["config"]
    size = (f"widths {','.join(map(str, c['widths']))}" if c["arch"] == "mlp" else
            f"dim,depth,heads,mlp_dim {','.join(map(str, c['vit']))} on {VIT_INPUT}")
    head = (f"tvtheory.bound: {c['arch']} {size} ({c['num_params']} parameters), "
            f"{c['activation']}, {c['loss']} loss, {c['data']} (N = {c['num_examples']}), {c['optimizer']} "
            f"lr {c['lr']:g}, {c['epochs']} epochs x {c['num_batches']} batches, {c['dtype']}, seed {c['seed']}")
    cols = ["k", "||tau_k||", "||1st order||", "||E_k||", "||E_k - 2nd||", "bound", "bound/||E_k||",
            "cos(tau_k,-g)", "eta*M*k"]
    lines = [head, "", "  ".join(f"{h:>13}" for h in cols)]
    for r in report["epochs"]:
        vals = [str(r["k"]), _fmt(r["tau_norm"]), _fmt(r["first_order_norm"]), _fmt(r["error_norm"]),
                _fmt(r["second_order_residual_norm"]), _fmt(r["bound"]), _fmt(r["bound_ratio"], ".3g"),
                _fmt(r["cos_tau_neg_g"], ".6f"), _fmt(r["dominance"], ".3g")]
        lines.append("  ".join(f"{v:>13}" for v in vals))
    lines.append("")
    if report["hessian_norm_theta0"] is not None:
        rigorous = ("eta*M*k above uses the rigorous T4 bound M" if c["arch"] == "mlp" else
                    "no rigorous M for this network: T4 is n/a")
        lines.append(f"||H(theta_0)||_2 = {report['hessian_norm_theta0']:.4g} (Lanczos); measured dominance "
                     f"eta*||H||*k*B at k = K: {report['measured_dominance']:.3g} ({rigorous})")
    for name, v in report["verdicts"].items():
        label = {True: "holds", False: "FAILS", None: "n/a"}[v["holds"]]
        lines.append(f"{name:>9}: {label:5}  {v['message']}")
    lines.append(f"({report['wall_time_s']:.1f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except (ValueError, DivergenceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    applicable = [v["holds"] for v in report["verdicts"].values() if v["holds"] is not None]
    return 0 if all(applicable) else 1


if __name__ == "__main__":
    sys.exit(main())
