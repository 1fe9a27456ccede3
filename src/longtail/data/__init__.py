"""Datasets of longtail: readers, long-tail profiles, shot groups, samplers and transforms.

``build_data(cfg.data, ...)`` is the factory (``data/builder.py``): the reader of
``data.kind`` (``data/readers.py``, ``data/features.py``) returns a ``DataRecord``; the builder
does the checks every kind shares and returns a ``LongTailData`` (train / val / test image
datasets and what the model needs) or, for ``data.kind: features``, a ``FeatureData``.
"""

from longtail.data.builder import (
    READERS,
    FeatureData,
    LongTailData,
    build_data,
    usable_cpus,
)
from longtail.data.features import FeatureSplit, read_feature_file, write_feature_file
from longtail.data.profiles import exponential_profile, pareto_profile, shot_groups
from longtail.data.record import SPLITS, DataRecord
from longtail.data.samplers import build_sampler
from longtail.data.transforms import build_transform

__all__ = ["READERS", "SPLITS", "DataRecord", "FeatureData", "FeatureSplit", "LongTailData",
           "build_data", "build_sampler", "build_transform", "exponential_profile",
           "pareto_profile", "read_feature_file", "shot_groups", "usable_cpus",
           "write_feature_file"]
