"""InDistill channel pruning: keep, per matched stage, the teacher channels whose
producing filters have the largest L1 norm, as many as the student stage has.

The pruned teacher feature is the teacher's own stage output restricted to the kept
channels, computed from the unpruned teacher's input to that stage. For a residual
stage this equals pruning the last conv's filters and indexing the shortcut with the
same channels, since the stage output is their sum channel by channel. When spatial
sizes differ the larger map is average-pooled to the smaller (see ``losses.match_spatial``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from models import ModelSpec, StagedNet


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


class PrunedFeatures:
    """Gives the pruned teacher features for a batch; use inside a ``FeatureTap`` of the teacher."""

    def __init__(self, plans: list[StagePruning], device: torch.device) -> None:
        self.index = [torch.tensor(p.kept, device=device) for p in plans]

    def __call__(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [f.index_select(1, idx) for f, idx in zip(features, self.index)]
