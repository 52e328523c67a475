"""Typed events the experiment publishes while it runs (the app and CLI only read these).

Each event describes itself once (``describe()``: its log line, or None for events that
only update a view, like a training step); the CLI's progress printer and the app's job
reducer both use that text, and dispatch on the event's type.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Event:
    kind: str = field(init=False, default="event")
    time: float = field(init=False, default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str | None:
        """The event as one log line (None: nothing to log)."""
        return None


def _unit(phase: str, seed: int | None) -> str:
    return phase + (f" seed {seed}" if seed is not None and phase not in ("teacher", "aux") else "")


@dataclass
class Log(Event):
    message: str
    kind: str = field(init=False, default="log")

    def describe(self) -> str:
        return self.message


@dataclass
class PhaseStarted(Event):
    phase: str                     # teacher | aux | baseline | kd | indistill
    seed: int
    schedule: list[dict]           # Phase.to_dict() items
    steps: int
    kind: str = field(init=False, default="phase_started")

    def describe(self) -> str:
        return f"▶ {_unit(self.phase, self.seed)}: {' → '.join(p['name'] for p in self.schedule)}"


@dataclass
class LayerSwitch(Event):
    phase: str
    seed: int
    segment: int                   # index into the phase's schedule
    name: str                      # "layer 2", "embedding", "KD", ...
    step: int                      # the phase's step at which it starts
    kind: str = field(init=False, default="layer_switch")

    def describe(self) -> str:
        return f"  {self.phase}: now training {self.name}"


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

    def describe(self) -> str:
        return f"  {self.phase} epoch {self.epoch}: {eval_text(self.metrics)}"


@dataclass
class ChannelMaps(Event):
    pruned_arch: str
    stages: list[dict]             # StagePruning.to_dict() items
    kind: str = field(init=False, default="channel_maps")

    def describe(self) -> str:
        return f"pruned {self.pruned_arch}: kept " + ", ".join(f"{len(s['kept'])}/{s['teacher_channels']}"
                                                             for s in self.stages)


@dataclass
class PhaseResult(Event):
    phase: str
    seed: int | None
    result: dict[str, Any]
    kind: str = field(init=False, default="phase_result")

    def describe(self) -> str:
        return f"✔ {_unit(self.phase, self.seed)}: {test_text(self.result)} in {self.result['train_seconds']:.1f} s"


@dataclass
class Finished(Event):
    run_dir: str
    results: dict[str, Any]
    kind: str = field(init=False, default="finished")

    def describe(self) -> str:
        return f"finished — run {Path(self.run_dir).name}"


@dataclass
class Failed(Event):
    message: str
    phase: str | None = None
    kind: str = field(init=False, default="failed")

    def describe(self) -> str:
        return f"✖ failed{' in ' + self.phase if self.phase else ''}: {self.message}"


@dataclass
class Cancelled(Event):
    phase: str | None = None
    kind: str = field(init=False, default="cancelled")

    def describe(self) -> str:
        return (f"cancelled{' during ' + self.phase if self.phase else ''}; finished phases are kept "
                "and the run can be resumed")


def eval_text(metrics: dict) -> str:
    """An epoch's evaluation accuracy with the data it was measured on, for log lines."""
    n = metrics.get("eval_images")
    value = f"acc {metrics['eval_acc']:.4f}" if "eval_acc" in metrics else f"mAP {metrics.get('eval_map', 0):.4f}"
    return f"{metrics['eval_split']} {value}" + (f" ({n:,} images)" if n else "")


def test_text(result: dict) -> str:
    """A phase's test accuracy (with its 95 % interval) and the data it was measured on, for log lines."""
    where, ci = result.get("test_data"), result.get("test_acc_ci")
    return (f"test acc {result['test_acc']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
            + (f" on the {where}" if where else ""))
