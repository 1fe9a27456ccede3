"""``longtail extract RUN_DIR``: a run's features as files that other tools (and
``data.kind: features``) read.

Each split becomes one file with ``features``, ``labels`` and ``class_names``; the training
file also carries the run's joint classifier (``joint_weight``, ``joint_bias``) and the
counts that decide its shot groups (``group_counts``), so that a features run on them repeats
the run's stage 2 exactly, joint, tau-norm and LWS included. ``DIR/config.yaml`` is that
run's config with ``data.kind: features`` pointing at the files.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

# numpy before torch: torch imports numpy from C and, if that import fails, carries on without
# it, so a Ctrl-C landing there was swallowed and left numpy half-loaded (tracebacks later).
import numpy  # noqa: F401
import torch

from longtail.checkpoint import atomic_write_text, make_dir
from longtail.config import DataConfig, ModelConfig, dump_config
from longtail.data import write_feature_file
from longtail.data.features import FORMATS
from longtail.data.record import SPLITS
from longtail.pipeline import run_inputs
from longtail.rundir import load_run_config


def extract_run(run_dir: Path, fmt: str, out: Path) -> dict[str, Path]:
    """Write ``out/SPLIT.<fmt>`` for each split of the run in ``run_dir`` and
    ``out/config.yaml``; return the files by split."""
    cfg = load_run_config(run_dir)
    info, weight, bias, features = run_inputs(run_dir, cfg, "extract")
    make_dir(out)
    files = {}
    for split, feature_set in features.items():
        extra = {}
        if split == "train":
            extra = {"joint_weight": weight, "joint_bias": bias,
                     "group_counts": torch.tensor(info.counts_for_groups, dtype=torch.int64)}
        files[split] = out / f"{split}.{fmt}"
        write_feature_file(files[split], feature_set.features, feature_set.labels,
                           info.class_names, **extra)
    # An --overwrite of an earlier extract in another format, or with a split this run lacks:
    # its files would stay beside these, and data.train=train.npz would still read them.
    for split in SPLITS:
        for suffix in FORMATS:
            stale = out / f"{split}{suffix}"
            if stale != files.get(split) and (stale.is_file() or stale.is_symlink()):
                stale.unlink()
    data = DataConfig(kind="features", root=str(out.resolve()), val_from_train=0,
                      **{split: path.name for split, path in files.items()})
    # model.* does not apply to features: its defaults, so the file does not suggest otherwise.
    atomic_write_text(out / "config.yaml", dump_config(replace(cfg, data=data,
                                                               model=ModelConfig())))
    return files
