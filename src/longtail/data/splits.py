"""Long-tailed splits of a balanced pool of labelled images: which image goes where."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from longtail.errors import LongtailError


@dataclass
class SplitIndices:
    """Indices into the pool of each split, and the class that got each profile rank."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    class_order: list[int]


def long_tailed_split(
    labels: np.ndarray,
    profile: Sequence[int],
    *,
    val_per_class: int = 0,
    test_per_class: int = 0,
    seed: int = 0,
    class_order: str = "random",
    keys: str = "the profile's n_max or the val/test sizes",
) -> SplitIndices:
    """Return a long-tailed train split of ``labels`` plus balanced val and test splits.

    The class at rank i of the class order keeps ``profile[i]`` training images; the order is
    drawn from ``seed`` (``"random"``, as ImageNet-LT's tail is a random set of classes) or is
    the label order (``"label"``). Each class's images are shuffled by ``seed``: the first
    ``profile[i]`` train, the next ``val_per_class`` val, the next ``test_per_class`` test.
    ``keys`` names what to lower when a class has too few images.
    """
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1
    if len(profile) != num_classes:
        raise LongtailError(f"the profile has {len(profile)} classes, the data {num_classes}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_classes) if class_order == "random" else np.arange(num_classes)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for rank, c in enumerate(order):
        members = rng.permutation(np.flatnonzero(labels == c))
        n = profile[rank]
        need = n + val_per_class + test_per_class
        if need > len(members):
            raise LongtailError(
                f"class {c} has {len(members)} images, fewer than {n} (train) + "
                f"{val_per_class} (val) + {test_per_class} (test); lower {keys}")
        parts["train"].append(members[:n])
        parts["val"].append(members[n : n + val_per_class])
        parts["test"].append(members[n + val_per_class : need])
    cat = {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}
    return SplitIndices(cat["train"], cat["val"], cat["test"], [int(c) for c in order])


def hold_out_per_class(labels: np.ndarray, per_class: int,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (kept, held out) indices: ``per_class`` random images of every class that has
    more than that many are held out (a class always keeps at least one image)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for c in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == c)
        take = min(per_class, len(members) - 1)
        if take > 0:
            held.append(rng.choice(members, size=take, replace=False))
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held_out)
    return kept.astype(np.int64), held_out.astype(np.int64)
