"""Scalar logging: TensorBoard event files plus a JSON-lines file anyone can read."""

from __future__ import annotations

import json
from pathlib import Path


class ScalarLog:
    """Writes ``DIR/scalars.jsonl`` (one JSON object per record) and TensorBoard events in DIR."""

    def __init__(self, log_dir: str | Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self._writer = None
        if enabled:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter  # slow import, only when used

            self._writer = SummaryWriter(str(self.log_dir))

    def log(self, tag: str, step: int, **values: float) -> None:
        """Record ``values`` under ``tag/name`` at ``step``."""
        if not self.enabled:
            return
        for name, value in values.items():
            self._writer.add_scalar(f"{tag}/{name}", value, step)
        with open(self.log_dir / "scalars.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"tag": tag, "step": step, **values}) + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
