"""The per-epoch finetuning loop that records E1 and the task vectors, resumable after interruption.

Three optimizers, all ``torch.optim`` (what practitioners run), on the encoder only (the head is frozen):
- ``gd``:    torch.optim.SGD, one step per epoch on the whole training set (T1, T2);
- ``sgd``:   torch.optim.SGD, B = ceil(N / batch_size) equal batches of a seeded partition, visited in the
             same order every epoch (T3, and the schedule of ``tvtheory.trajectory.epoch_schedule``);
- ``adamw``: torch.optim.AdamW on the same batches.
``FINETUNE_OPTIMIZERS`` is this list, the one the vision pipeline and its figures use (the theory engine's
``tvtheory.optimizers.OPTIMIZERS`` is another: gd, sgd, momentum, adam on flat parameter vectors).
Gradients are exact batch gradients: accumulated over memory-sized chunks and, under torch.distributed,
summed over ranks with one all-reduce (``tvtheory.experiments.dist``).

Why not ``tvtheory.trajectory.run_optimizer``: it runs all epochs in one call, keeps every iterate and
gradient in memory, builds the whole batch in one forward pass and has no data parallelism, so it can
neither checkpoint per epoch (AdamW's moments must survive an interruption) nor run the ViT on 4,000
images. This loop performs the same arithmetic (``tests/test_experiments_finetune.py`` checks that its
iterates equal ``run_optimizer``'s bit for bit on one process with one chunk) and stores only theta_k
per epoch.

Per epoch k = 1..K it records: the full-batch gradient norm ||grad L(theta_{k-1})|| at the epoch start,
the mean (and max) mini-batch gradient norm over the epoch, the mean batch loss, ||tau^(k)||, ||update_k||.
Files in ``run_dir``: ``tau_epoch{k:03d}.safetensors`` (tau^(k), named encoder tensors),
``grad_epoch{k:03d}.safetensors`` (the full-batch gradient at the start of epoch k, grad L(theta_{k-1}); k = 1
is theta_0), ``checkpoint.pt`` (theta_k, optimizer state, records; written atomically after every epoch),
all through ``tvtheory.experiments.storage``.

Progress: with ``progress`` on, a terminal gets tqdm bars named ``desc`` (e.g. ``mnist/gd``); any other
stderr (a log file, a pipe) gets one plain line per epoch instead.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..fp import check_t1
from ..losses import cross_entropy_terms
from ..params import ParamLayout, flat_grads, flat_params, load_flat_
from ..task_vectors import task_vector
from ..trajectory import DivergenceError, check_loss
from .dist import DistContext, shard
from .errors import VisionError
from .storage import grad_path, save_checkpoint, save_vector, tau_path

#: The optimizers of the vision pipeline (module docstring), in the order the figures show them.
FINETUNE_OPTIMIZERS = ("gd", "sgd", "adamw")


@dataclass(frozen=True)
class FinetuneConfig:
    """One finetuning run's optimizer settings; the checkpoint stores ``to_dict()`` and resumes only the same."""

    optimizer: str
    lr: float
    epochs: int
    batch_size: int = 128                   # ignored for gd (one full batch)
    weight_decay: float = 0.0               # adamw only (SGD runs have none: T1 needs none)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    seed: int = 0                           # batch partition
    chunk_size: int = 256                   # examples per forward/backward pass (memory only)

    def __post_init__(self) -> None:
        if self.optimizer not in FINETUNE_OPTIMIZERS:
            raise VisionError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(FINETUNE_OPTIMIZERS)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise VisionError(f"the learning rate must be positive and finite, got {self.lr}")
        if self.epochs < 1 or self.batch_size < 1 or self.chunk_size < 1:
            raise VisionError("epochs, batch_size and chunk_size must be >= 1")

    def to_dict(self) -> dict:
        """The fields as JSON types (betas as a list)."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


def make_batches(n: int, cfg: FinetuneConfig) -> list[torch.Tensor]:
    """The fixed partition of range(n): one batch for gd, else ceil(n / batch_size) near-equal seeded batches."""
    if n < 1:
        raise ValueError("no training examples")
    if cfg.optimizer == "gd" or cfg.batch_size >= n:
        return [torch.arange(n)]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    return [b.sort().values for b in torch.tensor_split(perm, math.ceil(n / cfg.batch_size))]


def make_optimizer(cfg: FinetuneConfig, params) -> torch.optim.Optimizer:
    """torch.optim.SGD (no momentum, no weight decay) for gd and sgd, torch.optim.AdamW for adamw."""
    if cfg.optimizer in ("gd", "sgd"):
        return torch.optim.SGD(params, lr=cfg.lr, foreach=False)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             foreach=False)


def batch_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, ctx: DistContext,
                   chunk_size: int, prepare: Callable | None = None) -> tuple[torch.Tensor, float]:
    """(grad, loss) of the mean CE over the examples ``index`` at the model's current parameters.

    This rank takes its shard of ``index``; each chunk contributes grad(sum_i l_i) / n (n = len(index), the
    global batch size), accumulated in ``.grad``; the flat gradient is then all-reduced (summed over ranks).
    Leaves the summed gradient in the parameters' ``.grad``.
    """
    n = index.numel()
    mine = shard(index, ctx)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.zeros_like(p)
    loss_sum = torch.zeros((), dtype=torch.float64)
    for part in torch.split(mine, chunk_size):
        xb = x[part] if prepare is None else prepare(x[part])
        p0 = params[0]
        out = model(xb.to(device=p0.device, dtype=p0.dtype))
        loss = cross_entropy_terms(out, y[part].to(p0.device)).sum() / n
        loss.backward()
        loss_sum += float(loss.detach())
    g = flat_grads(model)
    ctx.all_reduce_sum_(g)
    stats = ctx.all_reduce_sum_(loss_sum.to(g.device).reshape(1)).cpu()
    for p, gp in zip(params, ParamLayout.of(model).unflatten(g).values(), strict=True):
        p.grad = gp.detach().clone()            # the summed gradient, for optimizer.step
    return g, float(stats[0])


@dataclass
class FinetuneResult:
    """What ``finetune`` returns: the records of every finished epoch (resumed ones included)."""

    config: dict
    records: list[dict]
    num_batches: int
    num_examples: int
    resumed_from_epoch: int
    t1_check: dict | None = None
    wall_time_s: float = 0.0


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig, run_dir: str | Path,
             ctx: DistContext | None = None, prepare: Callable | None = None, progress: bool = True,
             stop_after: int | None = None, desc: str | None = None) -> FinetuneResult:
    """Finetune ``model`` (a module whose parameters are the encoder) on (x, y) for cfg.epochs epochs.

    Every rank holds all of (x, y) and computes on its shard of each batch. Resumes from
    ``run_dir/checkpoint.pt`` when its config matches (finished epochs are not redone); refuses a checkpoint
    of another config. ``stop_after`` stops after that many epochs in this call (to test resumption).
    ``desc`` names the run in the progress output (default: the optimizer), see the module docstring.
    """
    ctx = ctx or DistContext()
    run_dir = Path(run_dir)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    layout = ParamLayout.of(model)
    batches = make_batches(x.shape[0], cfg)
    optimizer = make_optimizer(cfg, list(model.parameters()))
    ckpt_path = run_dir / "checkpoint.pt"
    start, records, t1 = 0, [], None
    theta0 = flat_params(model)
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=ctx.device, weights_only=False)
        if ckpt["config"] != cfg.to_dict():
            raise VisionError(f"{ckpt_path} was written by another config ({ckpt['config']}); "
                              f"use another --artifacts folder or delete it to restart")
        if not torch.equal(ckpt["theta0"].to(theta0.device), theta0):
            raise VisionError(f"{ckpt_path} starts from another pretrained point; use another --artifacts folder "
                              "or delete it to restart")
        start, records, t1 = ckpt["epoch"], ckpt["records"], ckpt.get("t1_check")
        load_flat_(model, ckpt["theta"].to(theta0.device))
        optimizer.load_state_dict(ckpt["optimizer"])
    t_start = time.perf_counter()
    first_loss = records[0]["full_loss_start"] if records else None
    end = cfg.epochs if stop_after is None else min(cfg.epochs, start + stop_after)
    name = desc or cfg.optimizer
    report = progress and ctx.is_main
    bars = report and sys.stderr.isatty()           # elsewhere (a log, a pipe): one plain line per epoch
    bar = tqdm(range(start, end), desc=f"{name} epochs", disable=not bars, initial=start, total=cfg.epochs,
               leave=False)
    for k in bar:
        t_epoch = time.perf_counter()
        theta_prev = flat_params(model)
        g_full, loss_full = batch_gradient(model, x, y, torch.arange(x.shape[0]), ctx, cfg.chunk_size, prepare)
        full_grad_s = time.perf_counter() - t_epoch
        if first_loss is None:
            first_loss = loss_full
        check_loss(loss_full, first_loss, f"epoch {k + 1}", cfg.lr)
        if ctx.is_main:
            save_vector(grad_path(run_dir, k + 1), g_full, layout)
        norms, losses = [], []
        for b in tqdm(batches, desc=f"{name} epoch {k + 1}", disable=not bars or len(batches) == 1, leave=False):
            if len(batches) == 1:
                g = g_full                  # the full-batch gradient is already in .grad
                loss = loss_full
            else:
                g, loss = batch_gradient(model, x, y, b, ctx, cfg.chunk_size, prepare)
            check_loss(loss, first_loss, f"epoch {k + 1}", cfg.lr)
            norms.append(float(torch.linalg.vector_norm(g.double())))
            losses.append(loss)
            before = flat_params(model) if (k == 0 and cfg.optimizer == "gd") else None
            optimizer.step()
            if before is not None:
                t1 = check_t1(before, flat_params(model), g, cfg.lr).to_dict()
        theta = flat_params(model)
        if not torch.isfinite(theta).all():
            raise DivergenceError(f"the parameters became non-finite in epoch {k + 1} with learning rate "
                                  f"{cfg.lr:g}: lower the learning rate")
        tau = task_vector(theta, theta0)
        records.append({
            "epoch": k + 1,
            "full_grad_norm_start": float(torch.linalg.vector_norm(g_full.double())),
            "full_loss_start": loss_full,
            "minibatch_grad_norm_mean": sum(norms) / len(norms),
            "minibatch_grad_norm_max": max(norms),
            "batch_loss_mean": sum(losses) / len(losses),
            "tau_norm": float(torch.linalg.vector_norm(tau.double())),
            "update_norm": float(torch.linalg.vector_norm((theta - theta_prev).double())),
            "wall_s": time.perf_counter() - t_epoch,
            "full_grad_s": full_grad_s,     # the E1 measurement (for gd it is also the step's gradient)
        })
        if ctx.is_main:
            save_vector(tau_path(run_dir, k + 1), tau, layout)
            save_checkpoint(ckpt_path, {"config": cfg.to_dict(), "epoch": k + 1, "theta": theta.cpu(),
                                        "theta0": theta0.cpu(), "optimizer": optimizer.state_dict(),
                                        "records": records, "t1_check": t1})
        if report and not bars:
            r = records[-1]
            print(f"{name}: epoch {k + 1}/{cfg.epochs}, full-batch loss {r['full_loss_start']:.4g} at its start, "
                  f"{r['wall_s']:.1f} s", file=sys.stderr, flush=True)
        ctx.barrier()
    return FinetuneResult(cfg.to_dict(), records, len(batches), int(x.shape[0]), start, t1,
                          time.perf_counter() - t_start)
