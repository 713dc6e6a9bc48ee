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
is theta_0), ``checkpoint.pt`` (theta_k, optimizer state, records, the ``EarlyStopping`` state; written atomically
after every epoch, so a resumed run continues the stopping rule exactly), all through
``tvtheory.experiments.storage``.

How long it runs (``EarlyStopping``): with a validation function ``validate(model) -> accuracy`` (the task's
validation split in the pipeline), its value is recorded at theta_0 (epoch 0) and after every epoch
("val_accuracy" in each record). sgd and adamw with ``patience`` p stop after the first epoch K at which p
epochs have passed without a strictly better validation accuracy than the best finetuned epoch so far (epoch 1
always counts as an improvement; the pretrained point is recorded, not a candidate), or at the cap
``max_epochs``; their converged epoch is the best-validation epoch k* (ties: the earliest), restore-best. gd
runs exactly ``max_epochs`` full-batch steps (its budget, no early stopping) and its converged epoch is the
last one. After the last epoch the full-batch loss and gradient norm at theta_K are measured once
(``FinetuneResult.final``), for ``convergence_summary``.

Progress: with ``progress`` on, a terminal gets tqdm bars named ``desc`` (e.g. ``mnist/gd``); any other
stderr (a log file, a pipe) gets one plain line per epoch instead.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
    """One finetuning run's optimizer and stopping settings; the checkpoint stores ``to_dict()`` and resumes only
    the same.

    ``max_epochs``: the number of epochs for gd (its step budget) and without ``patience``; the cap of early
    stopping with it. ``patience``: None (run ``max_epochs`` epochs) or p >= 1, sgd and adamw only (module
    docstring; it needs the ``validate`` function of ``finetune``).
    """

    optimizer: str
    lr: float
    max_epochs: int
    batch_size: int = 128                   # ignored for gd (one full batch)
    weight_decay: float = 0.0               # adamw only (SGD runs have none: T1 needs none)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    seed: int = 0                           # batch partition
    chunk_size: int = 256                   # examples per forward/backward pass (memory only)
    patience: int | None = None             # early stopping (sgd, adamw); None: exactly max_epochs epochs

    def __post_init__(self) -> None:
        if self.optimizer not in FINETUNE_OPTIMIZERS:
            raise VisionError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(FINETUNE_OPTIMIZERS)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise VisionError(f"the learning rate must be positive and finite, got {self.lr}")
        if self.max_epochs < 1 or self.batch_size < 1 or self.chunk_size < 1:
            raise VisionError("max_epochs, batch_size and chunk_size must be >= 1")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise VisionError(f"patience must be None or an integer >= 1, got {self.patience!r}")
        if self.patience is not None and self.optimizer == "gd":
            raise VisionError("gd runs a fixed budget of max_epochs full-batch steps: no early stopping (patience "
                              "must be None)")

    @property
    def restore_best(self) -> bool:
        """Is the converged epoch the best-validation one (sgd, adamw), rather than the last (gd)?"""
        return self.optimizer != "gd"

    def to_dict(self) -> dict:
        """The fields as JSON types (betas as a list)."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


#: Why a finished run stopped: the patience rule, the cap ``max_epochs`` (sgd, adamw), gd's step budget.
STOP_REASONS = ("patience", "cap", "budget")


@dataclass
class EarlyStopping:
    """The stopping state of a run after epoch ``last_epoch`` (module docstring); pure, so tests drive it directly.

    ``val_accuracy[k]`` is the validation accuracy after epoch k, k = 0 the pretrained point (empty without
    validation). ``best_epoch`` k* >= 1 is the first epoch of the highest validation accuracy among epochs
    1..last_epoch, ``best_val`` its accuracy, ``since_best`` the epochs after it (none of them strictly better).
    ``stopped_by`` is None while the run goes on, else one of ``STOP_REASONS`` ("patience" when the patience
    rule holds, also at the cap; "cap" for restore-best runs, "budget" for gd, at ``max_epochs``). The
    converged epoch is ``best_epoch`` for restore-best runs with validation (sgd, adamw, with or without
    patience), else the last epoch. The checkpoint stores
    ``to_dict()``; ``from_dict`` restores it, checking it against its own validation curve.
    """

    patience: int | None
    max_epochs: int
    restore_best: bool = True
    val_accuracy: list[float] = field(default_factory=list)
    best_val: float | None = None
    best_epoch: int | None = None
    since_best: int = 0
    last_epoch: int = 0
    stopped_by: str | None = None

    @classmethod
    def of(cls, cfg: FinetuneConfig) -> EarlyStopping:
        """The fresh state of a run of ``cfg``."""
        return cls(cfg.patience, cfg.max_epochs, cfg.restore_best)

    @property
    def validated(self) -> bool:
        """Has a validation accuracy been recorded (at least the pretrained point)?"""
        return bool(self.val_accuracy)

    def start(self, val0: float) -> None:
        """Record the validation accuracy of the pretrained point (epoch 0); before any epoch."""
        if self.last_epoch != 0 or self.val_accuracy:
            raise ValueError("start() records epoch 0, before any epoch")
        self.val_accuracy.append(_finite_val(val0, 0))

    def update(self, epoch: int, val: float | None) -> bool:
        """Record epoch ``epoch`` (= last_epoch + 1) with validation accuracy ``val``; True when the run stops here.

        ``val`` is None exactly when the run has no validation (no ``start``); patience then cannot apply.
        """
        if self.stopped_by is not None or epoch != self.last_epoch + 1:
            raise ValueError(f"epoch {epoch} after epoch {self.last_epoch} (stopped by {self.stopped_by})")
        if (val is None) == self.validated:
            raise ValueError("a validation accuracy is given exactly when epoch 0's was (start())")
        self.last_epoch = epoch
        if val is not None:
            self.val_accuracy.append(_finite_val(val, epoch))
            if self.best_val is None or val > self.best_val:       # strictly better: ties keep the earliest
                self.best_val, self.best_epoch, self.since_best = val, epoch, 0
            else:
                self.since_best += 1
        if self.patience is not None and self.validated and self.since_best >= self.patience:
            self.stopped_by = "patience"
        elif epoch >= self.max_epochs:
            self.stopped_by = "cap" if self.restore_best else "budget"
        return self.stopped_by is not None

    @property
    def converged_epoch(self) -> int:
        """The epoch of tau^(conv): k* (restore-best with validation), else the last epoch."""
        if self.last_epoch < 1:
            raise ValueError("no epoch finished yet")
        if self.restore_best and self.best_epoch is not None:
            return self.best_epoch
        return self.last_epoch

    @property
    def best_is_pretrained(self) -> bool | None:
        """Is the pretrained point's validation accuracy at least the best finetuned one (None without validation)?"""
        if self.best_val is None:
            return None
        return self.val_accuracy[0] >= self.best_val

    def to_dict(self) -> dict:
        """Every field (JSON types)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EarlyStopping:
        """The state of ``to_dict()``, replayed from its validation curve to check it is consistent."""
        state = cls(**d)
        replay = cls(state.patience, state.max_epochs, state.restore_best)
        if state.val_accuracy:
            replay.start(state.val_accuracy[0])
        for k in range(1, state.last_epoch + 1):
            replay.update(k, state.val_accuracy[k] if state.val_accuracy else None)
        if replay != state:
            raise VisionError(f"the stopping state of the checkpoint ({d}) does not follow from its validation curve "
                              f"({replay.to_dict()}): delete the run's folder to restart")
        return state


def _finite_val(val: float, epoch: int) -> float:
    if not math.isfinite(val):
        raise VisionError(f"the validation accuracy after epoch {epoch} is {val}: early stopping needs a non-empty "
                          "validation split")
    return float(val)


def convergence_summary(stop: EarlyStopping, records: list[dict], final: dict | None) -> dict:
    """How far from convergence a finished run ended: its validation curve and the full-batch loss and gradient.

    Validation (None without it): the accuracy after epoch 1, the best over epochs 1..K, the last (epoch K),
    ``best_epoch`` (the first epoch of the best; for gd an epoch is one step) and ``still_improving`` = the best
    came in the last 20 % of the epochs (5 best_epoch > 4 K). Full batch: ||grad L|| and L at theta_0 (the first
    record's epoch start) and at theta_K (``final``), and the ratios last / first (NaN when first is 0).
    """
    K = stop.last_epoch
    val = stop.val_accuracy
    first_g, first_l = records[0]["full_grad_norm_start"], records[0]["full_loss_start"]
    last_g = final["full_grad_norm"] if final else math.nan
    last_l = final["full_loss"] if final else math.nan
    return {
        "val_accuracy_first": val[1] if val else None,
        "val_accuracy_best": stop.best_val,
        "val_accuracy_last": val[K] if val else None,
        "best_epoch": stop.best_epoch,
        "still_improving": (5 * stop.best_epoch > 4 * K) if stop.best_epoch is not None else None,
        "full_grad_norm_first": first_g, "full_grad_norm_last": last_g,
        "grad_norm_last_over_first": last_g / first_g if first_g > 0 else math.nan,
        "full_loss_first": first_l, "full_loss_last": last_l,
        "loss_last_over_first": last_l / first_l if first_l > 0 else math.nan,
        "note": "first: theta_0 (epoch 1's start), last: theta_K after the last epoch; still_improving: the best "
                "validation accuracy came in the last 20% of the epochs",
    }


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
    """What ``finetune`` returns: the records of every finished epoch (resumed ones included), the stopping state
    (``EarlyStopping.to_dict()``) and, once the run has stopped, ``final`` = {"full_loss", "full_grad_norm"} at
    theta_K.
    """

    config: dict
    records: list[dict]
    num_batches: int
    num_examples: int
    resumed_from_epoch: int
    t1_check: dict | None = None
    wall_time_s: float = 0.0
    stopping: dict = field(default_factory=dict)
    final: dict | None = None

    @property
    def finished(self) -> bool:
        """Has the run stopped (patience, cap or budget), rather than been interrupted (``stop_after``)?"""
        return self.stopping.get("stopped_by") is not None


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig, run_dir: str | Path,
             ctx: DistContext | None = None, prepare: Callable | None = None, progress: bool = True,
             stop_after: int | None = None, desc: str | None = None,
             validate: Callable[[nn.Module], float] | None = None) -> FinetuneResult:
    """Finetune ``model`` (a module whose parameters are the encoder) on (x, y) until it stops (module docstring):
    after ``cfg.max_epochs`` epochs, or earlier by ``cfg.patience`` on ``validate``.

    ``validate(model)`` is the validation accuracy of the model's current parameters (the same on every rank,
    e.g. ``probe.split_accuracy``); it is called at theta_0 and after every epoch, and is required with
    ``cfg.patience``. Every rank holds all of (x, y) and computes on its shard of each batch. Resumes from
    ``run_dir/checkpoint.pt`` when its config matches (finished epochs are not redone, the stopping state is
    restored); refuses a checkpoint of another config. ``stop_after`` stops after that many epochs in this call
    (to test resumption). ``desc`` names the run in the progress output (default: the optimizer).
    """
    ctx = ctx or DistContext()
    if cfg.patience is not None and validate is None:
        raise VisionError("early stopping (patience) needs a validation function (validate=...)")
    run_dir = Path(run_dir)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    layout = ParamLayout.of(model)
    batches = make_batches(x.shape[0], cfg)
    optimizer = make_optimizer(cfg, list(model.parameters()))
    ckpt_path = run_dir / "checkpoint.pt"
    start, records, t1, final = 0, [], None, None
    theta0 = flat_params(model)
    stop = EarlyStopping.of(cfg)
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=ctx.device, weights_only=False)
        if ckpt["config"] != cfg.to_dict():
            raise VisionError(f"{ckpt_path} was written by another config ({ckpt['config']}); "
                              f"use another --artifacts folder or delete it to restart")
        if not torch.equal(ckpt["theta0"].to(theta0.device), theta0):
            raise VisionError(f"{ckpt_path} starts from another pretrained point; use another --artifacts folder "
                              "or delete it to restart")
        start, records, t1, final = ckpt["epoch"], ckpt["records"], ckpt.get("t1_check"), ckpt.get("final")
        stop = EarlyStopping.from_dict(ckpt["stopping"])
        if stop.validated != (validate is not None):
            raise VisionError(f"{ckpt_path} was recorded {'with' if stop.validated else 'without'} a validation "
                              "function and is resumed the other way; delete it to restart")
        load_flat_(model, ckpt["theta"].to(theta0.device))
        optimizer.load_state_dict(ckpt["optimizer"])
    elif validate is not None:
        stop.start(validate(model))                 # epoch 0: the pretrained point

    def checkpoint() -> None:
        if ctx.is_main:
            save_checkpoint(ckpt_path, {"config": cfg.to_dict(), "epoch": stop.last_epoch,
                                        "theta": flat_params(model).cpu(), "theta0": theta0.cpu(),
                                        "optimizer": optimizer.state_dict(), "records": records, "t1_check": t1,
                                        "stopping": stop.to_dict(), "final": final})

    t_start = time.perf_counter()
    first_loss = records[0]["full_loss_start"] if records else None
    end = cfg.max_epochs if stop_after is None else min(cfg.max_epochs, start + stop_after)
    if stop.stopped_by is not None:
        end = start                                 # finished: nothing left to run
    name = desc or cfg.optimizer
    report = progress and ctx.is_main
    bars = report and sys.stderr.isatty()           # elsewhere (a log, a pipe): one plain line per epoch
    bar = tqdm(range(start, end), desc=f"{name} epochs", disable=not bars, initial=start, total=cfg.max_epochs,
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
        val_s = time.perf_counter()
        val = validate(model) if validate is not None else None
        val_s = time.perf_counter() - val_s
        records.append({
            "epoch": k + 1,
            "full_grad_norm_start": float(torch.linalg.vector_norm(g_full.double())),
            "full_loss_start": loss_full,
            "minibatch_grad_norm_mean": sum(norms) / len(norms),
            "minibatch_grad_norm_max": max(norms),
            "batch_loss_mean": sum(losses) / len(losses),
            "tau_norm": float(torch.linalg.vector_norm(tau.double())),
            "update_norm": float(torch.linalg.vector_norm((theta - theta_prev).double())),
            "val_accuracy": val,            # after this epoch (None without a validation function)
            "wall_s": time.perf_counter() - t_epoch,
            "full_grad_s": full_grad_s,     # the E1 measurement (for gd it is also the step's gradient)
            "val_s": val_s,
        })
        stopped = stop.update(k + 1, val)
        if ctx.is_main:
            save_vector(tau_path(run_dir, k + 1), tau, layout)
        checkpoint()
        if report and not bars:
            r = records[-1]
            shown = "" if val is None else f", val acc {val:.4g}"
            print(f"{name}: epoch {k + 1}/{cfg.max_epochs}, full-batch loss {r['full_loss_start']:.4g} at its start"
                  f"{shown}, {r['wall_s']:.1f} s", file=sys.stderr, flush=True)
        ctx.barrier()
        if stopped:
            break
    bar.close()
    if stop.stopped_by is not None and final is None:       # the point the run ended at, measured once
        g_end, loss_end = batch_gradient(model, x, y, torch.arange(x.shape[0]), ctx, cfg.chunk_size, prepare)
        final = {"full_loss": loss_end, "full_grad_norm": float(torch.linalg.vector_norm(g_end.double()))}
        for p in model.parameters():
            p.grad = None
        checkpoint()
        ctx.barrier()
        if report:
            print(f"{name}: stopped after epoch {stop.last_epoch} ({stop.stopped_by}); converged epoch "
                  f"{stop.converged_epoch}", file=sys.stderr, flush=True)
    return FinetuneResult(cfg.to_dict(), records, len(batches), int(x.shape[0]), start, t1,
                          time.perf_counter() - t_start, stop.to_dict(), final)
