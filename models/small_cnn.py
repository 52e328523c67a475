"""The small CNNs of the InDistill and model-distillation reference setups."""
from __future__ import annotations

from torch import nn

from .base import StagedNet, make_divisible


def conv_block(in_ch: int, out_ch: int, padding: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=padding, bias=False),
                               nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class InDistillCNN(StagedNet):
    """Three unpadded 3×3 conv blocks (BN, ReLU, 2×2 max-pool) then FC → FC.

    Base widths 8/16/32 with a 128→64→classes head; ``width=2`` gives the 16/32/64
    network with its 256→128→classes head. A 2×2 adaptive pool keeps the head's input
    at 4·C₃ for any input size (it is the identity at 32×32).
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = (make_divisible(c * width) for c in (8, 16, 32))
        self.arch = f"cnn_{c1}_{c2}_{c3}"
        self.blocks = nn.ModuleList([conv_block(3, c1, 0, True), conv_block(c1, c2, 0, True), conv_block(c2, c3, 0, True)])
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Sequential(nn.Linear(4 * c3, 2 * c3), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(2 * c3, num_classes)
        self.stage_layout = [(f"blocks.{i}", f"blocks.{i}.0") for i in range(3)]

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.fc(self.pool(x).flatten(1)))


class FourBlockCNN(StagedNet):
    """Four padded conv blocks 16/32/64/128 (pool after the first three), global average
    pool, and a dropout MLP head (128 → 128 → classes)."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, dropout: float = 0.3) -> None:
        super().__init__()
        widths = [make_divisible(c * width) for c in (16, 32, 64, 128)]
        self.arch = "cnn4" if width == 1 else f"cnn4_x{width:g}"
        in_ch, blocks = 3, []
        for i, c in enumerate(widths):
            blocks.append(conv_block(in_ch, c, 1, pool=i < 3))
            in_ch = c
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_ch, in_ch), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.classifier = nn.Linear(in_ch, num_classes)
        self.stage_layout = [(f"blocks.{i}", f"blocks.{i}.0") for i in range(4)]

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.head(self.pool(x).flatten(1)))
