"""The model of stage 1: a backbone and a linear classifier on its features."""

from __future__ import annotations

from torch import Tensor, nn

from longtail.data.transforms import SMALL_IMAGE
from longtail.models.backbones import build_backbone


class Classifier(nn.Module):
    """Backbone + linear classifier; ``features(x)`` gives what stage 2 works on."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.backbone(x))


def build_model(name: str, num_classes: int, in_channels: int, image_size: int,
                width: int = 64, small_stem: bool | None = None) -> Classifier:
    """Return backbone ``name`` with a linear classifier; small stem when image_size < 64."""
    if small_stem is None:
        small_stem = image_size < SMALL_IMAGE
    backbone = build_backbone(name, in_channels, width, small_stem)
    return Classifier(backbone, backbone.feature_dim, num_classes)
