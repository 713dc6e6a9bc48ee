"""The GPU scale check: a ViT-B-sized encoder finetuned on the seven tasks, T1 and T2's second-order term at 86M.

``run_gpu_check(config)`` (``python -m tvtheory.experiments.gpu_check --out results/gpu [--tiny]``; ``make
gpu-check``) runs on CUDA when present, else on the CPU (the device used is recorded):

(a) the encoder: ``encoder = "vit_b"`` builds a seeded ViT-B-sized tvtheory ViT (``VIT_B_32``: dim 768, depth
    12, 12 heads, MLP 3072: 85.1M parameters), ``"shipped"`` loads the shipped small ``cnn_cifar5``, any other
    value is a file written by ``tvtheory.models.pretrained.save_encoder``. Why 32 x 32 images in 4 x 4 patches
    and not ViT-B/16's 224 x 224 in 16 x 16: the tasks' images are 28-64 px and the pipeline reads them at 32 px;
    upsampling to 224 would invent pixels and triple the tokens (197 against 65) while the parameter count,
    which is what the T1 / HVP checks scale with, stays within 1 % (ViT-B/16: 85.8M; the difference is the
    patch embedding and the position table);
(b) throughput: per task (``tvtheory.experiments.tasks.load_task_data``, every training image of the data
    folder, ``max_train = 0``), a frozen probe head at theta_0 (``probe.fit_probe`` on ``probe_images``
    training images) and AdamW on the encoder in mini-batches under bf16 autocast, time-boxed to
    ``seconds_per_task``; records images/s (the first step, compilation and allocation, left out), steps,
    epochs done, the last loss and the test accuracy. This is a throughput measurement: a random-init encoder
    finetuned for seconds is no model of the paper's accuracies;
(c) the exact checks, in ``check_dtype`` with TF32 off (``torch.backends.cuda.matmul.allow_tf32`` and cuDNN's):
    on a fixed full batch of ``check_images`` training images of ``check_task`` (loss = their mean CE),
    lambda_hat = power iteration by HVPs (``step_size.sharpness``), eta = ``check_lr_scale`` / lambda_hat; two
    full-batch GD steps with torch.optim.SGD (``finetune.make_optimizer``) on the gradient of
    ``finetune.batch_gradient``; T1 on the first step by ``fp.check_t1`` (the floating-point model of
    theta_1 = fl(theta_0 - fl(eta g)), checked given the gradient the step used, so how the GPU's reductions
    computed g does not matter); ||E_2||, ||eta^2 H g|| (T2(a), k = 2) and ||E_2 - eta^2 H g|| by
    ``analysis.expansion_stats`` (HVPs at full size, chunked), with ``fp.rounding_allowance``, the
    floating-point model of the error of the computed E_2: the comparison means something when ||E_2|| is well
    above it;
(d) timings (gradient seconds, HVPs/s, images/s) and peak GPU memory (``torch.cuda.max_memory_allocated``) per
    phase, written with the config, seed, device name and ``io.versions()`` to ``<out>/gpu_check.json``
    (atomically); ``report_lines`` prints a summary and ``markdown_snippet`` a table for docs/performance.md.

``GPUCheckConfig.tiny()`` is the CPU configuration of the tests and of ``--tiny``: a one-block 8 x 8 ViT, a
few images per task, float64 checks, a fraction of a second per task.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..fp import DTYPES, check_t1, detectable_lr_error, dtype_of, gradient_sum_length, rounding_allowance
from ..io import versions, write_json_atomic
from ..losses import cross_entropy_terms
from ..models.seeding import seeded
from ..models.vit import ViT, ViTConfig, count_parameters
from ..params import flat_params
from .analysis import expansion_stats
from .config import VisionConfig
from .dist import DistContext, default_device
from .encoders import Encoder
from .finetune import FinetuneConfig, batch_gradient, make_optimizer
from .probe import FrozenHeadClassifier, features, fit_probe, split_accuracy
from .step_size import sharpness
from .tasks import TaskData, load_task_data

#: ViT-B's width, depth, heads and MLP on the tasks' 32 x 32 images in 4 x 4 patches (module docstring, (a)).
VIT_B_32 = ViTConfig(image_size=32, patch_size=4, dim=768, depth=12, heads=12, mlp_dim=3072)

#: The encoder of ``GPUCheckConfig.tiny()``: 3 x 8 x 8 images, dim 16, one block.
TINY_VIT = ViTConfig(image_size=8, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=32)

RESULT_NAME = "gpu_check.json"


@dataclass(frozen=True)
class GPUCheckConfig:
    """Every setting of the GPU scale check (module docstring); ``to_dict()`` is the result's ``config``."""

    out: str = "results/gpu"
    data_root: str | None = None            # the packed folder (make gpu-pack: gpu_data) or the shared one
    tasks: tuple[str, ...] = ()             # () = the seven built-in tasks
    encoder: str = "vit_b"                  # "vit_b", "shipped" or a save_encoder file
    vit: ViTConfig = VIT_B_32               # the "vit_b" architecture
    # (b) throughput
    seconds_per_task: float = 30.0
    batch_size: int = 256
    lr_adamw: float = 1e-4
    weight_decay: float = 0.01
    probe_images: int = 4096
    max_train: int = 0                      # 0 = every training image of the data folder
    max_test: int = 2000
    # (c) exact checks
    check_task: str = "cifar10"
    check_images: int = 512
    check_lr_scale: float = 0.05            # eta = scale / lambda_hat
    sharpness_iterations: int = 10
    check_dtype: str = "float32"
    chunk_size: int = 128                   # images per forward pass of the checks
    seed: int = 0
    progress: bool = True
    tiny: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        for name in ("seconds_per_task", "lr_adamw", "check_lr_scale"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} is {v!r}: must be a positive finite number")
        for name in ("batch_size", "probe_images", "check_images", "sharpness_iterations", "chunk_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} is {getattr(self, name)!r}: must be an integer >= 1")
        if self.check_dtype not in DTYPES:
            raise ValueError(f"check_dtype is {self.check_dtype!r}: use one of {', '.join(DTYPES)}")
        if self.check_images < 2:
            raise ValueError("check_images must be >= 2: one image is fitted exactly by the probe head")

    @classmethod
    def tiny_preset(cls, **fields) -> GPUCheckConfig:
        """The CPU configuration (module docstring): tiny ViT, 48 training images per task, float64 checks."""
        base = dict(vit=TINY_VIT, seconds_per_task=0.2, batch_size=16, probe_images=48, max_train=48, max_test=32,
                    check_images=24, chunk_size=8, check_dtype="float64", tiny=True)
        return cls(**{**base, **fields})

    def to_dict(self) -> dict:
        """JSON form (the ViT config as a dict)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["vit"], d["tasks"] = self.vit.to_dict(), list(self.tasks)
        return d


# ------------------------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def build_encoder(config: GPUCheckConfig) -> Encoder:
    """(a): the encoder ``config.encoder`` names, float32, with the pipeline's input map (CIFAR statistics)."""
    from .encoders import load_encoder

    if config.encoder != "vit_b":
        return load_encoder(VisionConfig(pretrained=None if config.encoder == "shipped" else config.encoder,
                                         data_root=config.data_root, progress=False))
    from ..vision.datasets import MEAN, STD, normalize

    model = seeded(lambda: ViT(config.vit), config.seed).eval()
    prepare = functools.partial(normalize, dtype=torch.float32, mean=MEAN, std=STD)
    return Encoder(model, config.vit, torch.float32, prepare, f"vit_b: seeded random init (seed {config.seed})")


def load_tasks(config: GPUCheckConfig, encoder: Encoder) -> dict[str, TaskData]:
    """Every task's splits at the encoder's image size, through the pipeline's ``load_task_data``."""
    vision = VisionConfig(tasks=config.tasks, data_root=config.data_root, max_train=config.max_train,
                          max_val=1, max_test=config.max_test, seed=config.seed, progress=False)
    return {t: load_task_data(t, vision, encoder) for t in vision.tasks}


def probe_classifier(encoder: Encoder, data: TaskData, config: GPUCheckConfig, device: torch.device,
                     dtype: torch.dtype) -> FrozenHeadClassifier:
    """A copy of the encoder with the task's frozen probe head (fitted on ``probe_images`` training images)."""
    x, y = data.train
    n = min(config.probe_images, x.shape[0])
    enc = encoder.copy(device).float()
    z = features(enc, x[:n], config.chunk_size, encoder.prepare)
    w, b, _ = fit_probe(z, y[:n], data.num_classes)
    return FrozenHeadClassifier(enc, w, b).to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------- (b)


def finetune_throughput(model: FrozenHeadClassifier, data: TaskData, config: GPUCheckConfig, encoder: Encoder,
                        device: torch.device, desc: str = "") -> dict:
    """(b): AdamW mini-batches under bf16 autocast (CUDA; float32 on the CPU) for ``seconds_per_task``.

    Images/s counts the steps after the first (which pays for allocation and kernel selection); at least two
    steps are made, whatever the time box.
    """
    x, y = data.train
    n = int(x.shape[0])
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr_adamw, weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(config.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    _reset_peak(device)
    steps, images, first_step_s = 0, 0, math.nan
    t0 = t_steady = time.perf_counter()
    bar = tqdm(desc=f"finetune {desc}", unit="img", disable=not config.progress, leave=False)
    while steps < 2 or time.perf_counter() - t0 < config.seconds_per_task:
        for index in torch.randperm(n, generator=g).split(config.batch_size):
            xb = encoder.prepare(x[index]).to(device, non_blocking=True)
            with autocast:
                loss = cross_entropy_terms(model(xb), y[index].to(device)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if steps == 1:
                _sync(device)
                t_steady = time.perf_counter()
                first_step_s = t_steady - t0
            else:
                images += index.numel()
            bar.update(index.numel())
            if steps >= 2 and time.perf_counter() - t0 >= config.seconds_per_task:
                break
    loss_value = float(loss.detach())
    _sync(device)
    steady = time.perf_counter() - t_steady
    bar.close()
    with autocast:
        test_acc = split_accuracy(model, data.test, DistContext(device=device), config.chunk_size, encoder.prepare)
    return {"num_train": n, "num_test": int(data.test[0].shape[0]), "num_classes": data.num_classes,
            "steps": steps, "epochs": steps * config.batch_size / n, "first_step_s": first_step_s,
            "steady_s": steady, "images_per_s": images / steady if steady > 0 else math.nan,
            "last_loss": loss_value, "test_accuracy": test_acc, "peak_memory_gib": _peak_gib(device)}


# ------------------------------------------------------------------------------------------- (c)


@dataclass(frozen=True)
class GDSteps:
    """theta_0, theta_1, theta_2 of two full-batch GD steps, the gradients g_0, g_1, and the gradient time."""

    thetas: tuple[torch.Tensor, ...]
    grads: tuple[torch.Tensor, ...]
    gradient_s: float


def gd_steps(model: FrozenHeadClassifier, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int,
             chunk_size: int, prepare) -> GDSteps:
    """``steps`` full-batch GD steps theta_{s+1} = theta_s - lr g_s by torch.optim.SGD on the mean CE over (x, y)."""
    p = next(model.parameters())
    ctx = DistContext(device=p.device)
    opt = make_optimizer(FinetuneConfig("gd", lr, steps), list(model.parameters()))
    thetas, grads, seconds = [flat_params(model)], [], 0.0
    for _ in range(steps):
        _sync(p.device)
        t = time.perf_counter()
        g, _ = batch_gradient(model, x, y, torch.arange(x.shape[0]), ctx, chunk_size, prepare)
        _sync(p.device)
        seconds += time.perf_counter() - t
        opt.step()
        grads.append(g)
        thetas.append(flat_params(model))
    return GDSteps(tuple(thetas), tuple(grads), seconds / steps)


def exact_checks(model: FrozenHeadClassifier, data: TaskData, config: GPUCheckConfig, encoder: Encoder) -> dict:
    """(c): sharpness, eta, T1 on step 1, T2's second-order term at k = 2 (module docstring)."""
    p = next(model.parameters())
    device = p.device
    x, y = data.train[0][:config.check_images], data.train[1][:config.check_images]
    ctx = DistContext(device=device)
    _reset_peak(device)
    _sync(device)
    t = time.perf_counter()
    sharp = sharpness(model, x, y, ctx, config.chunk_size, encoder.prepare, subset=x.shape[0],
                      iterations=config.sharpness_iterations, seed=config.seed)
    _sync(device)
    hvp_s = (time.perf_counter() - t) / max(len(sharp["history"]), 1)
    lr = config.check_lr_scale / sharp["lambda"]
    theta0 = flat_params(model)
    run = gd_steps(model, x, y, lr, 2, config.chunk_size, encoder.prepare)
    t1 = check_t1(run.thetas[0], run.thetas[1], run.grads[0], lr)
    taus = [th - run.thetas[0] for th in run.thetas[1:]]
    _sync(device)
    t = time.perf_counter()
    expansion = expansion_stats(model, x, y, [torch.arange(x.shape[0])], theta0, taus, "gd", lr, ctx,
                                config.chunk_size, encoder.prepare)
    _sync(device)
    row = expansion["epochs"][1]
    allowance = rounding_allowance(list(run.thetas), list(run.grads), lr, 2, gradient_sum_length(model, x.shape[0]))
    return {
        "task": config.check_task, "num_images": int(x.shape[0]), "dtype": str(p.dtype).replace("torch.", ""),
        "num_params": int(theta0.numel()), "sharpness": sharp, "lr": lr, "lr_rule": f"{config.check_lr_scale} / "
        "lambda_hat", "T1": {**t1.to_dict(), "detectable_lr_error": detectable_lr_error(run.thetas[0],
                                                                                          run.grads[0], lr)},
        "T2_k2": {"E2_norm": row["error_norm"], "second_order_norm": row["second_order_norm"],
                  "residual_norm": row["second_order_residual_norm"],
                  "relative_difference": (row["second_order_residual_norm"] / row["error_norm"]
                                          if row["error_norm"] > 0 else math.nan),
                  "rounding_allowance": allowance, "resolved": allowance < row["error_norm"],
                  "statement": "E_2 = tau^(2) + 2 eta g = eta^2 H g + O(eta^3)"},
        "timings": {"gradient_s": run.gradient_s, "hvp_s": hvp_s, "hvps_per_s": 1 / hvp_s if hvp_s > 0 else math.nan,
                    "expansion_s": time.perf_counter() - t},
        "peak_memory_gib": _peak_gib(device),
    }


# ------------------------------------------------------------------------------------------- the run


def run_gpu_check(config: GPUCheckConfig) -> dict:
    """(a)-(d) of the module docstring; returns the payload written to ``<out>/gpu_check.json``."""
    t_start = time.perf_counter()
    device = default_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    encoder = build_encoder(config)
    data = load_tasks(config, encoder)
    if config.check_task not in data:
        raise ValueError(f"check_task {config.check_task!r} is not among the tasks {list(data)}: add it or "
                         "choose one of them")
    finetune = {}
    for task, td in data.items():
        model = probe_classifier(encoder, td, config, device, torch.float32)
        finetune[task] = finetune_throughput(model, td, config, encoder, device, task)
        del model
    check_model = probe_classifier(encoder, data[config.check_task], config, device, dtype_of(config.check_dtype))
    checks = exact_checks(check_model, data[config.check_task], config, encoder)
    images = sum(r["images_per_s"] * r["steady_s"] for r in finetune.values())
    seconds = sum(r["steady_s"] for r in finetune.values())
    payload = {
        "config": config.to_dict(), "seed": config.seed, "versions": versions(),
        "device": {"type": device.type,
                   "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "cuda": torch.version.cuda, "tf32": False},
        "encoder": {"source": encoder.source, "config": encoder.config.to_dict(),
                    "num_params": count_parameters(encoder.model)},
        "finetune": {"tasks": finetune, "images_per_s": images / seconds if seconds > 0 else math.nan,
                     "autocast": "bfloat16" if device.type == "cuda" else "none (float32)"},
        "checks": checks,
        "holds": {"T1": checks["T1"]["holds"], "T2_resolved": checks["T2_k2"]["resolved"]},
        "wall_time_s": time.perf_counter() - t_start,
    }
    write_json_atomic(Path(config.out) / RESULT_NAME, payload)
    return payload


def report_lines(payload: dict) -> list[str]:
    """A short plain-text summary of a result."""
    c, d = payload["checks"], payload["device"]
    lines = [f"GPU scale check on {d['name']} ({payload['encoder']['num_params'] / 1e6:.1f}M-parameter encoder, "
             f"{payload['wall_time_s']:.0f} s)"]
    for task, r in payload["finetune"]["tasks"].items():
        lines.append(f"  {task:>14}: {r['images_per_s']:8.0f} img/s, {r['epochs']:.2f} epochs of {r['num_train']}, "
                     f"test accuracy {r['test_accuracy']:.3f}")
    t1, t2 = c["T1"], c["T2_k2"]
    lines += [f"  T1 ({c['dtype']}, {c['num_images']} images, eta {c['lr']:.3g}): holds={t1['holds']}, max ratio "
              f"{t1['max_ratio']:.3g}, detects lr errors above {t1['detectable_lr_error']:.2g}",
              f"  T2 k=2: ||E_2|| {t2['E2_norm']:.4g}, ||eta^2 H g|| {t2['second_order_norm']:.4g}, relative "
              f"difference {t2['relative_difference']:.3g} (rounding allowance {t2['rounding_allowance']:.3g})",
              f"  gradient {c['timings']['gradient_s']:.3g} s, {c['timings']['hvps_per_s']:.3g} HVPs/s, peak memory "
              f"{c['peak_memory_gib']} GiB"]
    return lines


def markdown_snippet(payload: dict) -> str:
    """A Markdown table of a result, for docs/performance.md."""
    c, t2 = payload["checks"], payload["checks"]["T2_k2"]
    rows = [f"| {task} | {r['num_train']} | {r['images_per_s']:.0f} | {r['epochs']:.2f} | {r['test_accuracy']:.3f} |"
            for task, r in payload["finetune"]["tasks"].items()]
    return "\n".join([
        f"Device: {payload['device']['name']}; encoder {payload['encoder']['num_params'] / 1e6:.1f}M parameters; "
        f"wall time {payload['wall_time_s']:.0f} s.", "",
        "| task | training images | images/s (bf16) | epochs | test accuracy |", "| --- | --- | --- | --- | --- |",
        *rows, "",
        f"T1 on one full-batch GD step ({c['num_images']} images, {c['dtype']}): holds = {c['T1']['holds']} "
        f"(max ratio {c['T1']['max_ratio']:.3g}). T2, k = 2: ||E_2|| = {t2['E2_norm']:.4g}, ||eta^2 H g|| = "
        f"{t2['second_order_norm']:.4g}, relative difference {t2['relative_difference']:.3g} (rounding allowance "
        f"{t2['rounding_allowance']:.3g}). Gradient {c['timings']['gradient_s']:.3g} s, "
        f"{c['timings']['hvps_per_s']:.3g} HVPs/s, peak memory {c['peak_memory_gib']} GiB."])


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; exit 2 on bad input."""
    from ..vision.datasets import DatasetError
    from .errors import VisionError

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/gpu", help="folder of gpu_check.json (default: results/gpu)")
    p.add_argument("--data-root", default=None, help="the packed data (make gpu-pack: gpu_data) or the shared folder")
    p.add_argument("--tiny", action="store_true", help="the CPU configuration (tiny ViT, a few images)")
    p.add_argument("--encoder", default="vit_b", help="vit_b, shipped, or a save_encoder file")
    p.add_argument("--seconds-per-task", type=float, default=None, help="finetuning time box per task")
    p.add_argument("--check-images", type=int, default=None, help="images of the full batch of the exact checks")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    given = {k: v for k, v in (("seconds_per_task", a.seconds_per_task), ("check_images", a.check_images))
             if v is not None}
    try:
        kw = dict(out=a.out, data_root=a.data_root, encoder=a.encoder, progress=not a.no_progress, **given)
        config = GPUCheckConfig.tiny_preset(**kw) if a.tiny else GPUCheckConfig(**kw)
        payload = run_gpu_check(config)
    except (ValueError, VisionError, DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report_lines(payload)))
    print(f"wrote {Path(config.out) / RESULT_NAME}")
    return 0 if payload["holds"]["T1"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
