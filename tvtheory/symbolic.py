"""Symbolic (sympy) proofs of the exact algebraic statements of T2 and T3.

Every function here is pure: it builds the gradient-descent iterates symbolically, compares them with
the formula of docs/theory.md, and returns a record of what was proven. A check counts as proven only
when sympy reduces the difference to exactly 0; anything else is reported as ``False`` (not proven).

Truncation. Several checks work "modulo eta^(n+1)": every polynomial in eta is cut after the eta^n
term after each step. Cutting is a ring homomorphism (a product never lowers the degree in eta), so the
coefficients of eta^0..eta^n are exactly those of the untruncated iterates; it only keeps the
expressions small.

Noncommutative symbols model matrices and vectors: ``H*g`` is a Hessian-vector product, and a
symmetric third-derivative tensor applied to (u, v) is modelled by the word ``T*u*v``, which is linear
in u and in v. In these computations every vector is a word ending in a gradient symbol ``g``, so a
word such as ``T*H*g*g`` has exactly one reading (T[Hg, g]); equal words therefore mean equal terms
for every choice of matrices and tensors.

The ``step`` arguments exist so that the proofs can be seen to fail: pass a deliberately wrong update
and the record says ``False``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sympy as sp

Step = Callable[[sp.Expr, sp.Expr, sp.Expr], sp.Expr]

ETA, H_SCALAR = sp.symbols("eta h")


def gd_step(x: sp.Expr, eta: sp.Expr, grad: sp.Expr) -> sp.Expr:
    """One gradient-descent update x - eta * grad (the update whose iterates T2 and T3 describe)."""
    return x - eta * grad


def _is_zero(expr: sp.Expr) -> bool:
    """True when sympy proves ``expr`` identically 0 (expand first, simplify only if needed)."""
    expanded = sp.expand(expr)
    return expanded == 0 or sp.simplify(expanded) == 0


def _truncate(expr: sp.Expr, order: int, eta: sp.Symbol = ETA) -> sp.Expr:
    """Drop every term of degree > ``order`` in the commutative symbol ``eta`` (works for nc terms)."""
    kept = []
    for term in sp.Add.make_args(sp.expand(expr)):
        commutative, _ = term.args_cnc()
        if sp.Mul(*commutative).as_powers_dict().get(eta, 0) <= order:
            kept.append(term)
    return sp.Add(*kept)


def _record(theorem: str, cases: dict, conditions: Sequence[bool], **fields: object) -> dict:
    """A proof's record {"theorem": ..., **fields, "proven": ...}: proven when every check of every case
    (``cases[n]`` maps check names to bools) and every extra condition came out True.
    """
    proven = all(all(checks.values()) for checks in cases.values()) and all(conditions)
    return {"theorem": theorem, **fields, "proven": proven}


def _coefficients(expr: sp.Expr, order: int, eta: sp.Symbol = ETA) -> list[sp.Expr]:
    """Coefficients of eta^0 .. eta^order of an expanded (possibly noncommutative) polynomial."""
    expanded = sp.expand(expr)
    return [expanded.coeff(eta, n) for n in range(order + 1)]


# ---------------------------------------------------------------------------------------------------
# T2(b): quadratic losses, exact finite series
# ---------------------------------------------------------------------------------------------------


def quadratic_gd_series(k: int) -> sp.Expr:
    """T2(b) coefficient polynomial p_k(h) = sum_{m=0}^{k-1} (-1)^(m+1) eta^(m+1) C(k, m+1) h^m.

    For a quadratic loss with Hessian H and gradient g at theta_0, k full-batch GD steps give
    tau^(k) = p_k(H) g exactly (T2(b)); eta and h are commuting scalar symbols.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return sp.Add(
        *[(-1) ** (m + 1) * ETA ** (m + 1) * sp.binomial(k, m + 1) * H_SCALAR**m for m in range(k)]
    )


def prove_quadratic_series(k_max: int = 6, step: Step = gd_step) -> dict:
    """Prove T2(b): tau^(k) = sum_{m=0}^{k-1} (-1)^(m+1) eta^(m+1) C(k, m+1) H^m g for quadratic L.

    For L(theta_0 + delta) = L_0 + g.delta + delta^T H delta / 2 the gradient is g + H delta. Every GD
    iterate has the form delta_j = p_j(H) g, and delta_{j+1} = delta_j - eta (g + H delta_j) becomes
    p_0 = 0, p_{j+1} = p_j - eta (1 + h p_j). Polynomials in the one matrix H commute, so running this
    recursion with a scalar symbol h is exact.

    * per k = 1..k_max: the recursion is iterated and ``expand(p_k - quadratic_gd_series(k)) == 0``.
    * all k >= 0 (induction with a symbolic integer k): the closed form P_k = ((1 - eta h)^k - 1)/h
      satisfies P_0 = 0 and P_{k+1} = P_k - eta (1 + h P_k) identically, so P_k = p_k for every k.
      The binomial theorem, (1 - eta h)^k = sum_{j=0}^k C(k, j) (-eta h)^j, turns P_k into the finite
      series: P_k = sum_{j=1}^k C(k, j) (-eta)^j h^(j-1) = quadratic_gd_series(k) (a polynomial, so the
      division by h is harmless). The per-k checks also confirm expand(P_k) == series for k <= k_max.
    """
    k = sp.Symbol("k", integer=True, nonnegative=True)
    closed = ((1 - ETA * H_SCALAR) ** k - 1) / H_SCALAR

    per_k: dict[int, bool] = {}
    closed_matches: dict[int, bool] = {}
    p = sp.Integer(0)
    for j in range(1, k_max + 1):
        p = sp.expand(step(p, ETA, 1 + H_SCALAR * p))
        per_k[j] = _is_zero(p - quadratic_gd_series(j))
        closed_matches[j] = _is_zero(sp.cancel(closed.subs(k, j)) - quadratic_gd_series(j))

    base = _is_zero(closed.subs(k, 0))
    induction = _is_zero(closed.subs(k, k + 1) - step(closed, ETA, 1 + H_SCALAR * closed))
    all_k = base and induction
    return {
        "theorem": "T2(b)",
        "k_max": k_max,
        "per_k": per_k,
        "closed_form_equals_series": closed_matches,
        "all_k_closed_form": all_k,
        "proven": all(per_k.values()) and all(closed_matches.values()) and all_k,
    }


# ---------------------------------------------------------------------------------------------------
# T2(a): second-order coefficient for general (three times differentiable) losses
# ---------------------------------------------------------------------------------------------------


def _gd_iterates_mod_eta(grad: Callable[[sp.Expr], sp.Expr], k: int, order: int, step: Step) -> sp.Expr:
    """delta_k of k GD steps from delta_0 = 0, computed modulo eta^(order+1)."""
    delta = sp.Integer(0)
    for _ in range(k):
        delta = _truncate(step(delta, ETA, grad(delta)), order)
    return delta


def prove_second_order_coefficient(k_max: int = 6, step: Step = gd_step) -> dict:
    """Prove T2(a): tau^(k) = -k eta g + eta^2 C(k,2) H g + O(eta^3), and compute the eta^3 term.

    1-D check. L(x) = g x + h x^2/2 + t x^3/6 has L'(0) = g, L''(0) = h, L'''(0) = t; k GD steps from
    0 are expanded in eta (exactly, modulo eta^4) and the coefficients are compared:
        eta^1: -k g,      eta^2: C(k,2) h g,
        eta^3: -C(k,3) h^2 g - (t g^2 / 2) sum_{j<k} j^2   (nonzero in general: R_k = O(eta^3) only).
    A Taylor term of order >= 4 in x enters at eta^4 at the earliest (x = O(eta)), so the cubic
    polynomial is general enough for the coefficients up to eta^3.

    Matrix check (noncommutative symbols, no commuting assumption). grad L(theta_0 + d) =
    g + H d + T[d, d]/2 + O(|d|^3) with H the Hessian and T the third-derivative tensor (T[u, v] is the
    word T*u*v). The same coefficients hold with h^2 g -> H^2 g and t g^2 -> T[g, g]. (Even without this
    check the eta^2 coefficient would follow from the 1-D one: it is linear in the single product H g,
    because T[d, d] = O(eta^2) only enters at eta^3.)

    All k (induction, symbolic integer k). Writing delta = eta a + eta^2 b + eta^3 c with noncommutative
    a, b, c, one step gives a' = a - g, b' = b - H a, c' = c - H b - T[a, a]/2 (computed, not assumed);
    the closed forms a_k = -k g, b_k = C(k,2) H g, c_k = -C(k,3) H^2 g - (k-1)k(2k-1)/12 T[g, g]
    satisfy these recursions with a_0 = b_0 = c_0 = 0 identically in k.
    """
    g, h, t = sp.symbols("g h t")
    Hm, gm, Tm = sp.symbols("H g T", commutative=False)
    k = sp.Symbol("k", integer=True, nonnegative=True)

    def half_sum_squares(j: int) -> sp.Rational:
        return sp.Rational(sum(i * i for i in range(j)), 2)

    per_k: dict[int, dict[str, bool]] = {}
    eta3: dict[int, sp.Expr] = {}
    for j in range(1, k_max + 1):
        x = _gd_iterates_mod_eta(lambda d: g + h * d + t * d**2 / 2, j, 3, step)
        c0, c1, c2, c3 = _coefficients(x, 3)
        d = _gd_iterates_mod_eta(lambda v: gm + Hm * v + Tm * v * v / 2, j, 3, step)
        m0, m1, m2, m3 = _coefficients(d, 3)
        eta3[j] = sp.factor(c3)
        per_k[j] = {
            "eta1": _is_zero(c0) and _is_zero(c1 + j * g),
            "eta2": _is_zero(c2 - sp.binomial(j, 2) * h * g),
            "eta3": _is_zero(c3 + sp.binomial(j, 3) * h**2 * g + half_sum_squares(j) * t * g**2),
            "matrix_eta1": _is_zero(m0) and _is_zero(m1 + j * gm),
            "matrix_eta2": _is_zero(m2 - sp.binomial(j, 2) * Hm * gm),
            "matrix_eta3": _is_zero(m3 + sp.binomial(j, 3) * Hm**2 * gm + half_sum_squares(j) * Tm * gm * gm),
        }

    # Induction over k: derive the coefficient recursion from one step, then check the closed forms.
    a, b, c = sp.symbols("a b c", commutative=False)
    delta = ETA * a + ETA**2 * b + ETA**3 * c
    one_step = _truncate(step(delta, ETA, gm + Hm * delta + Tm * delta * delta / 2), 3)
    _, next_a, next_b, next_c = _coefficients(one_step, 3)
    closed = {
        a: -k * gm,
        b: k * (k - 1) / 2 * Hm * gm,
        c: -k * (k - 1) * (k - 2) / 6 * Hm**2 * gm - (k - 1) * k * (2 * k - 1) / 12 * Tm * gm * gm,
    }
    induction = all(
        _is_zero(expr.subs(closed, simultaneous=True) - closed[sym].subs(k, k + 1))
        for sym, expr in ((a, next_a), (b, next_b), (c, next_c))
    ) and all(_is_zero(closed[sym].subs(k, 0)) for sym in (a, b, c))

    return _record("T2(a)", per_k, [induction], k_max=k_max, per_k=per_k, eta3_coefficient=eta3,
                   all_k_induction=induction)


# ---------------------------------------------------------------------------------------------------
# T3: one epoch of mini-batch SGD
# ---------------------------------------------------------------------------------------------------


def _minibatch_epoch(
    grads: list, hessians: list, order: int | None, step: Step, tensors: list | None = None
) -> sp.Expr:
    """delta_B of one epoch over the batches in the given order, modulo eta^(order+1) (None: exact).

    Batch b has gradient g_b + H_b d (+ T_b[d, d]/2 when ``tensors`` is given) at theta_0 + d.
    """
    delta = sp.Integer(0)
    for b, (g_b, h_b) in enumerate(zip(grads, hessians, strict=True)):
        grad = g_b + h_b * delta
        if tensors is not None:
            grad += tensors[b] * delta * delta / 2
        delta = sp.expand(step(delta, ETA, grad))
        if order is not None:
            delta = _truncate(delta, order)
    return delta


def prove_minibatch_second_order(B_max: int = 4, step: Step = gd_step) -> dict:
    """Prove T3: one epoch of B batches, tau = -eta sum_b g_b + eta^2 sum_b H_b sum_{c<b} g_c + O(eta^3).

    Noncommutative symbols H_b (Hessian of the batch loss L_b at theta_0) and g_b (its gradient at
    theta_0). Quadratic batch losses: the batch gradient at theta_0 + delta is g_b + H_b delta, and the
    epoch theta_{b+1} = theta_b - eta (g_b + H_b delta_b), b = 0..B-1, is run exactly (delta_B is a
    polynomial of degree B in eta; nothing is cut). Its coefficients are compared:
        eta^0: 0,   eta^1: -sum_b g_b   (= -B g_t for L = mean of the L_b),
        eta^2: sum_b H_b sum_{c<b} g_c   (exactly, as noncommutative polynomials).
    General C^3 batch losses: adding the third-order Taylor term T_b[delta, delta]/2 (word T_b*d*d)
    leaves the eta^1 and eta^2 coefficients unchanged (checked modulo eta^3), since it is O(eta^2)
    and is multiplied by eta.
    B = 1 is T1: the eta^2 term is empty. Order dependence: for B = 2 the order (0, 1) gives H_1 g_0 and
    the order (1, 0) gives H_0 g_1; the record shows that their difference is not 0.
    """
    per_B: dict[int, dict[str, bool]] = {}
    for n_batches in range(1, B_max + 1):
        g = list(sp.symbols(f"g_0:{n_batches}", commutative=False))
        H = list(sp.symbols(f"H_0:{n_batches}", commutative=False))
        T = list(sp.symbols(f"T_0:{n_batches}", commutative=False))
        expected1 = -sp.Add(*g)
        expected2 = sp.Add(*[H[b] * sp.Add(*g[:b]) for b in range(n_batches)])
        c0, c1, c2 = _coefficients(_minibatch_epoch(g, H, None, step), 2)
        t0, t1, t2 = _coefficients(_minibatch_epoch(g, H, 2, step, tensors=T), 2)
        per_B[n_batches] = {
            "eta0": _is_zero(c0),
            "eta1": _is_zero(c1 - expected1),
            "eta2": _is_zero(c2 - expected2),
            "general_loss": _is_zero(t0) and _is_zero(t1 - expected1) and _is_zero(t2 - expected2),
        }

    g = sp.symbols("g_0:2", commutative=False)
    H = sp.symbols("H_0:2", commutative=False)
    forward = _coefficients(_minibatch_epoch([g[0], g[1]], [H[0], H[1]], 2, step), 2)[2]
    backward = _coefficients(_minibatch_epoch([g[1], g[0]], [H[1], H[0]], 2, step), 2)[2]
    order_dependent = not _is_zero(forward - backward)

    return _record("T3", per_B, [order_dependent], B_max=B_max, per_B=per_B, eta2_order_01=forward,
                   eta2_order_10=backward, order_dependent=order_dependent)


# ---------------------------------------------------------------------------------------------------
# T3: heavy-ball momentum (torch.optim.SGD, no dampening), first order
# ---------------------------------------------------------------------------------------------------


def momentum_scale(k: int, mu: sp.Expr) -> sp.Expr:
    """T3 momentum scale c_k = sum_{j=0}^{k-1} (1 - mu^(j+1)) / (1 - mu) (c_1 = 1)."""
    mu = sp.sympify(mu)
    return sp.Add(*[(1 - mu ** (j + 1)) / (1 - mu) for j in range(k)])


def prove_momentum_first_order(k_max: int = 6, dampening: sp.Expr = 0) -> dict:
    """Prove T3 (momentum): tau^(k) = -eta c_k g + O(eta^2), c_k = sum_{j=0}^{k-1} (1 - mu^(j+1))/(1 - mu).

    torch.optim.SGD semantics: buf_0 = g_0, buf_t = mu buf_{t-1} + (1 - dampening) g_t,
    theta_{t+1} = theta_t - eta buf_t. The statement is for dampening = 0 (pass another value to see
    the proof fail for k >= 2).

    * constant gradient g (the first-order regime): tau^(k) = -eta c_k g exactly, for k = 1..k_max;
      c_1 = 1, so one step is still exactly T1.
    * first order for a general loss: with gradient g + H d + T[d, d]/2 (noncommutative symbols),
      the eta^1 coefficient of tau^(k) is -c_k g.
    * all k (induction, symbolic integer k): buf_{k-1} = g (1 - mu^k)/(1 - mu) and
      tau^(k) = -eta g (k - mu (1 - mu^k)/(1 - mu)) / (1 - mu) satisfy the update identically in k,
      and the latter is c_k in closed form (checked against the sum for k <= k_max).
    """
    mu, g = sp.symbols("mu g")
    Hm, gm, Tm = sp.symbols("H g T", commutative=False)
    k = sp.Symbol("k", integer=True, nonnegative=True)
    damp = 1 - sp.sympify(dampening)

    def run(grad: Callable[[sp.Expr], sp.Expr], steps: int, order: int | None) -> sp.Expr:
        theta, buf = sp.Integer(0), None
        for _ in range(steps):
            g_t = grad(theta)
            buf = g_t if buf is None else mu * buf + damp * g_t
            theta = theta - ETA * buf
            if order is not None:
                theta, buf = _truncate(theta, order), _truncate(buf, order)
        return theta

    closed_c = (k - mu * (1 - mu**k) / (1 - mu)) / (1 - mu)
    per_k: dict[int, dict[str, bool]] = {}
    for j in range(1, k_max + 1):
        c_j = momentum_scale(j, mu)
        tau = run(lambda _: g, j, None)
        tau_general = run(lambda d: gm + Hm * d + Tm * d * d / 2, j, 1)
        c0, c1 = _coefficients(tau_general, 1)
        per_k[j] = {
            "constant_gradient": _is_zero(tau + ETA * c_j * g),
            "general_eta1": _is_zero(c0) and _is_zero(c1 + c_j * gm),
            "closed_form": _is_zero(closed_c.subs(k, j) - c_j),
        }

    buf_closed = g * (1 - mu**k) / (1 - mu)
    tau_closed = -ETA * closed_c * g
    induction = (
        _is_zero(closed_c.subs(k, 0))
        and _is_zero(buf_closed.subs(k, 1) - g)
        and _is_zero(buf_closed.subs(k, k + 1) - (mu * buf_closed + damp * g))
        and _is_zero(tau_closed.subs(k, k + 1) - (tau_closed - ETA * buf_closed.subs(k, k + 1)))
    )
    c1_is_one = _is_zero(momentum_scale(1, mu) - 1)
    return _record("T3 (momentum)", per_k, [induction, c1_is_one], k_max=k_max, per_k=per_k, c1_is_one=c1_is_one,
                   all_k_induction=induction)
