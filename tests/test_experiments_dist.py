"""Data parallelism (gloo, 2 processes) reproduces the one-process full-batch GD epoch, to the T1 model.

The floating-point model checked (float32 and float64, unit roundoff u):
rank r computes g_r = grad of sum_{i in shard r} l_i / N on its shard (sizes 7 and 6 of N = 13: unequal, so
a wrong weighting is visible). The all-reduce returns g_hat = fl(g_0 + g_1) = (g_0 + g_1)(1 + d), |d| <= u
(for two ranks the all-reduce is one addition per coordinate). The one-process run accumulates the same two
chunk gradients in ``.grad`` (chunk size 7, so the same chunks; the test checks they are the same floats),
i.e. the same fl(g_0 + g_1). Then torch.optim.SGD
computes theta_1 = fl(theta_0 - fl(eta' g_hat)), tau = fl(theta_1 - theta_0), and T1's model
(``tvtheory.fp``, docs/theory.md) gives |tau + eta g_hat| <= u(1+u)|theta_0| + gamma_4 |eta g_hat|. With
|eta g_hat - eta (g_0 + g_1)| <= u |eta (g_0 + g_1)| and gamma_4 (1 + u) + u <= gamma_5:

    |tau + eta (g_0 + g_1)| <= u (1 + u) |theta_0| + gamma_5 |eta (g_0 + g_1)|        (elementwise)

for the task vector of each run, where r = tau + eta (g_0 + g_1) is evaluated exactly (double-double,
``tvtheory.fp.exact_residual``) and g_0, g_1 are the per-rank gradients the workers report. Hence
|tau_2proc - tau_1proc| <= 2 * that bound. A shard-mean average (g_0/n_0 + g_1/n_1) N/2, i.e. unweighted
data parallelism, must violate the model (the test can fail).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cases import tiny_data, tiny_model

from tvtheory.experiments.dist import DistContext
from tvtheory.experiments.finetune import FinetuneConfig, batch_gradient, finetune
from tvtheory.experiments.storage import load_vector, tau_path
from tvtheory.fp import exact_residual, step_residual_bound
from tvtheory.params import ParamLayout, flat_params

N, LR = 13, 0.05


class _NoReduce(DistContext):
    """This rank's shard, without the all-reduce: the local gradient g_r as the worker computes it."""

    def all_reduce_sum_(self, t):
        return t


DTYPES = (torch.float32, torch.float64)


def _run_rank(rank: int, world: int, out: str, dtype: torch.dtype) -> None:
    os.makedirs(out, exist_ok=True)
    ctx = DistContext(rank, world, torch.device("cpu"))
    model = tiny_model(dtype=dtype)
    x, y = tiny_data(N, dtype=dtype)
    g_local, _ = batch_gradient(copy.deepcopy(model), x, y, torch.arange(N), _NoReduce(rank, world), 7)
    torch.save(g_local, os.path.join(out, f"g{rank}.pt"))
    res = finetune(model, x, y, FinetuneConfig("gd", LR, 1, chunk_size=7), os.path.join(out, "dist"), ctx,
                   progress=False)
    if rank == 0:
        torch.save(res.t1_check, os.path.join(out, "t1.pt"))


def _worker(rank: int, world: int, init_file: str, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for dtype in DTYPES:
            _run_rank(rank, world, os.path.join(root, str(dtype)), dtype)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """One 2-process gloo run (both dtypes, to pay the process start-up once)."""
    root = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(2, str(root / "init"), str(root)), nprocs=2, join=True)
    return root


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_process_gd_epoch_matches_one_process(spawned, dtype):
    tmp_path = spawned / str(dtype)
    model = tiny_model(dtype=dtype)
    layout = ParamLayout.of(model)
    theta0 = flat_params(model)
    x, y = tiny_data(N, dtype=dtype)
    finetune(copy.deepcopy(model), x, y, FinetuneConfig("gd", LR, 1, chunk_size=7), tmp_path / "single",
             progress=False)
    tau_dist = load_vector(tau_path(tmp_path / "dist", 1), layout)
    tau_single = load_vector(tau_path(tmp_path / "single", 1), layout)
    g0, g1 = torch.load(tmp_path / "g0.pt"), torch.load(tmp_path / "g1.pt")
    assert g0.abs().sum() > 0 and g1.abs().sum() > 0 and tau_dist.dtype == dtype
    # the one-process run's chunks (chunk size 7) are the ranks' shards, computed by the same code: same floats
    for rank, g in ((0, g0), (1, g1)):
        mine, _ = batch_gradient(copy.deepcopy(model), x, y, torch.arange(N), _NoReduce(rank, 2), 7)
        assert torch.equal(mine, g)

    g_sum = g0.double() + g1.double()
    bound = step_residual_bound(theta0, LR * g_sum.abs(), dtype, n=5)
    for tau in (tau_dist, tau_single):
        r = exact_residual(tau, [g0, g1], LR)
        assert float((r.abs() / bound).max()) <= 1.0
    assert bool(((tau_dist.double() - tau_single.double()).abs() <= 2 * bound).all())
    assert torch.load(tmp_path / "t1.pt", weights_only=False)["holds"]   # T1 with the all-reduced gradient

    # unweighted data parallelism (mean of the shard means) is outside the model
    n0, n1 = 7, 6
    wrong = -LR * 0.5 * (g0.double() * N / n0 + g1.double() * N / n1)
    r_wrong = exact_residual(wrong, [g0, g1], LR)
    assert float((r_wrong.abs() / bound).max()) > 1.0
