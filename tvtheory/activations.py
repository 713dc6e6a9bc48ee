"""Activation functions and the derivative constants used by the curvature bound (T4).

T4 needs, for the activation sigma, global bounds |sigma'| <= c1 and |sigma''| <= c2, and the value
|sigma(0)| (which enters the bound on the hidden-layer norms). Each constant below is the exact
supremum rounded *up* at the 13th significant digit, so it is a valid bound; the derivations are
in docs/theory.md and are re-derived with mpmath in tests/test_activation_constants.py.

- tanh:     sup|t'| = 1 (x = 0);          sup|t''| = 4/(3 sqrt 3) (x = artanh(1/sqrt 3))
- sigmoid:  sup|s'| = 1/4 (x = 0);        sup|s''| = 1/(6 sqrt 3)
- softplus: sup|sp'| = 1 (x -> inf);      sup|sp''| = 1/4 (x = 0)
- GELU (exact, erf form): sup|g'| = Phi(sqrt 2) + sqrt 2 phi(sqrt 2) ~ 1.128904 (x = sqrt 2);
            sup|g''| = 2 phi(0) = sqrt(2/pi) ~ 0.797885 (x = 0)
- SiLU x*s(x): sup|f'| ~ 1.099839 at x ~ 2.399357 (root of f''); sup|f''| = 1/2 (x = 0)
- ReLU is not C^2: it has no c2, and T2-T4 refuse it (T1 still holds for any network).

The curvature certificate T6 (tvtheory.certificate) also needs c3 >= sup|sigma^(3)| and c4 >= sup|sigma^(4)|
(for its fourth-derivative bound K4 along a segment), found and rounded up the same way:
- tanh 2 (x = 0), 4.085885502970;  sigmoid 1/8 (x = 0), 0.1276839219679;  softplus 1/(6 sqrt 3), 1/8;
- GELU 0.7787696350558, 4 phi(0) = 1.595769121606 (x = 0);  SiLU 0.3081815157965, 1/2 (x = 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Activation:
    """An elementwise activation and its constants c_n >= sup|sigma^(n)| (T4: c1, c2; T6 also c3, c4), None
    where no bound exists.
    """

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    c1: float | None
    c2: float | None
    sigma0: float  # |sigma(0)|
    c3: float | None = None
    c4: float | None = None

    @property
    def is_c2(self) -> bool:
        """True when sigma is twice continuously differentiable with bounded sigma', sigma''."""
        return self.c1 is not None and self.c2 is not None


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate="none")


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("tanh", torch.tanh, 1.0, 0.7698003589196, 0.0, 2.0, 4.085885502970),
        Activation("sigmoid", torch.sigmoid, 0.25, 0.09622504486494, 0.5, 0.125, 0.1276839219679),
        Activation("softplus", torch.nn.functional.softplus, 1.0, 0.25, 0.6931471805600, 0.09622504486494, 0.125),
        Activation("gelu", _gelu, 1.128904145186, 0.7978845608029, 0.0, 0.7787696350558, 1.595769121606),
        Activation("silu", torch.nn.functional.silu, 1.099839320129, 0.5, 0.0, 0.3081815157965, 0.5),
        Activation("relu", torch.relu, 1.0, None, 0.0),
    )
}


class NotC2Error(ValueError):
    """Raised when a statement needs a C^2 activation (T2-T4) and the network has none."""


def get_activation(name: str) -> Activation:
    """Look up an activation by name, with a clear error listing the known ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"unknown activation {name!r}; known activations: {known}") from None


def require_c2(activation: Activation, statement: str) -> tuple[float, float]:
    """(c1, c2) of a C^2 activation; refuses a curvature statement for one that is not C^2 (e.g. ReLU)."""
    if activation.c1 is None or activation.c2 is None:
        smooth = ", ".join(n for n, a in sorted(ACTIVATIONS.items()) if a.is_c2)
        raise NotC2Error(
            f"{statement} needs a C^2 activation with bounded sigma' and sigma''; "
            f"{activation.name!r} is not C^2, so no Hessian bound exists. "
            f"Use one of: {smooth} (T1 still holds for {activation.name!r})."
        )
    return activation.c1, activation.c2
