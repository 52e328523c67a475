"""Fold eval-mode batch norm into the convolution before it, for frozen networks.

``fold_batchnorm(model)`` returns an eval-mode copy without gradients in which every
``Conv2d → BatchNorm2d`` pair whose conv output feeds only that batch norm has the
norm's affine map baked into the conv's weight and bias, and the norm replaced by
``nn.Identity``. Module paths are kept (the norm's path now holds the identity), so
:class:`app.features.FeatureTap` hooks on stage modules see the same outputs up to
rounding. Pairs are found on a ``torch.fx`` trace; a model that does not trace is
copied unfolded.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import nn


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv path, bn path)`` pairs where the conv's output is used by that batch norm alone."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # dynamic control flow: nothing is folded
        return []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), nn.Conv2d)
                and len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1):
            pairs.append((src.target, node.target))
    return pairs


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Bake ``bn``'s running statistics and affine parameters into ``conv`` in place."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0.0)
    conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A frozen, eval-mode copy of ``model`` with conv + batch norm pairs folded (see module doc)."""
    folded = copy.deepcopy(model).eval()
    folded.folded_pairs = 0
    for conv_path, bn_path in foldable_pairs(folded):
        bn = folded.get_submodule(bn_path)
        if bn.running_mean is None:  # track_running_stats=False: batch statistics even in eval
            continue
        fold_conv_bn(folded.get_submodule(conv_path), bn)
        folded.set_submodule(bn_path, nn.Identity())
        folded.folded_pairs += 1
    return folded.requires_grad_(False)
