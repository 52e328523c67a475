"""Wide ResNets (Zagoruyko & Komodakis) for CIFAR: WRN-depth-k, pre-activation blocks."""
from __future__ import annotations

from torch import nn
import torch.nn.functional as F

from .base import StagedNet, make_divisible


class PreActBlock(nn.Module):
    """BN-ReLU-conv ×2 with a 1×1 conv shortcut on the activated input when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x):
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(StagedNet):
    def __init__(self, depth: int, widen: int, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        self.arch = f"wrn{depth}_{widen}"
        n = (depth - 4) // 6
        widths = [make_divisible(c * widen * width) for c in (16, 32, 64)]
        stem = make_divisible(16 * width)
        self.stem = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        in_ch, groups = stem, []
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(in_ch, w, 2 if (j == 0 and i > 0) else 1))
                in_ch = w
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.ModuleList(groups)
        self.bn = nn.BatchNorm2d(in_ch)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)
        self.stage_layout = [(f"groups.{i}", f"groups.{i}.{n - 1}.conv2") for i in range(3)]

    def forward(self, x):
        x = self.stem(x)
        for g in self.groups:
            x = g(x)
        return self.classifier(self.pool(F.relu(self.bn(x))).flatten(1))


def wrn(depth: int, widen: int):
    def build(num_classes: int = 10, width: float = 1.0) -> WideResNet:
        return WideResNet(depth, widen, num_classes, width)
    return build
