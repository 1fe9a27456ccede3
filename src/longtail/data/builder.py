"""The dataset builder: ``build_data`` reads ``data.kind`` with its reader (one per kind, a
``DataRecord`` back) and does, once for every kind, what they share: the val hold-out, the
checks of labels and files, decoding images into memory, and the ``LongTailData`` (images) or
``FeatureData`` (features) the pipeline works on.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from longtail import distributed
from longtail.config import DataConfig
from longtail.data import readers
from longtail.data.datasets import (
    Augmented,
    ImageFiles,
    LabelledImages,
    RawBatches,
    RawDraws,
    TensorImages,
    bad_image_line,
    collate_skipping,
    decode_image,
)
from longtail.data.features import FeatureSplit, read_features
from longtail.data.listfile import FileSplit, check_files_exist, subset
from longtail.data.record import DataRecord
from longtail.data.splits import hold_out_per_class
from longtail.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SMALL_IMAGE,
    BatchAugment,
    BatchNormalize,
    build_transform,
)
from longtail.errors import LongtailError

IN_MEMORY_LIMIT = 2 << 30  # bytes of decoded pixels kept in memory by data.in_memory=auto

# data.kind -> reader(cfg, split_seed) -> DataRecord. A new storage format is one new reader.
READERS: dict[str, Callable[[DataConfig, int], DataRecord]] = {
    "fmnist_lt": readers.read_fmnist_lt,
    "cifar10_lt": readers.read_cifar_lt,
    "cifar100_lt": readers.read_cifar_lt,
    "list": readers.read_list,
    "inat_json": readers.read_inat_json,
    "image_folder": readers.read_image_folder_kind,
    "features": read_features,
}


class _Splits:
    """What images and features datasets share: counts, groups and the splits by name."""

    @property
    def train_counts(self) -> list[int]:
        """Training images (or feature rows) per class."""
        return torch.bincount(self.train.labels, minlength=self.num_classes).tolist()

    @property
    def group_counts(self) -> list[int]:
        """Images per class that decide the Many/Medium/Few groups: before any val hold-out."""
        return self.counts_before_holdout or self.train_counts

    def splits(self) -> dict:
        """Return the present splits by name: train, val (when there is one), test."""
        out = {"train": self.train, "val": self.val, "test": self.test}
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class LongTailData(_Splits):
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

    def transform(self, train: bool):
        """Return the train (augmented) or test transform of this dataset."""
        return build_transform(self.image_size, train, self.mean, self.std, self.hflip)

    def training_view(self) -> tuple[Dataset, Callable]:
        """Return (dataset of ``(index, seed)`` draws, collate function) for training.

        Small images held in memory at their target size are augmented a batch at a time
        (``BatchAugment``); others image by image (``Augmented``).
        """
        train = self.train
        if self._batchable(train):
            view = RawDraws(train, BatchAugment(self.image_size, self.mean, self.std,
                                                self.hflip))
            return view, view.collate
        return Augmented(train, self.transform(train=True)), collate_skipping

    def eval_view(self, images: LabelledImages) -> Dataset:
        """Return ``images`` (a split of this dataset) under the test transform: a batch at a
        time (``RawBatches``, its ``collate`` used by ``infer``) for the images that
        ``training_view`` augments a batch at a time, else image by image."""
        if self._batchable(images):
            return RawBatches(images, BatchNormalize(self.mean, self.std))
        return images.with_transform(self.transform(train=False))

    def _batchable(self, images: LabelledImages) -> bool:
        """Whether ``images`` are small and held in memory in one tensor at the target size."""
        return (isinstance(images, TensorImages) and isinstance(images.images, torch.Tensor)
                and self.image_size < SMALL_IMAGE
                and tuple(images.images.shape[2:]) == (self.image_size, self.image_size))


@dataclass
class FeatureData(_Splits):
    """A long-tailed dataset given as features (``data.kind: features``): stage 1 is skipped."""

    name: str
    num_classes: int
    class_names: list[str]
    train: FeatureSplit
    val: FeatureSplit | None
    test: FeatureSplit
    split_sha256: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    counts_before_holdout: list[int] | None = None

    @property
    def feature_dim(self) -> int:
        return self.train.features.shape[1]


def build_data(cfg: DataConfig, seed: int, channels: int | None = None,
               device_type: str = "cpu") -> LongTailData | FeatureData:
    """Return the dataset of the ``data.*`` keys, images with ``channels`` as the model expects
    (``FeatureData`` for ``data.kind: features``); ``device_type``, where the model will run,
    sets the DataLoader workers of ``data.num_workers: null``."""
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    record = READERS[cfg.kind](cfg, split_seed)
    train = record.splits["train"]
    if isinstance(train, FeatureSplit):
        return _feature_data(cfg, record, split_seed)
    if isinstance(train, TensorImages):
        data = _array_data(cfg, record, channels)
    else:
        data = _file_data(cfg, record, split_seed, channels or 3, device_type)
    if cfg.mean is not None:  # (its length, one per channel, checked with the config)
        data.mean, data.std = tuple(cfg.mean), tuple(cfg.std)
    data.hflip = cfg.hflip if cfg.hflip is not None else data.image_size >= SMALL_IMAGE
    return data


# --------------------------------------------------------------------------------------------
# Shared steps


def _hold_out_val(cfg: DataConfig, record: DataRecord, split_seed: int, take) -> bool:
    """Move ``data.val_from_train`` training items per class to val when there is no val split;
    ``take(split, indices)`` subsets a split. Return whether it did."""
    if record.splits.get("val") is not None or (cfg.val_from_train or 0) <= 0:
        return False
    train = record.splits["train"]
    labels = np.asarray(train.labels)
    if record.counts_before_holdout is None:  # a feature file may carry the listed counts
        record.counts_before_holdout = np.bincount(
            labels, minlength=len(record.class_names)).tolist()
    kept, held = hold_out_per_class(labels, cfg.val_from_train, split_seed)
    if not len(held):
        raise LongtailError(f"{train.source}: no class has more than one training item, so "
                            f"data.val_from_train={cfg.val_from_train} holds out nothing for "
                            f"val; give a val split (data.val)")
    record.splits["train"], record.splits["val"] = take(train, kept), take(train, held)
    record.notes.append(f"val: {len(held)} images held out of training "
                        f"(data.val_from_train={cfg.val_from_train})")
    counts = np.bincount(labels, minlength=len(record.class_names))
    given = np.bincount(labels[held], minlength=len(counts))[counts > 0]
    short = int((given < cfg.val_from_train).sum())
    if short:  # a class keeps one training image: val is then not balanced, and said so
        smallest = int(counts[counts > 0].min())
        record.notes.append(
            f"val is not balanced: {short} of {len(given)} classes have {cfg.val_from_train} "
            f"or fewer training images and gave all but one (val per class {int(given.min())} "
            f"to {int(given.max())}); " + (f"data.val_from_train={smallest - 1} keeps it "
                                           f"balanced" if smallest > 1 else
                                           "a class of one image gives none"))
    return True


def _check_every_class_present(record: DataRecord, which: tuple[str, ...],
                               item: str = "image") -> None:
    """Val and test must hold every class: tau and best-val epochs chosen without a class, or
    a test set without one, would not measure what the report says."""
    num_classes = len(record.class_names)
    for name in which:
        split = record.splits.get(name)
        if split is None:
            continue
        present = set(np.unique(np.asarray(split.labels)).tolist())
        missing = sorted(set(range(num_classes)) - present)
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise LongtailError(f"{split.source}: the {name} split has no {item} of classes "
                                f"[{shown}] ({len(missing)} of {num_classes}); a balanced "
                                f"{name} split needs every class")


def _val_completes_group_counts(record: DataRecord) -> bool:
    """Return whether the val and train rows of each class add up to its listed count."""
    if record.counts_before_holdout is None or record.splits.get("val") is None:
        return False
    size = len(record.class_names)
    counts = [np.bincount(np.asarray(record.splits[name].labels), minlength=size)
              for name in ("train", "val")]
    return (counts[0] + counts[1]).tolist() == list(record.counts_before_holdout)


def _check_class_count(record: DataRecord) -> int:
    num_classes = len(record.class_names)
    if num_classes < 2:
        raise LongtailError(f"{record.splits['train'].source}: expected at least 2 classes in "
                            f"the training split, found {num_classes}")
    return num_classes


# --------------------------------------------------------------------------------------------
# Arrays: images in memory


def _array_data(cfg: DataConfig, record: DataRecord, channels: int | None) -> LongTailData:
    splits = {k: v for k, v in record.splits.items() if v is not None}
    channels = channels or splits["train"].images.shape[1]
    for name, split in splits.items():
        images, mean, std = _match_channels(split.images, record.mean, record.std, channels)
        splits[name] = TensorImages(images, split.labels)
    return LongTailData(
        name=record.name, num_classes=len(record.class_names), class_names=record.class_names,
        channels=splits["train"].images.shape[1], image_size=cfg.image_size or record.side,
        mean=mean, std=std, train=splits["train"], val=splits.get("val"),
        test=splits["test"], in_memory=True, num_workers=_num_workers(cfg, in_memory=True),
        split_sha256=record.split_sha256, notes=record.notes,
        counts_before_holdout=record.counts_before_holdout)


def _match_channels(images: torch.Tensor, mean: tuple, std: tuple,
                    channels: int) -> tuple[torch.Tensor, tuple, tuple]:
    have = images.shape[1]
    if channels == have:
        return images, mean, std
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1), mean * 3, std * 3
    if have == 3 and channels == 1:  # ITU-R 601 luma, as Pillow's "L"
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        gray = (images.float() * w).sum(1, keepdim=True).round().to(torch.uint8)
        return gray, (sum(mean) / 3,), (sum(std) / 3,)
    raise LongtailError(f"config key model.in_channels: expected 1 or 3, found {channels}")


# --------------------------------------------------------------------------------------------
# Files: images on disk, optionally decoded once into memory


def _file_data(cfg: DataConfig, record: DataRecord, split_seed: int,
               channels: int, device_type: str = "cpu") -> LongTailData:
    root, splits, notes = record.root, record.splits, record.notes
    if _hold_out_val(cfg, record, split_seed, subset):
        record.split_sha256 = readers.file_hashes(splits, root)
    if not cfg.allow_outside_root:
        for split in splits.values():
            if split is not None:
                _check_inside_root(split, root)
    for name, split in splits.items():
        if split is not None:
            splits[name] = check_files_exist(split, skip_missing=cfg.on_bad_image == "skip",
                                             root=root)
            if len(splits[name].paths) < len(split.paths):
                notes.append(f"{name}: {len(split.paths) - len(splits[name].paths)} listed "
                             f"images are missing and left out (data.on_bad_image=skip)")
    # A val split held out of training may lack classes too small to give an image.
    _check_every_class_present(record, ("val", "test") if cfg.val else ("test",))
    num_classes = _check_class_count(record)
    _warn_shared_images(splits)
    _check_decodable(splits["train"], channels, cfg.on_bad_image == "skip")
    side, pixels = _typical_size(splits["train"])
    # Small images are used at their own size (small-image stem), others at the paper's 224.
    image_size = cfg.image_size or (side if side < SMALL_IMAGE else 224)
    if cfg.image_size is None and image_size == 224 and side < 224:  # upscaled: said why
        notes.append(f"input 224 px: the training images' median longer side is {side} px "
                     f"(>= {SMALL_IMAGE}: the paper's 224); data.image_size={side} trains at "
                     f"their own size, several times faster")
    if image_size < 8:
        raise LongtailError(f"{splits['train'].source}: the training images are {side} px "
                            f"(median side); at least 8 px are needed, or set "
                            f"data.image_size")
    in_memory = _decide_in_memory(cfg, splits, channels * pixels)
    workers = _num_workers(cfg, in_memory, per_image=image_size >= SMALL_IMAGE,
                           gpu=device_type == "cuda")
    datasets = {name: _file_dataset(split, channels, in_memory, workers, cfg.on_bad_image,
                                    notes)
                for name, split in splits.items() if split is not None}
    mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,)
    std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,)
    return LongTailData(
        name=record.name, num_classes=num_classes, class_names=record.class_names,
        channels=channels, image_size=image_size, mean=mean, std=std, train=datasets["train"],
        val=datasets.get("val"), test=datasets["test"], in_memory=in_memory, num_workers=workers,
        split_sha256=record.split_sha256, notes=notes,
        counts_before_holdout=record.counts_before_holdout)


def _warn_shared_images(splits: dict[str, FileSplit | None]) -> None:
    """Warn when two splits list the same image files (e.g. data.val given the train list):
    not an error, as some setups do it on purpose, but val/test accuracy then measures images
    trained on."""
    files = {name: {os.path.normpath(p) for p in split.paths}
             for name, split in splits.items() if split is not None}
    names = list(files)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = len(files[a] & files[b])
            if shared and distributed.is_main():
                why = "trained on" if a == "train" else "that chose tau and the best epoch"
                print(f"warning: the {a} and {b} splits share {shared} images ({splits[a].source}"
                      f" and {splits[b].source}); {b} accuracy is partly measured on images "
                      f"{why}", flush=True)


def _check_inside_root(split: FileSplit, root: Path) -> None:
    # realpath: a symbolic link inside the root that points outside it is outside too.
    base = os.path.realpath(root)
    for path, origin in zip(split.paths, split.origins):
        full = os.path.realpath(path)
        if not os.path.exists(full):  # missing or a broken link: check_files_exist says which
            continue
        if os.path.commonpath([base, full]) != base:
            via = "" if os.path.normpath(os.path.abspath(path)) == full else f" (-> {full})"
            raise LongtailError(f"{origin}: path {path}{via} is outside data.root {root}; set "
                                f"data.allow_outside_root=true if that is intended")


def _check_decodable(split: FileSplit, channels: int, skip_bad: bool) -> None:
    """Decode training images up to the first that decodes: a dataset of unreadable files is
    refused before any other work."""
    for path, origin in zip(split.paths, split.origins):
        try:
            decode_image(path, channels)
            return
        except (OSError, ValueError) as e:
            if not skip_bad:
                raise LongtailError(bad_image_line(origin, path, e)) from None
    raise LongtailError(f"{split.source}: no image could be decoded")


def _typical_size(split: FileSplit, sample: int = 25) -> tuple[int, int]:
    """Return the median longer side and the mean pixel count of up to ``sample`` training
    images spread over the list, read from their headers (no decoding): one odd image first
    in the list (a 1 px icon, a 2000 px scan) does not set the size of the whole dataset."""
    from PIL import Image

    n, m = len(split.paths), min(sample, len(split.paths))
    sides, areas, large = [], [], None
    for i in sorted({round(k * (n - 1) / max(m - 1, 1)) for k in range(m)}):
        try:
            with warnings.catch_warnings():  # said below, in one line
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(split.paths[i]) as img:
                    width, height = img.size
        except (OSError, ValueError):  # an unreadable image is named when it is decoded
            continue
        sides.append(max(width, height))
        areas.append(width * height)
        if large is None and Image.MAX_IMAGE_PIXELS and areas[-1] > Image.MAX_IMAGE_PIXELS:
            large = f"{split.paths[i]}: {width}x{height} px"
    if large and distributed.is_main():
        print(f"warning: {large}, more than Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels "
              f"for one image; such images are decoded (up to twice the limit) but slow the "
              f"loader: resize them once, offline", flush=True)
    if not sides:
        raise LongtailError(f"{split.source}: no image could be decoded")
    return sorted(sides)[len(sides) // 2], sum(areas) // len(areas)


def _decide_in_memory(cfg: DataConfig, splits: dict[str, FileSplit | None],
                      image_bytes: int) -> bool:
    if cfg.in_memory != "auto":
        return cfg.in_memory
    total = image_bytes * sum(len(s.paths) for s in splits.values() if s is not None)
    return total <= IN_MEMORY_LIMIT


def usable_cpus() -> int:
    """Return the CPUs this process may run on (its affinity mask, e.g. under taskset or a
    container's cpuset), not all of the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _num_workers(cfg: DataConfig, in_memory: bool, per_image: bool = False,
                 gpu: bool = False) -> int:
    """DataLoader workers of ``data.num_workers: null``. Images read from disk: up to 8 (one
    per CPU). Held in memory: none, as small images are augmented a batch at a time in the
    main process, except images augmented one at a time (``per_image``: 64 px and more) for a
    GPU, which would wait for them (on 2 CPU cores, where the model is the bottleneck, 2
    workers took a 224 px epoch from 64-71 to 57-61 img/s: docs/benchmarks.md)."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    return 0 if in_memory and not (per_image and gpu) else min(8, usable_cpus())


# Images a decoding worker hands over at once, as NumPy arrays: they cross the pipe by value,
# where each tensor would cost a shared-memory file handshake (1 ms an image: 6 of the 8 s
# that 5,500 small PNGs took to load).
DECODE_BATCH = 64


def _as_arrays(items: list) -> list:
    return [None if item is None else (item[0].numpy(), item[1]) for item in items]


def _file_dataset(split: FileSplit, channels: int, in_memory: bool, workers: int,
                  on_bad_image: str, notes: list[str]) -> LabelledImages:
    files = ImageFiles(split.paths, split.labels, channels, split.origins,
                       skip_bad=on_bad_image == "skip")
    if not in_memory:
        return files
    # Decode every image once (in parallel) and keep the tensors; skipped ones are dropped.
    loader = DataLoader(files, batch_size=DECODE_BATCH, collate_fn=_as_arrays,
                        num_workers=min(workers or 2, usable_cpus()))
    images, labels, bad = [], [], []
    with tqdm(total=len(files), desc=f"decoding {split.source.name}", unit="img", leave=False,
              disable=None) as bar:
        for batch in loader:  # in list order
            for item in batch:
                if item is not None:
                    images.append(torch.from_numpy(item[0]))
                    labels.append(item[1])
                else:
                    bad.append(len(images) + len(bad))
            bar.update(len(batch))
    if bad:  # which ones: the first few, by list line
        named = ", ".join(split.origins[i] if split.origins[i] == str(split.paths[i])
                          else f"{split.origins[i]} ({split.paths[i]})" for i in bad[:3])
        notes.append(f"{split.source}: skipped {len(bad)} image(s) that could not be decoded "
                     f"(data.on_bad_image=skip): {named}{' ...' * (len(bad) > 3)}")
    if not images:
        raise LongtailError(f"{split.source}: no image could be decoded")
    if all(im.shape == images[0].shape for im in images):
        # one tensor, filled image by image as each is let go: torch.stack would hold the
        # list and its copy at once (twice the memory at the peak)
        stacked = images[0].new_empty((len(images), *images[0].shape))
        for i in range(len(images)):
            stacked[i], images[i] = images[i], None
        return TensorImages(stacked, labels)
    return TensorImages(images, labels)


# --------------------------------------------------------------------------------------------
# Features


def _feature_data(cfg: DataConfig, record: DataRecord, split_seed: int) -> FeatureData:
    def take(split: FeatureSplit, indices: np.ndarray) -> FeatureSplit:
        return split.subset(torch.from_numpy(np.asarray(indices, dtype=np.int64)))

    if _hold_out_val(cfg, record, split_seed, take):
        record.split_sha256 = {name: split.sha256 for name, split in record.splits.items()}
    # A val file that, with the training rows, makes up group_counts was held out of training
    # (data.val_from_train, written out by extract): a class of one image has no val row.
    held_out = cfg.val is not None and _val_completes_group_counts(record)
    _check_every_class_present(record, ("val", "test") if cfg.val and not held_out
                               else ("test",), "row")
    num_classes = _check_class_count(record)
    splits = record.splits
    return FeatureData(name=record.name, num_classes=num_classes,
                       class_names=record.class_names, train=splits["train"],
                       val=splits.get("val"), test=splits["test"],
                       split_sha256=record.split_sha256, notes=record.notes,
                       counts_before_holdout=record.counts_before_holdout)
