"""Pretrain a small encoder (the CNN or the ViT) on 5 CIFAR-10 classes (airplane, automobile, bird, cat, deer).

Supervised cross-entropy (label smoothing 0.1) on the 25,000 train images of
``tvtheory.vision.datasets.PRETRAIN_TASK``; AdamW with linear warmup then cosine decay (per step), weight
decay on the weight matrices and convolution kernels only (none on biases, norms, position and CLS
embeddings); augmentation: random crop 32 from the zero-padded (4 px) image + horizontal flip, drawn from a
generator seeded by (seed, epoch). The finetuning tasks never see these five classes.

``--arch cnn`` (default) trains ``tvtheory.models.cnn.CNN`` into ``cnn_cifar5.*``, the shipped default
encoder; ``--arch vit`` trains ``tvtheory.models.vit.ViT`` into ``vit_cifar5.*``. Each architecture has its own
default recipe (``RECIPES``); every flag overrides it.

Every finished epoch is checkpointed under ``<run-dir>/<arch>-seed<seed>/checkpoint.pt`` (``runs/`` is
ignored by git); ``--resume`` continues from it without redoing finished epochs. Given the seed and
the thread count the run is deterministic, resumed or not (the data order and augmentation of
epoch e depend only on (seed, e)).

At the end the model is evaluated on the clean train split and the 5,000-image test split, and
two files are written atomically to ``--out-dir``:

- ``<arch>_cifar5.safetensors``: encoder weights (no head), float32, the config as JSON metadata;
- ``<arch>_cifar5.json``: config, hyper-parameters, accuracies, wall time, versions, data sha256.

Reproduce the shipped models (from the repo root)::

    python small_models/pretrain.py --arch cnn --seed 0 --threads 1
    python small_models/pretrain.py --arch vit --seed 0 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a clean clone
    sys.path.insert(0, str(REPO))

from tqdm import tqdm  # noqa: E402

from tvtheory.experiments.storage import save_checkpoint  # noqa: E402
from tvtheory.io import versions, write_text_atomic  # noqa: E402
from tvtheory.models import cnn, vit  # noqa: E402
from tvtheory.models.pretrained import save_encoder  # noqa: E402
from tvtheory.vision.datasets import DATA_ROOT_DEFAULT, PRETRAIN_TASK, dataset_info, load_task, normalize  # noqa: E402

#: The default recipe of each architecture (flags override it). The ViT's is the one that made the shipped
#: vit_cifar5; the CNN's was chosen by measured transfer to the seven tasks (small_models/README.md).
RECIPES = {
    "cnn": {"epochs": 20, "lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 1.0},
    "vit": {"epochs": 50, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 3.0},
}
#: The architecture flags of each model (a config field each).
ARCH_FIELDS = {"cnn": ("widths", "blocks", "groups"), "vit": ("dim", "depth", "heads", "mlp_dim", "patch_size")}
# Hyper-parameters that must match for --resume to continue a run.
RESUME_KEYS = ("arch", "seed", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "label_smoothing",
               "max_train")


def model_name(arch: str) -> str:
    """The file stem of an architecture's encoder: ``cnn_cifar5`` or ``vit_cifar5``."""
    return f"{arch}_cifar5"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", choices=("cnn", "vit"), default="cnn", help="the encoder to pretrain")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="default: the architecture's recipe (RECIPES)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (default: RECIPES)")
    p.add_argument("--weight-decay", type=float, default=None, help="default: RECIPES")
    p.add_argument("--warmup-epochs", type=float, default=None, help="default: RECIPES")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--data-root", default=None, help=f"folder with manifest.json (default: {DATA_ROOT_DEFAULT})")
    p.add_argument("--out-dir", default=str(REPO / "small_models"))
    p.add_argument("--run-dir", default=str(REPO / "runs" / "pretrain"),
                   help="checkpoints go to <run-dir>/<arch>-seed<seed>/")
    p.add_argument("--resume", action="store_true", help="continue from the last finished epoch's checkpoint")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: interrupt a run
    p.add_argument("--eval-every", type=int, default=5, help="log test accuracy every k epochs (monitoring only)")
    p.add_argument("--max-train", type=int, default=0,
                   help="use a seeded random subset of n train images (0 = all; smoke tests)")
    p.add_argument("--max-test", type=int, default=0,
                   help="use a seeded random subset of n test images (0 = all; smoke tests)")
    vcfg, ccfg = vit.ViTConfig(), cnn.CNNConfig()
    for name in ARCH_FIELDS["vit"]:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(vcfg, name), help="--arch vit")
    p.add_argument("--widths", type=lambda t: tuple(int(v) for v in t.split(",")), default=ccfg.widths,
                   help="--arch cnn: comma list of stage widths")
    p.add_argument("--blocks", type=int, default=ccfg.blocks, help="--arch cnn: residual blocks per stage")
    p.add_argument("--groups", type=int, default=ccfg.groups, help="--arch cnn: GroupNorm groups")
    args = p.parse_args(argv)
    for key, value in RECIPES[args.arch].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def build_model(args: argparse.Namespace, n_classes: int) -> torch.nn.Module:
    """The architecture of ``args`` with an ``n_classes`` head, initialised from ``args.seed``."""
    torch.manual_seed(args.seed)
    if args.arch == "cnn":
        return cnn.CNN(cnn.CNNConfig(widths=args.widths, blocks=args.blocks, groups=args.groups,
                                     num_classes=n_classes))
    return vit.ViT(vit.ViTConfig(patch_size=args.patch_size, dim=args.dim, depth=args.depth, heads=args.heads,
                                 mlp_dim=args.mlp_dim, num_classes=n_classes))


# ---------------------------------------------------------------------------------------------


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """RNG for the data order and augmentation of one epoch; depends only on (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)


def augment(x_padded: torch.Tensor, gen: torch.Generator, size: int = 32) -> torch.Tensor:
    """Random crop (size x size) of zero-padded uint8 images + horizontal flip with p = 0.5."""
    n, _, hp, wp = x_padded.shape
    oy = torch.randint(0, hp - size + 1, (n,), generator=gen)
    ox = torch.randint(0, wp - size + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    ar = torch.arange(size)
    rows = (oy[:, None] + ar)[:, None, :, None]  # (n,1,size,1)
    cols = ox[:, None] + ar  # (n,size)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # (n,1,1,size)
    idx_n = torch.arange(n)[:, None, None, None]
    idx_c = torch.arange(x_padded.shape[1])[None, :, None, None]
    return x_padded[idx_n, idx_c, rows, cols]


def subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of n examples (kept in their original order); for smoke tests."""
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[idx], y[idx]


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on uint8 images ``x`` (no augmentation)."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(normalize(x[i : i + batch_size])).argmax(1) == y[i : i + batch_size]).sum().item()
    model.train()
    return correct / max(1, len(x))


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    hparams = {k: getattr(args, k) for k in (*RESUME_KEYS, *ARCH_FIELDS[args.arch])}
    hparams = {k: list(v) if isinstance(v, tuple) else v for k, v in hparams.items()}
    name = model_name(args.arch)

    # Data
    x_train, y_train = load_task(PRETRAIN_TASK, "train", root=args.data_root)
    x_test, y_test = load_task(PRETRAIN_TASK, "test", root=args.data_root)
    if args.max_train:
        x_train, y_train = subset(x_train, y_train, args.max_train, args.seed)
    if args.max_test:
        x_test, y_test = subset(x_test, y_test, args.max_test, args.seed)
    x_train_padded = F.pad(x_train, (4, 4, 4, 4))  # zero padding, uint8
    n_classes = len(PRETRAIN_TASK.classes)
    sha = dataset_info(PRETRAIN_TASK.dataset, args.data_root)["sha256"]

    # Model, optimiser, schedule
    model = build_model(args, n_classes)
    config = model.config
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n and "token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n and "token" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = int(round(args.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, warmup_steps))

    run_dir = Path(args.run_dir) / f"{args.arch}-seed{args.seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    start_epoch, history, train_seconds = 0, [], 0.0
    if args.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["hparams"] != hparams:
            diff = {k: (ckpt["hparams"].get(k), v) for k, v in hparams.items() if ckpt["hparams"].get(k) != v}
            raise SystemExit(f"--resume: checkpoint {ckpt_path} was made with other settings {diff} "
                             "(checkpoint, now); use the same settings or another --run-dir")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, history, train_seconds = ckpt["epoch"], ckpt["history"], ckpt["train_seconds"]
        print(f"resumed from {ckpt_path}: {start_epoch}/{args.epochs} epochs done", flush=True)
    elif ckpt_path.is_file():
        print(f"note: {ckpt_path} exists; starting from scratch (pass --resume to continue it)", flush=True)

    print(f"{args.arch} {config.to_dict()} params={vit.count_parameters(model):,} train={len(x_train)} "
          f"test={len(x_test)} "
          f"threads={args.threads} epochs={args.epochs}", flush=True)

    model.train()
    end = args.epochs if args.stop_after is None else min(args.epochs, start_epoch + args.stop_after)
    for epoch in range(start_epoch, end):
        t0 = time.perf_counter()
        gen = epoch_generator(args.seed, epoch)
        perm = torch.randperm(len(x_train), generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
        for b in bar:
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            xb = normalize(augment(x_train_padded[idx], gen))
            yb = y_train[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(idx)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"non-finite loss at epoch {epoch + 1}, step {b}; lower --lr")
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        bar.close()
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc_aug": correct / seen,
                  "lr_end": sched.get_last_lr()[0], "seconds": time.perf_counter() - t0}
        if args.eval_every and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
            record["test_acc"] = evaluate(model, x_test, y_test)
        train_seconds += time.perf_counter() - t0
        record["elapsed_s"] = train_seconds
        history.append(record)
        print(json.dumps(record), flush=True)
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(), "epoch": epoch + 1, "history": history,
                                    "train_seconds": train_seconds, "hparams": hparams, "config": config.to_dict()})

    if args.stop_after is not None and start_epoch + args.stop_after < args.epochs:
        print(f"stopped after {start_epoch + args.stop_after}/{args.epochs} epochs (--stop-after); --resume continues",
              flush=True)
        return {}

    # Final evaluation and outputs
    t0 = time.perf_counter()
    train_acc = evaluate(model, x_train, y_train)
    test_acc = evaluate(model, x_test, y_test)
    eval_seconds = time.perf_counter() - t0
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.safetensors"
    save_encoder(model, weights)
    summary = {
        "model": name,
        "arch": args.arch,
        "weights": weights.name,
        "encoder_config": replace(config, num_classes=0).to_dict(),
        "architecture_flags": {k: hparams[k] for k in ARCH_FIELDS[args.arch]},
        "pretrain_num_classes": n_classes,
        "pretrain_task": {"name": PRETRAIN_TASK.name, "dataset": PRETRAIN_TASK.dataset,
                          "classes": list(PRETRAIN_TASK.classes)},
        "parameters_encoder": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head.")),
        "parameters_with_head": vit.count_parameters(model),
        "seed": args.seed,
        "epochs": args.epochs,
        "hyperparameters": {k: getattr(args, k) for k in ("batch_size", "lr", "weight_decay", "warmup_epochs",
                                                         "label_smoothing")},
        "optimizer": "AdamW (no decay on biases, norms, embeddings), linear warmup + cosine per step",
        "augmentation": "random crop 32 from 4-px zero padding + horizontal flip, seeded by (seed, epoch)",
        "n_train": len(x_train),
        "n_test": len(x_test),
        "train_acc": train_acc,
        "test_acc": test_acc,
        "train_wall_s": train_seconds,
        "final_eval_wall_s": eval_seconds,
        "wall_s": train_seconds + eval_seconds,
        "threads": args.threads,
        "versions": versions(),
        "data": {"dataset": PRETRAIN_TASK.dataset, "sha256": sha},
        "command": "python small_models/pretrain.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "history": history,
    }
    write_text_atomic(out_dir / f"{name}.json", json.dumps(summary, indent=1) + "\n")
    print(f"done: train_acc={train_acc:.4f} test_acc={test_acc:.4f} wall={summary['wall_s']:.0f}s -> {weights}",
          flush=True)
    return summary


if __name__ == "__main__":
    main()
