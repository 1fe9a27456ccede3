"""CIFAR-10/100 from the python pickle batches, read without running pickled code."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from longtail.errors import LongtailError

LAYOUT = {
    "cifar10_lt": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                   ["test_batch"], "batches.meta", b"labels", b"label_names", 10),
    "cifar100_lt": ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels",
                    b"fine_label_names", 100),
}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# The batches are pickled dicts of bytes, lists and numpy arrays; nothing else may be built.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode")}  # how protocol-2 pickles written by Python 3 store bytes


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: CIFAR batches hold only "
                                     f"arrays, lists and bytes")


def read_batch(path: Path) -> dict:
    """Return the dict stored in one CIFAR python batch file (keys are bytes)."""
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise LongtailError(f"{path}: not a readable CIFAR batch ({e})") from None


def load_cifar(root: str | Path, kind: str) -> dict[str, object]:
    """Return train/test images (N, 3, 32, 32) uint8, labels (N,) and class names."""
    folder_name, train_files, test_files, meta, label_key, names_key, num_classes = LAYOUT[kind]
    root = Path(root)
    folder = root if (root / meta).is_file() else root / folder_name
    missing = [n for n in (*train_files, *test_files, meta) if not (folder / n).is_file()]
    if missing:
        raise LongtailError(
            f"{kind}: expected the python version of CIFAR in {folder} ({', '.join(missing)} "
            f"missing); unpack {folder_name}.tar.gz from the CIFAR site into data.root")
    out: dict[str, object] = {}
    for split, files in (("train", train_files), ("test", test_files)):
        batches = [read_batch(folder / name) for name in files]
        data = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
        out[f"{split}_images"] = data.reshape(-1, 3, 32, 32)
        out[f"{split}_labels"] = np.concatenate([np.asarray(b[label_key]) for b in batches])
    names = read_batch(folder / meta)[names_key]
    out["class_names"] = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(out["class_names"]) != num_classes:
        raise LongtailError(f"{folder / meta}: expected {num_classes} class names")
    return out


def cao_selection(labels: np.ndarray, profile: list[int]) -> np.ndarray:
    """Return the training indices Cao et al.'s IMBALANCECIFAR keeps for ``profile``.

    Their generator seeds NumPy's legacy RNG with 0, then for each class in label order shuffles
    the indices of its images and keeps the first ``profile[c]``. A private RandomState(0)
    replays exactly that stream without touching the global one.
    """
    rng = np.random.RandomState(0)
    kept = []
    for c, n in enumerate(profile):
        members = np.where(labels == c)[0]
        rng.shuffle(members)
        kept.append(members[:n])
    return np.concatenate(kept)
