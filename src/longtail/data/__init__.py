"""Datasets of longtail: readers, long-tail profiles, shot groups, samplers and transforms.

``build_data(cfg.data, ...)`` is the factory: it reads the dataset named by ``data.kind`` and
returns a ``LongTailData`` (train / val / test image datasets and what the model needs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from longtail.config import DataConfig
from longtail.data import fmnist
from longtail.data.datasets import ImageFiles, LabelledImages, TensorImages, decode_image
from longtail.data.listfile import ListSplit, check_files_exist, parse_list_file
from longtail.data.profiles import exponential_profile, shot_groups
from longtail.data.samplers import build_sampler
from longtail.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from longtail.errors import LongtailError

__all__ = ["LongTailData", "build_data", "build_sampler", "build_transform",
           "exponential_profile", "shot_groups"]

IN_MEMORY_LIMIT = 2 << 30  # bytes of decoded pixels kept in memory by data.in_memory=auto


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

    @property
    def train_counts(self) -> list[int]:
        """Training images per class."""
        return torch.bincount(self.train.labels, minlength=self.num_classes).tolist()

    def transform(self, train: bool):
        """Return the train (augmented) or test transform of this dataset."""
        return build_transform(self.image_size, train, self.mean, self.std)

    def splits(self) -> dict[str, LabelledImages]:
        """Return the present splits by name: train, val (when there is one), test."""
        out = {"train": self.train, "val": self.val, "test": self.test}
        return {k: v for k, v in out.items() if v is not None}


def build_data(cfg: DataConfig, seed: int, channels: int | None = None) -> LongTailData:
    """Return the dataset of the ``data.*`` keys, images with ``channels`` as the model expects."""
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    if cfg.kind == "fmnist_lt":
        return _fmnist_lt(cfg, split_seed, channels or 1)
    if cfg.kind == "list":
        return _list_data(cfg, channels or 3)
    raise LongtailError(f"config key data.kind: unknown kind {cfg.kind!r}")


def _fmnist_lt(cfg: DataConfig, split_seed: int, channels: int) -> LongTailData:
    arrays = fmnist.load_fashion_mnist(cfg.root or fmnist.DEFAULT_ROOT, cfg.download)
    train_idx, val_idx, _ = fmnist.make_long_tailed_split(
        arrays["train_labels"], cfg.n_max, cfg.n_min, cfg.val_per_class, split_seed)
    images = fmnist.to_tensor_images(arrays["train_images"])
    labels = torch.from_numpy(arrays["train_labels"].astype("int64"))
    test_images = fmnist.to_tensor_images(arrays["test_images"])
    test_labels = torch.from_numpy(arrays["test_labels"].astype("int64"))
    if channels == 3:
        images, test_images = images.expand(-1, 3, -1, -1), test_images.expand(-1, 3, -1, -1)
    elif channels != 1:
        raise LongtailError(f"config key model.in_channels: expected 1 or 3, found {channels}")
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    val = TensorImages(images[val_idx], labels[val_idx]) if len(val_idx) else None
    return LongTailData(
        name="fmnist_lt", num_classes=10, class_names=list(fmnist.CLASS_NAMES), channels=channels,
        image_size=cfg.image_size or 28, mean=fmnist.MEAN * channels, std=fmnist.STD * channels,
        train=TensorImages(images[train_idx], labels[train_idx]), val=val,
        test=TensorImages(test_images, test_labels), in_memory=True,
        num_workers=_num_workers(cfg, in_memory=True))


def _list_data(cfg: DataConfig, channels: int) -> LongTailData:
    root = Path(cfg.root)
    if not root.is_dir():
        raise LongtailError(f"config key data.root: folder not found: {root}")
    files = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
    splits = {name: parse_list_file(path, root) for name, path in files.items() if path}
    num_classes = max(splits["train"].labels) + 1
    for split in splits.values():
        for label, number in zip(split.labels, split.line_numbers):
            if label >= num_classes:
                raise LongtailError(
                    f"{split.list_file}:{number}: label {label} is not below the class count "
                    f"{num_classes} (largest training label + 1)")
    counts = torch.bincount(torch.tensor(splits["train"].labels), minlength=num_classes)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise LongtailError(f"{splits['train'].list_file}: classes {empty[:10]} have no training "
                            f"images (labels must be 0..C-1, each used in training)")
    for split in splits.values():
        check_files_exist(split)
    first = decode_image(splits["train"].paths[0], channels)
    # Small images are used at their own size (small-image stem), others at the paper's 224.
    image_size = cfg.image_size or (max(first.shape[1:]) if max(first.shape[1:]) < 64 else 224)
    in_memory = _decide_in_memory(cfg, splits, first)
    workers = _num_workers(cfg, in_memory)
    datasets = {name: _list_dataset(split, channels, in_memory, workers)
                for name, split in splits.items()}
    mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,)
    std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,)
    return LongTailData(
        name=root.name or str(root), num_classes=num_classes,
        class_names=[str(c) for c in range(num_classes)], channels=channels,
        image_size=image_size, mean=mean, std=std, train=datasets["train"],
        val=datasets.get("val"), test=datasets["test"], in_memory=in_memory, num_workers=workers)


def _decide_in_memory(cfg: DataConfig, splits: dict[str, ListSplit], first: torch.Tensor) -> bool:
    if cfg.in_memory != "auto":
        return cfg.in_memory
    total = first.numel() * sum(len(s.paths) for s in splits.values())
    return total <= IN_MEMORY_LIMIT


def _num_workers(cfg: DataConfig, in_memory: bool) -> int:
    if cfg.num_workers is not None:
        return cfg.num_workers
    return 0 if in_memory else min(8, os.cpu_count() or 1)


def _list_dataset(split: ListSplit, channels: int, in_memory: bool,
                  workers: int) -> LabelledImages:
    files = ImageFiles(split.paths, split.labels, channels)
    if not in_memory:
        return files
    # Decode every image once (in parallel when workers are allowed) and keep the tensors.
    loader = DataLoader(files, batch_size=None, num_workers=min(workers or 2, os.cpu_count() or 1))
    images = [image for image, _ in tqdm(loader, desc=f"decoding {split.list_file.name}",
                                         unit="img", leave=False, disable=None)]
    if all(im.shape == images[0].shape for im in images):
        return TensorImages(torch.stack(images), split.labels)
    return TensorImages(images, split.labels)
