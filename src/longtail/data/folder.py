"""Image folders in torchvision's ImageFolder convention: one sub-folder per class."""

from __future__ import annotations

import os
from pathlib import Path

from longtail.data.listfile import FileSplit, main_process
from longtail.errors import LongtailError

# torchvision's ImageFolder extensions (torchvision.datasets.folder.IMG_EXTENSIONS), kept
# here because importing torchvision takes seconds that make-split's checks should not wait
# for; a test checks that the two agree.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def check_image_folder(folder: str | Path) -> Path:
    """Return ``folder`` when it is a folder; refuse a file or a missing folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LongtailError(f"{folder}: is a file, expected a folder of class folders")
    if not folder.is_dir():
        raise LongtailError(f"{folder}: image folder not found")
    return folder


def read_image_folder(folder: str | Path,
                      classes: list[str] | None = None) -> tuple[FileSplit, list[str]]:
    """Return the images under ``folder``/CLASS/ and the class names (sorted sub-folders).

    Pass the training folder's ``classes`` when reading val/test so that labels agree.
    Names starting with '.' (.ipynb_checkpoints, .thumbs, macOS's ._x.png) are neither
    classes nor images.
    """
    folder = check_image_folder(folder)
    # A class folder may itself be a symbolic link (e.g. to images kept elsewhere).
    with os.scandir(folder) as entries:
        kinds = {e.name: _is_folder(e) for e in entries if not e.name.startswith(".")}
    found = sorted(name for name, is_folder in kinds.items() if is_folder)
    loose = sorted(name for name, is_folder in kinds.items()
                   if not is_folder and name.lower().endswith(IMG_EXTENSIONS))
    if not found:
        raise LongtailError(f"{folder}: expected one sub-folder per class, found none")
    training = not classes  # the class folders found are the classes
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise LongtailError(f"{folder}: class folders {unknown[:5]} are not training classes")
    index = {name: i for i, name in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    links: list[str] = []
    others: list[str] = []
    for name in found:
        samples.extend((path, index[name]) for path in _images(folder / name, links, others))
    if others and main_process():  # e.g. GIFs, which Pillow reads but ImageFolder leaves out
        many, first = len(others) > 1, os.path.relpath(others[0], folder)
        print(f"warning: {folder}: {len(others)} file{'s' * many} in class folders (e.g. "
              f"{first}) {'are' if many else 'is'} left out: not one of the image extensions "
              f"{', '.join(IMG_EXTENSIONS)}", flush=True)
    if loose and found and main_process():  # with no class folder at all: the error below
        many = len(loose) > 1
        print(f"warning: {folder}: {len(loose)} image{'s' * many} (e.g. {loose[0]}) directly "
              f"in the folder, in no class folder, {'are' if many else 'is'} left out",
              flush=True)
    if links and main_process():
        print(f"warning: {folder}: not following {len(links)} symbolic "
              f"link{'s' if len(links) > 1 else ''} to a folder inside a class folder (e.g. "
              f"{links[0]}); their images are left out (link a class folder itself instead)",
              flush=True)
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


def _is_folder(entry: os.DirEntry) -> bool:
    """True for a folder or a link to one; a link loop (``ln -s x y; ln -s y x``) or a broken
    link is not a class, and is said so."""
    try:
        return entry.is_dir()
    except OSError as e:
        if main_process():
            print(f"warning: {entry.path}: {e.strerror}; not a class folder", flush=True)
        return False


def _images(class_folder: Path, links: list[str], others: list[str]) -> list[str]:
    """Return the image files under ``class_folder``, in torchvision's ImageFolder order
    (folders sorted by path, files by name); the paths of files with other extensions are
    added to ``others``.

    Symbolic links to folders inside a class folder are not followed (their paths are added
    to ``links``): torchvision follows them, so ``ln -s .. class_00/loop`` counted every
    class's images as class_00, and a link to another class folder would mix classes too.
    Checking for loops alone would not catch the latter.
    """
    walked = []
    for dirpath, dirnames, filenames in os.walk(class_folder):  # followlinks=False
        visible = [d for d in dirnames if not d.startswith(".")]
        links.extend(os.path.join(dirpath, d) for d in visible
                     if os.path.islink(os.path.join(dirpath, d)))
        dirnames[:] = visible
        walked.append((dirpath, filenames))
    files = [os.path.join(dirpath, name) for dirpath, filenames in sorted(walked)
             for name in sorted(filenames) if not name.startswith(".")]
    others.extend(f for f in files if not f.lower().endswith(IMG_EXTENSIONS))
    return [f for f in files if f.lower().endswith(IMG_EXTENSIONS)]
