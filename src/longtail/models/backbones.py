"""ResNet backbones built from torchvision's ResNet class, returning pooled features."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

# name -> (block, blocks per stage, groups, width per group)
BACKBONES: dict[str, tuple[type[nn.Module], list[int], int, int]] = {
    "resnet10": (BasicBlock, [1, 1, 1, 1], 1, 64),
    "resnet18": (BasicBlock, [2, 2, 2, 2], 1, 64),
    "resnet50": (Bottleneck, [3, 4, 6, 3], 1, 64),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], 32, 4),
}


class Backbone(ResNet):
    """torchvision's ResNet without its classifier: ``forward`` returns pooled features.

    ``width`` sets the channels of the first stage (64 in torchvision; stages double it), and
    ``small_stem`` swaps the 7x7/2 conv + max-pool for a 3x3/1 conv, for images under 64 px.
    """

    def __init__(self, name: str, in_channels: int = 3, width: int = 64,
                 small_stem: bool = False) -> None:
        block, layers, groups, width_per_group = BACKBONES[name]
        super().__init__(block, layers, groups=groups, width_per_group=width_per_group)
        if width != 64 or small_stem or in_channels != 3:
            self._rebuild(block, layers, in_channels, width, small_stem)
        self.feature_dim = 8 * width * block.expansion
        self.fc = nn.Identity()

    def _rebuild(self, block: type[nn.Module], layers: list[int], in_channels: int, width: int,
                 small_stem: bool) -> None:
        # ResNet.__init__ fixes the stem and the stage widths; rebuild them and redo its init.
        if small_stem:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.inplanes = width
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)


def build_backbone(name: str, in_channels: int = 3, width: int = 64,
                   small_stem: bool = False) -> Backbone:
    """Return the backbone ``name`` (see ``BACKBONES``); its ``feature_dim`` is the output size."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    return Backbone(name, in_channels, width, small_stem)
