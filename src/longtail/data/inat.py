"""iNaturalist 2018's own annotation files (COCO style: images, annotations, categories)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from longtail.checkpoint import json_type
from longtail.data.listfile import FileSplit, resolve_near_root
from longtail.errors import LongtailError, file_problem


def read_inat_json(json_file: str | Path, root: str | Path,
                   category_ids: list[int] | None = None) -> tuple[FileSplit, list[int], list[str]]:
    """Return the images of ``json_file`` as a FileSplit, with the category ids and names.

    Labels index the sorted category ids (iNaturalist 2018's ids are already 0..8141). Pass the
    training file's ``category_ids`` when reading val/test so that labels agree.
    """
    json_file = resolve_near_root(json_file, root)
    if json_file.is_dir():
        raise LongtailError(f"{json_file}: is a folder, expected an annotation file (JSON)")
    problem = file_problem(json_file)
    if problem and problem != "not found":
        raise LongtailError(f"{json_file}: annotation file {problem}")
    try:
        data = json.loads(json_file.read_text(encoding="utf-8-sig"))  # a BOM is no error
    except FileNotFoundError:
        raise LongtailError(f"{json_file}: annotation file not found") from None
    except (OSError, ValueError) as e:
        raise LongtailError(f"{json_file}: not a readable JSON file ({e})") from None
    except RecursionError:  # arrays nested thousands deep: no annotation file is
        raise LongtailError(f"{json_file}: not a readable JSON file (nested too deeply)") from None
    if not isinstance(data, dict):  # never print the file itself: it can be hundreds of MB
        raise LongtailError(f"{json_file}: expected a JSON object with images, annotations, "
                            f"categories, found {json_type(data)}")
    for key in ("images", "annotations"):
        if key not in data:
            raise LongtailError(f"{json_file}: expected COCO-style keys 'images' and "
                                f"'annotations', found {sorted(data)[:6]}")
    images = _objects(json_file, data, "images", ("id",), "file_name")
    annotations = _objects(json_file, data, "annotations", ("image_id", "category_id"))
    categories = _objects(json_file, data, "categories", ("id",)) if "categories" in data else []
    file_of = _by_id(json_file, "images", images, "id", "file_name")
    category_name = _by_id(json_file, "categories", categories, "id", "name")
    if not annotations:
        raise LongtailError(f"{json_file}: no annotations")
    first_of: dict[int, int] = {}
    for n, ann in enumerate(annotations):
        where = f"{json_file}: annotations[{n}]"
        if ann["image_id"] in first_of:  # one image under two labels, or counted twice
            raise LongtailError(f"{where}: image {ann['image_id']} is annotated twice (first in "
                                f"annotations[{first_of[ann['image_id']]}]); expected one "
                                f"annotation per image")
        first_of[ann["image_id"]] = n
        if categories and ann["category_id"] not in category_name:
            raise LongtailError(f"{where}: category_id {ann['category_id']} is not one of "
                                f"the ids in 'categories'")
    if category_ids is None:
        used = {a["category_id"] for a in annotations}
        # iNaturalist's training files list only categories they have images of; one listed
        # without any would be a class nothing trains (met later as a val split lacking it).
        for n, category in enumerate(categories):
            if category["id"] not in used:
                raise LongtailError(
                    f"{json_file}: categories[{n}]: category {category['id']} "
                    f"({str(category.get('name', ''))!r}) has no image in this training file; "
                    f"every category is a class and needs training images (remove it from "
                    f"categories, or list its images)")
        category_ids = sorted(set(category_name) | used)
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    # a category without a usable name (missing, null, empty) is named by its id
    names = [name if isinstance(name := category_name.get(cid), str) and name.strip()
             else str(cid) for cid in category_ids]
    paths, labels, origins = [], [], []
    first_file: dict[str, int] = {}
    for n, ann in enumerate(annotations):
        where = f"{json_file}: annotations[{n}]"
        if ann["image_id"] not in file_of:
            raise LongtailError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        # one file under two image ids would be trained on (and counted) twice
        name = os.path.normpath(file_of[ann["image_id"]])
        if name in first_file:
            raise LongtailError(f"{where}: image {file_of[ann['image_id']]!r} is annotated "
                                f"twice, under two image ids (first in annotations"
                                f"[{first_file[name]}]); expected one annotation per image")
        first_file[name] = n
        if ann["category_id"] not in label_of:
            raise LongtailError(f"{where}: category_id {ann['category_id']!r} is not a "
                                f"training category")
        paths.append(Path(root) / file_of[ann["image_id"]])
        labels.append(label_of[ann["category_id"]])
        origins.append(where)
    return FileSplit(json_file, paths, labels, origins), category_ids, names


def _objects(json_file: Path, data: dict, key: str, integers: tuple[str, ...],
             string: str | None = None) -> list[dict[str, Any]]:
    """Return ``data[key]``, checked to be a list of objects whose ``integers`` keys hold
    integers and whose ``string`` key (if any) a non-empty string; else name the entry."""
    items = data[key]
    if not isinstance(items, list):
        raise LongtailError(f"{json_file}: {key}: expected a list of objects, found "
                            f"{json_type(items)}")
    wanted = " and ".join(integers) + (" (integers)" if len(integers) > 1 else " (integer)")
    if string:
        wanted += f" and {string} (a string)"
    for n, item in enumerate(items):
        # bool is an int in Python, and 1.5 or "3" as an id would make a class of its own.
        if (not isinstance(item, dict)
                or any(type(item.get(k)) is not int for k in integers)
                or (string and not (isinstance(item.get(string), str) and item[string]))):
            found = json.dumps(item)
            raise LongtailError(f"{json_file}: {key}[{n}]: expected an object with {wanted}, "
                                f"found {found[:100]}{'…' if len(found) > 100 else ''}")
    return items


def _by_id(json_file: Path, key: str, items: list[dict[str, Any]], id_key: str,
           value_key: str) -> dict[int, Any]:
    """Return {id: item[value_key]}; an id given twice is an error (the later entry would
    silently replace the earlier)."""
    out: dict[int, Any] = {}
    first: dict[int, int] = {}
    for n, item in enumerate(items):
        ident = item[id_key]
        if ident in first:
            raise LongtailError(f"{json_file}: {key}[{n}]: {id_key} {ident} is already that of "
                                f"{key}[{first[ident]}]; expected each {id_key} once")
        first[ident] = n
        out[ident] = item.get(value_key, str(ident))
    return out
