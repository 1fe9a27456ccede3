"""The data keys' folders and files, checked before torch is imported: a missing dataset, list
or feature file is answered in a fraction of a second, with the message its reader gives."""

from __future__ import annotations

import os
from pathlib import Path

from longtail.config import DataConfig
from longtail.data import cifar, fmnist
from longtail.data.folder import check_image_folder
from longtail.data.inat import read_inat_json
from longtail.data.listfile import check_class_name_file, parse_list_file, resolve_near_root
from longtail.data.record import SPLITS
from longtail.errors import LongtailError, file_problem


def data_root(cfg: DataConfig) -> Path:
    """Return ``data.root`` as a folder that exists (readers of image files need one)."""
    root = Path(cfg.root)
    if root.exists() and not root.is_dir():
        raise LongtailError(f"config key data.root: {root} is a file, expected a folder")
    if not root.is_dir():
        where = "" if root.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise LongtailError(f"config key data.root: folder not found: {root}{where}")
    return root


def feature_file(cfg: DataConfig, name: str) -> Path:
    """Return the file of split ``name`` (``data.<name>``) of a features dataset: as given,
    else in ``data.root``; a folder or a missing or unreadable file is refused."""
    root = data_root(cfg) if cfg.root else Path(".")
    given = getattr(cfg, name)
    path = resolve_near_root(given, root)
    if path.is_dir():
        raise LongtailError(f"{path}: is a folder, not a feature file (config key data.{name})")
    problem = file_problem(path)
    if problem and problem != "not found":
        raise LongtailError(f"{path}: features file {problem} (config key data.{name})")
    if problem:
        path = root / given if cfg.root else path
        where = (f"data.root {root}" if cfg.root else
                 "data.root, which is not set: data.root=FOLDER")
        raise LongtailError(f"{path}: features file not found (config key data.{name}; "
                            f"looked in the working directory and in {where})")
    return path


def check_data_files(cfg: DataConfig) -> None:
    """Refuse, as its reader would, a dataset folder, list file or feature file that is not
    there. Only presence is checked here; the readers check the contents."""
    if cfg.kind == "fmnist_lt":
        if cfg.root and os.path.exists(cfg.root) and not os.path.isdir(cfg.root):
            data_root(cfg)  # a file: says so
        root = Path(cfg.root or fmnist.DEFAULT_ROOT)
        if not cfg.download and fmnist.find_files(root) is None:
            fmnist.load_fashion_mnist(root)  # raises its message; nothing is read
    elif cfg.kind == "features":
        for name in SPLITS:
            if getattr(cfg, name) is not None:
                feature_file(cfg, name)
    elif cfg.kind in ("cifar10_lt", "cifar100_lt") and cfg.root:
        cifar.cifar_folder(cfg.root, cfg.kind, cfg.download)
    elif cfg.kind in ("list", "inat_json", "image_folder"):
        root = data_root(cfg)
        for name in SPLITS:
            given = getattr(cfg, name)
            if given is None:
                continue
            if cfg.kind == "image_folder":
                check_image_folder(root / given)
            elif not resolve_near_root(given, root).exists():  # each raises its message
                if cfg.kind == "list":
                    parse_list_file(given, root)
                else:
                    read_inat_json(given, root)
        if cfg.kind == "list" and cfg.class_names:
            check_class_name_file(resolve_near_root(cfg.class_names, root))
