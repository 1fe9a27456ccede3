"""Tiny on-disk fixtures: Fashion-MNIST-format IDX files and image-list datasets."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail.data import fmnist


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzip-compressed when ``compress``."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def class_images(labels: np.ndarray, size: int, channels: int, seed: int) -> np.ndarray:
    """Return easy-to-learn images: class c lights up its own horizontal band, plus noise."""
    rng = np.random.default_rng(seed)
    num_classes = int(labels.max()) + 1
    images = rng.integers(0, 60, size=(len(labels), size, size, channels)).astype(np.uint8)
    band = max(1, size // num_classes)
    for i, c in enumerate(labels):
        images[i, c * band : (c + 1) * band, :, :] = 220
    return images


def tiny_fmnist_run(folder: Path, *overrides: str) -> Path:
    """Run the demo config to the end on a fake Fashion-MNIST in ``folder`` (1 epoch, width 8,
    60..2 training images per class, 5 val) with ``overrides``; return the run folder."""
    from longtail.cli import main

    root = make_fake_fmnist(folder / "fmnist")
    out = folder / "run"
    config = str(Path(__file__).resolve().parents[1] / "configs" / "fmnist_lt.yaml")
    assert main(["run", config, f"data.root={root}", "data.n_max=60", "data.n_min=2",
                 "data.val_per_class=5", "stage1.epochs=1", "model.width=8",
                 "stage1.min_steps=1", "stage2.min_steps=1", *overrides,  # batches as given
                 "--out", str(out)]) == 0
    return out


def make_fake_fmnist(root: Path, train_per_class: int = 80, test_per_class: int = 10,
                     compress: bool = True) -> Path:
    """Write a Fashion-MNIST-shaped dataset (10 classes, 28x28) into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class, seed in (("train", train_per_class, 0), ("t10k", test_per_class, 1)):
        labels = np.repeat(np.arange(10), per_class).astype(np.uint8)
        images = class_images(labels, 28, 1, seed)[..., 0]
        prefix = "train" if split == "train" else "test"
        write_idx(root / fmnist.FILES[f"{prefix}_images"], images, compress)
        write_idx(root / fmnist.FILES[f"{prefix}_labels"], labels, compress)
    return root


def make_image_list_dataset(root: Path, counts: list[int], test_per_class: int = 4,
                            val_per_class: int = 2, size: int = 16,
                            formats: tuple[str, ...] = ("png", "jpg", "bmp")) -> dict[str, Path]:
    """Write images in several formats and ImageNet-LT-style lists train/val/test.txt."""
    files = {}
    for split, per_class in (("train", counts), ("val", [val_per_class] * len(counts)),
                             ("test", [test_per_class] * len(counts))):
        labels = np.repeat(np.arange(len(counts)), per_class)
        images = class_images(labels, size, 3, seed=len(split))
        lines = []
        for i, (image, label) in enumerate(zip(images, labels)):
            ext = formats[i % len(formats)]
            rel = Path(split) / f"class_{label}" / f"{i:05d}.{ext}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / rel)
            lines.append(f"{rel.as_posix()} {label}")
        files[split] = root / f"{split}.txt"
        files[split].write_text("\n".join(lines) + "\n")
    return files


@pytest.fixture
def fake_fmnist(tmp_path: Path) -> Path:
    return make_fake_fmnist(tmp_path / "fmnist")


@pytest.fixture
def image_lists(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root = tmp_path / "images"
    return root, make_image_list_dataset(root, counts=[30, 12, 6, 3])


def make_fake_cifar(root: Path, kind: str = "cifar10_lt", train_per_class: int = 60,
                    test_per_class: int = 5) -> Path:
    """Write CIFAR python-format pickles (bytes keys, uint8 arrays) with easy class patterns."""
    import pickle

    if kind == "cifar10_lt":
        folder, classes = root / "cifar-10-batches-py", 10
        train_files, test_file, meta, key, names_key = (
            [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta", b"labels",
            b"label_names")
    else:
        folder, classes = root / "cifar-100-python", 100
        train_files, test_file, meta, key, names_key = (
            ["train"], "test", "meta", b"fine_labels", b"fine_label_names")
    folder.mkdir(parents=True, exist_ok=True)

    def batch(labels: np.ndarray, seed: int) -> dict:
        images = class_images(labels, 32, 3, seed).transpose(0, 3, 1, 2).reshape(len(labels), -1)
        return {b"data": images, key: labels.tolist()}

    train_labels = np.tile(np.arange(classes), train_per_class)  # interleaved, as in CIFAR
    for i, part in enumerate(np.array_split(train_labels, len(train_files))):
        with open(folder / train_files[i], "wb") as f:
            pickle.dump(batch(part, i), f, protocol=2)
    with open(folder / test_file, "wb") as f:
        pickle.dump(batch(np.repeat(np.arange(classes), test_per_class), 99), f, protocol=2)
    with open(folder / meta, "wb") as f:
        pickle.dump({names_key: [f"class{c}".encode() for c in range(classes)]}, f, protocol=2)
    return root


def make_inat_json(root: Path, counts: list[int], test_per_class: int = 3) -> dict[str, Path]:
    """Write images and iNaturalist-2018-style train/val JSON files (COCO layout)."""
    import json

    files = {}
    image_id = 0
    for split, per_class in (("train", counts), ("val", [test_per_class] * len(counts))):
        labels = np.repeat(np.arange(len(counts)), per_class)
        images, annotations = [], []
        for i, (image, label) in enumerate(zip(class_images(labels, 16, 3, len(split)), labels)):
            rel = f"train_val2018/Plantae/{label}/{split}_{i}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / rel)
            images.append({"id": image_id, "file_name": rel, "width": 16, "height": 16})
            annotations.append({"id": image_id, "image_id": image_id,
                                "category_id": int(label) * 10})  # ids need not be 0..C-1
            image_id += 1
        categories = [{"id": c * 10, "name": f"species {c}"} for c in range(len(counts))]
        files[split] = root / f"{split}2018.json"
        files[split].write_text(json.dumps({"images": images, "annotations": annotations,
                                            "categories": categories}))
    return files


def make_image_folder(root: Path, per_class: list[int], size: int = 16) -> Path:
    """Write root/class_xx/*.png in torchvision's ImageFolder layout."""
    labels = np.repeat(np.arange(len(per_class)), per_class)
    for i, (image, label) in enumerate(zip(class_images(labels, size, 3, 5), labels)):
        path = root / f"class_{label:02d}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    return root
