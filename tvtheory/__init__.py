"""tvtheory: task vectors vs gradients, stated (docs/theory.md), implemented and verified.

The library works on flat parameter vectors: a model is turned into a pure function of one
vector theta in R^P by :mod:`tvtheory.params`, and every quantity of the theory (task vectors,
Hessian-vector products, the error term E_k, the bounds of T2-T4) is a function of such vectors.
"""

__version__ = "0.1.0"
