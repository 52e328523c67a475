"""Typed events the experiment publishes while it runs (the app and CLI only read these)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Event:
    kind: str = field(init=False, default="event")
    time: float = field(init=False, default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Log(Event):
    message: str
    kind: str = field(init=False, default="log")


@dataclass
class PhaseStarted(Event):
    phase: str                     # teacher | aux | baseline | kd | indistill
    seed: int
    schedule: list[dict]           # Phase.to_dict() items
    steps: int
    kind: str = field(init=False, default="phase_started")


@dataclass
class LayerSwitch(Event):
    phase: str
    seed: int
    segment: int                   # index into the phase's schedule
    name: str                      # "layer 2", "embedding", "KD", ...
    step: int                      # the phase's step at which it starts
    kind: str = field(init=False, default="layer_switch")


@dataclass
class StepLoss(Event):
    phase: str
    seed: int
    step: int                      # within the phase
    epoch: float                   # fractional, within the phase
    segment: str
    losses: dict[str, float]       # by component, plus "total"
    kind: str = field(init=False, default="step")


@dataclass
class EpochMetrics(Event):
    phase: str
    seed: int
    epoch: int                     # 1-based, within the phase
    metrics: dict[str, Any]        # eval_acc, eval_split, info_flow, ...
    kind: str = field(init=False, default="epoch")


@dataclass
class ChannelMaps(Event):
    pruned_arch: str
    stages: list[dict]             # StagePruning.to_dict() items
    kind: str = field(init=False, default="channel_maps")


@dataclass
class PhaseResult(Event):
    phase: str
    seed: int | None
    result: dict[str, Any]
    kind: str = field(init=False, default="phase_result")


@dataclass
class Finished(Event):
    run_dir: str
    results: dict[str, Any]
    kind: str = field(init=False, default="finished")


@dataclass
class Failed(Event):
    message: str
    phase: str | None = None
    kind: str = field(init=False, default="failed")


@dataclass
class Cancelled(Event):
    phase: str | None = None
    kind: str = field(init=False, default="cancelled")


def eval_text(metrics: dict) -> str:
    """An epoch's evaluation accuracy with the data it was measured on, for log lines."""
    n = metrics.get("eval_images")
    return f"{metrics['eval_split']} acc {metrics['eval_acc']:.4f}" + (f" ({n:,} images)" if n else "")


def test_text(result: dict) -> str:
    """A phase's test accuracy with the data it was measured on, for log lines."""
    where = result.get("test_data")
    return f"test acc {result['test_acc']:.4f}" + (f" on the {where}" if where else "")
