"""Image folders in torchvision's ImageFolder convention: one sub-folder per class."""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from longtail.data.listfile import FileSplit
from longtail.errors import LongtailError


def read_image_folder(folder: str | Path,
                      classes: list[str] | None = None) -> tuple[FileSplit, list[str]]:
    """Return the images under ``folder``/CLASS/ and the class names (sorted sub-folders).

    Pass the training folder's ``classes`` when reading val/test so that labels agree.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LongtailError(f"{folder}: is a file, expected a folder of class folders")
    if not folder.is_dir():
        raise LongtailError(f"{folder}: image folder not found")
    try:
        found, _ = find_classes(str(folder))
    except FileNotFoundError:
        raise LongtailError(f"{folder}: expected one sub-folder per class, found none") from None
    training = not classes  # the class folders found are the classes
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise LongtailError(f"{folder}: class folders {unknown[:5]} are not training classes")
    index = {name: i for i, name in enumerate(classes)}
    samples = make_dataset(str(folder), index, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise LongtailError(f"{folder}: no images with extensions {', '.join(IMG_EXTENSIONS)}")
    if training:
        # A class folder without images would be a class no image trains, reported later only
        # as a val/test split lacking it; name the folder instead.
        present = {label for _, label in samples}
        empty = [name for name in classes if index[name] not in present]
        if empty:
            raise LongtailError(f"{folder / empty[0]}: class folder has no images (expected "
                                f"files with extensions {', '.join(IMG_EXTENSIONS)})"
                                + (f"; {len(empty) - 1} more such folders" if len(empty) > 1
                                   else ""))
    paths = [Path(p) for p, _ in samples]
    return FileSplit(folder, paths, [label for _, label in samples], [str(p) for p in paths]), \
        list(classes)
