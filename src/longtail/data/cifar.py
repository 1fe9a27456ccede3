"""CIFAR-10/100 from the python pickle batches, read without running pickled code."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from longtail.errors import LongtailError

URL = "https://www.cs.toronto.edu/~kriz/"
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
    """Return the dict stored in one CIFAR python batch file, its keys as bytes (as the
    official files have them; a batch saved again from Python 3 has str keys)."""
    try:
        with open(path, "rb") as f:
            batch = _SafeUnpickler(f, encoding="bytes").load()
        if isinstance(batch, dict):
            batch = {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}
        return batch
    except (EOFError, pickle.UnpicklingError) as e:
        if isinstance(e, pickle.UnpicklingError) and "truncated" not in str(e):
            why = str(e) if str(e).startswith("refused") else (
                "not a Python pickle, as the python version of CIFAR's batches are")
            raise LongtailError(f"{path}: not a readable CIFAR batch ({why})") from None
        raise LongtailError(f"{path}: not a readable CIFAR batch (the file ends early: "
                            f"truncated? extract the archive again)") from None
    except (OSError, ValueError) as e:
        raise LongtailError(f"{path}: not a readable CIFAR batch ({e})") from None


def cifar_folder(root: str | Path, kind: str, download: bool = False,
                 root_key: str = "data.root") -> Path:
    """Return the folder of CIFAR's python batches under ``root``; refuse it when a file is
    missing, saying where to get them."""
    folder_name, train_files, test_files, meta = LAYOUT[kind][:4]
    root = Path(root)
    folder = root if (root / meta).is_file() else root / folder_name
    missing = [n for n in (*train_files, *test_files, meta) if not (folder / n).is_file()]
    if missing:
        # data.download is documented for fmnist_lt only: say so rather than ignore it.
        tarball = folder_name.replace("-batches-py", "-python") + ".tar.gz"
        raise LongtailError(
            f"{kind}: expected the python version of CIFAR in {folder} ({', '.join(missing)} "
            f"missing); "
            + ("data.download=true downloads only Fashion-MNIST (fmnist_lt); " if download
               else "")
            + f"download {URL}{tarball} and unpack it into {root_key} {root}")
    return folder


def load_cifar(root: str | Path, kind: str, download: bool = False,
               root_key: str = "data.root") -> dict[str, object]:
    """Return train/test images (N, 3, 32, 32) uint8, labels (N,) and class names
    (``root_key``: what the user set root with, for the message when they are not there)."""
    folder_name, train_files, test_files, meta, label_key, names_key, num_classes = LAYOUT[kind]
    folder = cifar_folder(root, kind, download, root_key)
    out: dict[str, object] = {}
    for split, files in (("train", train_files), ("test", test_files)):
        batches = [_checked_batch(folder / name, label_key, num_classes) for name in files]
        out[f"{split}_images"] = np.concatenate([b[0] for b in batches]).reshape(-1, 3, 32, 32)
        out[f"{split}_labels"] = np.concatenate([b[1] for b in batches])
    meta_blob = read_batch(folder / meta)
    names = meta_blob.get(names_key) if isinstance(meta_blob, dict) else None
    if not isinstance(names, list):
        raise LongtailError(f"{folder / meta}: expected a list of class names under "
                            f"{names_key.decode()}, found {type(names).__name__}")
    out["class_names"] = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(out["class_names"]) != num_classes:
        raise LongtailError(f"{folder / meta}: expected {num_classes} class names")
    return out


def _checked_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """Return the images (N, 3072) uint8 and labels (N,) of one batch file, checked: a batch
    of another width fails NumPy's concatenate, and a short or out-of-range label list would
    silently misalign or drop images."""
    batch = read_batch(path)
    keys = sorted(k.decode(errors="replace") if isinstance(k, bytes) else str(k)
                  for k in batch) if isinstance(batch, dict) else type(batch).__name__
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise LongtailError(f"{path}: expected a CIFAR batch with keys data and "
                            f"{label_key.decode()}, found {keys}")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise LongtailError(f"{path}: data: expected uint8 rows of 3072 values (3x32x32 "
                            f"images), found {data.dtype} of shape {data.shape}")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise LongtailError(f"{path}: {label_key.decode()}: expected {len(data)} integer "
                            f"labels (one per image), found {labels.dtype} of shape "
                            f"{labels.shape}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise LongtailError(f"{path}: {label_key.decode()}: expected labels 0..{num_classes - 1}, "
                            f"found {labels[bad[0]]} at index {bad[0]}")
    return data, labels.astype(np.int64)


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
