"""Vision finetuning experiments E1-E3 on a small pretrained encoder: ``python -m tvtheory.experiments.vision``.

Subcommands (each has its own ``--help``):
  pretrain-info   the pretrained encoder (config, size, provenance) and the seven tasks' data sizes
  finetune        per task: fit the frozen probe head at theta_0, finetune the encoder with gd / sgd / adamw,
                  record E1/E2 and the T2/T3 expansion per epoch, write <results>/<task>/<optimizer>.json and
                  the task vectors <artifacts>/<task>/<optimizer>/tau_epochKKK.safetensors
  merge           E3: task arithmetic of one-epoch vs converged task vectors, all tasks and subsets of T tasks
                  -> <results>/seed<s>/merge_<optimizer>.json
  atm             ATM (T5): R rounds of one epoch per task merged with alpha 1/T, against multitask finetuning and
                  E3's task arithmetic -> <results>/seed<s>/atm_<optimizer>.json (after merge)
  summary         E3 over seeds: one-epoch - converged with 95% intervals and a verdict -> <results>/e3_summary.json
  report          print the tables of everything under <results>
finetune and merge run each seed of --seeds (default 0,1,2; --quick: 0,1) in turn, seed s in <results>/seed<s>/
and <artifacts>/seed<s>/ (``summary.seed_config``).

Your own model and data (the same pipeline, all tasks at the encoder's ``image_size``):
  --pretrained open_clip:<model_name>:<checkpoint>   the image tower of a real CLIP from a local open_clip
                  checkpoint, inputs normalised with CLIP's statistics (needs the ``real`` extra)
  --task-folder NAME=PATH   (repeatable) a task read from PATH/train/<class>/<image> and PATH/test/<class>/<image>;
                  with it, --tasks defaults to the folder tasks
Multi-process: the same command under ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on CUDA; CUDA is
used whenever present). Every finished epoch is checkpointed; rerunning the command resumes.

This module only parses the command line into a ``VisionConfig`` (``tvtheory.experiments.config``) and calls the
library (``runs.finetune_tasks``, ``merging.merge`` once per seed, ``summary.summarise``, ``report.report`` /
``pretrain_info``), as a script would.
Every user error is one line on stderr and exit status 2; nothing merged is status 1; Ctrl-C is status 130.
The pretraining itself is ``small_models/pretrain.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn

import torch

from ..io import exit_process
from ..trajectory import DivergenceError
from ..vision.datasets import DATA_ROOT_DEFAULT, TASKS, DatasetError
from .atm import DEFAULT_ROUNDS, QUICK_ROUNDS, atm, atm_table, check_rounds, rounds_for
from .config import HEADS, QUICK, VisionConfig, flag
from .dist import init_from_env
from .encoders import load_encoder
from .errors import VisionError
from .finetune import FINETUNE_OPTIMIZERS
from .merging import finished_runs, merge, merge_table
from .report import pretrain_info, report
from .runs import finetune_tasks
from .step_size import LR_SCALE
from .summary import DEFAULT_SEEDS, QUICK_SEEDS, SUMMARY_FILE, seed_config, summarise, summary_table

#: The errors that are the user's to fix: printed as one line, exit status 2.
USER_ERRORS = (VisionError, DatasetError, DivergenceError, FileNotFoundError, ModuleNotFoundError)

INTERRUPTED = "interrupted; rerun the same command to resume from the last finished epoch"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (with where to find the usage) and exit status 2, and which
    takes no abbreviations (an old ``--seed 1`` must be an error, not ``--seeds 1``).
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message>`` on one line and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _lr(text: str) -> float | str:
    """A learning rate flag: 'auto' or a positive finite number."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a learning rate is a positive number or 'auto', got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"a learning rate must be positive and finite, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    """A finite number >= 0 (a weight decay)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _floats(text: str) -> list[float]:
    """A comma list of finite numbers (the merge coefficients)."""
    try:
        values = [float(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers, e.g. 0.1,0.3,1, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected at least one finite number, got {text!r}")
    return values


def _seeds(text: str) -> tuple[int, ...]:
    """A comma list of distinct seeds >= 0 (``--seeds 0,1,2``)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of seeds, e.g. 0,1,2, got {text!r}") from None
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct integer seeds >= 0, got {text!r}")
    return values


def _ints(text: str) -> list[int]:
    """A comma list of integers (the merge sizes)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, e.g. 2,3,5,7, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def _task_folder(s: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (NAME, PATH)."""
    name, _, path = s.partition("=")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH with NAME of letters, digits, _ and -, got {s!r}")
    return name, path


def _default(name: str) -> object:
    """The VisionConfig default of a field, for the help texts."""
    return VisionConfig.__dataclass_fields__[name].default


def _quick_note(name: str) -> str:
    return f"; --quick: {QUICK[name]}" if name in QUICK else ""


def _add(p: argparse.ArgumentParser, name: str, help: str, **kw) -> None:
    """A config flag: absent from the namespace unless given (so --quick can tell what was given)."""
    value = _default(name)
    flagged = kw.get("action") in ("store_true", "store_false") or value is None
    default = "" if flagged else f" (default: {value}{_quick_note(name)})"
    p.add_argument(flag(name), dest=name, default=argparse.SUPPRESS, help=help + default, **kw)


def _run_flags(p: argparse.ArgumentParser) -> None:
    """Flags of finetune and merge: folders, tasks, data caps, model, numerics."""
    _add(p, "results", "result JSONs: <results>/<task>/<optimizer>.json, <results>/merge_<optimizer>.json")
    _add(p, "artifacts", "task vectors, gradients, probe heads, checkpoints (large; runs/ is git-ignored): "
                         "<artifacts>/<task>/<optimizer>/tau_epochKKK.safetensors, .../checkpoint.pt")
    p.add_argument("--tasks", dest="tasks", default=argparse.SUPPRESS,
                   help="comma list or 'all' (default: the --task-folder tasks if any, else the seven built-in "
                        f"ones: {','.join(TASKS)})")
    p.add_argument("--task-folder", dest="task_folder", type=_task_folder, action="append", default=argparse.SUPPRESS,
                   metavar="NAME=PATH", help="add task NAME with images PATH/train/<class>/<image> and "
                                             "PATH/test/<class>/<image> (repeatable)")
    p.add_argument("--optimizers", dest="optimizers", default=argparse.SUPPRESS,
                   help=f"comma list of {', '.join(FINETUNE_OPTIMIZERS)}, or 'all' (default: all)")
    _add(p, "max_train", "cap on each task's training images, a seeded subset (0 = all)", type=int)
    _add(p, "max_val", "cap on the validation split, 10%% of the train split (0 = all)", type=int)
    _add(p, "max_test", "cap on the test split (0 = all)", type=int)
    p.add_argument("--seeds", dest="seeds", type=_seeds, default=argparse.SUPPRESS,
                   help="comma list of seeds, run one after the other, seed s in <results>/seed<s>/ and "
                        "<artifacts>/seed<s>/; each seeds the caps' subsets, the batch partition, the curvature "
                        "estimate and the merge subsets (default: "
                        f"{','.join(map(str, DEFAULT_SEEDS))}; --quick: {','.join(map(str, QUICK_SEEDS))})")
    _add(p, "chunk_size", "examples per forward pass (memory only; the numbers do not depend on it beyond "
                          "rounding)", type=int)
    _add(p, "dtype", "floating-point type of the encoder and its inputs", choices=("float32", "float64"))
    _add(p, "threads", "torch.set_num_threads (0 = torch's default)", type=int)
    _add(p, "data_root", f"folder of the dataset zips and manifest.json; default {DATA_ROOT_DEFAULT}",
         metavar="PATH")
    _add(p, "pretrained", "encoder safetensors written by tvtheory.models.pretrained.save_encoder (default: the "
                          "shipped small_models/cnn_cifar5), or a CLIP image tower from a local checkpoint: "
                          "open_clip:<model_name>:<path> (needs open_clip)", metavar="PATH|SPEC")
    _add(p, "head", "the frozen head of each task at theta_0: prototype (class means, the analogue of CLIP's "
                    "zero-shot head) or probe (a ridge linear probe)", choices=HEADS)
    _add(p, "synthetic", "random tiny ViT + random images for the built-in tasks: smoke test only",
         action="store_true")
    p.add_argument("--quick", action="store_true",
                   help=f"the quick preset {dict(QUICK)} (make vision-quick); refused together with any of "
                        f"{', '.join(flag(k) for k in QUICK)}, so a 'quick' result is always the preset")


def _finetune_flags(p: argparse.ArgumentParser) -> None:
    """Flags of finetune only: the optimizer settings and the analysis."""
    _add(p, "max_epochs", "sgd and adamw: the cap on the epochs of early stopping", type=int)
    _add(p, "patience", "sgd and adamw stop once this many epochs pass without a strictly better validation "
                        "accuracy; the converged task vector tau^(conv) is the best-validation epoch's", type=int)
    _add(p, "gd_steps", "gd: full-batch steps (one per epoch), no early stopping; tau^(conv) is the last, and the "
                        "result says how far from convergence it is", type=int)
    _add(p, "lr_gd", f"a number, or auto: {LR_SCALE['gd']} / lambda_hat(H(theta_0)) per task (docs/vision.md)",
         type=_lr)
    _add(p, "lr_sgd", f"a number, or auto: {LR_SCALE['sgd']} / lambda_hat", type=_lr)
    _add(p, "lr_adamw", "AdamW's learning rate", type=float)
    _add(p, "sharpness_subset", "training images of the power-iteration estimate lambda_hat (--lr-gd/--lr-sgd "
                                "auto)", type=int)
    _add(p, "weight_decay", "AdamW only (gd and sgd have none: T1 needs none)", type=_positive_float)
    _add(p, "batch_size", "images per step of sgd and adamw (gd takes the full batch)", type=int)
    p.add_argument("--no-second-order", dest="second_order", action="store_false", default=argparse.SUPPRESS,
                   help="skip the HVP second-order term of T2/T3 (gd and sgd)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                   help="no progress output (default: tqdm bars on a terminal, one line per epoch otherwise)")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: interrupt a run


def build_parser() -> argparse.ArgumentParser:
    """The parser: one subcommand each for pretrain-info, finetune, merge, summary and report."""
    doc = __doc__ or ""
    p = _Parser(prog="python -m tvtheory.experiments.vision", description=doc.split("\n\n")[0],
                epilog="\n\n".join(doc.split("\n\n")[1:3]), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{pretrain-info,finetune,merge,atm,summary,report}")
    info = sub.add_parser("pretrain-info", help="describe the encoder and the tasks' data",
                          description="Print, as JSON, the pretrained encoder (config, number of parameters, "
                                      "provenance) and the built-in tasks' datasets (splits, classes, the paper "
                                      "benchmark each stands in for). Exit status 1 when the encoder is missing.")
    _add(info, "pretrained", "encoder safetensors or open_clip:<model_name>:<path> (default: the shipped "
                             "small_models/cnn_cifar5)", metavar="PATH|SPEC")
    _add(info, "synthetic", "describe the random tiny ViT of --synthetic runs", action="store_true")
    _add(info, "data_root", f"folder of the dataset zips; default {DATA_ROOT_DEFAULT}", metavar="PATH")
    ft = sub.add_parser("finetune", help="finetune every task with every optimizer, record E1/E2/T2/T3",
                        description="Per task: fit the frozen probe head at theta_0 (kept in <artifacts>/<task>), "
                                    "estimate the curvature when a learning rate is auto, finetune the encoder "
                                    "with each optimizer, checkpointing every epoch, and write "
                                    "<results>/<task>/<optimizer>.json. sgd and adamw early-stop on the validation "
                                    "accuracy (--patience, at most --max-epochs epochs) and their converged task "
                                    "vector is the best-validation epoch's; gd takes --gd-steps full-batch steps "
                                    "and its converged task vector is the last. Finished runs are skipped; "
                                    "rerunning resumes an interrupted one.")
    _run_flags(ft)
    _finetune_flags(ft)
    mg = sub.add_parser("merge", help="E3: merge the one-epoch and the converged task vectors",
                        description="Task arithmetic theta_0 + alpha sum_t tau_t of the finished runs of each "
                                    "optimizer (>= 2 tasks), alpha chosen on the validation splits, for the "
                                    "one-epoch and the converged task vectors -> <results>/merge_<optimizer>.json. "
                                    "Use the caps of the finetune run. Exit status 1 when nothing was merged.")
    _run_flags(mg)
    _add(mg, "alpha_grid", "comma list of the merge coefficients tried on validation", type=_floats)
    _add(mg, "merge_sizes", "comma list of the merge sizes T of the sweep across T (subsets of T tasks; a size above "
                            "the number of tasks is skipped)", type=_ints)
    _add(mg, "merge_subsets", "subsets of each size T, drawn with the seed (all of them when there are no more)",
         type=int)
    at = sub.add_parser("atm", help="ATM rounds against multitask finetuning and E3's task arithmetic",
                        description="Per optimizer with finished runs and a merge: ATM (every task finetuned for "
                                    "one epoch from the merged point, merged with alpha 1/T, --rounds rounds), "
                                    "multitask finetuning on the union of the tasks for as many epochs, and E3's "
                                    "all-task merges, all with the same heads and per-task optimizer settings -> "
                                    "<results>/atm_<optimizer>.json (tvtheory.experiments.atm). Rerunning resumes. "
                                    "Exit status 1 when nothing was compared.")
    _run_flags(at)
    at.add_argument("--rounds", type=int, default=argparse.SUPPRESS,
                    help=f"ATM rounds and multitask epochs (default {DEFAULT_ROUNDS}; --quick: {QUICK_ROUNDS})")
    at.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                    help="no progress output")
    sm = sub.add_parser("summary", help="E3 over seeds: intervals and verdicts -> <results>/e3_summary.json",
                        description="Read <results>/seed*/merge_<optimizer>.json and write <results>/e3_summary.json: "
                                    "per optimizer and seed the all-task merged mean test accuracy of the one-epoch "
                                    "and the converged task vectors and their difference (points), its mean and 95% "
                                    "Student-t interval over the seeds and the verdict (comparable: the interval "
                                    "inside +-margin), the same for each merge size T, and the reference accuracies.")
    _add(sm, "results", "the results folder of finetune and merge (holding seed0/, seed1/, ...)")
    _add(sm, "equivalence_margin", "accuracy points: 'comparable' when the 95%% interval of one-epoch - converged "
                                   "lies inside +-margin", type=_positive_float)
    rp = sub.add_parser("report", help="print the tables of a results folder",
                        description="One line per finished run under --results (E1, E2, the expansion error, "
                                    "accuracies), then the merges.")
    _add(rp, "results", "the results folder of finetune and merge")
    return p


def config_from_args(ns: argparse.Namespace) -> VisionConfig:
    """The VisionConfig of a parsed command line (VisionError for what the config refuses, e.g. --quick with a
    flag the preset sets).
    """
    given = {k: v for k, v in vars(ns).items() if k in VisionConfig.__dataclass_fields__ and k != "quick"}
    if "task_folder" in given:
        given["task_folder"] = tuple(given["task_folder"])
    folders = [name for name, _ in given.get("task_folder", ())]
    if "tasks" in given:
        given["tasks"] = (*TASKS, *folders) if given["tasks"] == "all" else tuple(
            t for t in given["tasks"].split(",") if t)
    if "optimizers" in given:
        given["optimizers"] = FINETUNE_OPTIMIZERS if given["optimizers"] == "all" else tuple(
            o for o in given["optimizers"].split(",") if o)
    if getattr(ns, "quick", False):
        clash = [flag(k) for k in QUICK if k in given]
        if clash:
            raise VisionError(f"--quick sets {', '.join(f'{flag(k)} {v}' for k, v in QUICK.items())} and would "
                              f"override {', '.join(clash)}: drop --quick to choose all sizes yourself, or drop "
                              f"{', '.join(clash)} to run the preset")
        return VisionConfig.quick_preset(**given)
    return VisionConfig(**given)


def seeds_of(ns: argparse.Namespace, config: VisionConfig) -> tuple[int, ...]:
    """The seeds of a finetune or merge command line: --seeds, else QUICK_SEEDS under --quick, else DEFAULT_SEEDS."""
    return getattr(ns, "seeds", QUICK_SEEDS if config.quick else DEFAULT_SEEDS)


def _finetune(ns: argparse.Namespace, config: VisionConfig) -> int:
    encoder = load_encoder(config)          # fail fast when the weights are missing, before reading any data
    ctx = init_from_env()
    for seed in seeds_of(ns, config):
        finetune_tasks(seed_config(config, seed), encoder, ctx, stop_after=ns.stop_after)
    return 0


def _merge(ns: argparse.Namespace, config: VisionConfig) -> int:
    ctx = init_from_env()
    encoder = load_encoder(config)
    empty = []
    for seed in seeds_of(ns, config):
        cfg = seed_config(config, seed)
        merged = merge(cfg, encoder, ctx)
        if not merged:
            empty.append(seed)
        if ctx.is_main:
            for opt in cfg.optimizers:
                if opt in merged:
                    print(merge_table(merged[opt]))
                else:
                    print(f"merge {opt} seed {seed}: needs finished runs of >= 2 tasks in {cfg.results}, found "
                          f"{sorted(finished_runs(cfg, opt))}", file=sys.stderr)
    if empty and ctx.is_main:
        print(f"error: nothing merged for seed{'s' if len(empty) > 1 else ''} {','.join(map(str, empty))}: run "
              f"`finetune` with the same --results ({config.results}), --tasks and --seeds first", file=sys.stderr)
    return 1 if empty else 0


def _atm(ns: argparse.Namespace, config: VisionConfig) -> int:
    rounds = check_rounds(getattr(ns, "rounds", rounds_for(config)))       # before any work
    ctx = init_from_env()
    encoder = load_encoder(config)
    empty = []
    for seed in seeds_of(ns, config):
        done = atm(seed_config(config, seed), encoder, ctx, rounds)
        if not done:
            empty.append(seed)
        if ctx.is_main:
            for payload in done.values():
                print(f"seed {seed} " + atm_table(payload))
    if empty and ctx.is_main:
        print(f"error: nothing compared for seed{'s' if len(empty) > 1 else ''} {','.join(map(str, empty))}: run "
              f"`finetune` and `merge` with the same --results ({config.results}) and --seeds first", file=sys.stderr)
    return 1 if empty else 0


def _summary(ns: argparse.Namespace, config: VisionConfig) -> int:
    print(summary_table(summarise(config)))
    print(f"wrote {Path(config.results) / SUMMARY_FILE}")
    return 0


def _report(ns: argparse.Namespace, config: VisionConfig) -> int:
    print(report(config.results))
    return 0


def _pretrain_info(ns: argparse.Namespace, config: VisionConfig) -> int:
    info = pretrain_info(config)
    print(json.dumps(info, indent=2))
    return 0 if "error" not in info["encoder"] else 1


#: The function of each subcommand.
COMMANDS: Mapping[str, Callable[[argparse.Namespace, VisionConfig], int]] = MappingProxyType({
    "pretrain-info": _pretrain_info, "finetune": _finetune, "merge": _merge, "atm": _atm, "summary": _summary,
    "report": _report})


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (module docstring)."""
    ns = build_parser().parse_args(argv)
    try:
        config = config_from_args(ns)
        for line in config.unused_settings():
            print(f"warning: {line}", file=sys.stderr)
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        return COMMANDS[ns.command](ns, config)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    exit_process(main())
