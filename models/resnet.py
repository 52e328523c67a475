"""CIFAR ResNets: the 3-stage family of He et al. (ResNet-8 … 110, ResNet-8x4/32x4) and
the 4-stage ResNet-18 adapted to 32×32 inputs (3×3 stem, no max-pool)."""
from __future__ import annotations

from torch import nn
import torch.nn.functional as F

from .base import StagedNet, make_divisible


class BasicBlock(nn.Module):
    """Two 3×3 convs with BN; a 1×1 conv shortcut when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(StagedNet):
    """Stacks of BasicBlocks; one stage per width, the first at stride 1, the rest at 2."""

    def __init__(self, arch: str, blocks: list[int], widths: list[int], stem: int,
                 num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        self.arch = arch
        widths = [make_divisible(w * width) for w in widths]
        stem = make_divisible(stem * width)
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True))
        in_ch, layers = stem, []
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layer = []
            for j in range(n):
                layer.append(BasicBlock(in_ch, w, 2 if (j == 0 and i > 0) else 1))
                in_ch = w
            layers.append(nn.Sequential(*layer))
        self.layers = nn.ModuleList(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)
        self.stage_layout = [(f"layers.{i}", f"layers.{i}.{n - 1}.conv2") for i, n in enumerate(blocks)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(self.pool(x).flatten(1))


def cifar_resnet(depth: int, multiplier: int = 1):
    """ResNet-``depth`` of He et al. for CIFAR (3 stages of (depth-2)/6 blocks)."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    name = f"resnet{depth}" + (f"x{multiplier}" if multiplier > 1 else "")
    widths = [16 * multiplier, 32 * multiplier, 64 * multiplier]
    stem = 16 if multiplier == 1 else 8 * multiplier  # ResNet-8x4/32x4 use a 32-channel stem

    def build(num_classes: int = 10, width: float = 1.0) -> ResNet:
        return ResNet(name, [n, n, n], widths, stem, num_classes, width)
    return build


def resnet18(num_classes: int = 10, width: float = 1.0) -> ResNet:
    """ResNet-18 for 32×32 inputs: 4 stages of 2 blocks, 64/128/256/512 channels."""
    return ResNet("resnet18", [2, 2, 2, 2], [64, 128, 256, 512], 64, num_classes, width)
