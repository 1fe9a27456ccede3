"""Split lists in the ImageNet-LT / Places-LT / iNaturalist format: ``relative/path label``."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from longtail.errors import LongtailError, file_problem

# A label longer than this is no class index (int() refuses 4300 digits with a traceback).
MAX_LABEL_DIGITS = 1000


@dataclass
class FileSplit:
    """Images stored as files: paths, labels, and where each was listed (for messages)."""

    source: Path
    paths: list[Path]
    labels: list[int]
    origins: list[str]


def subset(split: FileSplit, indices) -> FileSplit:
    """Return the entries of ``split`` at ``indices`` (a sequence or array of positions)."""
    idx = [int(i) for i in indices]
    return FileSplit(split.source, [split.paths[i] for i in idx], [split.labels[i] for i in idx],
                     [split.origins[i] for i in idx])


def main_process() -> bool:
    """``distributed.is_main()`` without importing torch (make-split reads lists and folders
    before it needs torch): a process that has not loaded longtail.distributed has joined no
    process group, so it is the one that speaks."""
    loaded = sys.modules.get("longtail.distributed")
    return loaded is None or loaded.is_main()


_SAID: set[tuple[str, str]] = set()  # (path, the other one in data.root), warned of


def resolve_near_root(path: str | Path, root: str | Path) -> Path:
    """Return ``path``; a relative path that is not found from the working directory is looked
    up in ``root`` (split files often live beside the images)."""
    path = Path(path)
    beside = Path(root) / path
    if path.is_absolute() or not beside.exists():
        return path
    if not path.exists():
        return beside
    said = (os.path.abspath(path), os.path.abspath(beside))
    if not os.path.samefile(path, beside) and main_process() and said not in _SAID:
        _SAID.add(said)  # once: the files are checked before they are read
        print(f"warning: {path} is read from the working directory {Path.cwd()}; data.root "
              f"holds another {beside} (give an absolute path to choose)", flush=True)
    return path


def parse_list_file(list_file: str | Path, root: str | Path,
                    root_name: str = "data.root") -> FileSplit:
    """Return the entries of ``list_file``; paths are resolved against ``root``.

    A relative ``list_file`` is looked up in the working directory, then in ``root``. A line is
    ``relative/path label`` (the last whitespace-separated field is the label, so paths may
    contain spaces); blank lines and lines starting with '#' are skipped. Errors name the file
    and line (``root_name``: what the user calls ``root``, e.g. make-split's --root).
    """
    root = Path(root)
    list_file = resolve_near_root(list_file, root)
    if list_file.is_dir():
        raise LongtailError(f"{list_file}: is a folder, expected a list file ('relative/path "
                            f"label' lines)")
    problem = file_problem(list_file)
    if problem == "not found":
        raise LongtailError(f"{list_file}: list file not found (looked in the working directory "
                            f"and in {root_name} {root})")
    if problem:
        raise LongtailError(f"{list_file}: list file {problem}")
    paths, labels, origins = [], [], []
    first_line: dict[str, int] = {}
    with open(list_file, "rb") as f:
        head = f.read(1 << 16)
        if not _may_be_text(head):  # before reading it all: data.train=imagenet.tar is 140 GB
            _refuse_binary(list_file, head)
        content = head + f.read()
    # \n, \r\n, and the lone \r of old Mac editors (bytes.splitlines splits on these only)
    for number, raw in enumerate(content.splitlines(), start=1):
        if b"\x00" in raw:  # UTF-16 has one in every other byte of ASCII text
            nuls = raw.count(b"\x00")
            utf16 = len(raw) < 3 * nuls < 2 * len(raw) or raw.startswith((b"\xff\xfe",
                                                                         b"\xfe\xff"))
            raise LongtailError(f"{list_file}:{number}: " + (
                "looks like UTF-16 text; save the file as UTF-8" if utf16 else
                "holds a NUL byte, which no file name can contain" + (
                    " (a run of them, as a crash during a write leaves: the file is damaged "
                    "from here)" if nuls > 16 and b"\x00" * 16 in raw else "")))
        try:
            # utf-8-sig on the first line: editors on Windows start files with a BOM, which
            # would otherwise become part of the first path.
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError as e:
            raise LongtailError(f"{list_file}:{number}: not UTF-8 text (byte {e.start} of "
                                f"the line is 0x{raw[e.start]:02x})") from None
        if not text:
            continue
        # '# ...': a comment or a line commented out (unless it names an image that is there)
        if text.startswith("#") and not (root / text.rsplit(maxsplit=1)[0]).is_file():
            continue
        parts = text.rsplit(maxsplit=1)
        if len(parts) != 2:
            if number == 1:  # a text header: an ASCII PPM image, say
                _refuse_binary(list_file, head)
            raise LongtailError(f"{list_file}:{number}: expected 'relative/path label', "
                                f"found {text!r}")
        rel, label_text = parts
        digits = label_text[1:] if label_text[:1] in "+-" else label_text
        # ASCII digits only: int() also takes '0_4', '４' and '٤', which are no label
        if not (digits.isascii() and digits.isdigit()):
            raise LongtailError(f"{list_file}:{number}: expected an integer label, "
                                f"found {label_text!r}")
        if len(digits) > MAX_LABEL_DIGITS:  # int() refuses past 4300 digits, with a traceback
            raise LongtailError(f"{list_file}:{number}: expected an integer label, found a "
                                f"number of {len(digits)} digits")
        label = int(label_text)
        if label < 0:
            raise LongtailError(f"{list_file}:{number}: expected a label >= 0, found {label}")
        last = rel.rsplit(maxsplit=1)
        if len(last) == 2 and last[1].lstrip("+-").isdecimal() and not (root / rel).exists() \
                and (root / last[0]).is_file():  # 'path label extra': not a path with a space
            raise LongtailError(f"{list_file}:{number}: expected 'relative/path label', found "
                                f"{len(text.split())} fields {text!r}; remove the columns "
                                f"after the label")
        # the same file however it is spelled (./a.png, an absolute path, a/../a.png)
        key = os.path.normpath(root / rel)
        if key in first_line:
            raise LongtailError(f"{list_file}:{number}: {rel} is listed twice (first on "
                                f"line {first_line[key]}); each image once per split")
        first_line[key] = number
        paths.append(root / rel)
        labels.append(label)
        origins.append(f"{list_file}:{number}")
    if not paths:
        raise LongtailError(f"{list_file}: no entries (expected 'relative/path label' lines)")
    return FileSplit(list_file, paths, labels, origins)


# Compressed and archive files' first bytes (images are recognised by PIL).
_MAGIC = {b"\x1f\x8b": "a gzip file (decompress it first)", b"PK\x03\x04": "a zip archive",
          b"BZh": "a bzip2 file (decompress it first)", b"\xfd7zXZ": "an xz file (decompress "
          "it first)", b"%PDF": "a PDF document", b"7z\xbc\xaf": "a 7-Zip archive"}


_TEXT_BYTES = bytes([9, 10, 13, *range(32, 127), *range(128, 256)])  # all but control bytes


def _may_be_text(head: bytes) -> bool:
    """Whether the first bytes of a file may be UTF-8 text (the last character may be cut)."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3 and e.reason == "unexpected end of data"
    return True


def _refuse_binary(list_file: Path, content: bytes) -> None:
    """Raise a LongtailError saying what ``list_file`` is, from its first bytes ``content``,
    when it is an image, an archive or a binary file rather than a text list; return when it
    may be text (UTF-16 too: the lines' checks say so)."""
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16's byte-order marks
        return
    what = next((kind for magic, kind in _MAGIC.items() if content.startswith(magic)), None)
    if what is None and content[257:262] == b"ustar":
        what = "a tar archive"
    if what is None:
        import io

        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(content)) as img:
                what = f"{'an' if img.format[:1] in 'AEIOU' else 'a'} {img.format} image"
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            # many control bytes, but fewer NULs than ASCII text in UTF-16 has (one in two)
            controls = len(content.translate(None, _TEXT_BYTES))
            if controls * 20 > len(content) and content.count(b"\x00") * 3 < len(content):
                what = "a binary file"
            else:
                return
    raise LongtailError(f"{list_file}: is {what}, expected a text list of 'relative/path "
                        f"label' lines")


def list_text(paths: list[Path], labels: list[int], root: Path) -> str:
    """Return ``relative/path label`` lines (paths relative to ``root`` where they can be);
    a path with a line break, which would split its line in two, is a LongtailError."""
    lines = []
    for path, label in zip(paths, labels):
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            rel = path.as_posix()
        if "\n" in rel or "\r" in rel:
            raise LongtailError(f"{str(path)!r}: a name with a line break cannot go in a list file "
                                f"of 'path label' lines; rename it")
        lines.append(f"{rel} {int(label)}\n")
    return "".join(lines)


def check_files_exist(split: FileSplit, skip_missing: bool = False,
                      root: Path | None = None) -> FileSplit:
    """Return ``split``; a listed image that does not exist is a LongtailError naming it, or,
    with ``skip_missing``, is left out of the returned split. ``root`` (data.root) tells
    absolute list paths, used as written, from relative ones in the message."""
    keep = []
    for i, (path, origin) in enumerate(zip(split.paths, split.origins)):
        try:
            found = path.is_file()
        except OSError as e:  # e.g. a name longer than the file system allows
            if skip_missing:
                continue
            name = str(path) if len(str(path)) <= 80 else str(path)[:80] + "..."
            raise LongtailError(f"{origin}: {name}: not a usable file name ({e.strerror})"
                                ) from None
        if found:
            keep.append(i)
        elif not skip_missing:
            problem = file_problem(path)  # a folder, a link loop, a device or FIFO, ...
            if problem != "not found":
                missing = " (data.on_bad_image=skip leaves missing images out)" if \
                    problem.startswith("is a broken") else ""
                raise LongtailError(f"{origin}: {path} {problem}, expected an image file{missing}")
            hint = ("; the path has Windows separators (\\): write it with /" if "\\" in
                    str(path) and os.sep == "/" else "")
            if not keep and not hint and not any(p.is_file() for p in split.paths[i : i + 20]):
                # nothing found from the start: the root, not the images, is likely wrong
                where = ("absolute list paths are used as written: check that the images "
                         "are at these paths" if root is not None and not path.is_relative_to(
                             root) else "list paths are relative to data.root: check that it "
                         "is the folder they start from")
                raise LongtailError(f"{origin}: image not found: {path}, nor any of the next "
                                    f"listed images; {where}")
            shown = str(path)
            if not shown.isprintable():  # a zero-width space or an escape: it looked right
                shown = f"{ascii(shown)} (it holds a character that does not show)"
            raise LongtailError(f"{origin}: image not found: {shown} (data.on_bad_image=skip "
                                f"leaves missing images out{hint})")
    if len(keep) == len(split.paths):
        return split
    if not keep:
        raise LongtailError(f"{split.source}: none of the listed images exists")
    return subset(split, keep)


def check_class_name_file(path: str | Path) -> Path:
    """Return ``path`` when it is a readable file; refuse a folder or a missing file."""
    path = Path(path)
    if path.is_dir():
        raise LongtailError(f"{path}: is a folder, expected a class-name file")
    problem = file_problem(path)
    if problem:
        raise LongtailError(f"{path}: class-name file {problem}")
    return path


def read_class_names(path: str | Path, num_classes: int,
                     labels: list[int] | None = None) -> list[str]:
    """Return class names from a text file: ``name`` per line (line i is label i), or
    ``label name`` per line in any order. ``labels``: the list label of each class when the
    labels were remapped (the file names those, and may name labels no image has); None:
    0..num_classes-1, each named, no other."""
    path = check_class_name_file(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM is not part of a name
    except UnicodeDecodeError as e:
        raise LongtailError(f"{path}: not UTF-8 text (byte {e.start})") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    pairs = [line.split(maxsplit=1) for line in lines]
    # isdecimal, not isdigit: '²' is a digit that int() refuses.
    has_label = [len(p) == 2 and p[0].isascii() and p[0].isdecimal() for p in pairs]
    huge = next((i for i, (p, h) in enumerate(zip(pairs, has_label))
                 if h and len(p[0]) > MAX_LABEL_DIGITS), None)
    if huge is not None:
        raise LongtailError(f"{path}:{huge + 1}: expected 'label name' with a label >= 0, found "
                            f"a label of {len(pairs[huge][0])} digits")
    keyed = all(has_label)
    if has_label and has_label[0] and not keyed:  # 'label name' lines with one that is not
        number = has_label.index(False)
        raise LongtailError(f"{path}:{number + 1}: expected 'label name' (a label >= 0) as on "
                            f"line 1 ({lines[0]!r}), found {lines[number]!r}")
    if keyed:
        names = {}
        for number, (label, name) in enumerate(pairs, start=1):
            if int(label) in names:
                raise LongtailError(f"{path}:{number}: label {int(label)} is named twice "
                                    f"({names[int(label)]!r} and {name!r})")
            names[int(label)] = name
    else:
        names = dict(enumerate(lines))
        if labels is not None and len(lines) == len(labels):
            return lines  # one name per class, in the order of the labels
    if labels is not None:
        missing = [label for label in labels if label not in names]
        if missing:
            per_line = "" if keyed else (
                f" (a file of one name per line has one per class, {len(labels)} lines in the "
                f"order of the labels, or one per label from 0, line 1 naming label 0; or write "
                f"'label name' lines)")
            raise LongtailError(f"{path}: expected a name for each label of the training list, "
                                f"missing labels {missing[:5]}{per_line}")
        return [names[label] for label in labels]
    missing = [c for c in range(num_classes) if c not in names]
    if missing:
        raise LongtailError(f"{path}: expected a name for each of the {num_classes} classes, "
                            f"missing {missing[:5]}")
    # Extra names mean the file belongs to another label set (or the labels are off by some):
    # dropping them silently would label classes with wrong names.
    extra = sorted(c for c in names if c >= num_classes)
    if extra:
        raise LongtailError(f"{path}: expected {num_classes} class names (one per class of the "
                            f"training split), found {len(names)}; no class has label "
                            f"{', '.join(map(str, extra[:5]))}{' ...' if len(extra) > 5 else ''}")
    return [names[c] for c in range(num_classes)]


def label_gap(present: list[int], num_classes: int) -> str:
    """Return the labels of 0..num_classes-1 missing from the sorted distinct labels
    ``present``, for a message: 'a..b' when they are one run, else the first ten. Built from
    the gaps, never from the range: a stray label of 10^9 must not list a billion numbers."""
    gaps = [(lo + 1, hi - 1) for lo, hi in zip([-1, *present], [*present, num_classes])
            if hi - lo > 1]
    if len(gaps) == 1 and gaps[0][1] > gaps[0][0]:
        return f"{gaps[0][0]}..{gaps[0][1]}"
    first: list[int] = []
    for lo, hi in gaps:
        first.extend(range(lo, min(hi, lo + 10) + 1))
        if len(first) > 10:
            break
    return ", ".join(map(str, first[:10])) + (" ..." if len(first) > 10 else "")
