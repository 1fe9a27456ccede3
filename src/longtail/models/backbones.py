"""Backbones returning pooled features: torchvision's ResNet class, and the CIFAR ResNet-32."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

# name -> (block, blocks per stage, groups, width per group)
RESNETS: dict[str, tuple[type[nn.Module], list[int], int, int]] = {
    "resnet10": (BasicBlock, [1, 1, 1, 1], 1, 64),
    "resnet18": (BasicBlock, [2, 2, 2, 2], 1, 64),
    "resnet50": (Bottleneck, [3, 4, 6, 3], 1, 64),
    "resnet101": (Bottleneck, [3, 4, 23, 3], 1, 64),
    "resnet152": (Bottleneck, [3, 8, 36, 3], 1, 64),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], 32, 4),
    "resnext101_32x4d": (Bottleneck, [3, 4, 23, 3], 32, 4),
    "resnext152_32x4d": (Bottleneck, [3, 8, 36, 3], 32, 4),
}
BACKBONES = (*RESNETS, "resnet32_cifar")


class Backbone(ResNet):
    """torchvision's ResNet without its classifier: ``forward`` returns pooled features.

    ``width`` sets the channels of the first stage (64 in torchvision; stages double it), and
    ``small_stem`` swaps the 7x7/2 conv + max-pool for a 3x3/1 conv (for small images:
    config key model.small_stem).
    Parameter names are torchvision's, so its checkpoints load as they are.
    """

    def __init__(self, name: str, in_channels: int = 3, width: int = 64,
                 small_stem: bool = False) -> None:
        block, layers, groups, width_per_group = RESNETS[name]
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
        _kaiming_init(self)


class _PadShortcut(nn.Module):
    """The CIFAR ResNet's parameter-free shortcut ("option A"): subsample by 2, zero-pad the
    new channels."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class CifarResNet(nn.Module):
    """The 3-stage CIFAR ResNet of He et al. (ResNet-32: 5 BasicBlocks per stage, 16/32/64
    channels, parameter-free shortcuts, 0.46M parameters) used by CIFAR-LT papers; 64-d
    features."""

    def __init__(self, blocks_per_stage: int = 5, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, channels = [], width
        for i, out in enumerate((width, 2 * width, 4 * width)):
            layers = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                shortcut = _PadShortcut(out - channels) if stride == 2 else None
                layers.append(BasicBlock(channels, out, stride=stride, downsample=shortcut))
                channels = out
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels
        _kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.avgpool(x).flatten(1)


def _kaiming_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_backbone(name: str, in_channels: int = 3, width: int = 64,
                   small_stem: bool = False) -> nn.Module:
    """Return the backbone ``name`` (see ``BACKBONES``); its ``feature_dim`` is the output size.

    ``resnet32_cifar`` has widths of its own (16-32-64, as Cao et al.'s), whatever ``width``
    (a config written for the other ResNets, as the demo's width 32, still runs it as the
    standard model); ``small_stem`` does not apply to it (it has a 3x3 stem).
    """
    if name == "resnet32_cifar":
        return CifarResNet(5, in_channels, 16)
    if name not in RESNETS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    return Backbone(name, in_channels, width, small_stem)
