"""iNaturalist 2018's own annotation files (COCO style: images, annotations, categories)."""

from __future__ import annotations

import json
from pathlib import Path

from longtail.data.listfile import FileSplit, resolve_near_root
from longtail.errors import LongtailError


def read_inat_json(json_file: str | Path, root: str | Path,
                   category_ids: list[int] | None = None) -> tuple[FileSplit, list[int], list[str]]:
    """Return the images of ``json_file`` as a FileSplit, with the category ids and names.

    Labels index the sorted category ids (iNaturalist 2018's ids are already 0..8141). Pass the
    training file's ``category_ids`` when reading val/test so that labels agree.
    """
    json_file = resolve_near_root(json_file, root)
    if json_file.is_dir():
        raise LongtailError(f"{json_file}: is a folder, expected an annotation file (JSON)")
    try:
        data = json.loads(json_file.read_text(encoding="utf-8-sig"))  # a BOM is no error
    except FileNotFoundError:
        raise LongtailError(f"{json_file}: annotation file not found") from None
    except (OSError, ValueError) as e:
        raise LongtailError(f"{json_file}: not a readable JSON file ({e})") from None
    for key in ("images", "annotations"):
        if key not in data:
            raise LongtailError(f"{json_file}: expected COCO-style keys 'images' and "
                                f"'annotations', found {sorted(data)[:6]}")
    categories = {c["id"]: c.get("name", str(c["id"])) for c in data.get("categories", [])}
    if category_ids is None:
        used = {a["category_id"] for a in data["annotations"]}
        category_ids = sorted(set(categories) | used)
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    names = [str(categories.get(cid, cid)) for cid in category_ids]
    file_of = {img["id"]: img["file_name"] for img in data["images"]}
    paths, labels, origins = [], [], []
    for n, ann in enumerate(data["annotations"]):
        where = f"{json_file}: annotations[{n}]"
        if ann.get("image_id") not in file_of:
            raise LongtailError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in label_of:
            raise LongtailError(f"{where}: category_id {ann.get('category_id')!r} is not a "
                                f"training category")
        paths.append(Path(root) / file_of[ann["image_id"]])
        labels.append(label_of[ann["category_id"]])
        origins.append(where)
    if not paths:
        raise LongtailError(f"{json_file}: no annotations")
    return FileSplit(json_file, paths, labels, origins), category_ids, names
