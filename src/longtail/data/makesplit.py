"""``longtail make-split``: long-tailed train/val/test lists from a balanced source.

Sources: a list file or an image folder (the lists point at the original files), CIFAR-10/100
or Fashion-MNIST (the chosen images are written out as PNG files, since they live in arrays).
The result is a ``data.kind: list`` dataset plus ``split.json``: the profile, the class counts
and the SHA-256 of each list, so two users can check they hold the same split.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from longtail.checkpoint import atomic_write_json, atomic_write_text, make_dir
from longtail.data import cifar, fmnist
from longtail.data.folder import read_image_folder
from longtail.data.listfile import label_gap, list_text, parse_list_file
from longtail.data.profiles import make_profile
from longtail.data.splits import long_tailed_split
from longtail.errors import LongtailError

SOURCES = ("list", "image_folder", "cifar10", "cifar100", "fmnist")
# Stands for data.test in the printed command when no test.txt was written (test_per_class 0).
TEST_LIST = "TEST_LIST"


@dataclass
class SplitRequest:
    """What ``make_split`` is asked for (the CLI's options)."""

    source: str
    root: Path
    out: Path
    list_file: Path | None = None
    profile: str = "exponential"
    n_max: int | None = None
    n_min: int | None = None
    imbalance_ratio: float | None = None
    alpha: float = 6.0
    val_per_class: int = 20
    test_per_class: int = 50
    seed: int = 0
    class_order: str = "random"


def make_split(req: SplitRequest) -> dict[str, Any]:
    """Write ``train.txt``, ``val.txt``, ``test.txt``, ``classes.txt`` and ``split.json`` into
    ``req.out``; return the summary (split.json's content)."""
    if req.source not in SOURCES:
        raise LongtailError(f"make-split: unknown source {req.source!r}; expected one of "
                            f"{', '.join(SOURCES)}")
    ratio = req.imbalance_ratio
    if ratio is not None and not (math.isfinite(ratio) and ratio >= 1):
        raise LongtailError(f"make-split --ratio: expected a finite number >= 1, found {ratio}")
    if None not in (req.n_max, req.n_min, ratio):
        raise LongtailError("make-split --ratio: expected at most two of --n-max, --n-min and "
                            "--ratio (ratio = n_max / n_min), found all three")
    arrays = req.source in ("cifar10", "cifar100", "fmnist")
    if arrays:
        labels, names, images, test_images, test_labels = _array_source(req)
        paths = None
    else:
        pool, names = _file_source(req)
        labels, paths = np.asarray(pool.labels), pool.paths
    if len(names) < 2:  # nothing to balance; run would refuse the split
        raise LongtailError(f"make-split: {req.list_file or req.root} holds {len(names)} "
                            f"class; expected at least 2")
    counts = np.bincount(labels, minlength=len(names))
    test_from_pool = 0 if arrays else req.test_per_class
    smallest = int(counts.argmin())
    have = int(counts[smallest])
    available = have - req.val_per_class - test_from_pool
    reserved = f"{req.val_per_class} val" + (f" + {test_from_pool} test" if test_from_pool
                                              else "")
    # Name the options that can fix it: --n-max is no help while val/test take every image.
    if available < 1:
        lower = "--val-per-class or --test-per-class" if test_from_pool else "--val-per-class"
        raise LongtailError(
            f"make-split: class {names[smallest]} has only {have} images; a split needs "
            f"{reserved} + 1 train per class (lower {lower})")
    n_max = req.n_max or available
    if req.n_max is None and req.n_min is not None and ratio is not None:
        n_max = max(req.n_min, round(req.n_min * ratio))  # the two given fix the third
        if n_max > available:
            raise LongtailError(
                f"make-split --n-min {req.n_min} --ratio {ratio:g}: expected a largest class "
                f"(n_min x ratio) of at most {available} images, found {n_max:.4g}: class "
                f"{names[smallest]} has {have} images, of which {reserved} are set aside")
    if n_max > available:
        raise LongtailError(
            f"make-split --n-max: expected at most {available}, found {n_max}: class "
            f"{names[smallest]} has {have} images, of which {reserved} are set aside")
    if req.n_min is not None and req.n_min > n_max:
        given = (f"--n-max {n_max}" if req.n_max is not None else
                 f"n_max {n_max}: class {names[smallest]} has {have} images, of which "
                 f"{reserved} are set aside")
        raise LongtailError(f"make-split --n-min: expected at most {n_max}, found {req.n_min} "
                            f"({given})")
    if req.n_min is None and ratio is not None and ratio > n_max:
        # n_min = n_max / ratio below 1 image, raised to 1: another ratio than the one asked
        given = (f"--n-max {n_max}" if req.n_max is not None else
                 f"n_max {n_max}, all class {names[smallest]} can give")
        raise LongtailError(
            f"make-split --ratio: expected at most {n_max}, found {ratio:g}: the smallest "
            f"class would keep n_max / ratio < 1 image ({given})")
    try:
        profile = make_profile(req.profile, len(names), n_max, req.n_min, req.imbalance_ratio,
                               req.alpha)
    except ValueError as e:
        raise LongtailError(f"make-split: {e}") from None
    split = long_tailed_split(labels, profile, val_per_class=req.val_per_class,
                              test_per_class=test_from_pool, seed=req.seed,
                              class_order=req.class_order)
    broken = next((n for n in names if "\n" in n or "\r" in n), None)
    if broken is not None:  # classes.txt holds one 'label name' line per class
        raise LongtailError(f"make-split: class {broken!r}: a name with a line break cannot go "
                            f"in classes.txt; rename it")
    if req.source == "list":  # else the missing image surfaces only when the split is run
        chosen = sorted(int(i) for part in (split.train, split.val, split.test) for i in part)
        missing = [i for i in chosen if not paths[i].is_file()]
        if missing:
            more = f" ({len(missing) - 1} more of the chosen images too)" if len(missing) > 1 \
                else ""
            raise LongtailError(f"{pool.origins[missing[0]]}: image not found: "
                                f"{paths[missing[0]]}{more}; the split would list it: fix or "
                                f"remove the line")
    earlier = _earlier_export(req.out)
    if arrays and earlier is None and os.path.lexists(req.out / "images"):
        raise LongtailError(f"make-split --out {req.out}: holds images/, which make-split did "
                            f"not export there (no split.json naming it); the split's images "
                            f"go there: choose another --out")
    make_dir(req.out)
    # Array sources' images are written beside an earlier split's and swapped in only once
    # all are written: a stopped --overwrite leaves the earlier split whole.
    staging = req.out / ".images.partial"
    shutil.rmtree(staging, ignore_errors=True)  # left by a make-split that was killed
    if arrays:
        data_root = req.out
        try:
            lines = {"train": _export(staging, "train", images, labels, split.train),
                     "val": _export(staging, "val", images, labels, split.val),
                     "test": _export(staging, "test", test_images, test_labels,
                                     np.arange(len(test_labels)))}
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    else:
        data_root = req.root
        lines = {name: list_text([paths[i] for i in idx], labels[idx].tolist(), req.root)
                 for name in ("train", "val", "test") for idx in [getattr(split, name)]}
    summary: dict[str, Any] = {
        "source": {"kind": req.source, "root": os.path.abspath(req.root),
                   "list": str(req.list_file) if req.list_file else None},
        "profile": {"kind": req.profile, "n_max": profile[0], "n_min": profile[-1],
                    "alpha": req.alpha if req.profile == "pareto" else None},
        "seed": req.seed,
        "class_order": split.class_order,
        # absolute: the printed command and split.json work from any folder
        "data_root": os.path.abspath(data_root),
        "counts": {}, "files": {},
    }
    if earlier is not None:  # an --overwrite leaves only the new split's files
        shutil.rmtree(earlier)
    if arrays:
        staging.rename(req.out / "images")
    for name, text in lines.items():
        if not text:  # none asked for (0 per class): an earlier split's list would mislead
            stale = req.out / f"{name}.txt"
            if stale.is_file() or stale.is_symlink():
                stale.unlink()
            continue
        atomic_write_text(req.out / f"{name}.txt", text)
        split_labels = [int(line.rsplit(maxsplit=1)[1]) for line in text.splitlines()]
        summary["counts"][name] = np.bincount(split_labels, minlength=len(names)).tolist()
        summary["files"][f"{name}.txt"] = {"sha256": hashlib.sha256(text.encode()).hexdigest(),
                                           "images": len(split_labels)}
    atomic_write_text(req.out / "classes.txt", "".join(f"{c} {n}\n" for c, n in enumerate(names)))
    def key(name: str, path: Path | str) -> str:  # pasteable even with spaces in the path
        return shlex.quote(f"data.{name}={path}")

    # Only the files written: without test.txt (test_per_class 0), data.test is the user's.
    out = Path(os.path.abspath(req.out))
    val = f" {key('val', out / 'val.txt')}" if "val" in summary["counts"] else ""
    test = key("test", out / "test.txt") if "test" in summary["counts"] else \
        f"data.test={TEST_LIST}"
    summary["usage"] = (f"longtail run CONFIG data.kind=list "
                        f"{key('root', summary['data_root'])} {key('train', out / 'train.txt')}"
                        f"{val} {test} {key('class_names', out / 'classes.txt')}")
    atomic_write_json(req.out / "split.json", summary)
    return summary


def _array_source(req: SplitRequest):
    if req.source == "fmnist":
        a = fmnist.load_fashion_mnist(req.root, root_key="--root")
        to_hwc = lambda x: np.asarray(x)  # noqa: E731  (N, H, W) grayscale
        names = list(fmnist.CLASS_NAMES)
    else:
        a = cifar.load_cifar(req.root, f"{req.source}_lt", root_key="--root")
        to_hwc = lambda x: np.asarray(x).transpose(0, 2, 3, 1)  # noqa: E731
        names = a["class_names"]
    return (np.asarray(a["train_labels"], dtype=np.int64), names, to_hwc(a["train_images"]),
            to_hwc(a["test_images"]), np.asarray(a["test_labels"], dtype=np.int64))


def _file_source(req: SplitRequest):
    if req.source == "image_folder":
        return read_image_folder(req.root)
    if req.list_file is None:
        raise LongtailError("make-split list: --list FILE is required (the balanced list)")
    pool = parse_list_file(req.list_file, req.root, "--root")
    first = pool.paths[:20]
    if first and not any(p.is_file() for p in first):  # the root, not the images, is wrong
        raise LongtailError(f"make-split --root {req.root}: none of the first {len(first)} "
                            f"images {pool.source} lists is there (e.g. {first[0]}); its paths "
                            f"are relative to --root: check that it is the folder they start "
                            f"from")
    present = sorted(set(pool.labels))
    if present != list(range(len(present))):
        raise LongtailError(f"{pool.source}: labels must be 0..C-1, each present; no image has "
                            f"label {label_gap(present, present[-1] + 1)} (renumber the "
                            f"classes of the list from 0)")
    return pool, [str(c) for c in present]


def _earlier_export(out: Path) -> Path | None:
    """The images/ folder an earlier make-split exported into ``out`` (its split.json names
    ``out`` as the data root), which an --overwrite replaces; None when there is none."""
    earlier, images = out / "split.json", out / "images"
    if not earlier.is_file() or not images.is_dir():
        return None
    try:
        data_root = json.loads(earlier.read_text()).get("data_root")
    except (OSError, ValueError, AttributeError):
        return None
    return images if data_root == os.path.abspath(out) else None


def _export(folder: Path, split: str, images: np.ndarray, labels: np.ndarray,
            indices: np.ndarray) -> str:
    """Write the chosen images as PNG files under folder/SPLIT/CLASS/; return list lines, which
    name them as images/SPLIT/CLASS/ (``folder`` becomes the split's images/)."""
    lines = []
    for i in tqdm(indices.tolist(), desc=f"writing {split} images", unit="img", leave=False,
                  disable=None):
        rel = f"{split}/{int(labels[i])}/{i:06d}.png"
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(path)
        lines.append(f"images/{rel} {int(labels[i])}\n")
    return "".join(lines)
