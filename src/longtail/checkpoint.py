"""Files that a crash cannot leave half-written, and checkpoints that load without pickle."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longtail.errors import LongtailError, UnreadableFile, file_problem

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
    except FileExistsError:  # a file, or a link to none, where the folder should be
        what = (f"is a broken symbolic link (-> {os.readlink(path)})" if os.path.islink(path)
                and not os.path.exists(path) else "is a file, not a folder")
        raise LongtailError(f"{path}: {what}; move it away (longtail writes a folder "
                            f"there)") from None
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


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
               bool: "true/false", type(None): "null"}


def json_type(value: Any) -> str:
    """Return JSON's name of the type of a parsed ``value``, e.g. "a JSON array"."""
    return f"a JSON {_JSON_TYPES.get(type(value), type(value).__name__)}"


def read_json(path: str | Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return the JSON object in ``path``, which must hold ``keys``; a missing or unreadable
    file, invalid JSON (named by line and column) or another value is a LongtailError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LongtailError(f"{path}: not found") from None
    except UnicodeDecodeError as e:
        raise LongtailError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise LongtailError(f"{path}: cannot read ({e.strerror})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise LongtailError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    except ValueError:  # the one other: an integer beyond Python's 4300-digit limit
        raise LongtailError(f"{path}: not valid JSON for longtail (an integer of more than "
                            f"{sys.get_int_max_str_digits()} digits)") from None
    except RecursionError:  # arrays nested thousands deep
        raise LongtailError(f"{path}: not valid JSON for longtail (nested too deeply)") from None
    missing = [k for k in keys if k not in obj] if isinstance(obj, dict) else keys
    if not isinstance(obj, dict) or missing:
        wanted = "a JSON object" + (f" with {', '.join(map(json.dumps, keys))}" if keys else "")
        found = (f"keys {json.dumps(sorted(obj))}" if isinstance(obj, dict)
                 else json_type(obj))
        raise LongtailError(f"{path}: expected {wanted}, found {found}")
    return obj


def read_manifest(path: Path) -> dict[str, Any]:
    """Return a run's manifest.json ({} when there is none); its history lists and split
    digests are checked, so that a hand-edited one is refused before anything is written."""
    manifest = read_json(path) if path.is_file() else {}
    for key, kind, expected in (("resumed", list, "a list of entries"),
                                ("rebalanced", list, "a list of entries"),
                                ("split_sha256", dict, "a mapping of split to SHA-256")):
        value = manifest.get(key, kind())
        if not isinstance(value, kind) or (kind is list and not all(
                isinstance(entry, dict) for entry in value)):
            text = json.dumps(value)
            raise LongtailError(f"{path}: \"{key}\": expected {expected}, found "
                                f"{text if len(text) <= 60 else text[:60] + '...'}")
    return manifest


def save_checkpoint(obj: Any, path: str | Path) -> None:
    """Save tensors/containers with ``torch.save`` atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    keys: tuple[str, ...] | None = None) -> Any:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers, no code.

    A file that would need full pickle is refused (LongtailError); one torch cannot read at
    all (truncated, corrupt, another format), or, with ``keys``, one that is not a mapping
    holding them (a list or a tensor saved over it), raises UnreadableFile saying which.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        raise LongtailError(f"{path}: is a folder, not a checkpoint file")
    problem = file_problem(path)
    if problem:
        raise LongtailError(f"{path}: checkpoint {problem}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # UnpicklingError, RuntimeError, OSError, EOFError, KeyError, ...
        if _weights_only_refusal(e) is None:
            raise UnreadableFile(torch_load_error(path, e), path) from None
        raise LongtailError(torch_load_error(path, e)) from None
    if keys is not None:
        missing = [k for k in keys if k not in obj] if isinstance(obj, dict) else keys
        if missing:
            found = (f"one without {', '.join(map(repr, missing))}" if isinstance(obj, dict)
                     else f"a {type(obj).__name__}")
            raise UnreadableFile(f"{path}: not a checkpoint longtail wrote (expected a mapping "
                                 f"of {', '.join(map(repr, keys))}, found {found})", path)
    return obj


def torch_load_error(path: Path, error: Exception) -> str:
    """Return one line saying why ``torch.load(path, weights_only=True)`` failed with
    ``error``: a refusal of what would need full pickle, or a damaged or foreign file."""
    refused = _weights_only_refusal(error)
    if refused is None:
        return _unreadable(path, error)
    hint = ("; numpy values (arrays, numpy strings or numbers) inside: save torch tensors "
            "and plain str / int instead" if "numpy" in refused else "")
    return (f"{path}: refused to load: it holds more than tensors and plain containers and "
            f"would need full pickle, which can run arbitrary code ({refused}){hint}")


def _weights_only_refusal(error: Exception) -> str | None:
    """Return what torch's weights_only unpickler refused (e.g. a class it would have to
    import), or None when the error is not such a refusal but a damaged or foreign file."""
    text = str(error)
    if not isinstance(error, pickle.UnpicklingError) or "WeightsUnpickler error" not in text:
        return None
    # An opcode the restricted unpickler lacks: bytes torch.save did not write (e.g. a plain
    # pickle.dump or random data), which full pickle would not make a checkpoint either.
    detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0].strip()
    if detail.startswith("Unsupported operand"):
        return None
    return detail.split(" was not an allowed global")[0]


def _unreadable(path: Path, error: Exception) -> str:
    """Say why torch cannot read ``path``, from the file's first bytes and ``error``."""
    problem = torch_file_problem(path, "was writing or copying it interrupted?")
    # else its first bytes are torch.save's (a zip archive with data.pkl, or a pickle)
    return problem or (f"{path}: not a readable PyTorch file: truncated or corrupt, or not "
                       f"written by torch.save ({type(error).__name__}: {_first_line(error)})")


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


def torch_file_problem(path: Path, hint: str = "") -> str | None:
    """Say, from its first bytes and without torch, why ``path`` cannot be a file torch.save
    wrote (unreadable, empty, text, a zip archive of other members such as an .npz, a
    truncated archive), or None when it may be one; torch's own reading says more about the
    rest. ``hint`` is added where a file may have been cut short. A .safetensors file is not
    looked at."""
    if path.suffix == ".safetensors":
        return None
    try:
        head = _head(path)
    except OSError as e:  # e.g. no permission to read it
        return f"{path}: cannot read the file ({e.strerror})"
    more = f"; {hint}" if hint else ""
    if not head:
        return f"{path}: not a readable PyTorch file: it is empty (0 bytes{more})"
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip archive
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return (f"{path}: not a readable PyTorch file: truncated or corrupt (the zip "
                    f"archive torch.save writes has no end{more})")
        if not any(n.endswith("data.pkl") for n in names):  # torch.save's archive holds one
            return (f"{path}: not a PyTorch file: a zip archive of {', '.join(names[:3])}"
                    f"{' ...' * (len(names) > 3)}, not one torch.save wrote")
        return None
    if head.startswith(b"\x80"):  # a pickle: torch.save's format before torch 1.6
        return None
    return (f"{path}: not a PyTorch file (torch.save writes a zip archive; this one starts "
            f"with {head!r})")


def _first_line(error: Exception) -> str:
    text = str(error).split("WeightsUnpickler error:")[-1]  # the detail of torch's long text
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else "no detail"


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
