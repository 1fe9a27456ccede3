"""Class-size profiles of the paper's datasets, for benchmarks on synthetic data."""

from __future__ import annotations

import torch

from longtail.data.profiles import pareto_profile

# name -> (classes, training images, largest class, smallest class)
SHAPES = {
    "imagenet_lt": (1000, 115_846, 1280, 5),
    "inat2018": (8142, 437_513, 1000, 2),
}


def long_tail_counts(num_classes: int, total: int, n_max: int, n_min: int) -> torch.Tensor:
    """Pareto-profile class sizes from n_max down to n_min, stretched to sum to ``total``."""
    counts = torch.tensor(pareto_profile(num_classes, n_max, n_min), dtype=torch.float64)
    for _ in range(100):
        gap = total - counts.round().sum()
        if gap == 0:
            break
        room = (counts < n_max) & (counts > n_min)
        counts[room] += gap * (counts[room] - n_min) / (counts[room] - n_min).sum()
        counts = counts.clamp(n_min, n_max)
    counts = counts.round().long()
    counts[1] += total - counts.sum()  # rounding leftovers
    return counts


def shape_counts(name: str) -> torch.Tensor:
    """Return the class sizes of dataset shape ``name`` (see SHAPES)."""
    classes, total, n_max, n_min = SHAPES[name]
    return long_tail_counts(classes, total, n_max, n_min)
