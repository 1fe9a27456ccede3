"""Run directories: the default name and the checks made before any work (no torch here, so
the command line answers a bad --out at once)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from longtail.errors import LongtailError


def default_run_dir(config_name: str) -> Path:
    """Return ``runs/<config name>-<timestamp>``."""
    return Path("runs") / f"{config_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a ``run_dir`` that already holds files unless ``overwrite``."""
    if run_dir.exists() and not run_dir.is_dir():
        raise LongtailError(f"--out {run_dir}: exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise LongtailError(f"--out {run_dir}: folder exists and is not empty; pass --overwrite "
                            f"to replace its results, --resume {run_dir} to continue it, or "
                            f"choose another --out")
    existing = next(p for p in (run_dir.absolute(), *run_dir.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise LongtailError(f"--out {run_dir}: cannot write in {existing} (read-only or not "
                            f"yours); choose another --out")


def check_rebalance_args(run_dir: Path, overrides: list[str]) -> None:
    """Refuse a folder that is not a run, or overrides of keys that rebalance cannot change."""
    from longtail.config import load_config

    if not (run_dir / "config.yaml").is_file():
        raise LongtailError(f"{run_dir}: not a run directory (no config.yaml)")
    for key in overrides:
        if not key.split("=", 1)[0].startswith(("stage2.", "eval.", "device")):
            raise LongtailError(f"override {key}: rebalance only changes stage2.*, eval.* and "
                                f"device keys; start a new run for the others")
    load_config(run_dir / "config.yaml", overrides)
