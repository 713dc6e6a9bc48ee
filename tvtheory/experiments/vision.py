"""Vision finetuning experiments E1-E3 on the small pretrained ViT: ``python -m tvtheory.experiments.vision``.

Your own model and data (the same pipeline, all tasks at the encoder's ``image_size``):
  --pretrained open_clip:<model_name>:<checkpoint>   the image tower of a real CLIP (e.g. ViT-B-32, ViT-B-16) from
                  a local open_clip checkpoint, inputs normalised with CLIP's statistics (needs the ``real`` extra)
  --task-folder NAME=PATH   (repeatable) a task read from PATH/train/<class>/<image> and PATH/test/<class>/<image>;
                  with it, --tasks defaults to the folder tasks

Subcommands:
  pretrain-info   the pretrained encoder (config, size, provenance) and the seven tasks' data sizes
  finetune        per task: fit the frozen probe head at theta_0, finetune the encoder with gd / sgd / adamw,
                  record E1/E2 and the T2/T3 expansion per epoch, write <results>/<task>/<optimizer>.json and
                  the task vectors <artifacts>/<task>/<optimizer>/tau_epochKKK.safetensors
  merge           E3: task arithmetic of one-epoch vs converged task vectors -> <results>/merge_<optimizer>.json
  report          print the tables of everything under <results>
Multi-process: the same command under ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on CUDA; CUDA is
used whenever present). Every finished epoch is checkpointed; rerunning the command resumes.
The pretraining itself is ``small_models/pretrain_vit.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..fp import dtype_of
from ..io import versions, write_json_atomic
from ..params import ParamLayout, flat_params, load_flat_
from .analysis import T4_NOTE, direction_stats, expansion_stats, norm_stats
from .dist import DistContext, init_from_env, shard
from .finetune import FinetuneConfig, finetune, grad_path, load_vector, make_batches, tau_path
from .merging import DEFAULT_ALPHA_GRID, merge_and_evaluate
from .probe import FrozenHeadClassifier, accuracy, features, fit_probe
from .step_size import learning_rate, sharpness

OPTIMIZERS = ("gd", "sgd", "adamw")
QUICK = {"epochs": 3, "max_train": 256, "max_val": 128, "max_test": 256, "batch_size": 64, "sharpness_subset": 64}


# ------------------------------------------------------------------------------------------ data / model

def _subset(index: torch.Tensor, cap: int, seed: int) -> torch.Tensor:
    """A seeded random subset of at most ``cap`` indices (0 = all), sorted."""
    if cap <= 0 or index.numel() <= cap:
        return index
    pick = np.sort(np.random.default_rng(seed).permutation(index.numel())[:cap])
    return index[torch.from_numpy(pick)]


def load_task_data(task: str, args) -> dict:
    """train (capped) / val (10 % of train, seed 0, capped) / test (capped) as uint8 images + labels."""
    if args.synthetic and task not in args.task_folder:
        return _synthetic_task(task, args)
    from ..vision.datasets import train_val_split

    (x, y), (xt, yt), classes = _task_splits(task, args)
    tr, va = train_val_split(x.shape[0], 0.1, 0)
    available = int(tr.numel())
    tr, va = _subset(tr, args.max_train, args.seed), _subset(va, args.max_val, args.seed)
    te = _subset(torch.arange(xt.shape[0]), args.max_test, args.seed)
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (xt[te], yt[te]), "num_classes": classes,
            "available_train": available}


def _task_splits(task: str, args) -> tuple[tuple, tuple, int]:
    """(x, y) of the train and test splits at the encoder's image size, and the number of classes: read from
    the task's --task-folder, or from the dataset zips for a built-in task.
    """
    from ..vision.datasets import dataset_info, get_task, load_folder_task, load_task

    size = _config(args).image_size
    if task in args.task_folder:
        train, test, classes = load_folder_task(args.task_folder[task], size)
        return train, test, len(classes)
    t = get_task(task)
    classes = len(t.classes) if t.classes is not None else len(dataset_info(t.dataset, args.data_root)["classes"])
    return (load_task(t, "train", root=args.data_root, image_size=size),
            load_task(t, "test", root=args.data_root, image_size=size), classes)


def _synthetic_task(task: str, args) -> dict:
    """Random uint8 images whose label is the brightest colour channel (smoke tests only)."""
    from ..vision.datasets import TASKS

    g = torch.Generator().manual_seed(1000 + sorted(TASKS).index(task) if task in TASKS else 999)
    n = args.max_train + args.max_val + args.max_test
    size = _config(args).image_size
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    y = x.double().mean((2, 3)).argmax(1)
    a, b = args.max_train, args.max_train + args.max_val
    return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:]), "num_classes": 3,
            "available_train": a}


_PRETRAINED_CACHE: dict = {}


def _load(args):
    """(encoder, config), loaded once per process: a seeded random tiny ViT with --synthetic, the image tower of
    a CLIP checkpoint with --pretrained open_clip:<model>:<path>, else a ViT written by save_encoder.
    """
    key = (args.synthetic, args.pretrained)
    if key not in _PRETRAINED_CACHE:
        from ..models.vit import ViT, ViTConfig, load_pretrained
        from ..vision.clip import OPEN_CLIP_PREFIX, load_open_clip, parse_open_clip_spec

        if args.synthetic:
            cfg = ViTConfig(image_size=8, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=32)
            with torch.random.fork_rng():
                torch.manual_seed(0)
                enc = ViT(cfg)
            _PRETRAINED_CACHE[key] = (enc.eval(), cfg)
        elif args.pretrained and args.pretrained.startswith(OPEN_CLIP_PREFIX):
            _PRETRAINED_CACHE[key] = load_open_clip(*parse_open_clip_spec(args.pretrained))
        else:
            _PRETRAINED_CACHE[key] = load_pretrained(args.pretrained)
    return _PRETRAINED_CACHE[key]


def _pretrained(args):
    """(a fresh copy of the pretrained encoder, its config)."""
    enc, cfg = _load(args)
    return copy.deepcopy(enc), cfg


def _config(args):
    """The pretrained encoder's config: ``image_size``, ``dim``, ``to_dict()``, and for CLIP ``mean`` / ``std``."""
    return _load(args)[1]


def _prepare(args):
    """uint8 images -> encoder input in --dtype, normalised with the encoder's statistics: ``config.mean`` /
    ``config.std`` where the config has them (CLIP's), else CIFAR-10's (the small ViT was pretrained with them).
    """
    from ..vision.datasets import MEAN, STD, normalize

    cfg, dtype = _config(args), _dtype(args)
    mean, std = getattr(cfg, "mean", MEAN), getattr(cfg, "std", STD)
    return lambda xb: normalize(xb, dtype, mean, std)


def _dtype(args) -> torch.dtype:
    return dtype_of(args.dtype)


# ------------------------------------------------------------------------------------------ head

def task_head(task: str, data: dict, args, ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The frozen probe of the task: fitted once at theta_0 (all ranks), then read from the results folder."""
    folder = Path(args.artifacts) / task
    path, meta = folder / "head.safetensors", folder / "head.json"
    if not path.exists():
        enc, _ = _pretrained(args)
        enc = enc.to(device=ctx.device, dtype=_dtype(args))
        x, y = data["train"]
        mine = shard(torch.arange(x.shape[0]), ctx)
        z = features(enc, x[mine], args.chunk_size, _prepare(args))
        w, b, info = fit_probe(z, y[mine], data["num_classes"], ctx)
        model = FrozenHeadClassifier(enc, w, b)
        info["pretrained_accuracy"] = {s: _acc(model, data[s], ctx, args) for s in ("val", "test")}
        if ctx.is_main:
            from safetensors.torch import save_file

            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / ".head.safetensors.tmp"
            save_file({"weight": w.cpu().contiguous(), "bias": b.cpu().contiguous()}, str(tmp))
            write_json_atomic(meta, info)
            tmp.replace(path)
        ctx.barrier()
    from safetensors.torch import load_file

    t = load_file(str(path))
    info = json.loads(meta.read_text())
    if info["num_examples"] != data["train"][0].shape[0] or t["weight"].shape[0] != data["num_classes"]:
        raise ValueError(f"{path} was fitted on {info['num_examples']} training images, this run has "
                         f"{data['train'][0].shape[0]} (another --max-train / --quick?): use another --results folder")
    return t["weight"], t["bias"], info


def _acc(model, split_data, ctx, args) -> float:
    x, y = split_data
    mine = shard(torch.arange(x.shape[0]), ctx)
    return accuracy(model, x[mine], y[mine], ctx, args.chunk_size, _prepare(args))


def _model(args, ctx, head) -> FrozenHeadClassifier:
    enc, _ = _pretrained(args)
    return FrozenHeadClassifier(enc, head[0], head[1]).to(device=ctx.device, dtype=_dtype(args))


# ------------------------------------------------------------------------------------------ finetune

LR_SCALE = {"gd": 1.0, "sgd": 0.5}     # --lr-gd/--lr-sgd auto: eta = scale / lambda_hat (docs/vision.md)


def task_sharpness(task: str, data: dict, head, args, ctx: DistContext) -> dict:
    """lambda_hat of the task at theta_0 (``step_size.sharpness``), computed once and kept beside the head."""
    path = Path(args.artifacts) / task / "sharpness.json"
    wanted = {"subset": min(args.sharpness_subset, int(data["train"][0].shape[0])), "iterations": 10,
              "seed": args.seed}
    if path.exists():
        stored = json.loads(path.read_text())
        if {k: stored.get(k) for k in wanted} == wanted:
            return stored
    out = {**sharpness(_model(args, ctx, head), *data["train"], ctx, args.chunk_size, _prepare(args),
                       subset=args.sharpness_subset, iterations=10, seed=args.seed), "seed": args.seed}
    if ctx.is_main:
        write_json_atomic(path, out)
    ctx.barrier()
    return out


def _auto_lr(opt: str, args) -> bool:
    """Is the learning rate of ``opt`` set from the curvature (--lr-gd / --lr-sgd auto; AdamW's is a number)?"""
    return getattr(args, f"lr_{opt}") == "auto"


def _learning_rate(opt: str, args, lam: float | None) -> float:
    return learning_rate(lam, LR_SCALE[opt]) if _auto_lr(opt, args) else float(getattr(args, f"lr_{opt}"))


def _finetune_config(opt: str, args, lam: float | None = None) -> FinetuneConfig:
    lr = _learning_rate(opt, args, lam)
    return FinetuneConfig(opt, lr, args.epochs, batch_size=args.batch_size,
                          weight_decay=args.weight_decay if opt == "adamw" else 0.0, seed=args.seed,
                          chunk_size=args.chunk_size)


def run_finetune(task: str, opt: str, data: dict, head, args, ctx: DistContext,
                 curvature: dict | None = None) -> dict | None:
    out_json = Path(args.results) / task / f"{opt}.json"
    if out_json.exists():
        if ctx.is_main:
            print(f"{task}/{opt}: done ({out_json}), skipped", file=sys.stderr)
        return None
    t0 = time.perf_counter()
    cfg = _finetune_config(opt, args, curvature["lambda"] if curvature else None)
    run_dir = Path(args.artifacts) / task / opt
    model = _model(args, ctx, head)
    layout = ParamLayout.of(model)
    theta0 = flat_params(model)
    x, y = data["train"]
    prep = _prepare(args)
    result = finetune(model, x, y, cfg, run_dir, ctx, prep, progress=not args.no_progress,
                      stop_after=args.stop_after)
    if len(result.records) < cfg.epochs:                      # --stop-after: leave the checkpoint, no JSON
        return None
    taus = [load_vector(tau_path(run_dir, k), layout).to(theta0.device) for k in range(1, cfg.epochs + 1)]
    grads = [load_vector(grad_path(run_dir, k), layout).to(theta0.device) for k in range(1, cfg.epochs + 1)]
    analysis = {"E1": norm_stats(result.records), "E2": direction_stats(taus, grads, layout),
                "expansion": expansion_stats(model, x, y, make_batches(x.shape[0], cfg), theta0, taus, opt, cfg.lr,
                                             ctx, cfg.chunk_size, prep, second_order=not args.no_second_order)}
    accs = {}
    for name, tau in (("one_epoch", taus[0]), ("finetuned", taus[-1])):
        load_flat_(model, theta0 + tau)
        accs[name] = {s: _acc(model, data[s], ctx, args) for s in ("val", "test")}
    payload = {
        "task": task, "optimizer": opt, "config": {**vars(args), "finetune": cfg.to_dict()}, "seed": args.seed,
        "task_vectors": [str(tau_path(run_dir, k)) for k in range(1, cfg.epochs + 1)],
        "versions": versions(), "device": str(ctx.device), "world_size": ctx.world_size,
        "data": {"num_train": int(x.shape[0]), "train_cap": args.max_train,
                 "available_train": data["available_train"],
                 "note": f"training set: {int(x.shape[0])} of the {data['available_train']} train-split images left "
                         f"after the 10% validation split (seed 0), capped by --max-train {args.max_train} "
                         f"(0 = no cap) with a seeded subset (seed {args.seed})",
                 "num_val": int(data["val"][0].shape[0]), "num_test": int(data["test"][0].shape[0]),
                 "num_classes": data["num_classes"], "num_batches": result.num_batches},
        "step_size": {"lr": cfg.lr, "rule": f"auto: {LR_SCALE[opt]} / lambda_hat" if _auto_lr(opt, args) else "given",
                      "sharpness": curvature},
        "num_params_encoder": layout.size, "probe": head[2], "records": result.records,
        "t1_check": result.t1_check, "resumed_from_epoch": result.resumed_from_epoch,
        "analysis": analysis, "accuracy": {"pretrained": head[2]["pretrained_accuracy"], **accs},
        "T4": T4_NOTE, "wall_time_s": time.perf_counter() - t0,
    }
    if ctx.is_main:
        write_json_atomic(out_json, payload)
    ctx.barrier()
    return payload


def cmd_finetune(args, ctx: DistContext) -> int:
    _pretrained(args)                       # fail fast when the weights are missing, before loading data
    for task in args.tasks:
        data = load_task_data(task, args)
        head = task_head(task, data, args, ctx)
        auto = [o for o in args.optimizers
                if _auto_lr(o, args) and not (Path(args.results) / task / f"{o}.json").exists()]
        curvature = task_sharpness(task, data, head, args, ctx) if auto else None
        for opt in args.optimizers:
            run_finetune(task, opt, data, head, args, ctx, curvature)
    return 0


# ------------------------------------------------------------------------------------------ merge / report

def cmd_merge(args, ctx: DistContext) -> int:
    _pretrained(args)
    results = Path(args.results)
    for opt in args.optimizers:
        runs = {t: json.loads((results / t / f"{opt}.json").read_text()) for t in args.tasks
                if (results / t / f"{opt}.json").exists()}
        if len(runs) < 2:
            print(f"merge {opt}: needs finished runs of >= 2 tasks, found {sorted(runs)}", file=sys.stderr)
            continue
        tasks = sorted(runs)
        data = {t: load_task_data(t, args) for t in tasks}
        heads = {t: task_head(t, data[t], args, ctx) for t in tasks}
        models = {t: _model(args, ctx, heads[t]) for t in tasks}
        layout = ParamLayout.of(models[tasks[0]])
        theta0 = flat_params(models[tasks[0]])

        def acc_fn(theta, t, split):
            load_flat_(models[t], theta)
            return _acc(models[t], data[t][split], ctx, args)

        finetuned = {t: runs[t]["accuracy"]["finetuned"]["test"] for t in tasks}
        K = {t: runs[t]["config"]["finetune"]["epochs"] for t in tasks}
        out = {"optimizer": opt, "versions": versions(), "config": vars(args), "seed": args.seed,
               "finetuned_test_accuracy": finetuned,
               "one_epoch_test_accuracy": {t: runs[t]["accuracy"]["one_epoch"]["test"] for t in tasks},
               "pretrained_test_accuracy": {t: heads[t][2]["pretrained_accuracy"]["test"] for t in tasks},
               "normalisation": "merged accuracy on t / accuracy of the converged model finetuned on t"}
        for name, k_of in (("one_epoch", lambda t: 1), ("converged", lambda t: K[t])):
            taus = {t: load_vector(tau_path(Path(args.artifacts) / t / opt, k_of(t)), layout).to(theta0.device)
                    for t in tasks}
            out[name] = merge_and_evaluate(theta0, taus, acc_fn, finetuned, args.alpha_grid)
        if ctx.is_main:
            write_json_atomic(results / f"merge_{opt}.json", out)
            print(_merge_table(out))
        ctx.barrier()
    return 0


def _merge_table(m: dict) -> str:
    lines = [f"E3 merge ({m['optimizer']}): mean acc / mean normalised acc"]
    for name in ("one_epoch", "converged"):
        for which in ("alpha_val", "alpha_1_over_T"):
            r = m[name][which]
            lines.append(f"  {name:>9} {which:>14} alpha={r['alpha']:.3f}  acc={r['mean_accuracy']:.4f}  "
                         f"norm={r['mean_normalised_accuracy']:.4f}")
    return "\n".join(lines)


def cmd_report(args, ctx: DistContext) -> int:
    results = Path(args.results)
    rows = []
    for path in sorted(results.glob("*/*.json")):
        if path.name == "head.json":
            continue
        r = json.loads(path.read_text())
        e1, e2, acc = r["analysis"]["E1"], r["analysis"]["E2"], r["accuracy"]
        ex = r["analysis"]["expansion"]["epochs"]
        full, mini = e1["full_grad_norm_start"]["epoch0_largest"], e1["minibatch_grad_norm_mean"]["epoch0_largest"]
        rows.append(f"{r['task']:>13} {r['optimizer']:>5}  E1 full/minibatch epoch0 largest: {full!s:>5}/{mini!s:>5}"
                    f"  cos(tau1,tauK)={e2['cos_tau1_tauK']:.3f} cos(-g,tauK)={e2['cos_neg_g_tauK']:.3f}"
                    f"  ||E_K||/||1st||={ex[-1]['relative_error']:.3g}"
                    f"  acc pre/1ep/ft={acc['pretrained']['test']:.3f}/{acc['one_epoch']['test']:.3f}/"
                    f"{acc['finetuned']['test']:.3f}")
    print("\n".join(rows) if rows else f"no finished runs under {results}")
    for path in sorted(results.glob("merge_*.json")):
        print(_merge_table(json.loads(path.read_text())))
    print(T4_NOTE)
    return 0


def cmd_pretrain_info(args, ctx: DistContext) -> int:
    from ..models.vit import DEFAULT_PRETRAINED, count_parameters
    from ..vision.datasets import PAPER_BENCHMARK_STANDINS, TASKS, dataset_info

    info: dict = {"tasks": {}}
    try:
        enc, cfg = _pretrained(args)
        info["encoder"] = {"config": cfg.to_dict(), "num_params": count_parameters(enc)}
        meta = Path(args.pretrained or DEFAULT_PRETRAINED).with_suffix(".json")
        if not args.synthetic and meta.exists():
            info["provenance"] = json.loads(meta.read_text())
    except FileNotFoundError as e:
        info["encoder"] = {"error": str(e)}
    for t in TASKS.values():
        try:
            d = dataset_info(t.dataset, args.data_root)
            info["tasks"][t.name] = {"dataset": t.dataset, "splits": d.get("splits"),
                                     "classes": len(t.classes) if t.classes else len(d["classes"]),
                                     "stands_in_for": PAPER_BENCHMARK_STANDINS[t.name]}
        except Exception as e:  # noqa: BLE001 - report, do not fail, when data is absent
            info["tasks"][t.name] = {"error": str(e)}
    if ctx.is_main:
        print(json.dumps(info, indent=2))
    return 0 if "error" not in info["encoder"] else 1


# ------------------------------------------------------------------------------------------ CLI

def _lr(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a learning rate is a positive number or 'auto', got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"a learning rate must be positive and finite, got {text!r}")
    return value


def _list(choices):
    def parse(s: str) -> list[str]:
        items = list(choices) if s == "all" else [v for v in s.split(",") if v]
        bad = [v for v in items if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)} or 'all'")
        return items
    return parse


def _task_folder(s: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (NAME, PATH)."""
    name, _, path = s.partition("=")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH with NAME of letters, digits, _ and -, got {s!r}")
    return name, path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tvtheory.experiments.vision", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("command", choices=("pretrain-info", "finetune", "merge", "report"))
    p.add_argument("--results", default="results/vision",
                   help="result JSONs: <results>/<task>/<optimizer>.json, <results>/merge_<optimizer>.json")
    p.add_argument("--artifacts", default="runs/vision",
                   help="task vectors, gradients, probe heads, checkpoints (large; runs/ is git-ignored): "
                        "<artifacts>/<task>/<optimizer>/tau_epochKKK.safetensors, .../checkpoint.pt")
    p.add_argument("--tasks", default=None,
                   help="comma list or 'all' (default: the --task-folder tasks if any, else the seven built-in ones)")
    p.add_argument("--task-folder", type=_task_folder, action="append", default=[], metavar="NAME=PATH",
                   help="add task NAME with images PATH/train/<class>/<image> and PATH/test/<class>/<image> "
                        "(repeatable)")
    p.add_argument("--optimizers", type=_list(OPTIMIZERS), default=list(OPTIMIZERS), help="comma list or 'all'")
    p.add_argument("--epochs", type=int, default=5, help="K: the converged task vector is tau^(K)")
    p.add_argument("--lr-gd", type=_lr, default="auto",
                   help=f"a number, or auto: {LR_SCALE['gd']} / lambda_hat(H(theta_0)) per task (docs/vision.md)")
    p.add_argument("--lr-sgd", type=_lr, default="auto", help=f"a number, or auto: {LR_SCALE['sgd']} / lambda_hat")
    p.add_argument("--lr-adamw", type=float, default=1e-4)
    p.add_argument("--sharpness-subset", type=int, default=256,
                   help="training images of the power-iteration estimate lambda_hat (--lr-* auto)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW only")
    p.add_argument("--batch-size", type=int, default=128, help="sgd / adamw")
    p.add_argument("--max-train", type=int, default=4000, help="cap on each task's training images (0 = all)")
    p.add_argument("--max-val", type=int, default=500, help="cap on the validation split (0 = all)")
    p.add_argument("--max-test", type=int, default=2000, help="cap on the test split (0 = all)")
    p.add_argument("--chunk-size", type=int, default=256, help="examples per forward pass (memory only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--alpha-grid", type=lambda s: [float(v) for v in s.split(",")], default=list(DEFAULT_ALPHA_GRID))
    p.add_argument("--no-second-order", action="store_true", help="skip the HVP second-order term")
    p.add_argument("--quick", action="store_true", help=f"tiny config, overriding those flags: {QUICK}")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch default)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--pretrained", default=None,
                   help="encoder safetensors written by save_encoder (default small_models/vit_cifar5), or a CLIP "
                        "image tower from a local checkpoint: open_clip:<model_name>:<path> (needs open_clip)")
    p.add_argument("--synthetic", action="store_true",
                   help="random tiny ViT + random images for the built-in tasks: smoke test only")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: interrupt a run
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed command line; ``args.task_folder`` becomes {name: path} and ``args.tasks`` a list of names."""
    from ..vision.clip import OPEN_CLIP_PREFIX, parse_open_clip_spec
    from ..vision.datasets import TASKS

    parser = build_parser()
    args = parser.parse_args(argv)
    folders: dict[str, str] = {}
    for name, path in args.task_folder:
        if name in TASKS or name in folders or name == "all":
            parser.error(f"--task-folder {name}={path}: {name!r} is a built-in task, 'all' or given twice; "
                         f"rename it (built-in tasks: {', '.join(TASKS)})")
        if not (Path(path, "train").is_dir() and Path(path, "test").is_dir()):
            parser.error(f"--task-folder {name}={path}: no folders {Path(path, 'train')} and {Path(path, 'test')}; "
                         "expected PATH/train/<class>/<image> and PATH/test/<class>/<image>")
        folders[name] = path
    args.task_folder = folders
    try:
        args.tasks = _list((*TASKS, *folders))(args.tasks) if args.tasks else list(folders or TASKS)
    except argparse.ArgumentTypeError as e:
        parser.error(f"argument --tasks: {e}")
    if args.pretrained and args.pretrained.startswith(OPEN_CLIP_PREFIX):
        try:
            parse_open_clip_spec(args.pretrained)
        except ValueError as e:
            parser.error(f"argument --pretrained: {e}")
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k.replace("-", "_"), v)
    if args.synthetic and args.max_test <= 0:
        args.max_test = 64
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ctx = init_from_env()
    from ..vision.datasets import DatasetError

    try:
        return {"pretrain-info": cmd_pretrain_info, "finetune": cmd_finetune, "merge": cmd_merge,
                "report": cmd_report}[args.command](args, ctx)
    except (FileNotFoundError, ModuleNotFoundError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)      # missing weights, open_clip or data: a message, not a traceback
        return 2


if __name__ == "__main__":
    sys.exit(main())
