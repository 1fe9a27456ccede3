"""Image datasets: decoded tensors in memory, or files decoded on the fly."""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Sampler, default_collate

from longtail.errors import LongtailError

Transform = Callable[[torch.Tensor], torch.Tensor]


def decode_image(path: Path, channels: int) -> torch.Tensor:
    """Return the image at ``path`` as a uint8 CHW tensor with 1 (grayscale) or 3 (RGB) channels.

    Pillow decodes it, so any format Pillow reads works (torchvision's own decoders are
    deprecated since 0.29); a photo's EXIF orientation is applied, so it comes out the way
    viewers show it (and its labeller saw it). Raises OSError or ValueError when it cannot be
    read or decoded.
    """
    # here, not at the top: a run on features never decodes an image, nor waits for
    # torchvision's imports (about 2 s)
    from torchvision.transforms.v2.functional import pil_to_tensor

    try:
        with warnings.catch_warnings():
            # Pillow's two lines about images above MAX_IMAGE_PIXELS (it refuses at twice
            # that) would come from every worker: the data builder says it once instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Nor its UserWarnings about what it reads past (corrupt EXIF, a palette's
            # transparency given as bytes): two lines per image, epoch and worker.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            img = Image.open(path)
            with img:
                ImageOps.exif_transpose(img, in_place=True)
                img = _shape_in_alpha(_to_8_bits(img))
                return pil_to_tensor(img.convert("L" if channels == 1 else "RGB"))
    except Image.DecompressionBombError as e:
        raise ValueError(str(e)) from None


# The first bytes of image formats: a file that starts as one but does not decode is damaged,
# not "not an image".
_IMAGE_MAGIC = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"),
                (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def bad_image_line(origin: str, path: Path, error: Exception) -> str:
    """Return the one line that names an image ``decode_image`` refused (``origin``: its list
    line) and why: empty, not an image (its first bytes), or what Pillow said."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        head = None
    kind = next((k for magic, k in _IMAGE_MAGIC if head and head.startswith(magic)), None)
    if head == b"":
        why = "an empty file (0 bytes)"
    elif isinstance(error, Image.UnidentifiedImageError) and kind is not None:
        why = f"a {kind} file Pillow cannot read: damaged (a bad checksum, cut short?)"
    elif isinstance(error, Image.UnidentifiedImageError):
        why = f"not an image Pillow reads (it starts with {head!r})"
    else:
        why = str(error).replace(f" '{path}'", "").replace(str(path), "the file")
    return (f"{origin}: cannot decode image {path} ({why}); data.on_bad_image=skip skips such "
            f"images")


def _shape_in_alpha(img: Image.Image) -> Image.Image:
    """Return an image of one colour whose shape is all in its alpha channel (a glyph or icon
    on a transparent background) drawn over a contrasting background: dropping the alpha, as
    Pillow's convert does, would leave a blank image. Other images are returned as they are
    (their alpha dropped later, as torchvision's and the authors' loaders do)."""
    if img.mode not in ("RGBA", "LA", "PA") and "transparency" not in img.info:
        return img
    rgba = img.convert("RGBA")
    *colour, alpha = rgba.getextrema()
    if alpha[0] == 255 or any(lo != hi for lo, hi in colour):  # opaque, or the colour varies
        return img
    dark = sum(lo for lo, _ in colour) < 3 * 128
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255) if dark else (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_8_bits(img: Image.Image) -> Image.Image:
    """Return 16-bit grayscale (modes I;16*, and I, which 16-bit PGM files open as) as 8-bit
    "L" by dropping the low byte: Pillow's convert clips every value above 255 to white.
    Float images (mode F) in 0..1 are scaled to 0..255: Pillow's convert made them black.

    Mode I holds 32-bit integers; they are read as 16-bit values, clipped to 0..65535. An
    image whose values all fit in 0..255 is taken as they are.
    """
    if img.mode == "F":  # 32-bit floats (TIFF): 0..1 as most tools write them, else 0..255
        pixels = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if pixels.max(initial=0) <= 1.0:
            pixels = pixels * 255
        return Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8))
    if img.mode == "I" or img.mode.startswith("I;16"):
        pixels = np.asarray(img).astype(np.int64).clip(0, 65535)
        # 8-bit values saved in a wider container (a TIFF of 0..255 opens as mode I) are
        # kept: dropping their low byte would make them black.
        if pixels.max(initial=0) > 255:
            pixels >>= 8
        return Image.fromarray(pixels.astype(np.uint8))  # 2-d uint8: mode L
    return img


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

    def raw(self, index: int) -> torch.Tensor | None:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        image = self.raw(index)
        if image is None:  # undecodable and skipped (see ImageFiles)
            return None
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
    """Images decoded from files on every access (for data too large to keep in memory).

    An image that cannot be decoded stops with a LongtailError naming where it was listed, or,
    with ``skip_bad=True``, yields None, which ``collate_skipping`` drops from the batch.
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int] | torch.Tensor,
                 channels: int, origins: Sequence[str] | None = None, skip_bad: bool = False,
                 transform: Transform | None = None) -> None:
        super().__init__(labels, transform)
        self.paths = list(paths)
        self.origins = list(origins) if origins is not None else [str(p) for p in self.paths]
        self.channels = channels
        self.skip_bad = skip_bad

    def raw(self, index: int) -> torch.Tensor | None:
        try:
            return decode_image(self.paths[index], self.channels)
        except (OSError, ValueError) as e:
            if self.skip_bad:
                return None
            raise LongtailError(bad_image_line(self.origins[index], self.paths[index], e)
                                ) from None


def collate_skipping(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate a batch, leaving out the images that could not be decoded (None)."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return default_collate(kept)


def augmentation_seed(seed: int, epoch: int, position: int) -> int:
    """Return the RNG seed of the training draw at ``position`` of ``epoch``'s global stream.

    Seeds below 2^15 pack (seed, epoch mod 2^16, position < 2^32) into 63 bits (torch's
    generator takes no more); larger seeds (config allows up to 2^32) do not fit beside the
    rest and are hashed with them into 63 bits. Either way: distinct for every draw of a run
    (up to hash collisions), and independent of workers, ranks and restarts.
    """
    if seed < 1 << 15:
        return (seed << 48) | ((epoch & 0xFFFF) << 32) | (position & 0xFFFFFFFF)
    digest = hashlib.blake2b(f"{seed} {epoch} {position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SeededDraws(Sampler[tuple[int, int]]):
    """Wraps a sampler of the family to yield (dataset index, augmentation seed) pairs.

    The seed of a draw depends only on (seed, epoch, position in the global stream), so the
    augmented image is the same with any number of DataLoader workers (persistent or not), on
    any rank, and after a resume.
    """

    def __init__(self, sampler: Sampler[int], seed: int) -> None:
        self.sampler = sampler
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        s = self.sampler
        indices = s.indices().tolist()
        for k, index in enumerate(indices):
            yield index, augmentation_seed(self.seed, s.epoch, s.rank + k * s.num_replicas)


class Augmented(Dataset):
    """Training view of ``images``: item ``(index, seed)`` is image ``index`` transformed under
    torch's RNG seeded with ``seed`` (the caller's RNG state is left untouched)."""

    def __init__(self, images: LabelledImages, transform: Transform) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int] | None:
        index, seed = key
        image = self.images.raw(index)
        if image is None:  # undecodable and skipped
            return None
        state = torch.get_rng_state()
        # The CPU generator only: torch.manual_seed would also seed every accelerator (slow).
        torch.default_generator.manual_seed(seed)
        try:
            image = self.transform(image)
        finally:
            torch.set_rng_state(state)
        return image, int(self.images.labels[index])


class RawBatches(Dataset):
    """Test-time view for ``BatchNormalize``: item ``i`` is the index alone; ``collate``
    stacks a batch of the raw uint8 images and transforms it in one go."""

    def __init__(self, images: TensorImages, transform) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.tensor(indices)
        return self.transform(self.images.images[index]), self.images.labels[index]


class RawDraws(Dataset):
    """Training view for ``BatchAugment``: item ``(index, seed)`` is the raw uint8 image, its
    label and the draw's seed; ``collate`` stacks a batch and augments it in one go."""

    def __init__(self, images: TensorImages, augment) -> None:
        self.images = images
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int]:
        return key

    def collate(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.tensor([k[0] for k in keys])
        seeds = torch.tensor([k[1] for k in keys], dtype=torch.int64)
        return self.augment(self.images.images[index], seeds), self.images.labels[index]
