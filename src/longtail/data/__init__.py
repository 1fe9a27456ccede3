"""Datasets of longtail: readers, long-tail profiles, shot groups, samplers and transforms.

``build_data(cfg.data, ...)`` is the factory: it reads the dataset named by ``data.kind`` and
returns a ``LongTailData`` (train / val / test image datasets and what the model needs).

Two families of readers feed it:
- arrays (``fmnist_lt``, ``cifar10_lt``, ``cifar100_lt``): a balanced dataset in memory, made
  long-tailed here by a profile; the balanced val split comes from unused training images;
- files (``list``, ``inat_json``, ``image_folder``): images on disk, listed by split files, a
  COCO-style JSON or class folders, optionally decoded once into memory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from longtail.config import DataConfig
from longtail.data import cifar, fmnist
from longtail.data.datasets import (
    Augmented,
    ImageFiles,
    LabelledImages,
    RawDraws,
    TensorImages,
    collate_skipping,
    decode_image,
)
from longtail.data.folder import read_image_folder
from longtail.data.inat import read_inat_json
from longtail.data.listfile import (
    FileSplit,
    check_files_exist,
    list_text,
    parse_list_file,
    read_class_names,
    resolve_near_root,
)
from longtail.data.profiles import (
    cifar_lt_profile,
    exponential_profile,
    make_profile,
    pareto_profile,
    shot_groups,
)
from longtail.data.samplers import build_sampler
from longtail.data.splits import hold_out_per_class, long_tailed_split
from longtail.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SMALL_IMAGE,
    BatchAugment,
    build_transform,
)
from longtail.errors import LongtailError

__all__ = ["LongTailData", "build_data", "build_sampler", "build_transform",
           "exponential_profile", "pareto_profile", "shot_groups"]

IN_MEMORY_LIMIT = 2 << 30  # bytes of decoded pixels kept in memory by data.in_memory=auto
SPLITS = ("train", "val", "test")


@dataclass
class LongTailData:
    """A long-tailed dataset ready for training: image datasets without transforms, and facts."""

    name: str
    num_classes: int
    class_names: list[str]
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: LabelledImages
    val: LabelledImages | None
    test: LabelledImages
    in_memory: bool
    num_workers: int
    split_sha256: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    hflip: bool = True
    # Training images per class before a val hold-out; the shot groups come from these, so a
    # class does not change group because some of its images went to val.
    counts_before_holdout: list[int] | None = None

    @property
    def train_counts(self) -> list[int]:
        """Training images per class."""
        return torch.bincount(self.train.labels, minlength=self.num_classes).tolist()

    @property
    def group_counts(self) -> list[int]:
        """Images per class that decide the Many/Medium/Few groups: before any val hold-out."""
        return self.counts_before_holdout or self.train_counts

    def transform(self, train: bool):
        """Return the train (augmented) or test transform of this dataset."""
        return build_transform(self.image_size, train, self.mean, self.std, self.hflip)

    def training_view(self) -> tuple[Dataset, Callable]:
        """Return (dataset of ``(index, seed)`` draws, collate function) for training.

        Small images held in memory at their target size are augmented a batch at a time
        (``BatchAugment``); others image by image (``Augmented``).
        """
        train = self.train
        if (isinstance(train, TensorImages) and isinstance(train.images, torch.Tensor)
                and self.image_size < SMALL_IMAGE
                and tuple(train.images.shape[2:]) == (self.image_size, self.image_size)):
            view = RawDraws(train, BatchAugment(self.image_size, self.mean, self.std,
                                                self.hflip))
            return view, view.collate
        return Augmented(train, self.transform(train=True)), collate_skipping

    def splits(self) -> dict[str, LabelledImages]:
        """Return the present splits by name: train, val (when there is one), test."""
        out = {"train": self.train, "val": self.val, "test": self.test}
        return {k: v for k, v in out.items() if v is not None}


def build_data(cfg: DataConfig, seed: int, channels: int | None = None) -> LongTailData:
    """Return the dataset of the ``data.*`` keys, images with ``channels`` as the model expects."""
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    if cfg.kind in ("fmnist_lt", "cifar10_lt", "cifar100_lt"):
        data = _array_data(cfg, split_seed, channels)
    else:
        data = _file_data(cfg, split_seed, channels or 3)
    if cfg.mean is not None:
        if len(cfg.mean) != data.channels:
            raise LongtailError(f"config key data.mean: expected {data.channels} values (one per "
                                f"channel), found {len(cfg.mean)}")
        data.mean, data.std = tuple(cfg.mean), tuple(cfg.std)
    data.hflip = cfg.hflip if cfg.hflip is not None else data.image_size >= SMALL_IMAGE
    return data


# --------------------------------------------------------------------------------------------
# Arrays: a balanced dataset made long-tailed here


def _array_data(cfg: DataConfig, split_seed: int, channels: int | None) -> LongTailData:
    if cfg.kind == "fmnist_lt":
        arrays = fmnist.load_fashion_mnist(cfg.root or fmnist.DEFAULT_ROOT, cfg.download)
        images = torch.from_numpy(np.array(arrays["train_images"])).unsqueeze(1)
        test_images = torch.from_numpy(np.array(arrays["test_images"])).unsqueeze(1)
        names, mean, std, side = list(fmnist.CLASS_NAMES), fmnist.MEAN, fmnist.STD, 28
    else:
        arrays = cifar.load_cifar(cfg.root, cfg.kind)
        images = torch.from_numpy(arrays["train_images"])
        test_images = torch.from_numpy(arrays["test_images"])
        names, mean, std, side = arrays["class_names"], cifar.MEAN, cifar.STD, 32
    labels = np.asarray(arrays["train_labels"], dtype=np.int64)
    num_classes = len(names)
    train_idx, val_idx, counts_before_holdout = _array_split(cfg, labels, num_classes,
                                                              split_seed)
    images, test_images, mean, std = _match_channels(images, test_images, mean, std,
                                                     channels or images.shape[1])
    labels_t = torch.from_numpy(labels)
    test_labels = torch.from_numpy(np.asarray(arrays["test_labels"], dtype=np.int64))
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    val = TensorImages(images[val_idx], labels_t[val_idx]) if len(val_idx) else None
    hashes = {"train": _indices_sha256(cfg.kind, "train", train_idx, labels_t),
              "val": _indices_sha256(cfg.kind, "train", val_idx, labels_t),
              "test": _indices_sha256(cfg.kind, "test", torch.arange(len(test_labels)),
                                      test_labels)}
    return LongTailData(
        name=cfg.kind, num_classes=num_classes, class_names=names, channels=images.shape[1],
        image_size=cfg.image_size or side, mean=mean, std=std,
        train=TensorImages(images[train_idx], labels_t[train_idx]), val=val,
        test=TensorImages(test_images, test_labels), in_memory=True,
        num_workers=_num_workers(cfg, in_memory=True), split_sha256=hashes,
        counts_before_holdout=counts_before_holdout)


def _array_split(cfg: DataConfig, labels: np.ndarray, num_classes: int,
                 split_seed: int) -> tuple[np.ndarray, np.ndarray, list[int] | None]:
    """Return (train, val) indices of the long-tailed split of a balanced array dataset, and
    the training counts before val took training images (None when it took none)."""
    if cfg.kind == "fmnist_lt":
        n_max = cfg.n_max or 1280
        profile = _profile(cfg, num_classes, n_max, default_n_min=5)
        split = long_tailed_split(labels, profile, val_per_class=cfg.val_per_class,
                                  seed=split_seed, class_order=cfg.class_order)
        return split.train, split.val, None
    # CIFAR-LT: Cao et al.'s generator, classes in label order, their own RNG stream.
    per_class = int(np.bincount(labels).min())
    n_max = cfg.n_max or per_class
    ratio = cfg.imbalance_ratio or (n_max / cfg.n_min if cfg.n_min else 100.0)
    if cfg.profile == "pareto":
        profile = pareto_profile(num_classes, n_max, round(n_max / ratio), cfg.pareto_alpha)
    else:
        profile = cifar_lt_profile(num_classes, n_max, ratio, cfg.profile)
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
    return (np.sort(train), np.sort(np.concatenate(val)).astype(np.int64),
            before if taken else None)


def _profile(cfg: DataConfig, num_classes: int, n_max: int, default_n_min: int) -> list[int]:
    try:
        return make_profile(cfg.profile, num_classes, n_max, cfg.n_min, cfg.imbalance_ratio,
                            cfg.pareto_alpha, default_n_min)
    except ValueError as e:
        raise LongtailError(f"config key data.n_min: {e}") from None


def _match_channels(images: torch.Tensor, test_images: torch.Tensor, mean: tuple, std: tuple,
                    channels: int) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
    have = images.shape[1]
    if channels == have:
        return images, test_images, mean, std
    if have == 1 and channels == 3:
        return (images.expand(-1, 3, -1, -1), test_images.expand(-1, 3, -1, -1), mean * 3,
                std * 3)
    if have == 3 and channels == 1:  # ITU-R 601 luma, as Pillow's "L"
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        gray = lambda x: (x.float() * w).sum(1, keepdim=True).round().to(torch.uint8)  # noqa: E731
        return gray(images), gray(test_images), (sum(mean) / 3,), (sum(std) / 3,)
    raise LongtailError(f"config key model.in_channels: expected 1 or 3, found {channels}")


def _indices_sha256(kind: str, part: str, indices: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of a split of an array dataset written as a list: '<kind>/<part>/<i> <label>'."""
    text = "".join(f"{kind}/{part}/{i} {int(labels[i])}\n" for i in indices.tolist())
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Files: split lists, iNaturalist JSON, image folders


def _file_data(cfg: DataConfig, split_seed: int, channels: int) -> LongTailData:
    root = Path(cfg.root)
    if not root.is_dir():
        raise LongtailError(f"config key data.root: folder not found: {root}")
    splits, names, hashes, notes = _read_file_splits(cfg, root, split_seed)
    counts_before_holdout = None
    if splits.get("val") is None and cfg.val_from_train > 0:
        train = splits["train"]
        counts_before_holdout = np.bincount(np.asarray(train.labels),
                                            minlength=len(names)).tolist()
        kept, held = hold_out_per_class(np.asarray(train.labels), cfg.val_from_train, split_seed)
        splits["train"], splits["val"] = _subset(train, kept), _subset(train, held)
        notes.append(f"val: {len(held)} images held out of training "
                     f"(data.val_from_train={cfg.val_from_train})")
        hashes = _hashes(splits, root)
    if not cfg.allow_outside_root:
        for split in splits.values():
            if split is not None:
                _check_inside_root(split, root)
    for name, split in splits.items():
        if split is not None:
            splits[name] = check_files_exist(split, skip_missing=cfg.on_bad_image == "skip")
            if len(splits[name].paths) < len(split.paths):
                notes.append(f"{name}: {len(split.paths) - len(splits[name].paths)} listed "
                             f"images are missing and left out (data.on_bad_image=skip)")
    # A val split held out of training may lack classes too small to give an image.
    _check_every_class_present(splits, names, ("val", "test") if cfg.val else ("test",))
    num_classes = len(names)
    if num_classes < 2:
        raise LongtailError(f"{splits['train'].source}: expected at least 2 classes in the "
                            f"training split, found {num_classes}")
    first = _decode_first(splits["train"], channels, cfg.on_bad_image == "skip")
    # Small images are used at their own size (small-image stem), others at the paper's 224.
    side = max(first.shape[1:])
    image_size = cfg.image_size or (side if side < SMALL_IMAGE else 224)
    in_memory = _decide_in_memory(cfg, splits, first)
    workers = _num_workers(cfg, in_memory)
    datasets = {name: _file_dataset(split, channels, in_memory, workers, cfg.on_bad_image,
                                    notes)
                for name, split in splits.items() if split is not None}
    mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,)
    std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,)
    return LongTailData(
        name=root.name or str(root), num_classes=num_classes, class_names=names,
        channels=channels, image_size=image_size, mean=mean, std=std, train=datasets["train"],
        val=datasets.get("val"), test=datasets["test"], in_memory=in_memory, num_workers=workers,
        split_sha256=hashes, notes=notes, counts_before_holdout=counts_before_holdout)


def _read_file_splits(cfg: DataConfig, root: Path, split_seed: int):
    """Return ({split: FileSplit or None}, class names, {split: sha256}, notes)."""
    notes: list[str] = []
    if cfg.kind == "inat_json":
        train, category_ids, names = read_inat_json(cfg.train, root)
        splits = {"train": train}
        for name in ("val", "test"):
            path = getattr(cfg, name)
            splits[name] = read_inat_json(path, root, category_ids)[0] if path else None
        return splits, names, _hashes(splits, root), notes
    if cfg.kind == "image_folder" and cfg.train is None:
        return _generated_folder_split(cfg, root, split_seed)
    if cfg.kind == "image_folder":
        train, names = read_image_folder(root / cfg.train)
        splits = {"train": train}
        for name in ("val", "test"):
            path = getattr(cfg, name)
            splits[name] = read_image_folder(root / path, names)[0] if path else None
        if splits["test"] is None:
            raise LongtailError("config key data.test: expected the test sub-folder "
                                "(data.train is set, so the folders are used as they are)")
        return splits, names, _hashes(splits, root), notes
    # list
    splits = {name: parse_list_file(getattr(cfg, name), root) if getattr(cfg, name) else None
              for name in SPLITS}
    hashes = {name: hashlib.sha256(s.source.read_bytes()).hexdigest()
              for name, s in splits.items() if s is not None}
    num_classes = _check_labels(cfg, splits, notes)
    names = (read_class_names(resolve_near_root(cfg.class_names, root), num_classes)
             if cfg.class_names else [str(c) for c in range(num_classes)])
    return splits, names, hashes, notes


def _generated_folder_split(cfg: DataConfig, root: Path, split_seed: int):
    pool, names = read_image_folder(root)
    labels = np.asarray(pool.labels)
    counts = np.bincount(labels, minlength=len(names))
    available = int(counts.min()) - cfg.val_per_class - cfg.test_per_class
    n_max = cfg.n_max or available
    if n_max < 1 or n_max > available:
        raise LongtailError(
            f"{root}: the smallest class has {int(counts.min())} images, too few for n_max="
            f"{n_max} plus {cfg.val_per_class} val and {cfg.test_per_class} test per class")
    profile = _profile(cfg, len(names), n_max, default_n_min=max(1, round(n_max / 100)))
    split = long_tailed_split(labels, profile, val_per_class=cfg.val_per_class,
                              test_per_class=cfg.test_per_class, seed=split_seed,
                              class_order=cfg.class_order)
    splits = {"train": _subset(pool, split.train),
              "val": _subset(pool, split.val) if len(split.val) else None,
              "test": _subset(pool, split.test)}
    if not len(split.test):
        raise LongtailError("config key data.test_per_class: expected > 0 (the generated "
                            "split needs a test split)")
    notes = [f"long-tailed split generated from {root}: {cfg.profile} profile "
             f"{profile[0]}..{profile[-1]}, seed {split_seed}"]
    return splits, names, _hashes(splits, root), notes


def _check_labels(cfg: DataConfig, splits: dict[str, FileSplit | None],
                  notes: list[str]) -> int:
    """Check (or remap) list labels so that classes are 0..C-1, each with training images."""
    train = splits["train"]
    present = sorted(set(train.labels))
    if len(present) < 2:
        raise LongtailError(f"{train.source}: expected at least 2 classes in the training "
                            f"split, found {len(present)}")
    num_classes = present[-1] + 1
    if len(present) != num_classes:
        if not cfg.remap_labels:
            missing = sorted(set(range(num_classes)) - set(present))
            # The first label above the first gap is most often the culprit (a typo).
            culprit = min(label for label in present if label > missing[0])
            origin = train.origins[train.labels.index(culprit)]
            contiguous = missing == list(range(missing[0], missing[-1] + 1))
            gap = (f"{missing[0]}..{missing[-1]}" if contiguous and len(missing) > 1
                   else ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else ""))
            raise LongtailError(
                f"{origin}: label {culprit}, but no training image has label {gap}; labels "
                f"must be 0..C-1, each used in training (data.remap_labels=true maps the "
                f"{len(present)} labels found to 0..{len(present) - 1})")
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
                     + (" ..." if len(mapping) > 20 else ""))
        return len(present)
    for split in splits.values():
        if split is None:
            continue
        for label, origin in zip(split.labels, split.origins):
            if label >= num_classes:
                raise LongtailError(f"{origin}: label {label} is not below the class count "
                                    f"{num_classes} (largest training label + 1)")
    return num_classes


def _subset(split: FileSplit, indices: np.ndarray) -> FileSplit:
    idx = indices.tolist()
    return FileSplit(split.source, [split.paths[i] for i in idx], [split.labels[i] for i in idx],
                     [split.origins[i] for i in idx])


def _hashes(splits: dict[str, FileSplit | None], root: Path) -> dict[str, str]:
    """SHA-256 of each split written as a list file ('relative/path label' lines)."""
    return {k: hashlib.sha256(list_text(v.paths, v.labels, root).encode()).hexdigest()
            for k, v in splits.items() if v is not None}


def _check_inside_root(split: FileSplit, root: Path) -> None:
    # realpath: a symbolic link inside the root that points outside it is outside too.
    base = os.path.realpath(root)
    for path, origin in zip(split.paths, split.origins):
        full = os.path.realpath(path)
        if os.path.commonpath([base, full]) != base:
            via = "" if os.path.normpath(os.path.abspath(path)) == full else f" (-> {full})"
            raise LongtailError(f"{origin}: path {path}{via} is outside data.root {root}; set "
                                f"data.allow_outside_root=true if that is intended")


def _check_every_class_present(splits: dict[str, FileSplit | None], names: list[str],
                               which: tuple[str, ...]) -> None:
    """Val and test must hold every class: tau and best-val epochs chosen without a class, or
    a test set without one, would not measure what the report says."""
    for name in which:
        split = splits.get(name)
        if split is None:
            continue
        missing = sorted(set(range(len(names))) - set(split.labels))
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise LongtailError(f"{split.source}: the {name} split has no image of classes "
                                f"[{shown}] ({len(missing)} of {len(names)}); a balanced "
                                f"{name} split needs every class")


def _decode_first(split: FileSplit, channels: int, skip_bad: bool) -> torch.Tensor:
    """Return the first decodable training image (its size sets the defaults)."""
    for path, origin in zip(split.paths, split.origins):
        try:
            return decode_image(path, channels)
        except (OSError, ValueError) as e:
            if not skip_bad:
                raise LongtailError(f"{origin}: cannot decode image {path} ({e})") from None
    raise LongtailError(f"{split.source}: no image could be decoded")


def _decide_in_memory(cfg: DataConfig, splits: dict[str, FileSplit | None],
                      first: torch.Tensor) -> bool:
    if cfg.in_memory != "auto":
        return cfg.in_memory
    total = first.numel() * sum(len(s.paths) for s in splits.values() if s is not None)
    return total <= IN_MEMORY_LIMIT


def usable_cpus() -> int:
    """Return the CPUs this process may run on (its affinity mask, e.g. under taskset or a
    container's cpuset), not all of the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _num_workers(cfg: DataConfig, in_memory: bool) -> int:
    if cfg.num_workers is not None:
        return cfg.num_workers
    return 0 if in_memory else min(8, usable_cpus())


def _file_dataset(split: FileSplit, channels: int, in_memory: bool, workers: int,
                  on_bad_image: str, notes: list[str]) -> LabelledImages:
    files = ImageFiles(split.paths, split.labels, channels, split.origins,
                       skip_bad=on_bad_image == "skip")
    if not in_memory:
        return files
    # Decode every image once (in parallel) and keep the tensors; skipped ones are dropped.
    loader = DataLoader(files, batch_size=None, num_workers=min(workers or 2, usable_cpus()),
                        collate_fn=lambda item: item)
    images, labels = [], []
    for item in tqdm(loader, desc=f"decoding {split.source.name}", unit="img", leave=False,
                     disable=None):
        if item is not None:
            images.append(item[0])
            labels.append(item[1])
    skipped = len(split.paths) - len(images)
    if skipped:
        notes.append(f"{split.source}: skipped {skipped} image(s) that could not be decoded "
                     f"(data.on_bad_image=skip)")
    if not images:
        raise LongtailError(f"{split.source}: no image could be decoded")
    if all(im.shape == images[0].shape for im in images):
        return TensorImages(torch.stack(images), labels)
    return TensorImages(images, labels)
