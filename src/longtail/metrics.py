"""Top-1 accuracy overall and per class, Many / Medium / Few-shot accuracy, balanced accuracy,
and calibration: expected calibration error (ECE), negative log-likelihood (NLL) and the bins
of a reliability diagram."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from longtail.arrays import ArrayLike, as_tensor, class_indices
from longtail.data.profiles import shot_groups

ECE_BINS = 15


def reliability_bins(scores: torch.Tensor, labels: torch.Tensor,
                     bins: int = ECE_BINS) -> dict[str, list]:
    """Return the reliability diagram of softmax(scores): ``bins`` equal-width bins of the top
    confidence over [0, 1], each with its image count, mean confidence and accuracy (None when
    empty)."""
    confidence, predicted = torch.softmax(scores.double(), dim=1).max(1)
    correct = (predicted == labels).double()
    # Bin b holds confidences in (b/bins, (b+1)/bins], as torchmetrics bins them.
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()

    def mean(values: torch.Tensor) -> list[float | None]:
        sums = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, values)
        return [None if n == 0 else v / n for v, n in zip(sums.tolist(), count.tolist())]

    return {"count": count.long().tolist(), "confidence": mean(confidence),
            "accuracy": mean(correct)}


def calibration(scores: torch.Tensor, labels: torch.Tensor,
                bins: int = ECE_BINS) -> dict[str, object]:
    """Return ``ece`` (%, top-label, ``bins`` equal-width bins), ``nll`` (mean negative
    log-likelihood of softmax(scores), nats) and the ``reliability`` bins.

    ECE is ``sum_b n_b |accuracy_b - confidence_b| / N`` over the reliability bins: the
    definition torchmetrics' ``multiclass_calibration_error(norm="l1")`` implements (a test
    checks the two agree). The library is not imported at run time: its import alone took
    0.8 s, more than fitting all ten stage-2 methods of the demo (docs/design.md).

    Scores that are not logits (NCM's cosine similarities or negative distances) are turned
    into probabilities by the same softmax; their ECE says how far that is from calibrated."""
    reliability = reliability_bins(scores, labels, bins)
    gaps = sum(n * abs(a - c) for n, a, c in zip(reliability["count"], reliability["accuracy"],
                                                 reliability["confidence"]) if n)
    nll = torch.nn.functional.cross_entropy(scores.double(), labels)
    return {"ece": 100.0 * gaps / max(len(labels), 1), "nll": float(nll),
            "reliability": reliability}


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor,
                       num_classes: int) -> list[float]:
    """Return the top-1 accuracy (%) of each class; NaN for a class with no test images."""
    correct = (predictions == labels).float()
    hits = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, correct.double())
    counts = torch.bincount(labels, minlength=num_classes).double()
    acc = torch.where(counts > 0, 100.0 * hits / counts.clamp(min=1), torch.nan)
    return acc.tolist()


def balanced_accuracy(correct: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return the mean over the classes in ``labels`` of their accuracy (a fraction): of
    ``correct`` (N,) bool, a 0-d tensor; of ``correct`` (N, T), one per column (e.g. per tau
    of a search), each exactly as the column alone would give."""
    num_classes = int(labels.max()) + 1
    hits = torch.zeros(num_classes, *correct.shape[1:]).index_add_(0, labels, correct.float())
    counts = torch.bincount(labels, minlength=num_classes).float()
    present = counts > 0
    rates = hits[present].reshape(int(present.sum()), -1) / counts[present].unsqueeze(1)
    # column by column, each contiguous: the same sums as the column alone
    means = torch.stack([column.mean() for column in rates.T.contiguous()])
    return means.reshape(correct.shape[1:])


def group_accuracy(per_class: Sequence[float], classes: Sequence[int]) -> float | None:
    """Return the mean accuracy of ``classes`` that have test images; None for an empty group."""
    values = [per_class[c] for c in classes if not math.isnan(per_class[c])]
    return sum(values) / len(values) if values else None


def group_accuracies(per_class: Sequence[float],
                     groups: dict[str, list[int]]) -> dict[str, float | None]:
    """Return ``group_accuracy`` of each shot group (many / medium / few) by name."""
    return {name: group_accuracy(per_class, classes) for name, classes in groups.items()}


def evaluate(
    predictions: ArrayLike,
    labels: ArrayLike,
    group_counts: ArrayLike,
    many_threshold: int = 100,
    few_threshold: int = 20,
    scores: ArrayLike | None = None,
) -> dict[str, object]:
    """Return top1 over all images, many / medium / few (mean of per-class accuracies of each
    shot group by ``group_counts``, None when empty), balanced_accuracy (mean per-class
    accuracy over classes with test images) and per_class, all in percent (float64); with the
    class ``scores`` (N, C) also ``ece``, ``nll`` and ``reliability`` (see ``calibration``).
    Each may be a tensor, a NumPy array or a sequence; ValueError or TypeError naming the
    argument for one that does not fit the others."""
    counts = as_tensor(group_counts, "group_counts", "a count per class")
    if counts.ndim != 1 or not len(counts):
        raise ValueError(f"group_counts: expected one training count per class, found shape "
                         f"{tuple(counts.shape)}")
    group_counts = counts.tolist()
    labels = class_indices(labels, None, "labels", len(group_counts), "group_counts")
    predictions = class_indices(predictions, len(labels), "predictions")
    if scores is not None:
        scores = as_tensor(scores, "scores", "numbers").cpu()
        scores = scores if scores.is_floating_point() else scores.double()
        if scores.shape != (len(labels), len(group_counts)):
            raise ValueError(f"scores: expected shape ({len(labels)}, {len(group_counts)}) (a "
                             f"score per label and class), found {tuple(scores.shape)}")
    per_class = per_class_accuracy(predictions, labels, len(group_counts))
    groups = shot_groups(group_counts, many_threshold, few_threshold)
    hits = int((predictions == labels).sum())
    result: dict[str, object] = {"top1": 100.0 * hits / max(len(labels), 1)}
    result.update(group_accuracies(per_class, groups))
    result["balanced_accuracy"] = group_accuracy(per_class, range(len(per_class)))
    if scores is not None:
        result.update(calibration(scores, labels))
    result["per_class"] = per_class
    return result
