"""Gradients, Hessian-vector products and the Hessian spectral norm, without forming H.

One implementation of the product H(theta) v, by double backward (reverse-over-reverse): build the gradient
g(theta) = grad f(theta) with its graph (``create_graph``), then H v = d(g . v)/d theta is one backward pass
through that graph, the vjp of g along v (H is symmetric, so this is H v, not only H^T v). Every function
below is that product:
- ``hvp(f, theta, v)``: one product at a fresh point (graph built, used once, freed). Measured the fastest
  fresh product on CPU, MLPs of 1e3-1e6 parameters and a ViT: 1.1-2.5 gradients, against 2.2-4.1 for
  forward-over-reverse ``jvp(grad(f))`` (docs/performance.md); memory O(P + activations).
- ``hessian_operator(f, theta)``: many products at one point, as a scipy ``LinearOperator``; the graph is
  built once and each matvec is one backward pass (0.5-1.5 gradients); ``matmat`` batches the columns with
  vmap (``is_grads_batched``), ``DENSE_CHUNK`` at a time.
- ``dense_hessian``: H (P x P) as the operator's products with the unit vectors, in batches of
  ``DENSE_CHUNK``; refuses above ``max_params``: use it for checks only.
- ``hessian_norm`` = ||H(theta)||_2 = max |eigenvalue|, by Lanczos (ARPACK ``eigsh``, with
  ``tvtheory.spectral.BLAS_THREADS`` BLAS threads) on ``hessian_operator``; a dense eigendecomposition only
  where P is small. It returns a ``HessianNorm``: the value, the number of products made and the method.
- ``top_eigenpair``: the ARPACK call behind it, on any float64 matvec (T6's level estimate uses it too).

Why not ``torch.func.hessian``: in torch 2.13 every Hessian whose inner derivative is ``jacrev`` (hessian =
jacfwd(jacrev), jacrev(jacrev), jvp or vjp of jacrev) is wrong through ``layer_norm`` when the LayerNorm
input depends on the parameters: the vmap rule of layer_norm's backward, differentiated again, drops part of
the input x weight cross term (rows of the LayerNorm weight off by 10-40 %; relative error 7e-3 on the
tests' tiny ViT). ``grad``-based orders (jvp(grad), vjp(grad), jacrev(grad), double backward, batched or
not) are right; tests/test_curvature.py keeps a minimal reproduction that fails when torch fixes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch.func import grad

from .spectral import blas_threads

ScalarFn = Callable[[torch.Tensor], torch.Tensor]

DENSE_HESSIAN_MAX_PARAMS = 5_000
#: unit vectors per batched (vmapped) backward pass of ``dense_hessian`` and of the operator's matmat:
#: 16-64 measured equally fast on the tiny ViT and MLPs of 1e3 parameters; larger batches only add memory
DENSE_CHUNK = 32


def gradient(f: ScalarFn, theta: torch.Tensor) -> torch.Tensor:
    """grad f(theta)."""
    return grad(f)(theta)


def _gradient_graph(f: ScalarFn, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(point, g): a leaf ``point`` = theta (same storage, no copy) and g = grad f(point) with its graph."""
    point = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        g = torch.autograd.grad(f(point), point, create_graph=True)[0]
    return point, g


def _products(point: torch.Tensor, g: torch.Tensor, v: torch.Tensor, *, batched: bool, retain: bool) -> torch.Tensor:
    """H v by one backward pass through g's graph (v: P, or c x P with ``batched``: c products in one vmapped
    pass). H = 0 when g does not depend on theta.
    """
    if not g.requires_grad:
        return torch.zeros_like(v)
    (hv,) = torch.autograd.grad(g, point, v, retain_graph=retain, allow_unused=True, is_grads_batched=batched)
    return torch.zeros_like(v) if hv is None else hv


def hvp(f: ScalarFn, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H(theta) v with H = hess f, by double backward on a fresh gradient graph (see the module docstring)."""
    if v.shape != theta.shape:
        raise ValueError(f"direction v has shape {tuple(v.shape)}, expected {tuple(theta.shape)} like theta")
    point, g = _gradient_graph(f, theta)
    return _products(point, g, v.to(theta.dtype), batched=False, retain=False)


def dense_hessian(f: ScalarFn, theta: torch.Tensor, max_params: int = DENSE_HESSIAN_MAX_PARAMS) -> torch.Tensor:
    """hess f(theta) as a P x P matrix, symmetrised (H + H^T) / 2; refuses P > max_params (use hvp /
    hessian_norm). Row i is H e_i, by the batched product of one gradient graph, ``DENSE_CHUNK`` rows a pass.
    """
    p = theta.numel()
    if p > max_params:
        raise ValueError(
            f"refusing to materialise a {p} x {p} Hessian (P = {p} > max_params = {max_params}); "
            "use hvp() or hessian_norm(), which need only Hessian-vector products"
        )
    point, g = _gradient_graph(f, theta)
    eye = torch.eye(p, dtype=theta.dtype, device=theta.device)
    h = torch.cat([_products(point, g, eye[i:i + DENSE_CHUNK], batched=True, retain=True)
                   for i in range(0, p, DENSE_CHUNK)])
    return 0.5 * (h + h.T)


def hessian_operator(f: ScalarFn, theta: torch.Tensor) -> LinearOperator:
    """H(theta) as a scipy LinearOperator over float64 numpy vectors, for many products at one point.

    The gradient graph at theta is built once; each matvec is then one backward pass through it, each
    matmat one vmapped pass per ``DENSE_CHUNK`` columns. float64 vectors pass to and from torch without a
    copy when theta is float64.
    """
    point, g = _gradient_graph(f, theta)
    p = theta.numel()

    def to_torch(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(theta.device, theta.dtype)

    def to_numpy(x: torch.Tensor) -> np.ndarray:
        return x.detach().to("cpu", torch.float64).numpy()

    def matvec(v: np.ndarray) -> np.ndarray:
        return to_numpy(_products(point, g, to_torch(v).reshape(p), batched=False, retain=True))

    def matmat(m: np.ndarray) -> np.ndarray:
        cols = to_torch(m.T)
        return to_numpy(torch.cat([_products(point, g, cols[i:i + DENSE_CHUNK], batched=True, retain=True)
                                   for i in range(0, cols.shape[0], DENSE_CHUNK)])).T

    return LinearOperator((p, p), matvec=matvec, rmatvec=matvec, matmat=matmat, rmatmat=matmat, dtype=np.float64)


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

    v0 = np.random.default_rng(seed).standard_normal(p)
    top = top_eigenpair(counted, v0, tol=tol, maxiter=maxiter)
    if top is None:
        # H v0 = 0 for a random v0: H is (almost surely) zero, e.g. a constant loss; ARPACK cannot start
        if p > DENSE_HESSIAN_MAX_PARAMS:
            return HessianNorm(0.0, products, "lanczos")
        return HessianNorm(_dense_norm(f, theta), products, "dense")
    return HessianNorm(top[0], products, "lanczos")


def top_eigenpair(matvec: Callable[[np.ndarray], np.ndarray], v0: np.ndarray, *, tol: float,
                  maxiter: int | None = None, vectors: bool = False) -> tuple[float, np.ndarray | None] | None:
    """max_i |lambda_i| of a symmetric operator (float64 ``matvec``) by ARPACK ``eigsh`` (largest magnitude, from
    v0, with ``tvtheory.spectral.BLAS_THREADS`` BLAS threads), and its Ritz vector when ``vectors``.

    None when A v0 = 0 (one product; ARPACK cannot start from it). Where ARPACK does not converge the best Ritz
    pair found is kept (a lower estimate still); ArpackNoConvergence is raised only when there is none.
    """
    n = v0.shape[0]
    if not np.any(matvec(v0)):
        return None
    operator = LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=np.float64)
    vecs = None
    try:
        with blas_threads():
            found = eigsh(operator, k=1, which="LM", v0=v0, tol=tol, maxiter=maxiter, return_eigenvectors=vectors)
        vals, vecs = found if vectors else (found, None)
    except ArpackNoConvergence as err:
        if len(err.eigenvalues) == 0:
            raise
        vals, vecs = err.eigenvalues, (err.eigenvectors if vectors else None)
    return float(np.abs(vals).max()), None if vecs is None else vecs[:, 0]


def _dense_norm(f: ScalarFn, theta: torch.Tensor) -> float:
    """max |eigvalsh| of the dense Hessian, in float64 (0 without an eigensolver when H is exactly zero)."""
    h = dense_hessian(f, theta).double()
    return float(torch.linalg.eigvalsh(h).abs().max()) if bool(h.any()) else 0.0
