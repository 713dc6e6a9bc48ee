"""The curvature step-size rule of the vision pipeline (``tvtheory.experiments.step_size``) against a dense
eigenvalue: lambda_hat of ``sharpness`` (power iteration on Hessian-vector products over memory-sized chunks)
and the exact spectrum of the Hessian of the mean cross-entropy, float64, on a frozen-head ViT small enough
(P = 400) for a dense Hessian and ``torch.linalg.eigh``.

The dense Hessian is ``tvtheory.curvature.dense_hessian`` (double-backward columns, correct through LayerNorm;
``torch.func.hessian`` is not, see ``tests/test_curvature.py``), checked against forward-over-reverse products
``jvp(grad(f))``, another AD mode.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from cases import TINY_ENCODER, tiny_data

from tvtheory.curvature import dense_hessian
from tvtheory.experiments.dist import DistContext
from tvtheory.experiments.errors import VisionError
from tvtheory.experiments.probe import FrozenHeadClassifier
from tvtheory.experiments.step_size import LR_SCALE, learning_rate, sharpness
from tvtheory.losses import get_loss
from tvtheory.models.vit import ViT
from tvtheory.objective import Objective
from tvtheory.params import flat_params

# TINY_ENCODER narrowed to dim 4 (2 heads of 2, MLP 8): P = 400, a 400 x 400 Hessian in well under a second.
SMALL = dataclasses.replace(TINY_ENCODER, dim=4, mlp_dim=8)
N, CHUNK, SEED = 24, 7, 0

# Rounding: R_k from chunked autograd HVPs vs the same quotient from the dense Hessian, float64. Each entry of
# H v is a sum of P = 400 products, so the two orders of evaluation differ by about P u ||H|| ||v|| with
# u = 2^-53 (4.4e-14 ||H||); 1e-11 |lambda_1| leaves a factor of ~200 for the chunk sums and the backward
# passes, and is far below the smallest power-iteration error tested (1e-8 |lambda_1|).
ROUNDING = 1e-11


def _model() -> FrozenHeadClassifier:
    """A seeded frozen-head ViT with weights larger than the 0.02 init (visible curvature), float64."""
    torch.manual_seed(0)
    enc = ViT(SMALL).double()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(100)
    return FrozenHeadClassifier(enc, torch.randn(3, SMALL.dim, generator=g, dtype=torch.float64),
                                torch.randn(3, generator=g, dtype=torch.float64))


@pytest.fixture(scope="module")
def spectrum():
    """The model, its data, the start vector of ``sharpness`` and the eigen-decomposition of the dense Hessian."""
    model = _model()
    x, y = tiny_data(N)
    theta = flat_params(model)
    assert theta.numel() == 400 and theta.dtype == torch.float64
    f = Objective(model, get_loss("ce"), x, y)
    h = dense_hessian(f, theta)
    g = torch.Generator().manual_seed(7)
    for _ in range(3):                              # two AD modes agree to rounding (module docstring)
        v = torch.randn(theta.numel(), generator=g, dtype=torch.float64)
        forward_over_reverse = torch.func.jvp(torch.func.grad(f), (theta,), (v,))[1]
        assert float((h @ v - forward_over_reverse).norm()) <= 1e-12 * float((h @ v).norm())
    evals, evecs = torch.linalg.eigh(h)
    order = torch.argsort(evals.abs(), descending=True)
    # the start vector, drawn as sharpness draws it (subset = N: every example, then v_0); the test below checks
    # that it is the one used, through R_0 = v_0^T H v_0
    g = torch.Generator().manual_seed(SEED)
    torch.randperm(N, generator=g)
    v0 = torch.randn(theta.numel(), generator=g, dtype=torch.float64)
    v0 = v0 / v0.norm()
    return {"model": model, "x": x, "y": y, "h": h, "lam": evals[order], "u1": evecs[:, order[0]], "v0": v0}


def _bound(s, k: int) -> float:
    """2 |lambda_1| tan^2(theta_0) rho^(2k) (module docstring)."""
    lam = s["lam"]
    c1 = float(s["u1"] @ s["v0"])
    rho = float(lam[1].abs() / lam[0].abs())
    return 2 * float(lam[0].abs()) * (1 - c1 ** 2) / c1 ** 2 * rho ** (2 * k)


def _iterations_for(s, target: float) -> int:
    """The smallest t with bound(t - 1) <= target * |lambda_1|."""
    lam, c1 = s["lam"], float(s["u1"] @ s["v0"])
    rho = float(lam[1].abs() / lam[0].abs())
    k = math.log(target / (2 * (1 - c1 ** 2) / c1 ** 2)) / (2 * math.log(rho))
    return max(1, math.ceil(k) + 1)


def test_power_iteration_converges_to_the_dense_eigenvalue_at_the_predicted_rate(spectrum):
    """t iterations with the bound 2 |lambda_1| tan^2(theta_0) rho^(2(t-1)) <= 1e-8 |lambda_1| (here rho = 0.30,
    c_1 = 0.029, t = 12); every Rayleigh quotient R_0 .. R_{t-1} within its own bound and, in magnitude, below
    |lambda|_max; lambda_hat = |R_{t-1}| within 1e-8 of |lambda|_max. The pipeline's 10 iterations are R_0 .. R_9."""
    s = spectrum
    lam1 = float(s["lam"][0])
    scale = abs(lam1)
    rho = float(s["lam"][1].abs() / s["lam"][0].abs())
    assert rho < 0.9, "the test needs a spectral gap for the rate to say anything"
    t = _iterations_for(s, 1e-8)
    assert 10 <= t <= 60                        # covers the pipeline's 10; rho^2 small enough to stay fast
    out = sharpness(s["model"], s["x"], s["y"], DistContext(), CHUNK, subset=N, iterations=t, seed=SEED)
    assert out["subset"] == N and out["iterations"] == t and len(out["history"]) == t
    assert out["history"][0] == pytest.approx(float(s["v0"] @ s["h"] @ s["v0"]), abs=ROUNDING * scale)
    for k, r in enumerate(out["history"]):
        assert abs(r - lam1) <= _bound(s, k) + ROUNDING * scale, k
        assert abs(r) <= scale * (1 + ROUNDING), k      # a Rayleigh quotient never exceeds |lambda|_max
    assert out["lambda"] == abs(out["history"][-1])
    assert _bound(s, t - 1) <= 1e-8 * scale
    assert abs(out["lambda"] - scale) <= 1e-8 * scale + ROUNDING * scale


def test_learning_rate_is_c_over_lambda_and_refuses_a_flat_or_broken_estimate():
    for lam in (1.0, 3.7, 2.5e4, 1e-3):
        for c in LR_SCALE.values():
            assert learning_rate(lam, c) == c / lam
    for lam in (float("nan"), 0.0, float("inf"), -float("inf"), -2.0):
        with pytest.raises(VisionError, match="cannot set the learning rate") as e:
            learning_rate(lam, 1.0)
        assert isinstance(e.value, ValueError) and "--lr-gd" in str(e.value)

