"""The uniform stage interface every architecture in the zoo implements.

A :class:`StagedNet` names, in forward order, the modules whose outputs are its
intermediate feature maps (its *stages*) and, for each, the convolution whose filters
produce the stage's channels (used by L1 channel pruning). The embedding is the input of
the final linear layer (``classifier``); the logits are its output. Features are read
with forward hooks (:mod:`app.features`), so models need no ``get_features`` copies.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class StageSpec:
    """One intermediate stage: module path, producing conv path, channels, spatial size."""

    module: str
    conv: str  # "" when no single conv produces the stage (not prunable)
    channels: int
    size: tuple[int, int]


@dataclass(frozen=True)
class ModelSpec:
    """What a built model exposes: its stages, embedding width and number of classes."""

    arch: str
    stages: tuple[StageSpec, ...]
    embed_dim: int
    num_classes: int

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(s.channels for s in self.stages)

    @property
    def prunable(self) -> bool:
        """Every stage has a single producing conv whose filters can be ranked."""
        return all(s.conv for s in self.stages)


class StagedNet(nn.Module):
    """Base class: subclasses fill ``stage_layout`` and keep their last layer as ``classifier``."""

    arch: str = "?"

    def __init__(self) -> None:
        super().__init__()
        self.stage_layout: list[tuple[str, str]] = []  # (stage module path, producing conv path)

    @property
    def classifier_module(self) -> nn.Linear:
        return self.get_submodule("classifier")


def make_divisible(value: float, divisor: int = 1) -> int:
    """Round a scaled width to a positive multiple of ``divisor``."""
    return max(divisor, int(round(value / divisor)) * divisor)


@torch.no_grad()
def describe(model: StagedNet, input_size: int = 32) -> ModelSpec:
    """Run one dummy image through ``model`` and record each stage's channels and size."""
    shapes: dict[str, torch.Size] = {}
    handles = [
        model.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, path=path: shapes.__setitem__(path, out.shape)
        )
        for path, _ in model.stage_layout
    ]
    embed: list[int] = []
    handles.append(model.classifier_module.register_forward_pre_hook(
        lambda _m, inp: embed.append(inp[0].shape[1])))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        logits = model(torch.zeros(1, 3, input_size, input_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    stages = []
    for path, conv in model.stage_layout:
        shape = shapes[path]
        conv_mod = model.get_submodule(conv) if conv else None
        if conv_mod is not None and (not isinstance(conv_mod, nn.Conv2d) or conv_mod.out_channels != shape[1]):
            raise ValueError(f"{model.arch}: stage {path} declares conv {conv} that does not produce its {shape[1]} channels")
        stages.append(StageSpec(path, conv, int(shape[1]), (int(shape[2]), int(shape[3]))))
    return ModelSpec(model.arch, tuple(stages), embed[0], int(logits.shape[1]))
