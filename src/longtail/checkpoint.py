"""Files that a crash cannot leave half-written, and checkpoints that load without pickle."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longtail.errors import LongtailError

if TYPE_CHECKING:
    import torch


def _file_mode() -> int:
    """Return the mode a new file gets under the process's umask (mkstemp would give 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def make_dir(path: str | Path) -> None:
    """Create folder ``path`` (and parents); a failure names the folder and the reason."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LongtailError(f"{path}: cannot create the folder ({e.strerror})") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync'd and renamed.

    A crash at any moment leaves either the old file or the new one, never a truncated one.
    """
    atomic_write_file(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_file(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` atomically with a writer that wants a file name (``np.savez``,
    safetensors' ``save_file``, ``Path.write_bytes``): ``write(temporary path)`` in the same
    folder, then fsync and rename, so large arrays are not first gathered in memory as bytes."""
    path = Path(path)
    make_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise LongtailError(f"{path}: cannot write ({e.strerror})") from None
    try:
        write(Path(tmp))
        os.chmod(tmp, _file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise LongtailError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically; see ``atomic_write_bytes``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically; NaN is written as null."""
    atomic_write_text(path, json.dumps(_nan_to_none(obj), indent=2) + "\n")


def save_checkpoint(obj: Any, path: str | Path) -> None:
    """Save tensors/containers with ``torch.save`` atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers, no code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise LongtailError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError or RuntimeError with details
        raise LongtailError(
            f"{path}: refused to load: it is not a plain-tensor checkpoint and would need full "
            f"pickle, which can run arbitrary code ({str(e).splitlines()[0]})") from None


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """Return a SHA-256 of a state dict's names, dtypes, shapes and values."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(state[name].shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor],
                     path: str | Path) -> None:
    """Load ``state`` into ``model`` strictly; a missing, extra or differently shaped tensor
    (another class count, feature size or architecture) is a LongtailError naming it."""
    own = model.state_dict()
    for name, value in state.items():
        if name not in own:
            raise LongtailError(f"{path}: tensor {name} does not exist in the configured model "
                                f"(another model.name?)")
        if value.shape != own[name].shape:
            what = ("class count" if name.startswith("fc.") and value.shape[1:] ==
                    own[name].shape[1:] else "feature size" if name.startswith("fc.")
                    else "shape")
            raise LongtailError(f"{path}: {what} does not match: {name} is "
                                f"{tuple(value.shape)} in the checkpoint, "
                                f"{tuple(own[name].shape)} in the configured model")
    missing = [n for n in own if n not in state]
    if missing:
        raise LongtailError(f"{path}: tensors missing from the checkpoint, e.g. {missing[0]}")
    model.load_state_dict(state)
