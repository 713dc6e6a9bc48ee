"""Command line: check T1-T6 on a network, data and schedule, and print the per-epoch table.

    python -m tvtheory.bound --arch mlp --widths 64,32,10 --activation tanh --loss ce --lr 0.1 --epochs 5
    python -m tvtheory.bound --arch vit --vit 16,1,2,32

Prints, for k = 1..K: ||tau_k||, ||first-order term|| (= ||k eta B g|| for GD/SGD), ||E_k||, ||E_k - second-order
term||, the T2(c)/T3 bound (M from T6, the certificate), bound/||E_k||, the bound with T4's M, cos(tau_k, -g) and
the dominance number eta M k (T6's M);
then one verdict per statement (T1, C1, T2, T3, T4, T5, T6) and for the optimizer run. T5 runs ATM (alpha = 1/T) over
the C1 tasks for --atm-rounds R rounds of --atm-steps k epochs per task and prints its per-round table
(||theta^(r) - theta_MT^(r)|| against multitask GD, the Gronwall bound, bound/gap, the certified bound).
``--json PATH`` writes the same with the config and library versions (schema in README.md). For ``--arch vit``
(a ViT classifier on 1x8x8 images) T4, and with it the bound and dominance columns, is n/a (``bounds.T4_NOTE``).
Every input is checked before any computation; a user error is one line on stderr ("error: ..." naming the
flag and the fix). Exit status: 0 when every applicable statement holds, 1 when one fails, 2 for bad input
(or a library refusal, or a --json file that could not be written), 130 when interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .activations import ACTIVATIONS, get_activation
from .bounds import has_curvature_bound
from .certificate import CertificateConfig, step_curvature_certificates
from .curvature import hessian_norm
from .data import Dataset, contiguous_batches, digits, split_by_label, synthetic
from .fp import DTYPES
from .io import exit_process, versions, write_json_atomic
from .losses import LOSSES
from .models import make_mlp, make_vit
from .models.vit import ViTConfig
from .optimizers import OPTIMIZERS, OptimizerSpec
from .problem import Problem, make_problem
from .table import epoch_rows
from .theorems import (
    Verdict,
    verify_c1,
    verify_optimizer,
    verify_t1,
    verify_t2,
    verify_t3,
    verify_t4,
    verify_t5,
    verify_t6,
)
from .trajectory import DivergenceError, run_optimizer

DATASETS = ("digits", "synthetic")
MLP_DEFAULTS = {"widths": "64,32,10", "activation": "tanh"}
DEFAULT_MOMENTUM = 0.9      # --momentum, for --optimizer momentum (recorded in the report's config either way)
DEFAULT_SAMPLES = 512       # --samples, for --data synthetic (recorded in the report's config either way)
#: T6's total failure probability for one report, split equally between its four certificate families
#: (the per-epoch table, T2, T3 and the T6 verdict's points)
CERTIFICATE_DELTA = 1e-9
T3_BATCHES = 4              # T3 is checked on --batches batches, or on this many for a full-batch run
ATM_ROUNDS, ATM_STEPS = 3, 2  # T5's defaults: ATM rounds R and epochs per task per round k (~0.4 s on digits)
SEEDS = (-2 ** 63, 2 ** 64 - 1)   # the seeds torch.manual_seed accepts
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
    """--widths n_0,...,n_L -> the MLP's widths (at least an input and an output size, all >= 1)."""
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
    sizes = dict(zip(("dim", "depth", "heads", "mlp_dim"), values, strict=True))
    if sizes["dim"] % sizes["heads"]:
        raise UsageError(f"--vit: dim {sizes['dim']} must be a multiple of heads {sizes['heads']} (each head gets "
                         f"dim/heads features), got {text!r}")
    return sizes


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the defaults, except None (a per-architecture default, given in the help text)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m tvtheory.bound`` (what each one means is in its help text)."""
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
    p.add_argument("--momentum", type=float, default=None,
                   help=f"heavy-ball momentum mu in [0, 1), only with --optimizer momentum (default: "
                        f"{DEFAULT_MOMENTUM})")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="L2 weight decay lambda >= 0 of the --optimizer run, any optimizer (breaks T1); the checks "
                        "of T1-T4 themselves run plain GD")
    p.add_argument("--dtype", default="float64", help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the batch split")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: fastest on the small default networks, and immune to the "
                        "many-fold slowdown of several torch threads on a busy machine; raise it for large ones)")
    p.add_argument("--data", default="digits", help="digits (scikit-learn's bundled 8x8 digits) or synthetic "
                                                    "(Gaussian inputs, linear teacher; n_0 features and n_L classes "
                                                    "for mlp, digits' 64 features and 10 classes for vit)")
    p.add_argument("--samples", type=int, default=None,
                   help=f"examples of --data synthetic, only with it (default: {DEFAULT_SAMPLES})")
    p.add_argument("--tasks", type=int, default=2,
                   help="T, tasks (label classes mod T) for corollary C1, 1..number of classes")
    p.add_argument("--atm-rounds", type=int, default=ATM_ROUNDS,
                   help="R, rounds of ATM (alternating tuning and merging, alpha = 1/T) over the --tasks tasks for T5")
    p.add_argument("--atm-steps", type=int, default=ATM_STEPS,
                   help="k, full-batch GD epochs per task per ATM round for T5(b) (T5(a) always uses k = 1)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="write the results as JSON to PATH, in an existing writable folder (checked first)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _require(flag: str, value: float, ok: bool, text: str) -> None:
    """Refuse ``value`` for ``flag`` unless it is finite and ``ok`` (``text`` says what is allowed)."""
    if not (math.isfinite(value) and ok):
        raise UsageError(f"{flag} must be {text}, got {value}")


def check_output_path(path: str) -> None:
    """Refuse, before any work, a --json PATH that could not be written at the end: a directory, a folder that
    does not exist or is not a folder, or one where no file can be created (probed with a temporary file).
    """
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise UsageError(f"--json {path} is a directory; give a file path in it, like --json {target / 'report.json'}")
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"--json {path}: the folder {folder} {what}; create it first or choose a path in an "
                         "existing folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UsageError(f"--json {path}: cannot create a file in {folder} ({err.strerror}); choose a writable "
                         "folder") from None


def validate(args: argparse.Namespace) -> OptimizerSpec:
    """Reject bad input with a message naming the problem and the fix, and fill in the defaults that depend on
    other flags (--widths and --activation for mlp, --vit for vit, --momentum, --samples); returns the optimizer
    spec. A flag that the chosen run would ignore (--momentum without --optimizer momentum, --samples without
    --data synthetic, the size flags of the other architecture) is refused, never silently dropped.
    Everything that needs the data (widths, tasks, batches against the examples) is checked by ``prepare``.
    """
    _require("--lr", args.lr, args.lr > 0, "a positive finite number")
    _require("--weight-decay", args.weight_decay, args.weight_decay >= 0, "a finite number >= 0")
    if args.optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {args.optimizer!r}; known optimizers: {', '.join(OPTIMIZERS)}")
    if args.momentum is not None:
        if args.optimizer != "momentum":
            raise UsageError(f"--momentum applies to --optimizer momentum only (this run uses --optimizer "
                             f"{args.optimizer}); drop --momentum or use --optimizer momentum")
        _require("--momentum", args.momentum, 0 <= args.momentum < 1, "in [0, 1)")
    args.momentum = DEFAULT_MOMENTUM if args.momentum is None else args.momentum
    spec = OptimizerSpec(args.optimizer, args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    if args.arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {args.arch!r}; known architectures: {', '.join(ARCHITECTURES)}")
    if args.arch == "mlp":
        if args.vit is not None:
            raise UsageError("--vit sets the size of a ViT; with --arch mlp use --widths (or use --arch vit)")
        args.widths = MLP_DEFAULTS["widths"] if args.widths is None else args.widths
        args.activation = MLP_DEFAULTS["activation"] if args.activation is None else args.activation
        parse_widths(args.widths)
    else:
        if args.widths is not None:
            raise UsageError("--widths sets the layer sizes of an MLP; with --arch vit use --vit dim,depth,heads,"
                             "mlp_dim")
        if args.activation not in (None, "gelu"):
            raise UsageError(f"--activation {args.activation} applies to --arch mlp only: the ViT uses exact (erf) "
                             "GELU, which is C^2; drop --activation")
        args.activation = "gelu"
        args.vit = VIT_DEFAULT if args.vit is None else args.vit
        parse_vit(args.vit)
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
    if args.tasks < 1:
        raise UsageError(f"--tasks must be >= 1 (T tasks for C1), got {args.tasks}")
    if args.atm_rounds < 1:
        raise UsageError(f"--atm-rounds must be >= 1 (rounds of ATM for T5), got {args.atm_rounds}")
    if args.atm_steps < 1:
        raise UsageError(f"--atm-steps must be >= 1 (epochs per task per ATM round), got {args.atm_steps}")
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if not SEEDS[0] <= args.seed <= SEEDS[1]:
        raise UsageError(f"--seed must be in {SEEDS[0]}..{SEEDS[1]} (what torch.manual_seed accepts), got {args.seed}")
    if args.samples is not None and args.data != "synthetic":
        raise UsageError(f"--samples sets the size of --data synthetic; --data {args.data} has a fixed size: drop "
                         "--samples or use --data synthetic")
    args.samples = DEFAULT_SAMPLES if args.samples is None else args.samples
    if args.data == "synthetic":
        needed = max(args.batches, t3_batches(args), args.tasks)
        if args.samples < needed:
            raise UsageError(f"--samples {args.samples} is too few: --batches {args.batches}, T3's {t3_batches(args)} "
                             f"batches and --tasks {args.tasks} need at least {needed} examples; use --samples >= "
                             f"{needed}")
    if args.json is not None:
        check_output_path(args.json)
    return spec


def build_model(args: argparse.Namespace, dtype: torch.dtype) -> tuple[nn.Module, Dataset]:
    """The network and the data of a validated run: the MLP of --widths, or the ViT of --vit on VIT_INPUT
    (--data synthetic: widths[0] features and widths[-1] classes for the MLP, digits' shapes for the ViT).
    The MLP's own shape check (``MLP.check_data``) decides whether --widths fits the data; its message gets the
    command-line fix appended.
    """
    def data(features: int, classes: int) -> Dataset:
        return digits(dtype) if args.data == "digits" else synthetic(args.samples, features, classes, args.seed, dtype)

    if args.arch == "mlp":
        widths = parse_widths(args.widths)
        task = data(widths[0], widths[-1])
        mlp = make_mlp(widths, args.activation, seed=args.seed, dtype=dtype)
        features, classes = task.x.shape[1], task.num_classes
        try:
            mlp.check_data(features, classes)
        except ValueError as err:
            fitted = ",".join(map(str, (features, *widths[1:-1], classes)))
            raise UsageError(f"{err}; use --widths {fitted}") from None
        return mlp, task
    task = data(VIT_IMAGE["channels"] * VIT_IMAGE["image_size"] ** 2, VIT_SYNTHETIC_CLASSES)
    config = ViTConfig(**VIT_IMAGE, **parse_vit(args.vit), num_classes=task.num_classes)
    return make_vit(config, seed=args.seed, dtype=dtype), task


def t3_batches(args: argparse.Namespace) -> int:
    """B for the T3 check: --batches, or ``T3_BATCHES`` for a full-batch run."""
    return args.batches if args.batches > 1 else T3_BATCHES


def prepare(args: argparse.Namespace) -> tuple[OptimizerSpec, Problem, list[Dataset]]:
    """Everything checked before any computation: the flags (``validate``), then the model against the data,
    the batches against the examples and the C1 tasks against the labels. Returns the optimizer spec, the
    problem and the tasks of C1.
    """
    spec = validate(args)
    model, data = build_model(args, DTYPES[args.dtype])
    needed = max(args.batches, t3_batches(args))
    if len(data) < needed:     # --data synthetic is checked by validate; digits has a fixed size
        raise UsageError(f"--batches {args.batches} (T3: {t3_batches(args)} batches) needs at least {needed} "
                         f"examples, but --data {args.data} has {len(data)}; use fewer --batches")
    problem = make_problem(model, args.loss, data, args.batches, args.seed)
    if args.tasks > data.num_classes:
        raise UsageError(f"--tasks {args.tasks} exceeds the {data.num_classes} classes of --data {args.data} (each "
                         f"task holds the labels congruent to t mod T); use --tasks 1..{data.num_classes}")
    try:
        tasks = split_by_label(problem.data, args.tasks)
    except ValueError as err:
        raise UsageError(f"--tasks {args.tasks}: {err}") from None
    return spec, problem, tasks


def run(args: argparse.Namespace) -> dict:
    """Validate everything (``prepare``), run the optimizer, and check every statement; returns the JSON report."""
    started = time.perf_counter()
    spec, problem, tasks = prepare(args)
    torch.set_num_threads(args.threads)
    n, B = len(problem.objective), problem.num_batches
    batches = None if B == 1 else contiguous_batches(n, B)
    smooth = problem.act.is_c2
    with tqdm(total=10, desc="tvtheory.bound", disable=args.no_progress, leave=False) as stages:

        def stage(name: str) -> None:
            stages.set_postfix_str(name)
            stages.update(1)

        traj = run_optimizer(problem.objective, problem.theta0, spec.make, args.epochs, batches,
                             lr_for_messages=args.lr)
        stage("per-epoch table")
        certificate = CertificateConfig(delta=CERTIFICATE_DELTA / 4)
        certs = (step_curvature_certificates(problem, traj, certificate)
                 if spec.plain and smooth and has_curvature_bound(problem.model) else None)
        rows = epoch_rows(problem, spec, traj, certs)
        # a full-batch float64 GD run is T2's premise itself: T2 judges its rows (and certificates)
        gd64 = spec.plain and spec.name == "gd" and B == 1 and problem.theta0.dtype == torch.float64
        stage("Hessian norm")
        p64 = problem.to(torch.float64)
        h0 = hessian_norm(p64.objective, p64.theta0).value if smooth else None
        B3 = t3_batches(args)
        checks = [
            ("T1", "one full-batch GD step", lambda: verify_t1(problem, args.lr)),
            ("C1", f"one GD step on each of {args.tasks} tasks", lambda: verify_c1(problem, args.lr, tasks)),
            ("T2", f"{args.epochs} epochs of full-batch GD",
             lambda: verify_t2(problem, args.lr, args.epochs, h0, certificate, rows if gd64 else None)),
            ("T3", f"one epoch of SGD with {B3} batches",
             lambda: verify_t3(problem, args.lr, B3, hessian_norm=h0 if B == 1 else None, certificate=certificate)),
            ("T4", "the curvature bound", lambda: verify_t4(problem, [traj.theta0, traj.thetas[-1]], [h0, None])),
            ("T5", f"ATM, {args.atm_rounds} rounds x {args.atm_steps} epochs on each of {args.tasks} tasks",
             lambda: verify_t5(problem, args.lr, tasks, args.atm_rounds, args.atm_steps)),
            ("T6", "the curvature certificate",
             lambda: verify_t6(problem, [traj.theta0, traj.thetas[-1]], [h0, None], certificate)),
            ("optimizer", f"the {args.optimizer} run", lambda: verify_optimizer(problem, spec, traj)),
        ]
        verdicts: list[Verdict] = []
        for name, what, check in checks:
            stage(name)
            try:
                verdicts.append(check())
            except (ValueError, DivergenceError) as err:
                raise type(err)(f"{name} check ({what}): {err}") from err
    config = {k: v for k, v in vars(args).items() if k not in ("json", "no_progress")}
    sizes = {"widths": None if args.widths is None else list(parse_widths(args.widths)),
             "vit": None if args.vit is None else list(parse_vit(args.vit).values())}
    return {
        "config": {**config, **sizes, "num_params": problem.num_params, "num_examples": n, "num_batches": B},
        "versions": versions(),
        "hessian_norm_theta0": h0,
        "measured_dominance": None if h0 is None else args.lr * h0 * args.epochs * B,
        "certificate": None if not smooth or not has_curvature_bound(problem.model) else {
            "name": "T6", "delta": CERTIFICATE_DELTA, "epsilon": certificate.epsilon, "slack": certificate.slack,
            "table_failure": None if certs is None else certs.failure,
            "table_products": None if certs is None else certs.products},
        "epochs": rows,
        "verdicts": {v.theorem: v.to_dict() for v in verdicts},
        "wall_time_s": time.perf_counter() - started,
    }


def _fmt(value, spec: str = ".4g") -> str:
    return "n/a" if value is None else format(value, spec)


def _ratio(row: dict) -> str:
    """bound/||E_k||, or "rounding" where ||E_k|| is within its rounding allowance (E_k is then rounding)."""
    if row["bound"] is not None and row["error_resolved"] is False and row["k"] > 1:
        return "rounding"
    return _fmt(row["bound_ratio"], ".3g")


def format_report(report: dict) -> str:
    """The per-epoch table and one verdict line per statement."""
    c = report["config"]
    size = (f"widths {','.join(map(str, c['widths']))}" if c["arch"] == "mlp" else
            f"dim,depth,heads,mlp_dim {','.join(map(str, c['vit']))} on {VIT_INPUT}")
    head = (f"tvtheory.bound: {c['arch']} {size} ({c['num_params']} parameters), "
            f"{c['activation']}, {c['loss']} loss, {c['data']} (N = {c['num_examples']}), {c['optimizer']} "
            f"lr {c['lr']:g}, {c['epochs']} epochs x {c['num_batches']} batches, {c['dtype']}, seed {c['seed']}")
    cols = ["k", "||tau_k||", "||1st order||", "||E_k||", "||E_k - 2nd||", "bound", "bound/||E_k||",
            "bound (T4)", "cos(tau_k,-g)", "eta*M*k"]
    lines = [head, "", "  ".join(f"{h:>13}" for h in cols)]
    for r in report["epochs"]:
        vals = [str(r["k"]), _fmt(r["tau_norm"]), _fmt(r["first_order_norm"]), _fmt(r["error_norm"]),
                _fmt(r["second_order_residual_norm"]), _fmt(r["bound"]), _ratio(r), _fmt(r["bound_t4"]),
                _fmt(r["cos_tau_neg_g"], ".6f"), _fmt(r["dominance"], ".3g")]
        lines.append("  ".join(f"{v:>13}" for v in vals))
    if any(_ratio(r) == "rounding" for r in report["epochs"]):
        lines.append('"rounding": ||E_k|| is within its floating-point allowance, so E_k there is rounding error, not '
                     "the second-order term (float64 or a larger lr resolves it)")
    lines.append("")
    if report["hessian_norm_theta0"] is not None:
        last = report["epochs"][-1]
        cert = report["certificate"]
        rigorous = ("no rigorous M for this network: T4 and T6 are n/a" if cert is None else
                    f"bound and eta*M*k use T6's certified M, failure probability <= {cert['delta']:.0e} for the "
                    "whole report" + ("" if last["dominance_t4"] is None else
                                      f"; with T4's M: eta*M*k = {last['dominance_t4']:.3g}"))
        lines.append(f"||H(theta_0)||_2 = {report['hessian_norm_theta0']:.4g} (Lanczos); measured dominance "
                     f"eta*||H||*k*B at k = K: {report['measured_dominance']:.3g} ({rigorous})")
    t5 = report["verdicts"].get("T5")
    if t5 is not None and t5["rounds"]:
        lines += [f"T5, ATM (alpha = 1/T, {t5['num_tasks']} tasks, k = {t5['steps']}) against multitask GD with "
                  f"lr alpha*k*eta*T = {t5['multitask_lr']:.4g}:",
                  "  ".join(f"{h:>13}" for h in ("round", "||th - th_MT||", "Gronwall", "bound/gap", "certified",
                                                  "alpha*sum||E||", "M_r"))]
        for row in t5["rounds"]:
            vals = [str(row["round"]), _fmt(row["gap"]), _fmt(row["bound"]), _fmt(row["tightness"], ".3g"),
                    _fmt(row["certified"]), _fmt(row["merged_error"]), _fmt(row["segment_bound"])]
            lines.append("  ".join(f"{v:>13}" for v in vals))
        lines.append("")
    for name, v in report["verdicts"].items():
        label = {True: "holds", False: "FAILS", None: "n/a"}[v["holds"]]
        lines.append(f"{name:>9}: {label:5}  {v['message']}")
    lines.append(f"({report['wall_time_s']:.1f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 all hold, 1 one fails, 2 bad input, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
        print(format_report(report))
        if args.json:
            try:
                write_json_atomic(args.json, report)
            except OSError as err:
                print(f"error: could not write --json {args.json}: {err.strerror or err}", file=sys.stderr)
                return 2
            print(f"wrote {args.json}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, DivergenceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    applicable = [v["holds"] for v in report["verdicts"].values() if v["holds"] is not None]
    return 0 if all(applicable) else 1


if __name__ == "__main__":
    exit_process(main())
