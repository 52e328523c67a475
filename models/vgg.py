"""VGG with batch norm for CIFAR: five conv blocks separated by 2×2 max-pools."""
from __future__ import annotations

from torch import nn

from .base import StagedNet, make_divisible

CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class VGG(StagedNet):
    def __init__(self, arch: str, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        self.arch = arch
        in_ch, blocks = 3, []
        for i, block_cfg in enumerate(CONFIGS[arch]):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            for c in block_cfg:
                c = make_divisible(c * width)
                layers += [nn.Conv2d(in_ch, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                in_ch = c
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)
        self.stage_layout = []
        for i, block in enumerate(self.blocks):
            last_conv = max(j for j, m in enumerate(block) if isinstance(m, nn.Conv2d))
            self.stage_layout.append((f"blocks.{i}", f"blocks.{i}.{last_conv}"))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.pool(x).flatten(1))


def vgg(arch: str):
    def build(num_classes: int = 10, width: float = 1.0) -> VGG:
        return VGG(arch, num_classes, width)
    return build
