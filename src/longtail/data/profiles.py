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


def pareto_profile(num_classes: int, n_max: int = 1280, n_min: int = 5,
                   alpha: float = 6.0) -> list[int]:
    """Return class sizes shaped like ImageNet-LT's: Pareto(alpha) quantiles mapped to
    [n_min, n_max], largest first.

    ImageNet-LT drew its class sizes from a Pareto distribution with alpha = 6; this takes the
    distribution's quantiles at (i + 0.5) / C instead of random draws, so the profile is
    deterministic. For C = 1000 it gives 104,850 images with 350 / 492 / 158 classes in the
    many / medium / few groups (ImageNet-LT: 115,846 and 385 / 479 / 136).
    """
    if num_classes < 2 or n_max < n_min or n_min < 0 or alpha <= 0:
        raise ValueError(f"need C >= 2, n_max >= n_min >= 0, alpha > 0; got {num_classes}, "
                         f"{n_max}, {n_min}, {alpha}")
    quantiles = [(1 - (i + 0.5) / num_classes) ** (-1 / alpha) for i in range(num_classes)]
    lo, hi = quantiles[0], quantiles[-1]
    sizes = [round(n_min + (n_max - n_min) * (q - lo) / (hi - lo)) for q in quantiles]
    return sorted(sizes, reverse=True)


def cifar_lt_profile(num_classes: int, n_max: int, imbalance_ratio: float,
                     kind: str = "exponential") -> list[int]:
    """Return Cao et al.'s CIFAR-LT class sizes (LDAM-DRW's IMBALANCECIFAR), in label order.

    ``exponential``: class i keeps ``int(n_max * (1/r) ** (i / (C - 1)))`` (truncated, as in
    their code); ``step``: the first half of the classes keep n_max, the rest ``int(n_max / r)``.
    """
    if kind == "exponential":
        return [int(n_max * (1 / imbalance_ratio) ** (i / (num_classes - 1)))
                for i in range(num_classes)]
    if kind == "step":
        half = num_classes // 2
        return [n_max] * half + [int(n_max / imbalance_ratio)] * (num_classes - half)
    raise ValueError(f"unknown CIFAR-LT profile {kind!r}; expected exponential or step")


DEFAULT_RATIO = 100  # n_max / n_min of a generated split given neither n_min nor a ratio


def ratio_shortfall(profile: Sequence[int], ratio: float) -> str | None:
    """Return why ``profile``'s ratio (largest / smallest class) is not the ``ratio`` asked
    for (or the default), when it is off by more than 10%: the smallest class is a whole
    number of images, at least one; None when it is close."""
    achieved = profile[0] / profile[-1]
    if abs(achieved / ratio - 1) <= 0.1:
        return None
    return (f"imbalance ratio {achieved:.3g}, not {ratio:g}: n_max {profile[0]} / {ratio:g} "
            f"= {profile[0] / ratio:.3g} images, and the smallest class keeps {profile[-1]}")


def make_profile(kind: str, num_classes: int, n_max: int, n_min: int | None = None,
                 imbalance_ratio: float | None = None, alpha: float = 6.0,
                 default_n_min: int | None = None) -> list[int]:
    """Return the class sizes of profile ``kind`` (``exponential`` or ``pareto``), largest first.

    The smallest size is ``n_min``, else ``n_max / imbalance_ratio``, else ``default_n_min``,
    else ``n_max / 100``.
    """
    if n_min is None:
        if imbalance_ratio is None and default_n_min is not None:
            n_min = default_n_min
        else:
            n_min = max(1, round(n_max / (imbalance_ratio or DEFAULT_RATIO)))
    if n_min > n_max:
        raise ValueError(f"n_min ({n_min}) is larger than n_max ({n_max})")
    if kind == "pareto":
        return pareto_profile(num_classes, n_max, n_min, alpha)
    if kind == "exponential":
        return exponential_profile(num_classes, n_max, n_min)
    raise ValueError(f"unknown profile {kind!r}; expected exponential or pareto")
