"""ShuffleNetV2 for CIFAR (3×3 stride-1 stem, no max-pool).

Its stage outputs interleave channels from two branches (split, concat, shuffle), so no
single convolution produces them: the stages are declared without a producing conv and
the model cannot be channel-pruned as an InDistill teacher (it works as a student, and
as a plain KD teacher).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import StagedNet, make_divisible


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def conv_bn(in_ch: int, out_ch: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(out_ch)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class ShuffleUnit(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = out_ch // 2
        right_in = in_ch if stride == 2 else branch
        self.right = nn.Sequential(*conv_bn(right_in, branch, 1), *conv_bn(branch, branch, 3, stride, branch, relu=False),
                                   *conv_bn(branch, branch, 1))
        self.left = nn.Sequential(*conv_bn(in_ch, in_ch, 3, stride, in_ch, relu=False), *conv_bn(in_ch, branch, 1)) \
            if stride == 2 else nn.Identity()

    def forward(self, x):
        if self.stride == 2:
            out = torch.cat([self.left(x), self.right(x)], 1)
        else:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], 1)
        return channel_shuffle(out)


class ShuffleNetV2(StagedNet):
    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        self.arch = "shufflenetv2" if width == 1 else f"shufflenetv2_x{width:g}"
        widths = [make_divisible(c * width, 2) for c in (116, 232, 464)]
        stem = make_divisible(24 * width)
        self.stem = nn.Sequential(*conv_bn(3, stem, 3))
        in_ch, stages = stem, []
        for w, n in zip(widths, (4, 8, 4)):
            units = [ShuffleUnit(in_ch, w, 2)]
            units += [ShuffleUnit(w, w, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            in_ch = w
        self.stages = nn.ModuleList(stages)
        last = make_divisible(1024 * max(1.0, width))
        self.head = nn.Sequential(*conv_bn(in_ch, last, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(last, num_classes)
        self.stage_layout = [(f"stages.{i}", "") for i in range(3)]

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.classifier(self.head(x))
