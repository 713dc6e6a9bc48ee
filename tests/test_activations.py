"""Unit tests of tvtheory.activations: lookup, the C^2 requirement of T2-T4, |sigma(0)|.

(The constants c1, c2 themselves are re-derived with mpmath in test_activation_constants.py.)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tvtheory.activations import ACTIVATIONS, Activation, NotC2Error, get_activation, require_c2
from tvtheory.models import MLPConfig, make_mlp

SMOOTH = sorted(n for n, a in ACTIVATIONS.items() if a.is_c2)


def test_unknown_activation_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown activation 'swish'") as err:
        get_activation("swish")
    for name in ACTIVATIONS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="known activations"):
        MLPConfig((4, 3), "swish")
    with pytest.raises(ValueError, match="known activations"):
        make_mlp((4, 3), "swish")


def test_relu_is_not_c2():
    relu = get_activation("relu")
    assert not relu.is_c2 and relu.c2 is None
    with pytest.raises(NotC2Error) as err:
        require_c2(relu, "the curvature bound T4")
    msg = str(err.value)
    assert "the curvature bound T4" in msg and "'relu' is not C^2" in msg and "T1 still holds" in msg
    for name in SMOOTH:
        assert name in msg
    assert isinstance(err.value, ValueError)     # callers that catch ValueError (the CLI) see it


@pytest.mark.parametrize("name", SMOOTH)
def test_require_c2_passes_for_smooth_activations(name):
    act = get_activation(name)
    assert act.is_c2 and act.c1 > 0 and act.c2 > 0
    require_c2(act, "T2")                       # no exception


def test_activation_table_names_and_sigma0():
    assert set(ACTIVATIONS) == {"tanh", "sigmoid", "softplus", "gelu", "silu", "relu"}
    for name, act in ACTIVATIONS.items():
        assert isinstance(act, Activation) and act.name == name
        s0 = abs(float(act.fn(torch.zeros((), dtype=torch.float64))))
        assert act.sigma0 >= s0 and act.sigma0 - s0 <= 1e-12   # |sigma(0)|, rounded up at 13 digits
    # the GELU used is the exact (erf) form, not the tanh approximation
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    assert torch.equal(ACTIVATIONS["gelu"].fn(x), F.gelu(x, approximate="none"))
    assert not torch.equal(ACTIVATIONS["gelu"].fn(x), F.gelu(x, approximate="tanh"))
