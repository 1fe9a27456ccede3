import numpy as np
import pytest

from longtail.data.profiles import (
    cifar_lt_profile,
    exponential_profile,
    pareto_profile,
    shot_groups,
)
from longtail.data.splits import hold_out_per_class, long_tailed_split
from longtail.errors import LongtailError


def test_exponential_profile_matches_formula_and_ends_exactly():
    counts = exponential_profile(10, 1280, 5)
    assert counts == [1280, 691, 373, 202, 109, 59, 32, 17, 9, 5]
    assert counts == [round(1280 * (5 / 1280) ** (i / 9)) for i in range(10)]
    assert exponential_profile(1000, 1280, 5)[-1] == 5
    assert exponential_profile(1, 50, 5) == [50]


def test_exponential_profile_rejects_bad_ranges():
    with pytest.raises(ValueError):
        exponential_profile(10, 5, 1280)


def test_shot_groups_at_the_thresholds():
    counts = [101, 100, 50, 20, 19, 1]
    groups = shot_groups(counts, many_threshold=100, few_threshold=20)
    assert groups == {"many": [0], "medium": [1, 2, 3], "few": [4, 5]}


def test_shot_groups_can_be_empty():
    assert shot_groups([500, 400]) == {"many": [0, 1], "medium": [], "few": []}


def test_long_tailed_split_counts_val_test_and_determinism():
    labels = np.repeat(np.arange(10), 1400)
    profile = exponential_profile(10, 1280, 5)
    split = long_tailed_split(labels, profile, val_per_class=20, test_per_class=7, seed=3)
    counts = np.bincount(labels[split.train], minlength=10)
    assert [counts[c] for c in split.class_order] == profile
    assert counts.sum() == sum(profile)
    assert (np.bincount(labels[split.val], minlength=10) == 20).all()
    assert (np.bincount(labels[split.test], minlength=10) == 7).all()
    assert not set(split.train) & set(split.val) and not set(split.val) & set(split.test)
    again = long_tailed_split(labels, profile, val_per_class=20, test_per_class=7, seed=3)
    assert (again.train == split.train).all() and (again.val == split.val).all()
    other = long_tailed_split(labels, profile, val_per_class=20, seed=4)
    assert other.class_order != split.class_order  # the class order is drawn from the seed
    in_order = long_tailed_split(labels, profile, seed=4, class_order="label")
    assert in_order.class_order == list(range(10))


def test_long_tailed_split_needs_enough_images():
    labels = np.repeat(np.arange(10), 100)
    with pytest.raises(LongtailError, match="class .* has 100 images, fewer than"):
        long_tailed_split(labels, exponential_profile(10, 1280, 5), val_per_class=20)


def test_pareto_profile_is_shaped_like_imagenet_lt():
    counts = pareto_profile(1000, 1280, 5, alpha=6)
    assert counts[0] == 1280 and counts[-1] == 5 and counts == sorted(counts, reverse=True)
    groups = shot_groups(counts)
    assert sum(counts) == 104_850
    assert [len(groups[g]) for g in ("many", "medium", "few")] == [350, 492, 158]


def test_cifar_lt_profile_matches_cao_et_al():
    # Hand-computed: int(5000 * 0.01 ** (i / 9)) for CIFAR-10 at ratio 100.
    assert cifar_lt_profile(10, 5000, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83,
                                               50]
    assert cifar_lt_profile(100, 500, 100)[-1] == 5
    assert cifar_lt_profile(10, 5000, 10, "step") == [5000] * 5 + [500] * 5


def test_hold_out_per_class_keeps_one_image_per_class():
    labels = np.array([0, 0, 0, 1, 1, 2])
    kept, held = hold_out_per_class(labels, 1, seed=0)
    assert sorted(labels[held].tolist()) == [0, 1]  # class 2 has a single image: kept
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(6))
