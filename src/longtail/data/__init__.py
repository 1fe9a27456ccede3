"""Datasets of longtail: readers, long-tail profiles, shot groups, samplers and transforms.

``build_data(cfg.data, ...)`` is the factory (``data/builder.py``): the reader of
``data.kind`` (``data/readers.py``, ``data/features.py``) returns a ``DataRecord``; the builder
does the checks every kind shares and returns a ``LongTailData`` (train / val / test image
datasets and what the model needs) or, for ``data.kind: features``, a ``FeatureData``.

The names below are imported on first use: the image readers bring in torchvision (about 2 s
of imports, most of it torch._dynamo), which stage 2 on features (``longtail rebalance``, the
re-balancers in Python) never needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "builder": ("READERS", "FeatureData", "LongTailData", "build_data", "usable_cpus"),
    "features": ("FeatureSplit", "read_feature_file", "write_feature_file"),
    "profiles": ("exponential_profile", "pareto_profile", "shot_groups"),
    "record": ("SPLITS", "DataRecord"),
    "samplers": ("build_sampler",),
    "transforms": ("build_transform",),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:  # a submodule (longtail.data.cifar) or a mistake
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":  # the submodule exists; something it needs not
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
