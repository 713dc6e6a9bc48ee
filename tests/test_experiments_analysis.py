"""E1/E2 statistics and the T2/T3 expansion of a finetuning run (tiny random ViT, synthetic images)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from cases import tiny_data, tiny_model

from tvtheory.curvature import gradient, hvp
from tvtheory.expansion import batch_hvps, second_order_terms
from tvtheory.experiments.analysis import (
    T4_NOTE,
    ChunkedBatchLoss,
    direction_stats,
    expansion_stats,
    norm_stats,
)
from tvtheory.experiments.dist import DistContext
from tvtheory.experiments.finetune import FinetuneConfig, finetune, make_batches
from tvtheory.experiments.storage import load_vector, tau_path
from tvtheory.losses import get_loss
from tvtheory.objective import Objective
from tvtheory.params import ParamLayout, flat_params
from tvtheory.trajectory import epoch_schedule


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_chunked_gradient_hvp_and_second_order_equal_library():
    """Chunked (3 examples a chunk) batch gradients, HVPs and the second-order term built on them equal the
    library's one-pass versions (tvtheory.curvature; tvtheory.expansion.second_order_terms on whole batches).

    float64; the two differ only in summation order, so by rounding: n u ||terms|| with n ~ 10^2 chunk and
    coordinate terms, ~1e-14 relative. rel < 1e-10 separates that from any combinatorial error (a wrong
    coefficient or a missing H_b g_c changes the result at O(1) relative)."""
    model = tiny_model()
    x, y = tiny_data(24)
    theta0 = flat_params(model)
    batches = make_batches(24, FinetuneConfig("sgd", 0.1, 1, batch_size=8))
    ctx = DistContext()
    chunked = [ChunkedBatchLoss(model, x, y, b, ctx, 3) for b in batches]
    assert all(len(c.chunks) == 3 for c in chunked)
    whole = [Objective(model, get_loss("ce"), x[b], y[b]) for b in batches]
    grads = [c.grad(theta0) for c in chunked]
    for c, w, g in zip(chunked, whole, grads, strict=True):
        assert _rel(g, gradient(w, theta0)) < 1e-10
        assert _rel(c.hvp(theta0, g), hvp(w, theta0, g)) < 1e-10
    full = ChunkedBatchLoss(model, x, y, torch.arange(24), ctx, 5)
    cases = {3: (chunked, whole, grads), 1: ([full], [Objective(model, get_loss("ce"), x, y)], [full.grad(theta0)])}
    K = 4
    for B, (chs, objs, grs) in cases.items():
        ours = second_order_terms(lambda b, v, chs=chs: chs[b].hvp(theta0, v), 0.1, grs, epoch_schedule(B, K), B)
        lib = second_order_terms(batch_hvps(objs, theta0), 0.1, grs, epoch_schedule(B, K), B)
        for k in range(K):
            if B == 1 and k == 0:
                assert float(ours[0].abs().max()) == 0.0 == float(lib[0].abs().max())   # T1: no error term
            else:
                assert _rel(ours[k], lib[k]) < 1e-10


@pytest.mark.parametrize("opt", ["gd", "sgd"])
def test_second_order_remainder_is_third_order(tmp_path, opt):
    """T2(a) / T3 on the recorded run: ||tau - first - second|| = O(eta^3), so halving eta divides it by ~8.
    The fitted slope must exceed 2.7 (the verification suite's threshold for the same statement)."""
    model = tiny_model()
    x, y = tiny_data(24)
    theta0 = flat_params(model)
    layout = ParamLayout.of(model)
    rems = []
    lrs = [1.25e-5 / 2 ** i for i in range(3)]     # the tiny model is strongly curved: keep eta ||H|| small
    for i, lr in enumerate(lrs):
        cfg = FinetuneConfig(opt, lr, 2, batch_size=8)
        finetune(copy.deepcopy(model), x, y, cfg, tmp_path / str(i), progress=False)
        taus = [load_vector(tau_path(tmp_path / str(i), k), layout) for k in (1, 2)]
        st = expansion_stats(model, x, y, make_batches(24, cfg), theta0, taus, opt, lr, DistContext(), 5)
        assert st["second_order_computed"] and st["T4"] == T4_NOTE
        row = st["epochs"][-1]
        assert row["second_order_residual_norm"] < 0.1 * row["error_norm"]
        rems.append(row["second_order_residual_norm"])
    slope = math.log(rems[0] / rems[-1]) / math.log(lrs[0] / lrs[-1])
    assert slope > 2.7


def test_adamw_gets_no_expansion_claim(tmp_path):
    model = tiny_model()
    x, y = tiny_data(16)
    cfg = FinetuneConfig("adamw", 1e-3, 2, batch_size=8)
    finetune(copy.deepcopy(model), x, y, cfg, tmp_path, progress=False)
    layout = ParamLayout.of(model)
    taus = [load_vector(tau_path(tmp_path, k), layout) for k in (1, 2)]
    st = expansion_stats(model, x, y, make_batches(16, cfg), flat_params(model), taus, "adamw", 1e-3,
                         DistContext(), 8)
    assert not st["first_order_identity_applies"] and not st["second_order_computed"]
    assert "second_order_norm" not in st["epochs"][0] and st["statement"].startswith("none")


def test_direction_and_norm_stats():
    model = tiny_model()
    layout = ParamLayout.of(model)
    P = layout.size
    g = torch.zeros(P, dtype=torch.float64)
    g[0], g[-1] = 1.0, 2.0
    taus = [-0.1 * g, -0.2 * g, -0.2 * g + torch.eye(P, dtype=torch.float64)[1]]
    grads = [g, 2 * g, -torch.eye(P, dtype=torch.float64)[1]]
    st = direction_stats(taus, grads, layout)
    tk = taus[-1]
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    assert st["cos_tau1_tauK"] == pytest.approx(cos(taus[0], tk), rel=1e-14)
    assert st["cos_neg_g_tauK"] == pytest.approx(cos(-g, tk), rel=1e-14)
    assert st["cos_update_k_tauK"][2] == pytest.approx(cos(torch.eye(P, dtype=torch.float64)[1], tk), rel=1e-14)
    assert st["cos_tau_k_neg_g"][0] == pytest.approx(1.0, rel=1e-15)
    assert st["cos_neg_g_k_tauK"] == pytest.approx([cos(-v, tk) for v in grads], rel=1e-14)
    assert st["cos_tau_k_tauK"] == pytest.approx([cos(t, tk) for t in taus], rel=1e-14)
    assert st["cos_tau_k_tauK"][-1] == pytest.approx(1.0, rel=1e-15)
    first_layer = layout.names[0]
    assert set(st["per_layer"]["cos_tau1_tauK"]) == set(layout.names)
    sl = layout.slices()[first_layer]
    assert st["per_layer"]["cos_update_k_tauK"][1][first_layer] == pytest.approx(cos(taus[1][sl] - taus[0][sl], tk[sl]),
                                                                                  rel=1e-14)
    recs = [{"full_grad_norm_start": 3.0, "minibatch_grad_norm_mean": 1.0},
            {"full_grad_norm_start": 1.0, "minibatch_grad_norm_mean": 2.0}]
    ns = norm_stats(recs)
    assert ns["full_grad_norm_start"] == {"normalised": [0.75, 0.25], "epoch0_largest": True}
    assert ns["minibatch_grad_norm_mean"]["epoch0_largest"] is False
