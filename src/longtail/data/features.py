"""Features as data (``data.kind: features``): reading and writing feature files.

A feature file holds ``features`` (N, D), floating point, and ``labels`` (N,), integers, and
optionally ``class_names`` (C strings), and in the training file ``joint_weight`` (C, D) /
``joint_bias`` (C,) (a joint classifier to start tau-norm and LWS from, instead of training
one) and ``group_counts`` (C,) (the training counts that decide Many/Medium/Few, when they
are not the rows of the file). Three formats, told apart by the suffix:

- ``.npz`` (NumPy): uncompressed members are memory-mapped; compressed ones
  (``np.savez_compressed``) cannot be and are read into memory;
- ``.pt`` (PyTorch): ``torch.load(mmap=True, weights_only=True)`` of a dict;
- ``.safetensors``: memory-mapped by safetensors; class names as JSON in the metadata.

Large features are therefore never copied at start: stage 2 reads the rows it needs.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longtail import distributed
from longtail.checkpoint import atomic_write_file, torch_load_error
from longtail.config import DataConfig
from longtail.data.preflight import feature_file
from longtail.data.record import SPLITS, DataRecord
from longtail.errors import LongtailError

FORMATS = (".npz", ".pt", ".safetensors")
OPTIONAL_KEYS = ("class_names", "joint_weight", "joint_bias", "group_counts")
_CHUNK_ROWS = 65536
# The largest feature magnitude accepted: the methods take squared norms and products of
# features in float32, whose largest number is 3.4e38; at 1e20 a squared norm is already inf
# (weight balancing's MaxNorm then gives NaN). 1e15 leaves room for sums over 10^8 columns.
MAX_FEATURE = 1e15


def check_values(x: torch.Tensor, name: str, first_row: int = 0) -> None:
    """Raise ValueError for NaN, infinity or magnitudes above MAX_FEATURE in the rows ``x``
    (a block of rows starting at ``first_row``), naming the first row holding one: NaN would
    poison every method. One pass (min and max together) when all is well."""
    if not x.numel():
        return
    low, high = torch.aminmax(x)
    largest = torch.maximum(-low, high)  # NaN when x holds one
    if bool(largest <= MAX_FEATURE):
        return
    bad = ~torch.isfinite(x).all(1)
    if bool(bad.any()):
        raise ValueError(f"{name}: expected finite numbers, found NaN or infinity in row "
                         f"{first_row + int(bad.nonzero()[0])}")
    row = first_row + int((x.abs() > MAX_FEATURE).any(1).nonzero()[0])
    raise ValueError(f"{name}: expected values of magnitude at most {MAX_FEATURE:.0e}, found "
                     f"{float(largest):.3g} in row {row}: squared norms and products of such "
                     f"values overflow float32; scale them down".replace("e+", "e"))


@dataclass
class FeatureSplit:
    """One split given as features: (N, D) features, possibly memory-mapped, and labels."""

    source: Path
    features: torch.Tensor
    labels: torch.Tensor
    sha256: str  # of the file's bytes (or of the file and the rows, for a subset)
    joint_weight: torch.Tensor | None = None
    joint_bias: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> FeatureSplit:
        """Return the rows at ``indices`` (copied out of the file)."""
        digest = hashlib.sha256(f"{self.sha256}|".encode() + indices.numpy().tobytes())
        return FeatureSplit(self.source, self.features[indices], self.labels[indices],
                            digest.hexdigest(), self.joint_weight, self.joint_bias)


# --------------------------------------------------------------------------------------------
# The reader of data.kind: features


def read_features(cfg: DataConfig, split_seed: int) -> DataRecord:
    """Read the feature files named by ``data.train`` / ``data.val`` / ``data.test``."""
    blobs = {}
    for name in SPLITS:
        if getattr(cfg, name) is None:
            continue
        path = feature_file(cfg, name)
        blobs[name] = read_feature_file(path)
    train = blobs["train"]
    train_path, dim = train["path"], train["features"].shape[1]
    names = _class_names(blobs)
    num_classes = len(names) if names is not None else int(train["labels"].max()) + 1
    for blob in blobs.values():
        path = blob["path"]
        if blob["features"].shape[1] != dim:
            raise LongtailError(f"{path}: features have {blob['features'].shape[1]} dimensions, "
                                f"data.train's {train_path} has {dim}")
        if len(blob["labels"]) and int(blob["labels"].max()) >= num_classes:
            top = int(blob["labels"].max())
            why = (f"class_names has {num_classes} names" if names is not None
                   else "largest training label + 1")
            raise LongtailError(f"{path}: label {top} is not below the class count "
                                f"{num_classes} ({why})")
    # Gaps are found from the distinct labels, before bincount: a stray label of 10^9 would
    # make bincount allocate gigabytes (or overflow) only to report the classes it skips.
    present = torch.unique(train["labels"])
    if len(present) != num_classes:
        from longtail.data.listfile import label_gap

        raise LongtailError(f"{train_path}: no training row has label "
                            f"{label_gap(present.tolist(), num_classes)}; labels must be "
                            f"0..C-1 (C = {num_classes}), each used in training")
    counts = torch.bincount(train["labels"], minlength=num_classes)
    joint = _joint_classifier(train, num_classes, dim)
    group_counts = _group_counts(train, num_classes, counts)
    splits = {name: FeatureSplit(blob["path"], blob["features"], blob["labels"],
                                 blob["sha256"], *(joint if name == "train" else (None, None)))
              for name, blob in blobs.items()}
    for name in SPLITS:
        splits.setdefault(name, None)
    same = [(a, b) for i, a in enumerate(blobs) for b in list(blobs)[i + 1:]
            if blobs[a]["sha256"] == blobs[b]["sha256"]]
    for a, b in same:  # as the list reader warns of shared images: allowed, but say so
        if distributed.is_main():
            why = "trained on" if a == "train" else "that chose tau"
            print(f"warning: data.{a} and data.{b} hold the same rows ({blobs[a]['path']} and "
                  f"{blobs[b]['path']}); {b} accuracy is measured on rows {why}", flush=True)
    notes = [f"features: {dim}-d, {', '.join(f'{len(s)} {k}' for k, s in splits.items() if s)} "
             f"rows, from {', '.join(str(b['path']) for b in blobs.values())}"]
    if joint[0] is not None:
        notes.append(f"joint: the classifier in {train_path} (joint_weight, joint_bias)")
    for split, blob in blobs.items():  # keys read nowhere: a misspelling, or the wrong file
        if blob["unknown"]:
            notes.append(f"{blob['path']}: {', '.join(blob['unknown'])} ignored (a feature "
                         f"file's keys: features, labels, {', '.join(OPTIONAL_KEYS)})")
        misplaced = [k for k in ("joint_weight", "joint_bias", "group_counts") if k in blob
                     ] if split != "train" else []
        if misplaced:
            notes.append(f"{blob['path']}: {', '.join(misplaced)} ignored (read from the "
                         f"training file only)")
    name = Path(cfg.root).resolve().name if cfg.root else train_path.resolve().parent.name
    return DataRecord(name=name, class_names=names or [str(c) for c in range(num_classes)],
                      splits=splits, split_sha256={k: s.sha256 for k, s in splits.items() if s},
                      notes=notes, counts_before_holdout=group_counts)


def _class_names(blobs: dict[str, dict[str, Any]]) -> list[str] | None:
    """Return the class names the files give (they must agree), or None."""
    names, first = None, None
    for blob in blobs.values():
        if blob.get("class_names") is None:
            continue
        if names is None:
            names, first = blob["class_names"], blob["path"]
        elif len(blob["class_names"]) != len(names):
            raise LongtailError(f"{blob['path']}: class_names has {len(blob['class_names'])} "
                                f"names, {first}'s has {len(names)}")
        elif blob["class_names"] != names:
            theirs = blob["class_names"]
            at = next(i for i, (a, b) in enumerate(zip(theirs, names)) if a != b)
            raise LongtailError(
                f"{blob['path']}: class_names differ from those of {first}: class {at} is "
                f"{theirs[at]!r} here, {names[at]!r} there")
    return names


def _joint_classifier(blob: dict[str, Any], num_classes: int,
                      dim: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    weight, bias = blob.get("joint_weight"), blob.get("joint_bias")
    path = blob["path"]
    if weight is None and bias is None:
        return None, None
    if weight is None or tuple(weight.shape) != (num_classes, dim):
        found = "no joint_weight" if weight is None else f"shape {tuple(weight.shape)}"
        raise LongtailError(f"{path}: joint_weight: expected shape ({num_classes}, {dim}) "
                            f"(classes, feature dimensions), found {found}")
    if bias is not None and tuple(bias.shape) != (num_classes,):
        raise LongtailError(f"{path}: joint_bias: expected shape ({num_classes},), found "
                            f"{tuple(bias.shape)}")
    for key, value in (("joint_weight", weight), ("joint_bias", bias)):
        if value is not None and not value.is_floating_point():
            raise LongtailError(f"{path}: {key}: expected floating-point numbers, found "
                                f"{value.dtype}")
        try:
            if value is not None:
                check_values(value.reshape(len(value), -1), key)
        except ValueError as e:
            raise LongtailError(f"{path}: {e}") from None
    return weight.float(), None if bias is None else bias.float()


def _group_counts(blob: dict[str, Any], num_classes: int,
                  counts: torch.Tensor) -> list[int] | None:
    given = blob.get("group_counts")
    if given is None:
        return None
    if tuple(given.shape) != (num_classes,) or given.is_floating_point():
        raise LongtailError(f"{blob['path']}: group_counts: expected {num_classes} integers "
                            f">= 0 (one per class), found {given.dtype} of shape "
                            f"{tuple(given.shape)}")
    # counts before a val split was taken out of training: at least the training rows
    below = given.long() < counts
    if below.any():
        at = int(torch.nonzero(below)[0])
        raise LongtailError(f"{blob['path']}: group_counts: expected counts at least the "
                            f"training rows of each class (they count a class's images before "
                            f"val was taken out of them), found {int(given[at])} for class {at}"
                            f", which has {int(counts[at])} training rows")
    return None if torch.equal(given.long(), counts) else given.long().tolist()


# --------------------------------------------------------------------------------------------
# Files


def read_feature_file(path: Path) -> dict[str, Any]:
    """Return {path, sha256, features, labels, and the optional keys found} of one file,
    checked: features (N, D) floating point and finite, labels (N,) integers >= 0."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise LongtailError(f"{path}: expected a feature file ending in "
                            f"{', '.join(FORMATS)}, found '{suffix or path.name}'")
    try:
        blob = {".npz": _read_npz, ".pt": _read_pt, ".safetensors": _read_safetensors}[suffix](
            path)
    except LongtailError:
        raise
    except IsADirectoryError:
        raise LongtailError(f"{path}: is a folder, not a feature file") from None
    except Exception as e:  # each library has its own errors for a damaged or foreign file
        if suffix == ".pt":  # truncated, foreign or holding more than tensors: say which
            raise LongtailError(torch_load_error(path, e)) from None
        reason = re.sub(r"\x1b\[[0-9;]*m", "", str(e).splitlines()[0] if str(e) else "")
        raise LongtailError(f"{path}: cannot be read as a {suffix} feature file "
                            f"({reason[:200] or type(e).__name__})") from None
    found = blob.pop("keys")
    blob["unknown"] = sorted(set(found) - {"features", "labels", *OPTIONAL_KEYS})
    for key in ("features", "labels", "joint_weight", "joint_bias", "group_counts"):
        if key in blob and not isinstance(blob[key], torch.Tensor):
            raise LongtailError(f"{path}: {key}: expected an array (tensor), found "
                                f"{type(blob[key]).__name__}")
        if key in blob and blob[key].layout != torch.strided:  # sparse: most operations fail
            raise LongtailError(f"{path}: {key}: expected a dense tensor, found layout "
                                f"{blob[key].layout} (save tensor.to_dense())")
    for key in ("features", "labels"):
        if key not in blob:
            raise LongtailError(f"{path}: no '{key}'; expected keys features (N, D) and labels "
                                f"(N,), found {sorted(found) or 'none'}")
    features, labels = blob["features"], blob["labels"]
    if features.ndim != 2:
        raise LongtailError(f"{path}: features: expected a 2-d (N, D) array, found shape "
                            f"{tuple(features.shape)}")
    if not features.is_floating_point():
        raise LongtailError(f"{path}: features: expected floating-point numbers, found "
                            f"{features.dtype}")
    if features.shape[1] == 0:  # nothing to classify by; stage 2 would divide by zero
        raise LongtailError(f"{path}: features: expected at least 1 column (feature "
                            f"dimension), found shape {tuple(features.shape)}")
    if labels.ndim != 1 or len(labels) != len(features):
        raise LongtailError(f"{path}: labels: expected shape ({len(features)},) (one per row "
                            f"of features), found {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise LongtailError(f"{path}: labels: expected integers, found {labels.dtype}")
    if not len(labels):
        raise LongtailError(f"{path}: no rows (features of shape {tuple(features.shape)})")
    if labels.dtype == torch.uint64 and int(labels.numpy().max()) >= 2**63:
        # (torch has no max of uint64; .long() would show such a label as negative)
        row = int(np.argmax(labels.numpy()))
        raise LongtailError(f"{path}: labels: expected labels below the class count, found "
                            f"{int(labels.numpy()[row])} in row {row}")
    labels = labels.long()
    if int(labels.min()) < 0:
        row = int(torch.nonzero(labels < 0)[0])
        raise LongtailError(f"{path}: labels: expected labels >= 0, found {int(labels[row])} "
                            f"in row {row}")
    for start in range(0, len(features), _CHUNK_ROWS):
        try:
            check_values(features[start : start + _CHUNK_ROWS], "features", start)
        except ValueError as e:
            raise LongtailError(f"{path}: {e}") from None
    if blob.get("class_names") is not None:
        blob["class_names"] = _names_as_strings(blob["class_names"], path)
    return {**blob, "labels": labels, "path": path, "sha256": _file_sha256(path)}


def _names_as_strings(names: Any, path: Path) -> list[str]:
    """Return class names as strings: numbers become their text, as .npz's class_names
    arrays do (np.array([10, 11]) gives '10', '11'), so every format reads the same names."""
    if not isinstance(names, (list, tuple)):
        raise LongtailError(f"{path}: class_names: expected a list of strings, found "
                            f"{type(names).__name__}")
    out = []
    for i, name in enumerate(names):
        if isinstance(name, bytes):  # an array of dtype S (HDF5 and older numpy write them)
            try:
                name = name.decode("utf-8")
            except UnicodeDecodeError:
                raise LongtailError(f"{path}: class_names: name {i} is not UTF-8 text "
                                    f"({name[:40]!r})") from None
        if not isinstance(name, (str, int, float)) or isinstance(name, bool):
            raise LongtailError(f"{path}: class_names: expected a list of strings (or "
                                f"numbers), found {type(name).__name__} at index {i}")
        out.append(str(name))
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


def _read_npz(path: Path) -> dict[str, Any]:
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and say so
        raise LongtailError(f"{path}: not an .npz file (expected a zip archive of .npy "
                            f"arrays, as np.savez writes)")
    out: dict[str, Any] = {}
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        out["keys"] = keys
        for key in keys & {"labels", *OPTIONAL_KEYS}:
            value = archive[key]
            if not isinstance(value, np.ndarray):  # a member saved without .npy: raw bytes
                raise LongtailError(f"{path}: {key}: expected an array ({key}.npy, as np.savez "
                                    f"writes), found a member '{key}' of {len(value)} raw bytes")
            if key == "class_names" and value.ndim != 1:
                raise LongtailError(f"{path}: class_names: expected one name per class (1-d), "
                                    f"found shape {value.shape}")
            if key != "class_names" and value.dtype.kind not in "biuf":
                raise LongtailError(f"{path}: {key}: expected numbers, found {value.dtype} "
                                    f"values")
            out[key] = (value.tolist() if key == "class_names"  # str, bytes or numbers
                        else torch.from_numpy(np.ascontiguousarray(value)))
        if "features" in keys:
            mapped = _npz_memmap(path, "features")
            out["features"] = torch.from_numpy(
                mapped if mapped is not None else archive["features"])
    return out


def _npz_memmap(path: Path, key: str) -> np.ndarray | None:
    """Return member ``key`` of an .npz file memory-mapped, or None when it is compressed.

    np.load(mmap_mode=...) maps .npy files only; an uncompressed .npz member is an .npy file
    stored as it is inside the zip, so it is mapped at its offset: after the member's local
    header (30 bytes, name, extra field) and the .npy header.
    """
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject or not len(shape) or 0 in shape:
        return None
    # mode "c" (copy-on-write): writable for torch.from_numpy, while the file never changes.
    return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape,
                     order="F" if fortran else "C")


def _read_pt(path: Path) -> dict[str, Any]:
    with warnings.catch_warnings():  # torch's note on checking sparse tensors: refused below
        warnings.filterwarnings("ignore", "Validating sparse tensor", UserWarning)
        try:
            blob = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # mmap needs the zip format (torch >= 1.6's default)
                raise
            blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict):
        raise LongtailError(f"{path}: expected a dict with keys features and labels, found "
                            f"{type(blob).__name__}")
    return {"keys": list(blob),
            **{k: v for k, v in blob.items() if k in ("features", "labels", *OPTIONAL_KEYS)}}


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    out: dict[str, Any] = {}
    with safe_open(str(path), framework="pt") as f:
        out["keys"] = list(f.keys())
        for key in f.keys():
            if key in ("features", "labels", *OPTIONAL_KEYS):
                out[key] = f.get_tensor(key)
        metadata = f.metadata() or {}
    if "class_names" in metadata:
        try:
            out["class_names"] = json.loads(metadata["class_names"])
        except ValueError:
            raise LongtailError(f"{path}: metadata class_names: expected a JSON list of "
                                f"strings") from None
    return out


def write_feature_file(path: Path, features: torch.Tensor, labels: torch.Tensor,
                       class_names: list[str] | None = None,
                       **extra: torch.Tensor | None) -> None:
    """Write a feature file that ``data.kind: features`` reads; the format by the suffix of
    ``path`` (.npz uncompressed, so that it can be memory-mapped; .safetensors; .pt)."""
    suffix = path.suffix.lower()
    tensors = {"features": features, "labels": labels,
               **{k: v for k, v in extra.items() if v is not None}}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    if suffix == ".npz":
        arrays = {k: v.numpy() for k, v in tensors.items()}
        if class_names is not None:
            arrays["class_names"] = np.array(class_names, dtype=str)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a name
                np.savez(f, **arrays)
    elif suffix == ".safetensors":
        from safetensors.torch import save_file

        metadata = {"class_names": json.dumps(class_names)} if class_names is not None else None

        def write(tmp: Path) -> None:
            save_file(tensors, str(tmp), metadata=metadata)
    elif suffix == ".pt":
        def write(tmp: Path) -> None:
            torch.save({**tensors, **({"class_names": list(class_names)}
                                      if class_names is not None else {})}, tmp)
    else:
        raise ValueError(f"{path}: expected a name ending in {', '.join(FORMATS)}")
    atomic_write_file(path, write)
