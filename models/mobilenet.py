"""MobileNetV2 for CIFAR: stride-1 stem and first bottlenecks, so 32×32 maps stay usable."""
from __future__ import annotations

from torch import nn

from .base import StagedNet, make_divisible

# (expansion t, channels c, repeats n, first stride s), grouped into the 4 stages the
# model exposes (one per spatial resolution: 32, 16, 8, 4 for 32×32 inputs).
STAGES = [
    [(1, 16, 1, 1), (6, 24, 2, 1)],
    [(6, 32, 3, 2)],
    [(6, 64, 4, 2), (6, 96, 3, 1)],
    [(6, 160, 3, 2), (6, 320, 1, 1)],
]


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(in_ch, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.project = nn.Conv2d(hidden, out_ch, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        out = self.bn(self.project(self.body(x)))
        return x + out if self.residual else out


class MobileNetV2(StagedNet):
    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        self.arch = "mobilenetv2" if width == 1 else f"mobilenetv2_x{width:g}"
        stem = make_divisible(32 * width, 8)
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6(inplace=True))
        in_ch, stages = stem, []
        for group in STAGES:
            blocks = []
            for t, c, n, s in group:
                out_ch = make_divisible(c * width, 8)
                for i in range(n):
                    blocks.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                    in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        last = make_divisible(1280 * max(1.0, width), 8)
        self.head = nn.Sequential(nn.Conv2d(in_ch, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(last, num_classes)
        self.stage_layout = [(f"stages.{i}", f"stages.{i}.{len(s) - 1}.project") for i, s in enumerate(self.stages)]

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.classifier(self.head(x))
