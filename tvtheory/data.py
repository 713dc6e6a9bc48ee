"""Small datasets for the theorem engine: scikit-learn's bundled digits (real, offline) and synthetic.

A task is a dataset D_t = {(x_i, y_i)}; its mean loss is L_t(theta) = (1/N_t) sum_i l(f(x_i; theta), y_i).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dataset:
    """Inputs x (N x d), integer labels y (N,), and the number of classes."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"dataset {self.name!r}: x must be N x d and y of length N, got "
                             f"{tuple(self.x.shape)} and {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return self.x.shape[0]

    def targets(self, loss: str) -> torch.Tensor:
        """Integer labels for cross-entropy, one-hot vectors (in x's dtype) for MSE."""
        if loss == "mse":
            return torch.nn.functional.one_hot(self.y, self.num_classes).to(self.x.dtype)
        return self.y

    def subset(self, index: torch.Tensor, name: str | None = None) -> Dataset:
        """The examples at ``index`` (in that order), under ``name`` or this dataset's name."""
        return Dataset(name or self.name, self.x[index], self.y[index], self.num_classes)

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Dataset:
        """The same examples with x in ``dtype`` (labels stay int64), on ``device``."""
        return Dataset(self.name, self.x.to(device=device, dtype=dtype), self.y.to(device), self.num_classes)


def digits(dtype: torch.dtype = torch.float64) -> Dataset:
    """scikit-learn's bundled 8x8 digits: 1,797 real images, 64 features scaled to [0, 1], 10 classes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=dtype) / 16.0
    return Dataset("digits", x, torch.as_tensor(bunch.target, dtype=torch.int64), 10)


def synthetic(n: int, d: int, num_classes: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Dataset:
    """Gaussian inputs labelled by a random linear teacher (argmax of W x): a learnable, seeded task."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    teacher = torch.randn(num_classes, d, generator=g, dtype=torch.float64)
    y = (x @ teacher.T).argmax(-1)
    return Dataset("synthetic", x.to(dtype), y, num_classes)


def split_by_label(data: Dataset, num_tasks: int) -> list[Dataset]:
    """T disjoint tasks: task t holds the examples whose label is congruent to t mod T."""
    if not 1 <= num_tasks <= data.num_classes:
        raise ValueError(f"num_tasks must be in 1..{data.num_classes} (one class per task at least), got {num_tasks}")
    tasks = []
    for t in range(num_tasks):
        index = torch.nonzero(data.y % num_tasks == t).squeeze(1)
        if index.numel() == 0:
            raise ValueError(f"task {t} (labels congruent to {t} mod {num_tasks}) has no examples in "
                             f"{data.name!r}; use fewer tasks or more data")
        tasks.append(data.subset(index, f"{data.name}[y%{num_tasks}=={t}]"))
    return tasks


def contiguous_batches(n: int, num_batches: int) -> list[torch.Tensor]:
    """Batch b = range(b * (n // B), (b + 1) * (n // B)): the batches of a problem whose data ``make_problem``
    has reordered (the n mod B examples left over are not in any batch).
    """
    if num_batches < 1:
        raise ValueError(f"the number of batches must be >= 1, got {num_batches}")
    size = n // num_batches
    return [torch.arange(b * size, (b + 1) * size) for b in range(num_batches)]


def partition(n: int, num_batches: int, seed: int = 0) -> list[torch.Tensor]:
    """B equal-size batches partitioning range(B * (n // B)) in a seeded random order (T3).

    T3 needs L = (1/B) sum_b L_b, which holds exactly for equal-size batches; the n mod B examples
    left over are dropped, so the caller should restrict its dataset to the returned indices.
    """
    if num_batches < 1:
        raise ValueError(f"the number of batches must be >= 1, got {num_batches}")
    if num_batches > n:
        raise ValueError(f"cannot split {n} examples into {num_batches} non-empty batches")
    size = n // num_batches
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: size * num_batches]
    return list(perm.view(num_batches, size))
