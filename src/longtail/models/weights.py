"""Initial weights from a local file: a state dict, or a torchvision / training checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from longtail.checkpoint import load_checkpoint
from longtail.errors import LongtailError
from longtail.models.classifier import Classifier


def _state_dict(blob: object, path: Path) -> dict[str, torch.Tensor]:
    # Checkpoints nest the weights under a key; plain state dicts are the weights.
    if isinstance(blob, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(blob.get(key), dict):
                blob = blob[key]
                break
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise LongtailError(f"{path}: expected a state dict of tensors (or a checkpoint with one "
                            f"under 'model' or 'state_dict')")
    return {k.removeprefix("module."): v for k, v in blob.items()}


def load_weights(model: Classifier, path: str | Path) -> str:
    """Load backbone (and, when the class count agrees, classifier) weights from ``path``.

    torchvision's names (``conv1.weight``, ..., ``fc.weight``) and longtail's
    (``backbone.conv1.weight``, ..., ``fc.weight``) are both understood. Returns a one-line
    summary; raises LongtailError naming the tensor when a shape does not match.
    """
    path = Path(path)
    state = _state_dict(load_checkpoint(path), path)
    own = model.state_dict()
    mapped = {}
    for key, value in state.items():
        name = key if key.startswith(("backbone.", "fc.")) else f"backbone.{key}"
        if name not in own and key.startswith("fc."):
            continue
        mapped[name] = (key, value)
    unexpected = [key for name, (key, _) in mapped.items() if name not in own]
    if unexpected:
        raise LongtailError(f"{path}: tensors {unexpected[:3]} do not exist in model.name's "
                            f"backbone; is it a checkpoint of another architecture?")
    loaded, note = {}, ""
    for name, (key, value) in mapped.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            # (training from it ended in 'loss is nan ... lower the learning rate')
            raise LongtailError(f"{path}: tensor {key} holds NaN or infinity; the file is "
                                f"damaged, or saved from a run that diverged")
        if value.shape == own[name].shape:
            loaded[name] = value
        elif name in ("fc.weight", "fc.bias") and value.shape[1:] == own[name].shape[1:]:
            # Another class count (e.g. ImageNet's 1000): the classifier starts fresh.
            note = (f"; classifier left out ({value.shape[0]} classes in the file, "
                    f"{own[name].shape[0]} here)")
        else:
            raise LongtailError(
                f"{path}: tensor {key} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(own[name].shape)} (check model.name, model.width, model.in_channels"
                f"{' and the feature size' if name.startswith('fc.') else ''})")
    missing = [n for n in own if n.startswith("backbone.") and n not in loaded
               and not n.endswith("num_batches_tracked")]
    if missing:
        raise LongtailError(f"{path}: {len(missing)} backbone tensors missing, e.g. "
                            f"{missing[0].removeprefix('backbone.')}; is it a checkpoint of "
                            f"model.name's architecture?")
    model.load_state_dict(loaded, strict=False)
    model.classifier_loaded = "fc.weight" in loaded
    if not model.classifier_loaded and not note:
        note = "; no classifier in the file (it starts fresh)"
    return f"loaded {len(loaded)} tensors from {path}{note}"
