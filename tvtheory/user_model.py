"""The checks of the theory on any ``nn.Module``: a user's model, loss and data as a :class:`~tvtheory.problem.Problem`.

``user_problem`` binds a module (timm, open_clip, transformers, or plain torch) to a loss and labelled data so
that the verdict functions of :mod:`tvtheory.theorems` run on it unchanged:

- theta is the flat vector of the *selected* parameters (``select``: name prefixes such as ``"vit.encoder."``;
  default every parameter with ``requires_grad``), in ``named_parameters()`` order. Every other parameter
  (frozen, or outside the selection) and every buffer is a constant of L(theta): on a copy of the module they
  become buffers, so ``torch.func.functional_call`` replaces only the selected tensors.
- L(theta) = (1/N) sum_i l(f(x_i; theta), y_i) with the library's losses (``"ce"``, ``"mse"``: written with
  elementary operations so that Hessian-vector products pass through them) on the model's logits (a tensor, a
  tuple whose first entry is the logits, or a Hugging Face ``ModelOutput`` with ``.logits``).
- The model is evaluated in eval mode (dropout off, batch norm on its running statistics), so L is a
  deterministic function of theta, as the theorems assume.
- Inputs: one tensor (passed positionally) or a dict of tensors (passed as keyword arguments, e.g.
  ``pixel_values`` or ``input_ids`` and ``attention_mask``), N examples each. They are packed into one flat
  row per example (the problem's data is N x d); integer inputs are stored as floats and must be exact there.

Second derivatives: T2(a), T3 and the Hessian norm need Hessian-vector products through the model. Three things
break them: fused attention kernels (torch's ``scaled_dot_product_attention``: no forward-mode or double-backward
formula on CPU; in transformers use ``attn_implementation="eager"``), in-place operations on tensors that a
derivative needs, and operations without a (correct) second derivative (a custom ``autograd.Function``).
``check_second_derivatives`` detects each: it computes H v by forward-over-reverse and reverse-over-reverse
and compares both with a central difference of gradients; any failure is one ``SecondDerivativeError`` line
naming the fix. C^2: T2-T4 need a C^2 network; ``network_activation`` finds the activation modules (ReLU-type
modules make it not C^2), or the caller names it.

T4 (the explicit Hessian bound) covers only the feed-forward MLP of :mod:`tvtheory.models.mlp`; on any other
module it is "n/a" with the reason (``t4_not_applicable``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .activations import ACTIVATIONS, Activation, get_activation
from .curvature import gradient, hessian_norm, hessian_operator, hvp
from .data import Dataset, contiguous_batches, split_by_label
from .fp import gamma, gradient_sum_length
from .objective import Objective
from .optimizers import OptimizerSpec
from .problem import Problem, make_problem
from .task_vectors import norm
from .theorems import Verdict, verify_c1, verify_optimizer, verify_t1, verify_t2, verify_t3
from .trajectory import DivergenceError, run_optimizer

#: A selection of parameters: None (every parameter with requires_grad), one name prefix, or several.
Selection = str | Sequence[str] | None

#: Activation modules that are not C^2 (kinks or jumps in sigma' or sigma''): T2-T4 do not apply.
NOT_C2_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardshrink,
    nn.Softshrink, nn.Tanhshrink, nn.Threshold, nn.ELU, nn.CELU, nn.SELU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)

#: C^2 activation modules whose function is one of the library's activations (by class name, so that
#: third-party classes need not be imported): transformers' GELUActivation is the exact erf GELU.
SMOOTH_MODULES: dict[str, str] = {"Tanh": "tanh", "Sigmoid": "sigmoid", "Softplus": "softplus", "SiLU": "silu",
                                  "SiLUActivation": "silu", "GELUActivation": "gelu"}


class SecondDerivativeError(ValueError):
    """Hessian-vector products fail (or are wrong) through a model; the message names the cause and the fix."""


def select_parameters(module: nn.Module, select: Selection = None) -> list[str]:
    """The names (``named_parameters()`` order) of the parameters that theta holds: those with requires_grad,
    restricted to the names starting with one of the ``select`` prefixes when given.
    """
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    if select is None:
        chosen = trainable
    else:
        prefixes = (select,) if isinstance(select, str) else tuple(select)
        chosen = [name for name in trainable if name.startswith(prefixes)]
    if not chosen:
        shown = ", ".join(trainable[:5]) + (", ..." if len(trainable) > 5 else "")
        raise ValueError(f"no trainable parameter of {type(module).__name__} matches select={select!r}; "
                         f"its trainable parameters are: {shown or 'none'}; give a prefix of these names")
    return chosen


def _constants_except(module: nn.Module, keep: Sequence[str]) -> None:
    """Turn every parameter of ``module`` not named in ``keep`` (nor tied to one) into a buffer, in place."""
    named = dict(module.named_parameters())
    kept = {id(named[name]) for name in keep}
    for owner in module.modules():
        for local, p in list(owner._parameters.items()):
            if p is not None and id(p) not in kept:
                del owner._parameters[local]
                owner.register_buffer(local, p.detach())


def logits_of(out) -> torch.Tensor:
    """The logits of a model output: a tensor, a ``ModelOutput`` / dict with ``logits``, or a tuple's first entry."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ValueError(f"cannot find the logits in a model output of type {type(out).__name__}: return a tensor, a "
                     "tuple starting with the logits, or an object with .logits")


@dataclass(frozen=True)
class InputField:
    """One input of the model inside a flat example row: its keyword (None: positional), shape and dtype."""

    key: str | None
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def width(self) -> int:
        """The number of columns it takes in the flat row."""
        return math.prod(self.shape)


def pack_inputs(inputs: torch.Tensor | Mapping[str, torch.Tensor], dtype: torch.dtype
                ) -> tuple[torch.Tensor, tuple[InputField, ...]]:
    """(x, fields): the inputs as one flat row per example (N x d, in ``dtype``) and how to unpack them.

    Integer inputs (token ids, masks) are stored as floats and must be exactly representable in ``dtype``.
    """
    named = {None: inputs} if isinstance(inputs, torch.Tensor) else dict(inputs)
    if not named:
        raise ValueError("no inputs given: pass a tensor or a dict of tensors, N examples each")
    sizes = {key: t.shape[0] for key, t in named.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"the inputs have different numbers of examples: {sizes}")
    fields, columns = [], []
    for key, t in named.items():
        flat = t.detach().reshape(t.shape[0], -1)
        packed = flat.to(dtype)
        if not t.is_floating_point() and not torch.equal(packed.to(t.dtype), flat):
            raise ValueError(f"input {key or 'x'!r} holds integers that {dtype} cannot represent exactly; "
                             "use dtype=torch.float64")
        fields.append(InputField(key, tuple(t.shape[1:]), t.dtype))
        columns.append(packed)
    return torch.cat(columns, dim=1), tuple(fields)


class ModuleAdaptor(nn.Module):
    """f(x; theta) of a user's module on flat example rows: unpacks the rows into the module's inputs, calls it
    and returns the logits. Its parameters are those of ``module`` that theta holds (``module.<name>``).
    """

    def __init__(self, module: nn.Module, fields: tuple[InputField, ...], act: Activation):
        super().__init__()
        self.module, self.fields, self.act = module, fields, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits f(x; theta) (N x C) for flat rows x (N x d)."""
        parts = torch.split(x, [f.width for f in self.fields], dim=1)
        values = [p.reshape(x.shape[0], *f.shape).to(f.dtype if not f.dtype.is_floating_point else x.dtype)
                  for p, f in zip(parts, self.fields, strict=True)]
        if self.fields[0].key is None:
            return logits_of(self.module(values[0]))
        return logits_of(self.module(**{str(f.key): v for f, v in zip(self.fields, values, strict=True)}))


def network_activation(module: nn.Module, activation: str | None = None) -> Activation:
    """Whether the network is C^2, as an Activation: the one named by ``activation`` (the caller's word), else
    the first not-C^2 module found (``NOT_C2_MODULES``: c1 = c2 = None), else the first known smooth one.

    Raises when neither is found (an activation called functionally, or a module class not listed): then say
    which it is, e.g. ``activation="gelu"`` (any C^2 name for a network without activations), ``"relu"``.
    """
    if activation is not None:
        return get_activation(activation)
    smooth = None
    for name, m in module.named_modules():
        if isinstance(m, NOT_C2_MODULES):
            return Activation(f"{type(m).__name__} (module {name!r})", m, None, None, 0.0)
        kind = SMOOTH_MODULES.get(type(m).__name__)
        if isinstance(m, nn.GELU):
            kind = "gelu" if m.approximate == "none" else None
        if smooth is None and kind is not None:
            smooth = ACTIVATIONS[kind]
    if smooth is None:
        raise ValueError(f"cannot tell whether {type(module).__name__} is C^2: none of its modules is a known "
                         f"activation; pass activation=<name> (one of {', '.join(sorted(ACTIVATIONS))}; 'relu' for "
                         "a network that is not C^2)")
    return smooth


def user_problem(module: nn.Module, loss: str, inputs: torch.Tensor | Mapping[str, torch.Tensor],
                 labels: torch.Tensor, *, select: Selection = None, activation: str | None = None,
                 num_batches: int = 1, seed: int = 0, dtype: torch.dtype | None = None) -> Problem:
    """A Problem on a copy of ``module`` (in eval mode, in ``dtype``, default the module's), its selected
    parameters (``select_parameters``) at their current values as theta_0, ``loss`` ("ce" or "mse") and the
    labelled examples (``labels``: N int64 class indices), split into ``num_batches`` seeded equal batches.

    The number of classes is the width of the logits (one forward pass on the first example).
    """
    if labels.ndim != 1 or labels.dtype != torch.int64:
        raise ValueError(f"labels must be N int64 class indices, got shape {tuple(labels.shape)} {labels.dtype}")
    model = copy.deepcopy(module).eval()
    first = next(model.parameters(), None)
    if first is None:
        raise ValueError(f"{type(module).__name__} has no parameters")
    dtype = dtype or first.dtype
    model = model.to(dtype)
    chosen = select_parameters(model, select)
    _constants_except(model, chosen)
    x, fields = pack_inputs(inputs, dtype)
    if x.shape[0] != labels.shape[0]:
        raise ValueError(f"{x.shape[0]} inputs but {labels.shape[0]} labels")
    adaptor = ModuleAdaptor(model, fields, network_activation(model, activation))
    with torch.no_grad():
        classes = adaptor(x[:1]).shape[-1]
    if int(labels.max()) >= classes or int(labels.min()) < 0:
        raise ValueError(f"labels must lie in 0..{classes - 1} (the model has {classes} logits), got "
                         f"{int(labels.min())}..{int(labels.max())}")
    return make_problem(adaptor, loss, Dataset("user", x, labels, classes), num_batches, seed)


def explain_failure(err: BaseException, model: nn.Module) -> str:
    """One line naming what broke differentiation through ``model`` and the fix."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    lowered = text.lower()
    where = type(getattr(model, "module", model)).__name__
    if "scaled_dot_product" in lowered or "flash_attention" in lowered or "efficient_attention" in lowered:
        return (f"second derivatives fail in {where}'s fused attention kernel ({text}); load the model with "
                "attn_implementation=\"eager\" (transformers) or use a plain softmax(Q K^T / sqrt d) V attention")
    if "inplace" in lowered or "in-place" in lowered or "mutate" in lowered:
        return (f"an in-place operation breaks differentiation through {where} ({text}); use its out-of-place "
                "form (nn.ReLU(inplace=True) -> nn.ReLU(), x += y -> x = x + y)")
    if "autograd.function" in lowered or "setup_context" in lowered or "jvp" in lowered:
        return (f"a custom autograd.Function in {where} has no forward-mode or second derivative ({text}); give it "
                "a jvp and a differentiable backward, or replace it by torch operations")
    return f"Hessian-vector products fail through {where}: {type(err).__name__}: {text}"


class _DtypeRecorder(TorchFunctionMode):
    """Records the torch functions whose floating-point outputs have fewer bits than ``dtype``."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.eps = torch.finfo(dtype).eps
        self.found: dict[str, torch.dtype] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and torch.finfo(t.dtype).eps > self.eps:
                self.found.setdefault(getattr(func, "__name__", str(func)), t.dtype)
        return out


def forward_precision(objective: Objective, theta: torch.Tensor) -> tuple[torch.dtype, tuple[str, ...]]:
    """The lowest floating-point precision that L(theta)'s forward pass computes in, and the functions that
    compute below theta's dtype (e.g. transformers' eager attention takes its softmax in float32).
    """
    with torch.no_grad(), _DtypeRecorder(theta.dtype) as recorder:
        objective(theta)
    lowest = max(recorder.found.values(), key=lambda d: torch.finfo(d).eps, default=theta.dtype)
    return lowest, tuple(sorted(recorder.found))


@dataclass(frozen=True)
class SecondDerivativeProbe:
    """H v by forward-over-reverse and reverse-over-reverse against a central difference of gradients.

    gap_*      ||H v - D(h/2)|| for each HVP, D(h) = (g(theta + h v) - g(theta - h v)) / (2 h)
    tolerance  ||D(h) - D(h/2)|| + gamma_m (||g(theta + h v / 2)|| + ||g(theta - h v / 2)||) / h: the
               truncation error of D(h/2) (D(h) - H v ~ c h^2, so this first term is 3x its Richardson
               estimate) plus the rounding of its two gradients, each accurate to gamma_m ||g|| (the gradient
               model of ``fp.rounding_allowance``, m = ``fp.gradient_sum_length``) with u the unit roundoff of
               the lowest precision the forward computes in (``forward_precision``)
    """

    gap_forward: float
    gap_reverse: float
    tolerance: float
    hv_norm: float
    precision: str              # the lowest precision of the forward pass
    reduced_precision_ops: tuple[str, ...]

    @property
    def holds(self) -> bool:
        """Both HVPs agree with the finite difference within the tolerance."""
        return max(self.gap_forward, self.gap_reverse) <= self.tolerance

    @property
    def margin(self) -> float:
        """max gap / tolerance (<= 1 required)."""
        return max(self.gap_forward, self.gap_reverse) / self.tolerance


def probe_second_derivatives(objective: Objective, theta: torch.Tensor, seed: int = 0) -> SecondDerivativeProbe:
    """``SecondDerivativeProbe`` along a seeded random unit direction v, with h = u^(1/3) max(1, ||theta||_inf)
    (the step that balances truncation and rounding of a central difference), u = 2^-p of the lowest precision
    of the forward pass (``fp.unit_roundoff`` for float32 and float64).
    """
    lowest, reduced = forward_precision(objective, theta)
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    v = (v / torch.linalg.vector_norm(v)).to(theta.dtype)
    u = torch.finfo(lowest).eps / 2
    h = u ** (1 / 3) * max(1.0, float(theta.abs().max()))
    forward = hvp(objective, theta, v)
    reverse = torch.as_tensor(hessian_operator(objective, theta).matvec(v.double().numpy()), dtype=theta.dtype)

    def central(step: float) -> tuple[torch.Tensor, float]:
        plus, minus = gradient(objective, theta + step * v), gradient(objective, theta - step * v)
        return (plus - minus) / (2 * step), norm(plus) + norm(minus)

    d_h, _ = central(h)
    d_half, grad_norms = central(h / 2)
    m = gradient_sum_length(objective.model, len(objective))
    tolerance = norm(d_h - d_half) + gamma(m, u) * grad_norms / h
    return SecondDerivativeProbe(norm(forward - d_half), norm(reverse - d_half), tolerance, norm(forward),
                                 str(lowest).removeprefix("torch."), reduced)


def check_second_derivatives(problem: Problem, seed: int = 0) -> Verdict:
    """``probe_second_derivatives`` at theta_0 in float64, as a Verdict "HVP" (margin: gap / tolerance); a
    ``SecondDerivativeError`` (one line: the cause and the fix) when an HVP raises or disagrees with the finite
    difference.
    """
    p64 = problem.to(torch.float64)
    where = type(getattr(problem.model, "module", problem.model)).__name__
    try:
        probe = probe_second_derivatives(p64.objective, p64.theta0, seed)
    except (RuntimeError, NotImplementedError) as err:
        raise SecondDerivativeError(explain_failure(err, problem.model)) from None
    gap = max(probe.gap_forward, probe.gap_reverse)
    if not probe.holds:
        raise SecondDerivativeError(
            f"Hessian-vector products through {where} disagree with a finite difference of gradients "
            f"(||Hv - FD|| = {gap:.3g} > tolerance {probe.tolerance:.3g}, ||Hv|| = {probe.hv_norm:.3g}): an "
            "operation has a wrong or missing second derivative (a custom autograd.Function, or a detach inside "
            "the forward); replace it by differentiable torch operations")
    note = ("" if not probe.reduced_precision_ops else
            f"; part of the forward runs in {probe.precision} ({', '.join(probe.reduced_precision_ops)}), so "
            f"the float64 checks see {probe.precision} rounding there")
    return Verdict("HVP", True, probe.margin,
                   f"H v (forward-over-reverse and reverse-over-reverse) = central difference of gradients: "
                   f"max gap/tolerance = {probe.margin:.3g} (<= 1 required), ||Hv|| = {probe.hv_norm:.3g}{note}",
                   {"probe": asdict(probe)})


def t4_not_applicable(problem: Problem) -> Verdict:
    """T4 on a user's module: n/a, with the reason."""
    where = type(getattr(problem.model, "module", problem.model)).__name__
    return Verdict("T4", None, None, f"T4 (explicit Hessian bound) does not apply: it covers the feed-forward "
                   f"MLP h_l = sigma(W_l h_(l-1) + b_l) of tvtheory.models.mlp, and {where} is another network; "
                   "so no rigorous M_j, no T2(c)/T3 bound and no dominance number eta*M*k (E_k and the "
                   "remainder slopes are measured by Hessian-vector products)")


def check_module(problem: Problem, lr: float, epochs: int = 5, spec: OptimizerSpec | None = None,
                 tasks: int = 2, t3_batches: int = 4) -> dict[str, Verdict]:
    """The CLI's verdicts on a user's problem: T1, C1 (``tasks`` tasks split by label mod T), T2 (``epochs``
    epochs of full-batch GD), T3 (one epoch of ``t3_batches`` batches), T4 (n/a) and the identity of the
    optimizer ``spec`` (default full-batch GD at ``lr``) over ``epochs`` epochs of the problem's batches.

    Second derivatives are probed first when the network is C^2 (``check_second_derivatives``, verdict "HVP").
    """
    spec = spec or OptimizerSpec("gd", lr)
    smooth = problem.act.is_c2
    verdicts = {"HVP": check_second_derivatives(problem)} if smooth else {}
    p64 = problem.to(torch.float64)
    h0 = hessian_norm(p64.objective, p64.theta0).value if smooth else None
    B = problem.num_batches
    batches = None if B == 1 else contiguous_batches(len(problem.objective), B)
    checks: list[tuple[str, Callable[[], Verdict]]] = [
        ("T1", lambda: verify_t1(problem, lr)),
        ("C1", lambda: verify_c1(problem, lr, split_by_label(problem.data, tasks))),
        ("T2", lambda: verify_t2(problem, lr, epochs, h0)),
        ("T3", lambda: verify_t3(problem, lr, t3_batches, hessian_norm=h0 if B == 1 else None)),
        ("T4", lambda: t4_not_applicable(problem)),
        ("optimizer", lambda: verify_optimizer(problem, spec, run_optimizer(
            problem.objective, problem.theta0, spec.make, epochs, batches, lr_for_messages=lr))),
    ]
    for name, check in checks:
        try:
            verdicts[name] = check()
        except (ValueError, DivergenceError) as err:
            raise type(err)(f"{name} check: {err}") from err
    return verdicts


def format_verdicts(verdicts: Mapping[str, Verdict]) -> str:
    """One line per statement, as the CLI prints them."""
    return "\n".join(f"{name:>9}: {v.label:5}  {v.message}" for name, v in verdicts.items())
