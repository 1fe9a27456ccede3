"""Train and test transforms (torchvision.transforms.v2 on uint8 CHW tensors)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_IMAGE = 64  # below this side length: used at its own size, crop-with-padding augmentation


def build_transform(
    image_size: int,
    train: bool,
    mean: Sequence[float],
    std: Sequence[float],
    hflip: bool = True,
) -> v2.Transform:
    """Return the transform for ``image_size`` inputs, augmented when ``train``.

    Small images (< 64 px): resize to the target side, then pad-and-crop (padding of 1/8 of the
    side) and horizontal flip in training. Large images: the paper's RandomResizedCrop, flip and
    ColorJitter(0.4, 0.4, 0.4) in training; Resize(side * 256/224) + CenterCrop at test.
    ``hflip=False`` leaves the flip out.
    """
    if image_size < SMALL_IMAGE:
        steps: list[v2.Transform] = [v2.Resize(image_size), v2.CenterCrop(image_size)]
        if train:
            steps += [v2.RandomCrop(image_size, padding=max(1, image_size // 8))]
            steps += [v2.RandomHorizontalFlip()] if hflip else []
    elif train:
        steps = [v2.RandomResizedCrop(image_size)]
        steps += [v2.RandomHorizontalFlip()] if hflip else []
        steps += [v2.ColorJitter(0.4, 0.4, 0.4)]
    else:
        steps = [v2.Resize(round(image_size * 256 / 224)), v2.CenterCrop(image_size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)
