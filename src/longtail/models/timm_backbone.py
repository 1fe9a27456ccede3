"""Any timm model as the backbone: ``model.name: timm/NAME`` (``pip install '.[timm]'``).

timm builds the model with its classifier removed (``num_classes=0``), so ``forward`` gives
pooled features of ``num_features`` dimensions; ``in_chans`` follows the data, and models
with a fixed input size (ViTs and other models with position embeddings) are built for the
data's image side (``img_size``). Weights: a local file (``model.weights``: a timm or
torchvision state dict, a .safetensors file, or a longtail checkpoint), or timm's own
download (``model.pretrained``). timm adapts a file to the model as it does its own weights:
the classifier is dropped, the first convolution summed to one channel for grayscale, position
embeddings resampled to the image side.
"""

from __future__ import annotations

import difflib
import logging
import socket
from pathlib import Path
from urllib.parse import urlsplit

import torch
from torch import nn

from longtail.checkpoint import load_checkpoint
from longtail.config import TIMM_MISSING, TIMM_PREFIX
from longtail.errors import LongtailError, file_problem


def import_timm():
    """Return the timm module, or stop with how to install it."""
    try:
        import timm
    except ImportError:
        raise LongtailError(TIMM_MISSING) from None
    return timm


def timm_architecture(name: str) -> str:
    """Return the timm name of ``timm/NAME`` after checking that timm knows it; an unknown one
    stops with close matches."""
    timm = import_timm()
    arch = name[len(TIMM_PREFIX):].strip()
    if not timm.is_model(arch):
        base = arch.split(".", 1)[0]
        close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6)
        hint = (f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close
                else "; timm.list_models() lists them")
        raise LongtailError(f"config key model.name: timm has no model {arch!r}{hint}")
    return arch


def check_pretrained_available(arch: str) -> None:
    """Stop at once, with where to put the file, when timm's pretrained weights of ``arch`` are
    neither in the Hugging Face cache nor reachable (instead of a minute of download retries
    after the data was read)."""
    timm = import_timm()
    hub = timm.models.get_pretrained_cfg_value(arch, "hf_hub_id")
    if not hub:
        return  # weights by URL or none: timm's own message says which
    from huggingface_hub import constants, try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(hub, filename), str):
            return
    problem = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else None
    if problem is None:
        host = urlsplit(constants.ENDPOINT)
        try:
            socket.create_connection((host.hostname, host.port or 443), timeout=5).close()
        except OSError as e:
            problem = f"{host.hostname} cannot be reached: {e.strerror or e}"
    if problem:
        raise _download_error(hub, arch, problem)


def _download_error(hub: str, arch: str, problem: str) -> LongtailError:
    return LongtailError(
        f"model.pretrained: cannot download the weights of timm/{arch} ({problem}); download "
        f"model.safetensors of https://huggingface.co/{hub} where there is network and pass "
        f"model.weights=FILE instead of model.pretrained=true")


def minimum_side(model: nn.Module) -> int:
    """Return the smallest image side the model takes: its total stride (the patch size of a
    ViT), from timm's feature_info."""
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1]
        return int(last["reduction"] if isinstance(last, dict) else info.reduction()[-1])
    return 1


def build_timm_backbone(name: str, in_channels: int, image_size: int, pretrained: bool = False,
                        weights: str | Path | None = None) -> tuple[nn.Module, str]:
    """Return (backbone, note on its weights) for ``timm/NAME``; ``backbone.feature_dim`` is
    the size of its pooled features.

    ``weights``: a local timm / torchvision state dict or .safetensors file (a longtail
    checkpoint is loaded by ``load_weights`` afterwards instead, see ``is_longtail_state``).
    """
    timm = import_timm()
    arch = timm_architecture(name)
    kwargs = {"num_classes": 0, "in_chans": in_channels}
    if timm.models.get_pretrained_cfg_value(arch, "fixed_input_size"):
        kwargs["img_size"] = image_size  # position embeddings for this side, not 224
    if weights is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
    problems = _TimmLoadLog()
    try:
        with problems:
            model = timm.create_model(arch, pretrained=pretrained or weights is not None,
                                      **kwargs)
    except LongtailError:
        raise
    except Exception as e:
        raise _weights_error(timm, arch, weights, e) from None
    if problems.messages:  # a file of another architecture: not silently half-loaded
        raise LongtailError(f"{weights}: does not fit model.name {name}: "
                            f"{problems.messages[0][:300]}")
    _check_image_side(model, name, in_channels, image_size)
    model.feature_dim = model.num_features
    if weights is not None:
        note = f"loaded {weights} into {name} (timm, classifier left out)"
    elif pretrained:
        note = f"loaded timm's pretrained weights of {arch}"
    else:
        note = ""
    return model, note


def _check_image_side(model: nn.Module, name: str, in_channels: int, image_size: int) -> None:
    """Stop with the side to use when the model cannot take ``image_size`` px images: smaller
    than its total stride (CNNs), or not a multiple of its patch size (ViTs). One image through
    the model finds what its own checks require."""
    stride = minimum_side(model)
    suggestion = max(stride, -(-image_size // stride) * stride)
    try:
        if image_size < stride:
            raise ValueError(f"it needs at least {stride} px, its total stride")
        was_training = model.training
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_channels, image_size, image_size))
        model.train(was_training)
    except (AssertionError, RuntimeError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise LongtailError(f"config key data.image_size: model.name {name} cannot take "
                            f"{image_size} px images ({reason}); set "
                            f"data.image_size={suggestion}") from None


def is_longtail_state(path: str | Path) -> bool:
    """Return whether ``path`` holds a longtail checkpoint or state dict (``backbone.*``
    names), which ``load_weights`` loads, rather than a timm / torchvision one."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise LongtailError(f"config key model.weights: file not found: {path}"
                            if problem == "not found" else
                            f"config key model.weights: {path} {problem}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    else:
        blob = load_checkpoint(path)
        if isinstance(blob, dict) and isinstance(blob.get("model"), dict):
            blob = blob["model"]
        keys = list(blob) if isinstance(blob, dict) else []
    return any(str(k).removeprefix("module.").startswith("backbone.") for k in keys)


class _TimmLoadLog(logging.Handler):
    """Collects timm's report of tensors missing from, or left over in, a weights file: timm
    loads non-strictly once the classifier is dropped and only logs what did not fit."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.logger = logging.getLogger("timm.models._builder")

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(("Missing keys", "Unexpected keys")):
            self.messages.append(message)

    def __enter__(self) -> _TimmLoadLog:
        self.level_before = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)


def _weights_error(timm, arch: str, weights: str | Path | None, error: Exception) -> LongtailError:
    """Return the one-line error of a failed weight load (a bad file, or no network)."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    if weights is not None:
        return LongtailError(f"{weights}: cannot be loaded into timm/{arch} ({reason})")
    hub = timm.models.get_pretrained_cfg_value(arch, "hf_hub_id") or f"timm/{arch}"
    return _download_error(hub, arch, f"{type(error).__name__}: {reason}")
