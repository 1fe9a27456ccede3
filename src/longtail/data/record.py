"""The record every dataset reader returns, whatever its storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")


@dataclass
class DataRecord:
    """The splits of one dataset as a reader found them, and what is known of them.

    ``splits`` maps train / val / test to the reader's split type, or None when absent: a
    ``FileSplit`` (images on disk), ``TensorImages`` (decoded images in memory) or a
    ``FeatureSplit`` (features). Every split type has ``labels``; the builder
    (``data/builder.py``) does the rest: val hold-out, checks, decoding, datasets.
    """

    name: str
    class_names: list[str]
    splits: dict[str, Any]
    split_sha256: dict[str, str]  # of each split, to record and to compare runs by
    notes: list[str] = field(default_factory=list)
    # Training count per class before a val hold-out took images out of training (the shot
    # groups come from these); None: the training counts.
    counts_before_holdout: list[int] | None = None
    # Images in memory: their normalisation and native side. Files: None (ImageNet's
    # statistics; the side is read from a sample of the files).
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    side: int | None = None
    root: Path | None = None  # files: the folder paths are checked against and hashed from
