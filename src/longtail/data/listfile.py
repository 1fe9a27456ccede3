"""Split lists in the ImageNet-LT / Places-LT / iNaturalist format: ``relative/path label``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from longtail.errors import LongtailError


@dataclass
class ListSplit:
    """The parsed lines of one list file: image paths (absolute), labels, and line numbers."""

    list_file: Path
    paths: list[Path]
    labels: list[int]
    line_numbers: list[int]


def parse_list_file(list_file: str | Path, root: str | Path) -> ListSplit:
    """Return the entries of ``list_file``; paths are resolved against ``root``.

    A relative ``list_file`` is looked up in the working directory, then in ``root``. A line is
    ``relative/path label`` (the last whitespace-separated field is the label, so paths may
    contain spaces); blank lines are skipped. Errors name the file and line.
    """
    list_file, root = Path(list_file), Path(root)
    if not list_file.is_file() and not list_file.is_absolute() and (root / list_file).is_file():
        list_file = root / list_file
    if not list_file.is_file():
        raise LongtailError(f"{list_file}: list file not found (looked in the working directory "
                            f"and in data.root {root})")
    paths, labels, numbers = [], [], []
    with open(list_file, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                continue
            parts = text.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise LongtailError(f"{list_file}:{number}: expected 'relative/path label', "
                                    f"found {text!r}")
            rel, label_text = parts
            try:
                label = int(label_text)
            except ValueError:
                raise LongtailError(f"{list_file}:{number}: expected an integer label, "
                                    f"found {label_text!r}") from None
            if label < 0:
                raise LongtailError(f"{list_file}:{number}: expected a label >= 0, found {label}")
            paths.append(root / rel)
            labels.append(label)
            numbers.append(number)
    if not paths:
        raise LongtailError(f"{list_file}: no entries (expected 'relative/path label' lines)")
    return ListSplit(list_file, paths, labels, numbers)


def check_files_exist(split: ListSplit) -> None:
    """Raise a LongtailError naming the first listed image that does not exist."""
    for path, number in zip(split.paths, split.line_numbers):
        if not path.is_file():
            raise LongtailError(f"{split.list_file}:{number}: image not found: {path}")
