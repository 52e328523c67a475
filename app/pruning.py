"""InDistill channel pruning: keep, per matched stage, the teacher channels whose
producing filters have the largest L1 norm, as many as the student stage has.

The pruned teacher feature is the teacher's own stage output restricted to the kept
channels, computed from the unpruned teacher's input to that stage. For a residual
stage this equals pruning the last conv's filters and indexing the shortcut with the
same channels, since the stage output is their sum channel by channel. When spatial
sizes differ the larger map is average-pooled to the smaller (see ``losses.match_spatial``).

Two ways of computing those targets (``recipe.targets``), both behind :class:`PrunedTargets`:
:class:`PrunedFeatures` (``teacher-bn``: the teacher's own BatchNorm in eval mode, β kept) and
:class:`BatchGammaTargets` (``batch-gamma``: the reference code's pruned network — the kept
filters, a fresh BatchNorm holding only the kept γ, β = 0, normalising with batch statistics).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models import ModelSpec, StagedNet

from .features import Outputs


@dataclass
class StagePruning:
    """What pruning chose for one stage (the app draws ``norms`` and ``kept``)."""

    stage: int                 # 0-based
    module: str
    conv: str
    teacher_channels: int
    student_channels: int
    teacher_size: tuple[int, int]
    student_size: tuple[int, int]
    norms: list[float]         # L1 norm of every channel's producing filter
    kept: list[int]            # kept channel indices, ascending

    @property
    def kept_fraction(self) -> float:
        return len(self.kept) / self.teacher_channels

    def to_dict(self) -> dict:
        return asdict(self) | {"kept_fraction": self.kept_fraction}


def filter_l1_norms(conv: nn.Conv2d) -> torch.Tensor:
    """L1 norm of each output channel's filter, ``[out_channels]``."""
    return conv.weight.detach().abs().sum(dim=(1, 2, 3)).float().cpu()


def select_channels(conv: nn.Conv2d, keep: int) -> list[int]:
    """Indices of the ``keep`` output channels with the largest filter L1 norm, ascending."""
    norms = filter_l1_norms(conv)
    if not 0 < keep <= len(norms):
        raise ValueError(f"cannot keep {keep} of {len(norms)} channels")
    return sorted(torch.topk(norms, keep).indices.tolist())


def plan_pruning(teacher: StagedNet, t_spec: ModelSpec, s_spec: ModelSpec) -> list[StagePruning]:
    """Choose kept channels for every stage (stage l of the teacher ↔ stage l of the student)."""
    if len(t_spec.stages) != len(s_spec.stages):
        raise ValueError(f"{t_spec.arch} has {len(t_spec.stages)} stages, {s_spec.arch} {len(s_spec.stages)}")
    plans = []
    for i, (ts, ss) in enumerate(zip(t_spec.stages, s_spec.stages)):
        if not ts.conv:
            raise ValueError(f"{t_spec.arch} stage {ts.module} has no single producing conv to prune")
        conv = teacher.get_submodule(ts.conv)
        plans.append(StagePruning(i, ts.module, ts.conv, ts.channels, ss.channels, ts.size, ss.size,
                                  [round(v, 6) for v in filter_l1_norms(conv).tolist()],
                                  select_channels(conv, ss.channels)))
    return plans


class PrunedTargets:
    """The warm-up's targets from one forward pass of the (frozen) pruned-from network."""

    needs_inputs = False   # whether the pass must record each stage's input

    def of(self, out: Outputs) -> list[torch.Tensor]:
        raise NotImplementedError


class PrunedFeatures(PrunedTargets):
    """``teacher-bn``: the teacher's stage outputs restricted to the kept channels; use inside
    a ``FeatureTap`` of the teacher (its BatchNorm in eval mode, β kept)."""

    def __init__(self, plans: list[StagePruning], device: torch.device) -> None:
        self.index = [torch.tensor(p.kept, device=device) for p in plans]

    def __call__(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [f.index_select(1, idx) for f, idx in zip(features, self.index)]

    def of(self, out: Outputs) -> list[torch.Tensor]:
        return self(out.features)


class BatchGammaTargets(PrunedTargets):
    """``batch-gamma``: the InDistill reference code's pruned network (``prune.py`` →
    ``utils.prune_model_l1_structured``; used in ``kd_from_aux_to_student.py``). Per stage, the
    kept filters applied to the *teacher's own* input of that stage, then a new BatchNorm
    holding only the kept filters' γ (β = 0, fresh running statistics) that — the pruned
    network is never put in eval mode — normalises with the batch's statistics, then the
    stage's ReLU and pooling. A convolution bias is absorbed by the batch statistics.

    Needs stages of the form conv → BatchNorm2d → parameter-free layers (the CNNs)."""

    needs_inputs = True

    def __init__(self, network: StagedNet, plans: list[StagePruning], device: torch.device) -> None:
        self.stages = []
        for p in plans:
            stage = network.get_submodule(p.module)
            layers = list(stage) if isinstance(stage, nn.Sequential) else []
            if (len(layers) < 2 or network.get_submodule(p.conv) is not layers[0]
                    or not isinstance(layers[1], nn.BatchNorm2d)
                    or any(True for m in layers[2:] for _ in m.parameters())):
                raise ValueError(f"recipe.targets=batch-gamma needs stages of the form conv → BatchNorm → ReLU/pool; "
                                 f"{network.arch} stage {p.module} is not (use recipe.targets=teacher-bn)")
            conv, bn = layers[0], layers[1]
            kept = torch.tensor(p.kept)
            weight = conv.weight.detach()[kept].float().clone().to(device)
            gamma = (bn.weight.detach()[kept] if bn.affine else torch.ones(len(kept))).float().clone().to(device)
            self.stages.append((weight, gamma, conv, bn.eps, nn.Sequential(*layers[2:])))

    @torch.no_grad()
    def from_inputs(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """In fp32 (autocast off), as the reference computes them, whatever the run's precision."""
        out = []
        for x, (weight, gamma, conv, eps, tail) in zip(inputs, self.stages):
            with torch.autocast(x.device.type, enabled=False):
                out.append(self._stage(x, weight, gamma, conv, eps, tail))
        return out

    @staticmethod
    def _stage(x, weight, gamma, conv, eps, tail) -> torch.Tensor:
        z = F.conv2d(x.float(), weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        z = F.batch_norm(z, None, None, gamma, None, training=True, eps=eps)
        return tail(z)

    def of(self, out: Outputs) -> list[torch.Tensor]:
        return self.from_inputs(out.inputs)


def make_targets(kind: str, network: StagedNet, plans: list[StagePruning], device: torch.device) -> PrunedTargets:
    """The targets ``recipe.targets`` names, for ``network`` pruned by ``plans``."""
    if kind == "batch-gamma":
        return BatchGammaTargets(network, plans, device)
    if kind == "teacher-bn":
        return PrunedFeatures(plans, device)
    raise ValueError(f"recipe.targets must be teacher-bn or batch-gamma, got {kind!r}")
