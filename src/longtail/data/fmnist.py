"""Fashion-MNIST-LT: Fashion-MNIST's IDX files made long-tailed by ``data.profile``
(exponential by default)."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import numpy as np

from longtail.errors import LongtailError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
SOURCE = "https://github.com/zalandoresearch/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = (0.2860,), (0.3530,)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Return the array stored in an IDX file (optionally gzip-compressed)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise LongtailError(f"{path}: cannot read IDX file ({e})") from None
    if not data:
        raise LongtailError(f"{path}: empty (0 bytes), expected an IDX file")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise LongtailError(f"{path}: not an IDX file (bad magic number 0x{data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        count = int(np.prod(shape))
        fits = [np.dtype(t).name for t in _IDX_DTYPES.values()
                if header + count * np.dtype(t).itemsize == len(data)]
        why = (f"its header says {dtype.name} values, the size fits {fits[0]}" if fits
               else "truncated download?" if len(data) < expected else "extra bytes at the end")
        raise LongtailError(f"{path}: expected {expected} bytes for shape {shape}, "
                            f"found {len(data)} ({why})")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def find_files(root: Path) -> dict[str, Path] | None:
    """Return the four IDX files under ``root`` (plain or .gz; also torchvision's layout)."""
    for folder in (root, root / "FashionMNIST" / "raw"):
        found = {}
        for key, name in FILES.items():
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(FILES):
            return found
    return None


def load_fashion_mnist(root: str | Path, download: bool = False,
                       root_key: str = "data.root") -> dict[str, np.ndarray]:
    """Return train/test images (N, 28, 28) uint8 and labels (N,) from the IDX files in root
    (``root_key``: what the user set it with, for the message when they are not there)."""
    root = Path(root)
    files = find_files(root)
    if files is None and download:
        _download(root)
        files = find_files(root)
    if files is None:
        names = ", ".join(f"{n}[.gz]" for n in FILES.values())
        raise LongtailError(
            f"Fashion-MNIST not found in {root}: expected {names}. On Debian/Ubuntu run "
            f"'apt-get install dataset-fashion-mnist' (puts them in {DEFAULT_ROOT}); elsewhere "
            f"copy the four IDX files into {root_key}"
            + (", or set data.download=true where the network allows it."
               if root_key == "data.root" else ".")
        )
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        _check_pair(files[f"{split}_images"], arrays[f"{split}_images"],
                    files[f"{split}_labels"], arrays[f"{split}_labels"])
    return arrays


def _check_pair(images_path: Path, images: np.ndarray, labels_path: Path,
                labels: np.ndarray) -> None:
    """Check an images file and its labels file agree: one label 0..9 per 28x28 image (a
    short labels file would otherwise pair images with the wrong labels)."""
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise LongtailError(f"{images_path}: expected uint8 images of 28x28 (shape (N, 28, "
                            f"28)), found {images.dtype} of shape {images.shape}")
    if labels.shape != (len(images),):
        raise LongtailError(f"{labels_path}: expected {len(images)} labels (one per image of "
                            f"{images_path.name}), found shape {labels.shape}")
    bad = np.flatnonzero((labels < 0) | (labels >= len(CLASS_NAMES)))
    if len(bad):
        raise LongtailError(f"{labels_path}: expected labels 0..{len(CLASS_NAMES) - 1}, found "
                            f"{labels[bad[0]]} at index {bad[0]}")


def _download(root: Path) -> None:
    """Download the four IDX files with torchvision into root/FashionMNIST/raw; when that
    fails, remove the folders it made and say which files to put where instead."""
    from torchvision.datasets import FashionMNIST

    made = next((p for p in (root, root / "FashionMNIST", root / "FashionMNIST" / "raw")
                 if not p.exists()), None)  # the top-most folder the download would create
    try:
        FashionMNIST(str(root), train=True, download=True)
    except Exception as e:  # network errors come in many types
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        reason = re.sub(r"\s+", " ", str(e)).strip()[:300] or type(e).__name__
        names = ", ".join(f"{n}.gz" for n in FILES.values())
        raise LongtailError(
            f"downloading Fashion-MNIST failed ({reason}); download {names} from "
            f"{SOURCE} where there is network and put them in {root} (data.root)") from None
