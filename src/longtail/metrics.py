"""Top-1 accuracy overall and per class, and Many / Medium / Few-shot accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from longtail.data.profiles import shot_groups


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor,
                       num_classes: int) -> list[float]:
    """Return the top-1 accuracy (%) of each class; NaN for a class with no test images."""
    correct = (predictions == labels).float()
    hits = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, correct.double())
    counts = torch.bincount(labels, minlength=num_classes).double()
    acc = torch.where(counts > 0, 100.0 * hits / counts.clamp(min=1), torch.nan)
    return acc.tolist()


def group_accuracy(per_class: Sequence[float], classes: Sequence[int]) -> float | None:
    """Return the mean accuracy of ``classes`` that have test images; None for an empty group."""
    values = [per_class[c] for c in classes if not math.isnan(per_class[c])]
    return sum(values) / len(values) if values else None


def evaluate(
    predictions: torch.Tensor,
    labels: torch.Tensor,
    group_counts: Sequence[int],
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> dict[str, object]:
    """Return top1 over all images, many / medium / few (mean of per-class accuracies of each
    shot group by ``group_counts``, None when empty) and per_class, all in percent (float64)."""
    per_class = per_class_accuracy(predictions, labels, len(group_counts))
    groups = shot_groups(group_counts, many_threshold, few_threshold)
    hits = int((predictions == labels).sum())
    result: dict[str, object] = {"top1": 100.0 * hits / max(len(labels), 1)}
    for name, classes in groups.items():
        result[name] = group_accuracy(per_class, classes)
    result["per_class"] = per_class
    return result
