"""The frozen linear-probe head and the E3 merge evaluation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from cases import TINY_ENCODER, tiny_encoder

from tvtheory.experiments.merging import merge_and_evaluate
from tvtheory.experiments.probe import TEMPERATURE_GRID, FrozenHeadClassifier, fit_probe
from tvtheory.losses import cross_entropy_terms


def test_probe_is_the_ridge_solution_with_the_best_temperature():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40, 5, generator=g, dtype=torch.float64) + 3.0
    y = torch.randint(0, 3, (40,), generator=g)
    w, b, info = fit_probe(z, y, 3, ridge=1e-3)
    # reference: centred ridge normal equations solved independently (lstsq on the augmented system)
    lam = info["ridge_lambda"]
    zc = z - z.mean(0)
    onehot = torch.nn.functional.one_hot(y, 3).double()
    aug = torch.cat([zc, lam ** 0.5 * torch.eye(5, dtype=torch.float64)])
    rhs = torch.cat([onehot - onehot.mean(0), torch.zeros(5, 3, dtype=torch.float64)])
    w_ref = torch.linalg.lstsq(aug, rhs).solution.T
    b_ref = onehot.mean(0) - w_ref @ z.mean(0)
    s = info["temperature"]
    assert s in TEMPERATURE_GRID
    # float32 output of a float64 solution: relative error <= 2^-24 per entry, plus the solvers' rounding
    # (condition number of the augmented system ~ 10, so ~1e-15): 1e-6 covers both, an O(1) error fails.
    assert torch.allclose(w.double(), s * w_ref, rtol=1e-6, atol=0)
    assert torch.allclose(b.double(), s * b_ref, rtol=1e-6, atol=1e-7 * float(b_ref.abs().max()))
    ces = [float(cross_entropy_terms(t * (z @ w_ref.T + b_ref), y).sum()) for t in TEMPERATURE_GRID]
    assert min(ces) == pytest.approx(info["train_ce"] * 40, rel=1e-12)


def test_frozen_head_has_encoder_parameters_only():
    enc = tiny_encoder()
    w, b = torch.randn(3, 16, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    model = FrozenHeadClassifier(enc, w, b)
    assert [n for n, _ in model.named_parameters()] == ["encoder." + n for n, _ in enc.named_parameters()]
    assert set(dict(model.named_buffers())) == {"head_weight", "head_bias"}
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert torch.equal(model(x), enc.encode(x) @ w.T + b)
    from tvtheory.models.vit import ViT
    with pytest.raises(ValueError, match="no head"):
        FrozenHeadClassifier(ViT(dataclasses.replace(TINY_ENCODER, num_classes=3)), torch.ones(3, 16), torch.zeros(3))


def test_merge_chooses_alpha_on_validation_and_normalises():
    theta0 = torch.zeros(2, dtype=torch.float64)
    taus = {"a": torch.tensor([1.0, 0.0], dtype=torch.float64), "b": torch.tensor([0.0, 1.0], dtype=torch.float64)}

    def acc_fn(theta, task, split):
        # validation peaks at alpha = 0.3 (theta = 0.3 * (1, 1)); test differs from validation, so choosing
        # alpha on test instead of validation would be visible
        x = float(theta[0] if task == "a" else theta[1])
        return (1 - abs(x - 0.3)) if split == "val" else (0.5 + x / 2)

    out = merge_and_evaluate(theta0, taus, acc_fn, {"a": 0.8, "b": 0.4}, grid=[0.1, 0.3, 0.5])
    assert out["alpha_val"]["alpha"] == 0.3
    assert out["alpha_val"]["test_accuracy"] == {"a": pytest.approx(0.65), "b": pytest.approx(0.65)}
    assert out["alpha_val"]["mean_normalised_accuracy"] == pytest.approx((0.65 / 0.8 + 0.65 / 0.4) / 2)
    assert out["alpha_1_over_T"]["alpha"] == 0.5
    assert out["alpha_1_over_T"]["mean_accuracy"] == pytest.approx(0.75)
    assert out["val_mean_accuracy"] == [pytest.approx(0.8), pytest.approx(1.0), pytest.approx(0.8)]
