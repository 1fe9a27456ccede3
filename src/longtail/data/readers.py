"""One reader per ``data.kind``: each reads its storage and returns a ``DataRecord``.

Two families:
- arrays (``fmnist_lt``, ``cifar10_lt``, ``cifar100_lt``): a balanced dataset in memory, made
  long-tailed here by a profile; the balanced val split comes from unused training images;
- files (``list``, ``inat_json``, ``image_folder``): images on disk, listed by split files, a
  COCO-style JSON or class folders.
The features reader (``features``) lives in ``data/features.py``. What every kind shares (the
val hold-out, checks of labels and files, decoding into memory) is in ``data/builder.py``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from longtail.config import DataConfig
from longtail.data import cifar, fmnist
from longtail.data.datasets import TensorImages
from longtail.data.folder import read_image_folder
from longtail.data.inat import read_inat_json as read_inat_json_file
from longtail.data.listfile import (
    FileSplit,
    label_gap,
    list_text,
    parse_list_file,
    read_class_names,
    resolve_near_root,
    subset,
)
from longtail.data.preflight import data_root
from longtail.data.profiles import (
    DEFAULT_RATIO,
    cifar_lt_profile,
    make_profile,
    pareto_profile,
    ratio_shortfall,
)
from longtail.data.record import SPLITS, DataRecord
from longtail.data.splits import long_tailed_split
from longtail.errors import LongtailError

# --------------------------------------------------------------------------------------------
# Arrays: a balanced dataset made long-tailed here


def read_fmnist_lt(cfg: DataConfig, split_seed: int) -> DataRecord:
    """Fashion-MNIST IDX files, long-tailed by ``data.profile`` over a class order by seed."""
    arrays = fmnist.load_fashion_mnist(cfg.root or fmnist.DEFAULT_ROOT, cfg.download)
    images = torch.from_numpy(np.array(arrays["train_images"])).unsqueeze(1)
    test_images = torch.from_numpy(np.array(arrays["test_images"])).unsqueeze(1)
    names = list(fmnist.CLASS_NAMES)
    labels = np.asarray(arrays["train_labels"], dtype=np.int64)
    profile = _profile(cfg, len(names), cfg.n_max or 1280, default_n_min=5)
    split = long_tailed_split(labels, profile, val_per_class=cfg.val_per_class,
                              seed=split_seed, class_order=cfg.class_order,
                              keys="config key data.n_max or data.val_per_class")
    record = _array_record(cfg, names, images, labels, test_images, arrays["test_labels"],
                           split.train, split.val, None, fmnist.MEAN, fmnist.STD, 28)
    _note_ratio_shortfall(cfg, profile, record.notes)
    return record


def read_cifar_lt(cfg: DataConfig, split_seed: int) -> DataRecord:
    """CIFAR python batches, long-tailed exactly as Cao et al.'s generator (docs/configs.md)."""
    arrays = cifar.load_cifar(cfg.root, cfg.kind, cfg.download)
    images = torch.from_numpy(arrays["train_images"])
    test_images = torch.from_numpy(arrays["test_images"])
    names = arrays["class_names"]
    labels = np.asarray(arrays["train_labels"], dtype=np.int64)
    num_classes = len(names)
    # Cao et al.'s generator: classes in label order, their own RNG stream.
    per_class = int(np.bincount(labels).min())
    n_max = cfg.n_max or per_class
    # (more would be capped at what a class has, flattening the head of the profile)
    if n_max > per_class:
        raise LongtailError(f"config key data.n_max: expected at most {per_class} (the images "
                            f"per class of {cfg.kind.removesuffix('_lt')}; null takes them "
                            f"all, as Cao et al.), found {n_max}")
    if cfg.val_per_class >= per_class:
        raise LongtailError(f"config key data.val_per_class: expected below {per_class} (the "
                            f"images per class of {cfg.kind.removesuffix('_lt')}), found "
                            f"{cfg.val_per_class}")
    ratio = cfg.imbalance_ratio or (n_max / cfg.n_min if cfg.n_min else 100.0)
    if cfg.profile == "pareto":
        profile = pareto_profile(num_classes, n_max, max(1, round(n_max / ratio)),
                                 cfg.pareto_alpha)
    else:
        profile = cifar_lt_profile(num_classes, n_max, ratio, cfg.profile)
    # Cao et al.'s truncation leaves a class empty when n_max / ratio < 1, which their code
    # does not survive either: such classes keep one image (said in the notes).
    empty = [names[c] for c, n in enumerate(profile) if n < 1]
    profile = [max(1, n) for n in profile]
    train = cifar.cao_selection(labels, profile)
    # The balanced val split takes images the long-tailed train split left unused; a class
    # with too few of them (the head class uses all its images) gives the rest out of its
    # training images, so val holds every class. The shot groups use the counts before that.
    rng = np.random.default_rng(split_seed)
    before = np.bincount(labels[train], minlength=num_classes).tolist()
    unused = np.setdiff1d(np.arange(len(labels)), train)
    val, taken = [], []
    for c in range(num_classes):
        spare = rng.permutation(unused[labels[unused] == c])[: cfg.val_per_class]
        short = min(cfg.val_per_class - len(spare), before[c] - 1)  # keep one to train on
        if short > 0:
            taken.append(rng.permutation(train[labels[train] == c])[:short])
            spare = np.concatenate([spare, taken[-1]])
        val.append(spare)
    if taken:
        train = np.setdiff1d(train, np.concatenate(taken))
    record = _array_record(cfg, names, images, labels, test_images, arrays["test_labels"],
                           np.sort(train), np.sort(np.concatenate(val)).astype(np.int64),
                           before if taken else None, cifar.MEAN, cifar.STD, 32)
    if empty:
        named = ", ".join(empty[:4]) + ", ..." * (len(empty) > 4)
        record.notes.append(
            f"{len(empty)} classes ({named}) would keep no training image (n_max {n_max} / "
            f"imbalance ratio {ratio:g} = {n_max / ratio:.3g}): each keeps 1; a larger "
            f"data.n_max or a smaller data.imbalance_ratio gives them more")
    return record


def _array_record(cfg: DataConfig, names: list[str], images: torch.Tensor, labels: np.ndarray,
                  test_images: torch.Tensor, test_labels, train_idx: np.ndarray,
                  val_idx: np.ndarray, counts_before_holdout: list[int] | None,
                  mean: tuple, std: tuple, side: int) -> DataRecord:
    labels_t = torch.from_numpy(labels)
    test_labels = torch.from_numpy(np.asarray(test_labels, dtype=np.int64))
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    hashes = {"train": _indices_sha256(cfg.kind, "train", train_idx, labels_t),
              "val": _indices_sha256(cfg.kind, "train", val_idx, labels_t),
              "test": _indices_sha256(cfg.kind, "test", torch.arange(len(test_labels)),
                                      test_labels)}
    if not len(val_idx):  # no val split (data.val_per_class: 0): nothing to record
        del hashes["val"]
    splits = {"train": TensorImages(images[train_idx], labels_t[train_idx]),
              "val": TensorImages(images[val_idx], labels_t[val_idx]) if len(val_idx) else None,
              "test": TensorImages(test_images, test_labels)}
    return DataRecord(name=cfg.kind, class_names=names, splits=splits, split_sha256=hashes,
                      counts_before_holdout=counts_before_holdout, mean=mean, std=std,
                      side=side)


def _note_ratio_shortfall(cfg: DataConfig, profile: list[int], notes: list[str]) -> None:
    """Note a smallest class that a ratio (data.imbalance_ratio, or the default 100 where n_min
    has no default) gave and that is far from it: n_max / ratio below one image or rounded."""
    if cfg.n_min is None and (cfg.imbalance_ratio is not None or cfg.kind == "image_folder"):
        short = ratio_shortfall(profile, cfg.imbalance_ratio or DEFAULT_RATIO)
        if short:
            notes.append(f"{short}; data.n_min sets it")


def _profile(cfg: DataConfig, num_classes: int, n_max: int,
             default_n_min: int | None = None) -> list[int]:
    try:
        return make_profile(cfg.profile, num_classes, n_max, cfg.n_min, cfg.imbalance_ratio,
                            cfg.pareto_alpha, default_n_min)
    except ValueError as e:
        raise LongtailError(f"config key data.n_min: {e}") from None


def _indices_sha256(kind: str, part: str, indices: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of a split of an array dataset written as a list: '<kind>/<part>/<i> <label>'."""
    text = "".join(f"{kind}/{part}/{i} {int(labels[i])}\n" for i in indices.tolist())
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Files: split lists, iNaturalist JSON, image folders


def file_hashes(splits: dict[str, FileSplit | None], root: Path) -> dict[str, str]:
    """SHA-256 of each split written as a list file ('relative/path label' lines)."""
    return {k: hashlib.sha256(list_text(v.paths, v.labels, root).encode()).hexdigest()
            for k, v in splits.items() if v is not None}


def read_list(cfg: DataConfig, split_seed: int) -> DataRecord:
    """Split lists in the ImageNet-LT format (``relative/path label``), optional class names."""
    root = data_root(cfg)
    splits = {name: parse_list_file(getattr(cfg, name), root) if getattr(cfg, name) else None
              for name in SPLITS}
    hashes = {name: hashlib.sha256(s.source.read_bytes()).hexdigest()
              for name, s in splits.items() if s is not None}
    notes: list[str] = []
    labels = _check_list_labels(cfg, splits, notes)  # the list's own label of each class
    names = (read_class_names(resolve_near_root(cfg.class_names, root), len(labels),
                              labels if cfg.remap_labels else None)
             if cfg.class_names else [str(label) for label in labels])
    return DataRecord(name=_dataset_name(root), class_names=names, splits=splits,
                      split_sha256=hashes, notes=notes, root=root)


def _dataset_name(root: Path) -> str:
    """The name reports give the data: its folder's ('.' or '..' named as they resolve)."""
    return root.name if root.name not in ("", "..") else (root.resolve().name or str(root))


def read_inat_json(cfg: DataConfig, split_seed: int) -> DataRecord:
    """iNaturalist 2018's own train2018.json / val2018.json (COCO style)."""
    root = data_root(cfg)
    train, category_ids, names = read_inat_json_file(cfg.train, root)
    splits = {"train": train}
    for name in ("val", "test"):
        path = getattr(cfg, name)
        splits[name] = read_inat_json_file(path, root, category_ids)[0] if path else None
    return DataRecord(name=_dataset_name(root), class_names=names, splits=splits,
                      split_sha256=file_hashes(splits, root), root=root)


def read_image_folder_kind(cfg: DataConfig, split_seed: int) -> DataRecord:
    """One sub-folder per class: train/val/test folders as they are, or a long-tailed split
    generated from one balanced folder (no ``data.train``)."""
    root = data_root(cfg)
    if cfg.train is None:
        return _generated_folder_split(cfg, root, split_seed)
    train, names = read_image_folder(root / cfg.train)
    splits = {"train": train}
    for name in ("val", "test"):
        path = getattr(cfg, name)
        splits[name] = read_image_folder(root / path, names)[0] if path else None
    if splits["test"] is None:
        raise LongtailError("config key data.test: expected the test sub-folder "
                            "(data.train is set, so the folders are used as they are)")
    return DataRecord(name=_dataset_name(root), class_names=names, splits=splits,
                      split_sha256=file_hashes(splits, root), root=root)


# Sub-folder names that say a folder holds splits, not classes.
SPLIT_FOLDERS = {"train", "val", "valid", "validation", "test"}


def _generated_folder_split(cfg: DataConfig, root: Path, split_seed: int) -> DataRecord:
    pool, names = read_image_folder(root)
    if "train" in names and set(names) <= SPLIT_FOLDERS:  # its "classes" would mix them all
        given = " ".join(f"data.{'val' if n in ('valid', 'validation') else n}={n}"
                         for n in names)
        raise LongtailError(f"{root}: its sub-folders {', '.join(names)} are splits, not "
                            f"classes; use them as they are: {given}")
    labels = np.asarray(pool.labels)
    counts = np.bincount(labels, minlength=len(names))
    smallest = int(counts.argmin())
    available = int(counts[smallest]) - cfg.val_per_class - cfg.test_per_class
    if available < 1:  # n_max is no help here: the balanced val/test splits take it all
        raise LongtailError(
            f"{root / names[smallest]}: class folder has only {counts[smallest]} images; the "
            f"generated split needs {cfg.val_per_class} val + {cfg.test_per_class} test + 1 "
            f"train per class (lower data.val_per_class or data.test_per_class)")
    n_max = cfg.n_max or available
    if n_max > available:
        raise LongtailError(
            f"config key data.n_max: expected at most {available} (class folder "
            f"{root / names[smallest]} has {counts[smallest]} images, {cfg.val_per_class} of "
            f"them for val and {cfg.test_per_class} for test), found {n_max}")
    profile = _profile(cfg, len(names), n_max)  # smallest: n_max / 100 by default
    split = long_tailed_split(labels, profile, val_per_class=cfg.val_per_class,
                              test_per_class=cfg.test_per_class, seed=split_seed,
                              class_order=cfg.class_order)
    splits = {"train": subset(pool, split.train),
              "val": subset(pool, split.val) if len(split.val) else None,
              "test": subset(pool, split.test)}
    if not len(split.test):
        raise LongtailError("config key data.test_per_class: expected > 0 (the generated "
                            "split needs a test split)")
    notes = [f"long-tailed split generated from {root}: {cfg.profile} profile "
             f"{profile[0]}..{profile[-1]}, seed {split_seed}"]
    _note_ratio_shortfall(cfg, profile, notes)
    return DataRecord(name=_dataset_name(root), class_names=names, splits=splits,
                      split_sha256=file_hashes(splits, root), notes=notes, root=root)


def _check_list_labels(cfg: DataConfig, splits: dict[str, FileSplit | None],
                       notes: list[str]) -> list[int]:
    """Check (or remap) list labels so that classes are 0..C-1, each with training images;
    return the label the lists give each class (with data.remap_labels, those found)."""
    train = splits["train"]
    present = sorted(set(train.labels))
    if len(present) < 2:
        raise LongtailError(f"{train.source}: expected at least 2 classes in the training "
                            f"split, found {len(present)}")
    num_classes = present[-1] + 1
    if len(present) != num_classes:
        # A class that val or test has and training lacks cannot be learned: remapping, the
        # hint below, would only fail on it next.
        known = set(present)
        for name, split in splits.items():
            if split is None or name == "train":
                continue
            for label, origin in zip(split.labels, split.origins):
                if label not in known and label < num_classes:
                    raise LongtailError(
                        f"{origin}: label {label}, but no training image has it (training "
                        f"lacks {label_gap(present, num_classes)}); every class needs "
                        f"training images: add some of label {label} to {train.source} or "
                        f"remove its {name} lines")
        if not cfg.remap_labels:
            first_missing = next(i for i, label in enumerate(present) if label != i)
            # The first label above the first gap is most often the culprit (a typo).
            culprit = present[first_missing]
            origin = train.origins[train.labels.index(culprit)]
            raise LongtailError(
                f"{origin}: label {culprit}, but no training image has label "
                f"{label_gap(present, num_classes)}; labels must be 0..C-1, each used in "
                f"training "
                f"(data.remap_labels=true maps the {len(present)} labels found to "
                f"0..{len(present) - 1})")
        mapping = {old: new for new, old in enumerate(present)}
        for split in splits.values():
            if split is None:
                continue
            for i, (label, origin) in enumerate(zip(split.labels, split.origins)):
                if label not in mapping:
                    raise LongtailError(f"{origin}: label {label} does not occur in training")
                split.labels[i] = mapping[label]
        table = ", ".join(f"{old}->{new}" for old, new in list(mapping.items())[:20])
        notes.append(f"labels remapped to 0..{len(present) - 1}: {table}"
                     + (" ..." if len(mapping) > 20 else "") + " (classes named by the lists' "
                     "labels)")
        return present
    for split in splits.values():
        if split is None:
            continue
        for label, origin in zip(split.labels, split.origins):
            if label >= num_classes:
                raise LongtailError(f"{origin}: label {label} is not below the class count "
                                    f"{num_classes} (largest training label + 1): no training "
                                    f"image has it, so no model can learn it; remove its "
                                    f"lines, or add training images of it")
    return present
