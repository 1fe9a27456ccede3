"""Long-tail profiles (how many images each class keeps) and the Many/Medium/Few shot groups."""

from __future__ import annotations

from collections.abc import Sequence


def exponential_profile(num_classes: int, n_max: int, n_min: int) -> list[int]:
    """Return ``round(n_max * (n_min / n_max) ** (i / (C - 1)))`` for i = 0..C-1.

    Rounded to the nearest integer, so the ends are exactly n_max and n_min.
    """
    if num_classes < 1 or n_max < n_min or n_min < 0:
        raise ValueError(f"need C >= 1 and n_max >= n_min >= 0, got {num_classes}, {n_max}, "
                         f"{n_min}")
    if num_classes == 1:
        return [n_max]
    ratio = n_min / n_max
    return [round(n_max * ratio ** (i / (num_classes - 1))) for i in range(num_classes)]


def shot_groups(
    class_counts: Sequence[int], many_threshold: int = 100, few_threshold: int = 20
) -> dict[str, list[int]]:
    """Return the class indices of each shot group, by training count n.

    Many: n > many_threshold; Few: n < few_threshold; Medium: the rest
    (few_threshold <= n <= many_threshold). With the paper's thresholds: >100, 20..100, <20.
    """
    groups: dict[str, list[int]] = {"many": [], "medium": [], "few": []}
    for c, n in enumerate(class_counts):
        if n > many_threshold:
            groups["many"].append(c)
        elif n < few_threshold:
            groups["few"].append(c)
        else:
            groups["medium"].append(c)
    return groups
