"""The prototype head (``probe.fit_prototypes``) and the head kind of ``heads.task_head``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tvtheory.experiments.config import VisionConfig
from tvtheory.experiments.dist import DistContext
from tvtheory.experiments.encoders import load_encoder
from tvtheory.experiments.errors import VisionError
from tvtheory.experiments.heads import task_head
from tvtheory.experiments.probe import TEMPERATURE_GRID, fit_prototypes
from tvtheory.experiments.tasks import load_task_data
from tvtheory.losses import cross_entropy_terms


def _features(n: int = 60, d: int = 6, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = 3.0 * torch.randn(classes, d, generator=g, dtype=torch.float64)
    return centres[y] + torch.randn(n, d, generator=g, dtype=torch.float64) + 5.0, y


def test_prototypes_are_centred_unit_class_means_over_the_mean_radius():
    z, y = _features()
    w, b, info = fit_prototypes(z, y, 4)
    s = info["temperature"]
    assert s in TEMPERATURE_GRID and info["num_examples"] == 60 and info["classes_without_examples"] == 0
    # reference written out per class (loops, no shared code with the library)
    mu = z.mean(0)
    radius = sum(float((z[i] - mu).norm()) for i in range(60)) / 60
    assert info["feature_radius"] == pytest.approx(radius, rel=1e-12)
    for c in range(4):
        m = (z[y == c] - mu).mean(0)
        proto = m / m.norm() / radius
        # float32 output of a float64 computation: 2^-24 relative per entry; 1e-6 covers it, an O(1) error fails
        assert torch.allclose(w[c].double(), s * proto, rtol=1e-6, atol=1e-9)
        assert float(b[c]) == pytest.approx(-s * float(proto @ mu), rel=1e-6, abs=1e-7)
    # logits are s * cos-like similarity: the nearest prototype wins on well separated clusters
    logits = z @ w.double().T + b.double()
    assert float((logits.argmax(1) == y).double().mean()) > 0.9
    # the temperature is the grid minimiser of the training CE
    base_w, base_b = w.double() / s, b.double() / s
    ces = [float(cross_entropy_terms(t * (z @ base_w.T + base_b), y).sum()) for t in TEMPERATURE_GRID]
    assert TEMPERATURE_GRID[ces.index(min(ces))] == s


def test_a_class_without_examples_gets_a_zero_prototype():
    z, y = _features(classes=3)
    w, b, info = fit_prototypes(z, y, 5)
    assert info["classes_without_examples"] == 2
    assert torch.equal(w[3:], torch.zeros(2, 6)) and torch.equal(b[3:], torch.zeros(2))


def test_degenerate_features_are_refused():
    with pytest.raises(ValueError, match="all training features are equal"):
        fit_prototypes(torch.ones(5, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 0]), 2)
    with pytest.raises(ValueError, match="at least one"):
        fit_prototypes(torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.long), 2)


def test_task_head_kind_follows_the_config_and_a_stored_head_of_another_kind_is_refused(tmp_path):
    config = VisionConfig(synthetic=True, tasks=("mnist",), max_train=24, max_val=8, max_test=8, progress=False,
                          results=str(tmp_path / "r"), artifacts=str(tmp_path / "a"))
    encoder = load_encoder(config)
    data = load_task_data("mnist", config, encoder)
    ctx = DistContext()
    head = task_head("mnist", data, config, encoder, ctx)
    assert head.info["head"] == "prototype" and "feature_radius" in head.info
    probe_config = dataclasses.replace(config, head="probe")
    with pytest.raises(VisionError, match="prototype head and this run asks for --head probe"):
        task_head("mnist", data, probe_config, encoder, ctx)
    other = dataclasses.replace(probe_config, artifacts=str(tmp_path / "b"))
    assert task_head("mnist", data, other, encoder, ctx).info["head"] == "probe"


def test_unknown_head_is_one_clear_error():
    with pytest.raises(VisionError, match=r"head \(--head\) is 'zero-shot': use one of prototype, probe"):
        VisionConfig(head="zero-shot")
