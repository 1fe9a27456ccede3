"""Scalar logging: TensorBoard event files plus a JSON-lines file anyone can read."""

from __future__ import annotations

import json
from pathlib import Path

from longtail.errors import LongtailError


class ScalarLog:
    """Writes ``DIR/scalars.jsonl`` (one JSON object per record) and TensorBoard events in DIR.

    The folder and the event file are made at the first record, so that a command that fails
    before it has anything to log leaves no empty event file behind."""

    def __init__(self, log_dir: str | Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self._writer = None
        if enabled:
            for path, kind in ((self.log_dir, "folder"), (self.log_dir / "scalars.jsonl", "file")):
                if path.exists() and path.is_dir() != (kind == "folder"):
                    found = "folder" if path.is_dir() else "file"
                    raise LongtailError(f"{path}: is a {found}, expected the run's log {kind}; "
                                        f"move it out of the way")

    def log(self, tag: str, step: int, **values: float) -> None:
        """Record ``values`` under ``tag/name`` at ``step``."""
        if not self.enabled:
            return
        if self._writer is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter  # slow import, only when used

            self._writer = SummaryWriter(str(self.log_dir))
        for name, value in values.items():
            self._writer.add_scalar(f"{tag}/{name}", value, step)
        with open(self.log_dir / "scalars.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"tag": tag, "step": step, **values}) + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
