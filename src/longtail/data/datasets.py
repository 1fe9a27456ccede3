"""Image datasets: decoded tensors in memory, or files decoded on the fly."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2.functional import pil_to_tensor

from longtail.errors import LongtailError

Transform = Callable[[torch.Tensor], torch.Tensor]


def decode_image(path: Path, channels: int) -> torch.Tensor:
    """Return the image at ``path`` as a uint8 CHW tensor with 1 (grayscale) or 3 (RGB) channels.

    Pillow decodes it, so any format Pillow reads works.
    """
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            return pil_to_tensor(img)
    except (OSError, ValueError) as e:
        raise LongtailError(f"{path}: cannot decode image ({e})") from None


class LabelledImages(Dataset):
    """Base: labels plus an optional transform; subclasses provide ``raw(i)`` (uint8 CHW)."""

    def __init__(self, labels: Sequence[int] | torch.Tensor,
                 transform: Transform | None = None) -> None:
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform

    def with_transform(self, transform: Transform | None) -> LabelledImages:
        """Return a shallow copy that applies ``transform`` (the images are shared)."""
        other = copy.copy(self)
        other.transform = transform
        return other

    def raw(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.raw(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


class TensorImages(LabelledImages):
    """Images already decoded: a uint8 (N, C, H, W) tensor, or a list of CHW tensors."""

    def __init__(self, images: torch.Tensor | list[torch.Tensor],
                 labels: Sequence[int] | torch.Tensor, transform: Transform | None = None) -> None:
        super().__init__(labels, transform)
        if len(images) != len(self.labels):
            raise ValueError(f"{len(images)} images but {len(self.labels)} labels")
        self.images = images

    def raw(self, index: int) -> torch.Tensor:
        return self.images[index]


class ImageFiles(LabelledImages):
    """Images decoded from files on every access (for data too large to keep in memory)."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int] | torch.Tensor,
                 channels: int, transform: Transform | None = None) -> None:
        super().__init__(labels, transform)
        self.paths = list(paths)
        self.channels = channels

    def raw(self, index: int) -> torch.Tensor:
        return decode_image(self.paths[index], self.channels)
