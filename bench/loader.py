"""Images per second of the ImageNet-LT training input pipeline on generated JPEGs.

    python bench/loader.py [--images 768] [--batch 64] [--workers 0,1,2]

Writes JPEGs of ImageNet's typical size (500 x 375, quality 90, smooth content plus noise) to
a temporary folder, lists them like ImageNet-LT, and times longtail's training pipeline
(decode with Pillow, RandomResizedCrop 224, flip, ColorJitter 0.4, normalise, per-draw seeded
augmentation, DataLoader with persistent workers) for each worker count. A first epoch
(worker start-up) is not timed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from longtail.data import build_sampler
from longtail.data.datasets import Augmented, ImageFiles, SeededDraws
from longtail.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform


def write_jpegs(folder: Path, count: int, classes: int = 10) -> tuple[list[Path], list[int]]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500]
    paths, labels = [], []
    for i in range(count):
        phase = rng.uniform(0, 6.28, size=3)
        base = np.stack([127 + 100 * np.sin(x / 40 + y / 70 + p) for p in phase], axis=-1)
        image = np.clip(base + rng.normal(0, 12, size=base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(image).save(path, quality=90)
        paths.append(path)
        labels.append(i % classes)
    return paths, labels


def images_per_second(paths, labels, workers: int, batch: int, epochs: int = 1) -> float:
    """Return the images per second of ``epochs`` whole epochs, timed after one untimed epoch
    that starts the workers. Whole epochs, not batches after a warm-up: workers prefetch two
    batches each, so with many workers a warm-up's batches would already hold the rest."""
    files = ImageFiles(paths, labels, channels=3)
    transform = build_transform(224, True, IMAGENET_MEAN, IMAGENET_STD)
    draws = SeededDraws(build_sampler("instance", labels, seed=0), seed=0)
    loader = DataLoader(Augmented(files, transform), batch_size=batch, sampler=draws,
                        num_workers=workers, persistent_workers=workers > 0, drop_last=True)
    for _ in loader:  # worker start-up
        pass
    seen, start = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        draws.set_epoch(epoch)
        for images, _ in loader:
            seen += len(images)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", default="0,1,2")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker; the main process only collates
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths, labels = write_jpegs(Path(tmp), args.images)
        size_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        print(f"{len(paths)} JPEGs of 500x375 ({size_kb:.0f} KB on average) written in "
              f"{time.perf_counter() - start:.1f} s")
        print(f"{'workers':>7} {'images/s':>9}")
        for workers in (int(w) for w in args.workers.split(",")):
            rate = images_per_second(paths, labels, workers, args.batch)
            print(f"{workers:>7} {rate:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
