"""Train and test transforms (torchvision.transforms.v2 on uint8 CHW tensors)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # imported where a transform is built: runs on features never wait for it
    from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_IMAGE = 64  # below this side length: used at its own size, crop-with-padding augmentation
# Images longer than this many times their width (or wider) are cut to their centre before a
# resize: a 1 x 400,000 px strip resized to a 28 px short side is 11 M px long (GBs), while
# the centre crop that follows keeps only the middle square anyway.
MAX_ASPECT = 8


def central_part(image: torch.Tensor) -> torch.Tensor:
    """Return the middle of a CHW ``image`` at most MAX_ASPECT times as long as it is wide
    (the image itself when it is not longer)."""
    h, w = image.shape[-2:]
    if w > MAX_ASPECT * h:
        left = (w - MAX_ASPECT * h) // 2
        return image[..., left : left + MAX_ASPECT * h]
    if h > MAX_ASPECT * w:
        top = (h - MAX_ASPECT * w) // 2
        return image[..., top : top + MAX_ASPECT * w, :]
    return image


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
    from torchvision.transforms import v2

    middle = v2.Lambda(central_part, torch.Tensor)  # before resizes whose centre is kept
    if image_size < SMALL_IMAGE:
        steps: list[v2.Transform] = [middle, v2.Resize(image_size), v2.CenterCrop(image_size)]
        if train:
            steps += [v2.RandomCrop(image_size, padding=max(1, image_size // 8))]
            steps += [v2.RandomHorizontalFlip()] if hflip else []
    elif train:
        steps = [v2.RandomResizedCrop(image_size)]
        steps += [v2.RandomHorizontalFlip()] if hflip else []
        steps += [v2.ColorJitter(0.4, 0.4, 0.4)]
    else:
        steps = [middle, v2.Resize(round(image_size * 256 / 224)), v2.CenterCrop(image_size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def _mix(seeds: torch.Tensor, salt: int) -> torch.Tensor:
    """Return well-mixed non-negative int64 values of ``seeds`` (splitmix64's finaliser;
    int64 products wrap around as the uint64 ones it is defined with)."""
    step = (salt * 0x9E3779B97F4A7C15 + (1 << 63)) % (1 << 64) - (1 << 63)  # as int64
    z = seeds + step
    z = (z ^ (z >> 30)) * -0x40A7B892E31B1A47  # 0xBF58476D1CE4E5B9 as int64
    z = (z ^ (z >> 27)) * -0x6B2FB644ECCEEE15  # 0x94D049BB133111EB as int64
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class BatchAugment:
    """Small-image training augmentation of a whole uint8 batch at once: pad-and-crop (padding
    of 1/8 of the side), optional horizontal flip, scaling to [0, 1] and normalisation.

    The same augmentation as ``build_transform(train=True)`` for images already at the target
    size, but one tensor operation per batch instead of a chain of transforms per image (which
    cost more than the model's own step for 28 px images on a CPU). Each image's offsets and
    flip come from its draw's seed alone, so batches, workers and resumes do not change them.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float],
                 hflip: bool) -> None:
        self.size, self.pad, self.hflip = image_size, max(1, image_size // 8), hflip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Return the augmented float batch of uint8 ``images`` (B, C, S, S), one seed each."""
        b, c, side, pad = len(images), images.shape[1], self.size, self.pad
        span = 2 * pad + 1
        dy, dx = _mix(seeds, 1) % span, _mix(seeds, 2) % span
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        rows = (dy[:, None] + torch.arange(side))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(side))[:, None, None, :]
        out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
                     rows, cols]
        if self.hflip:
            flip = (_mix(seeds, 3) & 1).bool()
            out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        return (out.float() / 255 - self.mean) / self.std


class BatchNormalize:
    """The test transform of small images held in memory at their target size, a whole uint8
    batch at once: ``build_transform(train=False)``'s resize and centre crop are then no-ops,
    and this does its scaling and normalisation with the same float operations, so the
    outputs are equal to the image-by-image ones (which cost more than the model's forward
    pass for 28 px images on a CPU)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Return the float batch of uint8 ``images`` (B, C, S, S)."""
        return images.float().mul_(1.0 / 255).sub_(self.mean).div_(self.std)
