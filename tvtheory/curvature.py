"""Gradients, Hessian-vector products and the Hessian spectral norm, without forming H.

- ``hvp(f, theta, v)`` = H(theta) v by forward-over-reverse differentiation: the directional derivative
  of grad f along v, ``jvp(grad(f), theta, v)``. Cost: about 2-3 gradient evaluations, memory O(P).
- ``hessian_norm`` = ||H(theta)||_2 = max |eigenvalue|, by Lanczos (ARPACK ``eigsh``) on a
  ``LinearOperator`` of HVPs (``hessian_operator``, which reuses one gradient graph for all products);
  a dense eigendecomposition only where P is small. It returns a ``HessianNorm``: the value, the number
  of Hessian-vector products made and the method used.
- ``dense_hessian`` materialises H (P x P) and refuses above ``max_params``: use it for checks only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch.func import grad, hessian, jvp

ScalarFn = Callable[[torch.Tensor], torch.Tensor]

DENSE_HESSIAN_MAX_PARAMS = 5_000


def gradient(f: ScalarFn, theta: torch.Tensor) -> torch.Tensor:
    """grad f(theta)."""
    return grad(f)(theta)


def hvp(f: ScalarFn, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H(theta) v with H = hess f, by forward-over-reverse (one jvp of the gradient)."""
    if v.shape != theta.shape:
        raise ValueError(f"direction v has shape {tuple(v.shape)}, expected {tuple(theta.shape)} like theta")
    return jvp(grad(f), (theta,), (v.to(theta.dtype),))[1]


def dense_hessian(f: ScalarFn, theta: torch.Tensor, max_params: int = DENSE_HESSIAN_MAX_PARAMS) -> torch.Tensor:
    """hess f(theta) as a P x P matrix; refuses P > max_params (use hvp / hessian_norm)."""
    p = theta.numel()
    if p > max_params:
        raise ValueError(
            f"refusing to materialise a {p} x {p} Hessian (P = {p} > max_params = {max_params}); "
            "use hvp() or hessian_norm(), which need only Hessian-vector products"
        )
    h = hessian(f)(theta)
    return 0.5 * (h + h.T)


def hessian_operator(f: ScalarFn, theta: torch.Tensor) -> LinearOperator:
    """H(theta) as a scipy LinearOperator over float64 numpy vectors, for many products at one point.

    The gradient graph at theta is built once; each matvec is then one backward pass through it
    (reverse-over-reverse), about 5x cheaper per product than a fresh ``hvp`` on small networks.
    """
    point = theta.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        g = torch.autograd.grad(f(point), point, create_graph=True)[0]

    def matvec(v: np.ndarray) -> np.ndarray:
        w = torch.as_tensor(np.ascontiguousarray(v).reshape(-1), device=theta.device).to(theta.dtype)
        if not g.requires_grad:             # the gradient does not depend on theta: H = 0
            return np.zeros(theta.numel())
        (hv,) = torch.autograd.grad(g, point, w, retain_graph=True, allow_unused=True)
        return np.zeros(theta.numel()) if hv is None else hv.detach().cpu().double().numpy()

    return LinearOperator((theta.numel(), theta.numel()), matvec=matvec, rmatvec=matvec, dtype=np.float64)


@dataclass(frozen=True)
class HessianNorm:
    """||H(theta)||_2 as ``hessian_norm`` computed it.

    value     max_i |lambda_i(H)|: exact up to rounding for method "dense"; a lower estimate for "lanczos"
    products  the Hessian-vector products made (matvecs of ``hessian_operator``); forming the dense Hessian
              is not counted, so a "dense" result has 0 unless a product was made first to find H = 0
    method    "dense" (eigvalsh of the dense Hessian) or "lanczos" (ARPACK eigsh on products)
    """

    value: float
    products: int
    method: str


def hessian_norm(
    f: ScalarFn,
    theta: torch.Tensor,
    *,
    method: str = "auto",
    tol: float = 1e-8,
    maxiter: int | None = None,
    seed: int = 0,
) -> HessianNorm:
    """||hess f(theta)||_2 = max_i |lambda_i|, with the number of Hessian-vector products it took.

    method "dense": eigvalsh of the dense Hessian (P <= 5,000); "lanczos": ARPACK eigsh on HVPs,
    largest magnitude, started from a seeded random vector; "auto": dense for P <= 200, else lanczos.
    Lanczos converges from below, so a Lanczos value is a lower estimate of the true norm. Lanczos with
    P < 3 (ARPACK needs k < P - 1) is done densely. Before ARPACK starts, one product H v0 checks for H = 0
    (ARPACK cannot start from H v0 = 0): then the norm is 0 (P > 5,000) or found densely.
    """
    p = theta.numel()
    if method == "auto":
        method = "dense" if p <= 200 else "lanczos"
    if method == "dense":
        return HessianNorm(_dense_norm(f, theta), 0, "dense")
    if method != "lanczos":
        raise ValueError(f"unknown method {method!r}; use 'auto', 'dense' or 'lanczos'")
    if p < 3:
        return HessianNorm(_dense_norm(f, theta), 0, "dense")
    hv = hessian_operator(f, theta)
    products = 0

    def counted(v: np.ndarray) -> np.ndarray:
        nonlocal products
        products += 1
        return hv.matvec(v)

    operator = LinearOperator(hv.shape, matvec=counted, rmatvec=counted, dtype=hv.dtype)
    v0 = np.random.default_rng(seed).standard_normal(p)
    if not np.any(operator.matvec(v0)):
        # H v0 = 0 for a random v0: H is (almost surely) zero, e.g. a constant loss; ARPACK cannot start
        if p > DENSE_HESSIAN_MAX_PARAMS:
            return HessianNorm(0.0, products, "lanczos")
        return HessianNorm(_dense_norm(f, theta), products, "dense")
    try:
        vals = eigsh(operator, k=1, which="LM", v0=v0, tol=tol, maxiter=maxiter, return_eigenvectors=False)
    except ArpackNoConvergence as err:  # keep the best Ritz value found: still a lower estimate
        if len(err.eigenvalues) == 0:
            raise
        vals = err.eigenvalues
    return HessianNorm(float(np.abs(vals).max()), products, "lanczos")


def _dense_norm(f: ScalarFn, theta: torch.Tensor) -> float:
    """max |eigvalsh| of the dense Hessian, in float64."""
    return float(torch.linalg.eigvalsh(dense_hessian(f, theta).double()).abs().max())
