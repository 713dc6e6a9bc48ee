"""Whole-trajectory optimizer checks: replay the claimed optimizer from theta_0 and judge every recorded step.

A trajectory theta_0, ..., theta_S with the gradients g_0, ..., g_{S-1} the optimizer was given is checked
against a claim (an ``OptimizerSpec``: name, lr, momentum, weight decay, betas, eps, and the batch order of
``trajectory.epoch_schedule``) in two parts per step s:

1. **The gradient** is the claimed batch's: ||g_s - grad L_{b_s}(theta_s)|| <= gamma_m(u) ||g_s|| + gamma_m(u64)
   ||grad L_{b_s}||, the backward-stable gradient model of ``fp.rounding_allowance`` (m =
   ``fp.gradient_sum_length``), with grad L_{b_s} recomputed in float64 at the recorded theta_s. A skipped,
   repeated or reordered batch, or other data, is caught here.
2. **The update** is the claimed optimizer's: the optimizer state is replayed in float64 from the recorded
   gradients and iterates (exact quantities x_s: d_s = g_s + lambda theta_s, and the update of gd/sgd
   -eta d_s, of heavy ball -eta b_s with b_0 = d_0, b_s = mu b_{s-1} + d_s, of Adam
   -eta/(1 - beta1^t) m_s / (sqrt(v_s) / sqrt(1 - beta2^t) + eps)), and the residual
   r_s = (theta_{s+1} - theta_s) - x_s is compared elementwise with a floating-point model of torch.optim's
   single-tensor arithmetic (``spec.make``):
       |r_s| <= u (1 + u) |theta_s| + gamma_4 |x_s| + (propagated state error) + (the replay's own error),
   where the state errors follow the recursions derived in docs/theory.md ("whole-trajectory optimizer
   checks"): each state update a_s = c a_{s-1} + c' t_s with k roundings adds gamma_k (c |a_{s-1}| + c' |t_s| +
   |a_s|) and carries the previous error times (c + gamma_k). A wrong lr, mu, beta or eps, a hidden weight
   decay or a changed learning rate at some step is caught here.
The first step that breaks either part is named, with the parameter tensor and entry of its worst coordinate.
Cost: one float64 gradient per step plus O(P) work per step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .curvature import gradient
from .fp import exact_residual, gamma, gradient_sum_length, underflow_unit, unit_roundoff
from .objective import Objective
from .optimizers import OptimizerSpec
from .params import ParamLayout
from .task_vectors import norm
from .trajectory import Trajectory, epoch_schedule

_U64 = 2.0 ** -53


@dataclass(frozen=True)
class StepReport:
    """One step's two checks: max_i |r_i| / model_i of the update, and ||g - grad L_b|| / model."""

    step: int
    batch: int
    update_ratio: float
    gradient_ratio: float
    worst_coordinate: int

    @property
    def holds(self) -> bool:
        """Both ratios are at most 1."""
        return self.update_ratio <= 1.0 and self.gradient_ratio <= 1.0


@dataclass(frozen=True)
class ReplayCheck:
    """The whole trajectory against the claim; ``failure`` names the first step (and parameter) that breaks it."""

    steps: tuple[StepReport, ...]
    failure: str | None

    @property
    def holds(self) -> bool:
        """Every step's update and gradient are within their models."""
        return self.failure is None

    @property
    def max_update_ratio(self) -> float:
        """max over steps of max_i |r_i| / model_i."""
        return max(s.update_ratio for s in self.steps)

    @property
    def max_gradient_ratio(self) -> float:
        """max over steps of ||g_s - grad L_{b_s}|| / model."""
        return max(s.gradient_ratio for s in self.steps)

    def to_dict(self) -> dict:
        """JSON summary: holds, the worst ratios, the failure (or None) and the per-step update ratios."""
        return {"holds": self.holds, "steps": len(self.steps), "max_update_ratio": self.max_update_ratio,
                "max_gradient_ratio": self.max_gradient_ratio, "failure": self.failure,
                "update_ratios": [s.update_ratio for s in self.steps]}


def replay_check(spec: OptimizerSpec, traj: Trajectory, batch_objectives: Sequence[Objective],
                 layout: ParamLayout | None = None, sum_length: int | None = None) -> ReplayCheck:
    """Check every recorded step of ``traj`` against ``spec`` run over ``batch_objectives`` in epoch order.

    ``batch_objectives[b]`` is L_b (any precision; the gradients are recomputed in float64); ``layout`` names
    the parameters in messages; ``sum_length`` is m of the gradient model (default
    ``fp.gradient_sum_length`` of the first objective's model and the largest batch).
    """
    if traj.num_steps == 0:
        raise ValueError("the trajectory has no steps to check")
    dtype = traj.theta0.dtype
    u = unit_roundoff(dtype)
    B = len(batch_objectives)
    schedule = epoch_schedule(B, -(-traj.num_steps // B))[:traj.num_steps]
    f64 = [_float64(f) for f in batch_objectives]
    if sum_length is None:
        sum_length = gradient_sum_length(batch_objectives[0].model, max(len(f) for f in batch_objectives))
    state = _state(spec)
    reports: list[StepReport] = []
    failure = None
    for s, b in enumerate(schedule):
        theta, nxt, g = traj.thetas[s], traj.thetas[s + 1], traj.grads[s]
        exact_g = gradient(f64[b], theta.detach().double())
        gap = norm(g.double() - exact_g)
        g_model = gamma(sum_length, u) * norm(g) + gamma(sum_length, _U64) * norm(exact_g)
        g_ratio = gap / g_model if gap > 0 else 0.0
        x, model = state.step(theta.detach().double(), g.detach().double(), u)
        tau = nxt - theta                                        # exact for float32; float64 rounds (in model)
        r = exact_residual(tau, [x], -1.0)                       # tau - x, x a float64 vector
        model = model + u * (1 + u) * theta.detach().double().abs() + 2 * underflow_unit(dtype)
        model = model + (u * tau.detach().double().abs() if dtype == torch.float64 else 0.0)
        ratio = torch.where(r == 0, torch.zeros_like(model), r.abs() / model)
        worst = int(torch.argmax(ratio))
        report = StepReport(s, b, float(ratio[worst]), g_ratio, worst)
        reports.append(report)
        if failure is None and not report.holds:
            failure = _describe(report, spec, traj.steps_per_epoch, layout)
    return ReplayCheck(tuple(reports), failure)


def _float64(f: Objective) -> Objective:
    if f.x.dtype == torch.float64:
        return f
    target = f.target.double() if f.target.is_floating_point() else f.target
    return Objective(copy.deepcopy(f.model).double(), f.loss, f.x.double(), target)


def _describe(report: StepReport, spec: OptimizerSpec, steps_per_epoch: int, layout: ParamLayout | None) -> str:
    where = f"step {report.step} (epoch {report.step // steps_per_epoch + 1}, batch {report.batch})"
    if report.gradient_ratio > 1:
        return (f"{where}: the gradient the optimizer was given is not grad L_{report.batch} at theta_{report.step} "
                f"(||g - grad L_b|| / model = {report.gradient_ratio:.3g}): a skipped, repeated or reordered "
                "batch, or other data")
    return (f"{where}: the update is not one {spec.name} step with lr {spec.lr:g}"
            + (f", momentum {spec.momentum:g}" if spec.name == "momentum" else "")
            + (f", betas {spec.betas}, eps {spec.eps:g}" if spec.name == "adam" else "")
            + f", weight decay {spec.weight_decay:g} (max |r|/model = {report.update_ratio:.3g} at "
            + _coordinate(report.worst_coordinate, layout) + ")")


def _coordinate(index: int, layout: ParamLayout | None) -> str:
    if layout is None:
        return f"coordinate {index}"
    start = 0
    for name, shape, size in zip(layout.names, layout.shapes, layout.numels, strict=True):
        if index < start + size:
            local = index - start
            entry = []
            for dim in reversed(shape):
                entry.append(local % dim)
                local //= dim
            return f"{name}[{', '.join(map(str, reversed(entry)))}]"
        start += size
    return f"coordinate {index}"


class _Replay:
    """The optimizer's state in float64 and the elementwise bound on how far torch's state may be from it."""

    def __init__(self, spec: OptimizerSpec):
        self.spec = spec
        self.t = 0

    def direction(self, theta: torch.Tensor, g: torch.Tensor, u: float) -> tuple[torch.Tensor, torch.Tensor]:
        """d = g + lambda theta and the bound on |fl(d) - d| (torch: grad.add(param, alpha=lambda))."""
        wd = self.spec.weight_decay
        if not wd:
            return g, torch.zeros_like(g)
        d = g + wd * theta
        err = gamma(2, u) * (g.abs() + wd * theta.abs()) + gamma(2, _U64) * (g.abs() + wd * theta.abs())
        return d, err

    def step(self, theta: torch.Tensor, g: torch.Tensor, u: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact update x_s and the model of |computed update - x_s| beyond the final rounding terms."""
        raise NotImplementedError


class _SGD(_Replay):
    def step(self, theta, g, u):
        d, d_err = self.direction(theta, g, u)
        x = -self.spec.lr * d
        lr = self.spec.lr
        return x, gamma(4, u) * x.abs() + lr * (1 + gamma(4, u)) * d_err + gamma(2, _U64) * x.abs()


class _Momentum(_Replay):
    """b_0 = d_0 (a clone), b_s = mu b_{s-1} + d_s (buf.mul_(mu).add_(d): 3 roundings with mu's)."""

    buf: torch.Tensor
    err: torch.Tensor

    def step(self, theta, g, u):
        d, d_err = self.direction(theta, g, u)
        mu, lr = self.spec.momentum, self.spec.lr
        k = gamma(3, u) + gamma(3, _U64)
        if self.t == 0:
            self.buf, self.err = d.clone(), d_err
        else:
            new = mu * self.buf + d
            self.err = (mu + k) * self.err + k * (mu * self.buf.abs() + d.abs() + new.abs()) + (1 + k) * d_err
            self.buf = new
        self.t += 1
        x = -lr * self.buf
        return x, gamma(4, u) * (x.abs() + lr * self.err) + lr * self.err + gamma(2, _U64) * x.abs()


class _Adam(_Replay):
    """m_s = m + (1 - beta1)(d - m) (lerp), v_s = beta2 v + (1 - beta2) d^2 (mul_, addcmul_), and the step
    -lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps) (addcdiv_).
    """

    m: torch.Tensor
    v: torch.Tensor
    m_err: torch.Tensor
    v_err: torch.Tensor

    def step(self, theta, g, u):
        d, d_err = self.direction(theta, g, u)
        (beta1, beta2), eps, lr = self.spec.betas, self.spec.eps, self.spec.lr
        k = gamma(5, u) + gamma(5, _U64)
        if self.t == 0:
            self.m, self.v = torch.zeros_like(d), torch.zeros_like(d)
            self.m_err, self.v_err = torch.zeros_like(d), torch.zeros_like(d)
        m = beta1 * self.m + (1 - beta1) * d
        v = beta2 * self.v + (1 - beta2) * d * d
        sq_err = (2 * d.abs() + d_err) * d_err                  # |fl(d)^2 - d^2| from |fl(d) - d| alone
        self.m_err = ((beta1 + k) * self.m_err + k * (self.m.abs() + (1 - beta1) * (d.abs() + self.m.abs()) + m.abs())
                      + (1 - beta1) * (1 + k) * d_err)
        self.v_err = (beta2 + k) * self.v_err + k * (beta2 * self.v + (1 - beta2) * d * d + v) + (1 - beta2) * (
            1 + k) * sq_err
        self.m, self.v = m, v
        self.t += 1
        bc1, bc2 = 1 - beta1 ** self.t, math.sqrt(1 - beta2 ** self.t)
        step_size = lr / bc1
        denom = v.sqrt() / bc2 + eps
        # the computed denominator lies within [lo, hi]: v's error, then sqrt, the division and + eps
        c = gamma(4, u) + gamma(4, _U64)
        lo = ((v - self.v_err).clamp(min=0).sqrt() / bc2) * (1 - c) + eps * (1 - c)
        hi = ((v + self.v_err).sqrt() / bc2) * (1 + c) + eps * (1 + c)
        x = -step_size * m / denom
        quotient_err = self.m_err / lo + m.abs() * (1 / lo - 1 / hi)
        c3 = gamma(4, u) + gamma(4, _U64)
        return x, step_size * (1 + c3) * quotient_err + c3 * x.abs()


def _state(spec: OptimizerSpec) -> _Replay:
    if spec.name in ("gd", "sgd"):
        return _SGD(spec)
    if spec.name == "momentum":
        return _Momentum(spec)
    return _Adam(spec)
