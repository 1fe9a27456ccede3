import numpy as np
import pytest

from longtail.data import fmnist
from longtail.data.profiles import exponential_profile, shot_groups


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


def test_long_tailed_split_counts_val_and_determinism():
    labels = np.repeat(np.arange(10), 1400)
    train, val, order = fmnist.make_long_tailed_split(labels, 1280, 5, 20, seed=3)
    counts = np.bincount(labels[train], minlength=10)
    profile = exponential_profile(10, 1280, 5)
    assert [counts[c] for c in order] == profile
    assert counts.sum() == sum(profile)
    assert (np.bincount(labels[val], minlength=10) == 20).all()
    assert not set(train) & set(val)
    again = fmnist.make_long_tailed_split(labels, 1280, 5, 20, seed=3)
    assert (again[0] == train).all() and (again[1] == val).all() and again[2] == order
    other = fmnist.make_long_tailed_split(labels, 1280, 5, 20, seed=4)
    assert other[2] != order  # the class order is drawn from the seed


def test_long_tailed_split_needs_enough_images():
    labels = np.repeat(np.arange(10), 100)
    with pytest.raises(Exception, match="fewer than"):
        fmnist.make_long_tailed_split(labels, 1280, 5, 20, seed=0)
