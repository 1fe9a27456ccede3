"""The model of stage 1: a backbone and a linear classifier on its features."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from longtail.config import TIMM_PREFIX
from longtail.errors import LongtailError
from longtail.models.backbones import build_backbone

# At 28 and 32 px torchvision's 7x7/2 stem + max-pool was as accurate as the 3x3/1 stem at
# a seventh of the CPU time (docs/results.md); only much smaller images need the small stem.
SMALL_STEM_BELOW = 16


class Classifier(nn.Module):
    """Backbone + linear classifier; ``features(x)`` gives what stage 2 works on.

    ``freeze(trainable)`` keeps only the named modules trainable; frozen BatchNorm layers stay
    in eval mode, so their running statistics do not move either.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.backbone(x))

    def layout(self, device: torch.device) -> torch.memory_format:
        """Return the memory format for this model and its inputs on ``device``: channels_last
        (faster convolutions), but not on a CPU for a network with convolutions of fewer than
        16 channels past the stem: there oneDNN's backward of a 1x1 stride-2 convolution
        crashed the process (width 8 at 224 px, torch 2.14)."""
        narrow = any(isinstance(m, nn.Conv2d) and m.in_channels > 4 and
                     min(m.in_channels, m.out_channels) < 16 for m in self.modules())
        return torch.contiguous_format if device.type == "cpu" and narrow else \
            torch.channels_last

    def freeze(self, trainable: list[str]) -> list[str]:
        """Train only the modules named in ``trainable`` ("layer4" means "backbone.layer4");
        return the parameter names left trainable."""
        modules = dict(self.named_modules())
        chosen = []
        for name in trainable:
            full = name if name in modules else f"backbone.{name}"
            if full not in modules or not name:
                options = [n.removeprefix("backbone.") for n, _ in self.named_children()] + [
                    n for n, _ in self.backbone.named_children()]
                raise LongtailError(f"config key model.trainable: no module {name!r}; expected "
                                    f"names such as {', '.join(dict.fromkeys(options))}")
            chosen.append(full)
        names = []
        for pname, param in self.named_parameters():
            param.requires_grad = any(pname.startswith(m + ".") for m in chosen)
            if param.requires_grad:
                names.append(pname)
        return names

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        for m in self.modules():  # frozen BatchNorm keeps its running statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None \
                    and not m.weight.requires_grad:
                m.eval()
        return self


def build_model(name: str, num_classes: int, in_channels: int, image_size: int,
                width: int = 64, small_stem: bool | None = None, pretrained: bool = False,
                weights: str | Path | None = None) -> Classifier:
    """Return backbone ``name`` with a linear classifier; ``small_stem=None``: the small stem
    only for images under ``SMALL_STEM_BELOW`` px (docs/results.md has the measurements).

    ``name`` may be ``timm/NAME`` for any timm model (``pretrained``: timm's weights). With
    ``weights``, the model starts from that local file; ``weights_note`` says what was loaded.
    """
    note = ""
    if name.startswith(TIMM_PREFIX):
        from longtail.models.timm_backbone import build_timm_backbone, is_longtail_state

        timm_file = weights if weights is not None and not is_longtail_state(weights) else None
        backbone, note = build_timm_backbone(name, in_channels, image_size, pretrained,
                                             timm_file)
        if timm_file is not None:
            weights = None  # loaded by timm
    else:
        if small_stem is None:
            small_stem = image_size < SMALL_STEM_BELOW
        backbone = build_backbone(name, in_channels, width, small_stem)
    model = Classifier(backbone, backbone.feature_dim, num_classes)
    # as resolved, for the run's output (None: the model's own stem, e.g. timm's)
    model.small_stem = None if name.startswith(TIMM_PREFIX) or name == "resnet32_cifar" \
        else small_stem
    model.classifier_loaded = False  # whether fc came from ``weights`` (load_weights says)
    if weights is not None:
        from longtail.models.weights import load_weights

        note = load_weights(model, weights)
    if width != 64 and (name.startswith(TIMM_PREFIX) or name == "resnet32_cifar"):
        # a config made for longtail's ResNets (the demo's width 32) still runs these models
        note = "; ".join(filter(None, [note, f"note: model.width={width} does not apply to "
                                             f"{name}, which has widths of its own"]))
    model.weights_note = note
    return model
