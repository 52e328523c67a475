"""The model zoo: one registry of CIFAR-sized architectures with named stages.

>>> from models import build_model, MODELS
>>> net = build_model("resnet20", num_classes=10)

Any architecture can be a teacher or a student; ``role`` only says how it is usually
used (it decides which list the CLI and the app show it in first).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .base import ModelSpec, StagedNet, StageSpec, describe
from .mobilenet import MobileNetV2
from .resnet import cifar_resnet, resnet18
from .shufflenet import ShuffleNetV2
from .small_cnn import FourBlockCNN, InDistillCNN
from .vgg import vgg
from .wrn import wrn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[..., StagedNet]
    role: str  # "teacher" or "student"
    summary: str


MODELS: dict[str, ModelEntry] = {}


def register(name: str, build: Callable[..., StagedNet], role: str, summary: str) -> None:
    if name in MODELS:
        raise ValueError(f"model {name!r} registered twice")
    MODELS[name] = ModelEntry(name, build, role, summary)


register("resnet18", resnet18, "teacher", "ResNet-18 for 32×32 inputs, 4 stages 64/128/256/512")
register("resnet56", cifar_resnet(56), "teacher", "CIFAR ResNet-56, 3 stages 16/32/64")
register("resnet110", cifar_resnet(110), "teacher", "CIFAR ResNet-110, 3 stages 16/32/64")
register("resnet32x4", cifar_resnet(32, 4), "teacher", "CIFAR ResNet-32x4, 3 stages 64/128/256")
register("wrn40_2", wrn(40, 2), "teacher", "Wide ResNet-40-2, 3 stages 32/64/128")
register("vgg13", vgg("vgg13"), "teacher", "VGG-13 with BN, 5 blocks 64…512")
register("cnn_16_32_64", lambda num_classes=10, width=1.0: InDistillCNN(num_classes, 2 * width), "teacher",
         "InDistill reference CNN 16/32/64 (FC 256→128); the paper's auxiliary teacher")
register("resnet20", cifar_resnet(20), "student", "CIFAR ResNet-20, 3 stages 16/32/64")
register("resnet8", cifar_resnet(8), "student", "CIFAR ResNet-8, 3 stages 16/32/64")
register("resnet8x4", cifar_resnet(8, 4), "student", "CIFAR ResNet-8x4, 3 stages 64/128/256")
register("wrn16_2", wrn(16, 2), "student", "Wide ResNet-16-2, 3 stages 32/64/128")
register("vgg8", vgg("vgg8"), "student", "VGG-8 with BN, 5 blocks 64…512")
register("mobilenetv2", MobileNetV2, "student", "MobileNetV2 for CIFAR, 4 stages 24/32/96/320")
register("shufflenetv2", ShuffleNetV2, "student", "ShuffleNetV2 for CIFAR, 3 stages 116/232/464")
register("cnn_8_16_32", InDistillCNN, "student", "InDistill reference CNN 8/16/32 (FC 128→64)")
register("cnn4", FourBlockCNN, "student", "4-block CNN 16/32/64/128, GAP, dropout MLP head")


class UnknownModelError(ValueError):
    pass


def build_model(name: str, num_classes: int = 10, width: float = 1.0) -> StagedNet:
    """Build a registered architecture; ``width`` scales every channel count."""
    if name not in MODELS:
        raise UnknownModelError(f"unknown architecture {name!r}; available: {', '.join(sorted(MODELS))}")
    if not 0 < width <= 16:
        raise ValueError(f"width multiplier must be in (0, 16], got {width}")
    return MODELS[name].build(num_classes=num_classes, width=width)


def names(role: str | None = None) -> list[str]:
    return [n for n, e in MODELS.items() if role is None or e.role == role]


__all__ = ["MODELS", "ModelEntry", "ModelSpec", "StageSpec", "StagedNet", "UnknownModelError", "build_model",
           "describe", "names", "register"]
