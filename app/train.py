"""One training loop for every unit, and the objectives it trains.

A unit (one phase for one seed) is a list of :class:`Segment` s (e.g. "layer 1", "layer 2",
"embedding", "KD"), the runtime form of its :class:`~app.schedule.SegmentPlan` s,
each with its own objective, trainable parameters and optimizer, run back to back over
one shuffled batch stream. Objectives return named loss components; the loop sums
them, steps the optimizer, publishes losses and reports epoch ends to a callback (which
evaluates and publishes metrics).

Cancellation is checked before every layer, not only every step (:func:`cancel_points`):
before each module of the networks a step runs forward (the trained one, its teacher or
pruned network) and before each operation's backward, the epoch-end evaluation's passes
included; so a cancel lands within one layer's work even when one step of a large network
at a large batch takes tens of seconds.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import events as ev
from .augment import BatchStream
from .device import Runtime
from .distributed import SINGLE, Dist
from .features import FeatureTap
from .losses import EMBED_LOSSES, WARMUP_LOSSES, KDLoss
from .pruning import PrunedTargets
from .recipe import LRSchedule
from .schedule import SegmentPlan

# (images, labels, epoch within the segment) → named loss components
Objective = Callable[[torch.Tensor, torch.Tensor, float], dict[str, torch.Tensor]]


class CancelledError(Exception):
    """The user cancelled; raised inside the loop within one step."""


class TrainingError(RuntimeError):
    pass


@dataclass
class Segment:
    name: str
    steps: int
    objective: Objective
    params: list[nn.Parameter]
    optimizer: str = "sgd"       # sgd | adam
    lr: float = 0.05
    frozen: tuple[nn.Module, ...] = field(default_factory=tuple)  # networks the objective runs without gradients


@dataclass
class LoopContext:
    runtime: Runtime
    emit: Callable[[ev.Event], None]
    cancel: threading.Event
    phase: str
    seed: int
    momentum: float = 0.9
    weight_decay: float = 5e-4
    on_step: Callable[[], None] = lambda: None  # global progress tick
    dist: Dist = SINGLE                          # ranks under torchrun (app.distributed)
    schedule: LRSchedule = LRSchedule()          # the learning-rate factor of every step of the unit
    fresh_optimizer: str = "segment"             # segment | epoch: when the optimizer is re-created
    trace: Callable[[dict], None] | None = None  # per step: step, segment, lr, optimizer and its age (tests)


def steps_for(epochs: float, steps_per_epoch: int) -> int:
    """Steps for a (possibly fractional) number of epochs; at least one when epochs > 0."""
    return 0 if epochs <= 0 else max(1, round(epochs * steps_per_epoch))


def make_optimizer(seg: Segment, ctx: LoopContext) -> torch.optim.Optimizer:
    """A fresh optimizer for ``seg`` (Adam, or Nesterov SGD with the run's momentum and decay)."""
    if seg.optimizer == "adam":
        return torch.optim.Adam(seg.params, lr=seg.lr)
    return torch.optim.SGD(seg.params, lr=seg.lr, momentum=ctx.momentum, weight_decay=ctx.weight_decay, nesterov=True)


@contextlib.contextmanager
def cancel_points(cancel: threading.Event, *networks: nn.Module):
    """Within the block, raise :class:`CancelledError` once ``cancel`` is set: before every leaf
    module of ``networks`` runs forward, and (in this thread) before every backward operation
    that reads a tensor saved in the forward pass."""
    def check(*_):
        if cancel.is_set():
            raise CancelledError

    def unpack(saved: torch.Tensor) -> torch.Tensor:
        check()
        return saved
    modules = {id(m): m for net in networks for m in net.modules() if not list(m.children())}
    handles = [m.register_forward_pre_hook(check) for m in modules.values()]
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, unpack):
            yield
    finally:
        for h in handles:
            h.remove()


def _forever(stream: BatchStream) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from stream.epoch()


def run_segments(model: nn.Module, stream: BatchStream, segments: list[Segment], ctx: LoopContext,
                 on_epoch: Callable[[int, dict, str], dict] | None = None,
                 on_segment_end: Callable[[int, Segment], None] | None = None) -> float:
    """Train ``model`` through ``segments``; returns the wall time in seconds.

    Each segment starts with a fresh optimizer (and, with ``ctx.fresh_optimizer == "epoch"``,
    every epoch of the unit does, as the reference code re-creates Adam); the learning rate
    of each step is the segment's base rate times ``ctx.schedule``'s factor."""
    spe = stream.steps_per_epoch
    total = sum(s.steps for s in segments)
    log_every = max(1, total // 400, spe // 25)
    batches = _forever(stream)
    step, start = 0, time.perf_counter()
    epoch_sums: dict[str, tuple] = {}
    model.train()
    with ctx.dist.training(model), cancel_points(ctx.cancel, model, *(n for s in segments for n in s.frozen)):
        for index, seg in enumerate(segments):
            if seg.steps <= 0:
                continue
            ctx.emit(ev.LayerSwitch(ctx.phase, ctx.seed, index, seg.name, step))
            opt, age = make_optimizer(seg, ctx), 0
            for i in range(seg.steps):
                if ctx.cancel.is_set():
                    raise CancelledError
                if i > 0 and ctx.fresh_optimizer == "epoch" and step % spe == 0:
                    opt, age = make_optimizer(seg, ctx), 0
                lr = seg.lr * ctx.schedule.factor_at(step, i, seg.steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                x, y = next(batches)
                with ctx.runtime.autocast():
                    parts = seg.objective(x, y, i / spe)  # epochs within this segment (DKD's ramp starts at 0)
                if ctx.trace is not None:
                    ctx.trace({"step": step, "segment": seg.name, "lr": lr, "optimizer_steps": age,
                               "optimizer": type(opt).__name__, "losses": sorted(parts)})
                loss = sum(parts.values())
                if on_epoch is not None:  # the epoch's mean of each loss part and of their total, summed without
                    # a device sync; a part over the steps it was active (an epoch may span two segments)
                    for name, value in [*parts.items(), ("total", loss)]:
                        total_, count_ = epoch_sums.get(name, (0.0, 0))
                        epoch_sums[name] = (total_ + value.detach().float(), count_ + 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                ctx.dist.average_gradients(seg.params)
                opt.step()
                step, age = step + 1, age + 1
                ctx.on_step()
                if step % log_every == 0 or i == seg.steps - 1:
                    values = ctx.dist.mean_values(parts)
                    values["total"] = sum(values.values())
                    if not math.isfinite(values["total"]):
                        raise TrainingError(f"{ctx.phase} ({seg.name}): loss became {values['total']} at step {step}; "
                                            "lower the learning rate or the loss weights")
                    ctx.emit(ev.StepLoss(ctx.phase, ctx.seed, step, round(step / spe, 4), seg.name, values))
                if on_epoch is not None and (step % spe == 0 or step == total):
                    means = {name: float(f"{float(t) / n:.6g}") for name, (t, n) in epoch_sums.items()}  # 6 digits
                    epoch_sums.clear()
                    metrics = on_epoch(math.ceil(step / spe), means, seg.name)
                    model.train()
                    ctx.emit(ev.EpochMetrics(ctx.phase, ctx.seed, math.ceil(step / spe), metrics))
            if on_segment_end is not None:
                on_segment_end(index, seg)
    return time.perf_counter() - start


# ---------------------------------------------------------------- objectives

def ce_objective(student: nn.Module) -> Objective:
    """Plain cross-entropy; calls the model directly (no hooks needed)."""
    def objective(x, y, epoch):
        return {"ce": F.cross_entropy(student(x).float(), y)}
    return objective


def kd_objective(student: FeatureTap, teacher: FeatureTap, loss: KDLoss) -> Objective:
    """The chosen KD loss plus ``loss.ce_weight`` · CE; the teacher runs without gradients."""
    feats = loss.needs_features

    def objective(x, y, epoch):
        with torch.no_grad():
            t = teacher(x, features=feats)
        s = student(x, features=feats)
        parts = loss(s, t, y, epoch)
        if loss.ce_weight > 0:
            parts = {"ce": loss.ce_weight * F.cross_entropy(s.logits.float(), y)} | parts
        return parts
    return objective


def warmup_objective(student: FeatureTap, pruned: FeatureTap, targets: PrunedTargets, layers: tuple[int, ...],
                     embed_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Objective:
    """MSE between student stages ``layers`` (1-based) and the pruned network's ``targets``,
    plus ``embed_loss`` on the embeddings when given. Forward passes stop at the deepest
    needed stage unless the embedding is needed."""
    upto = None if embed_loss is not None or not layers else max(layers) - 1

    def objective(x, y, epoch):
        with torch.no_grad():
            t_out = pruned(x, upto=upto, features=bool(layers), inputs=bool(layers) and targets.needs_inputs)
            t_feats = targets.of(t_out) if layers else []
        s_out = student(x, upto=upto, features=bool(layers))
        parts = {}
        for l in layers:
            parts[f"mse_l{l}"] = WARMUP_LOSSES["mse"](s_out.features[l - 1], t_feats[l - 1])
        if embed_loss is not None:
            parts["pkt"] = embed_loss(s_out.embedding, t_out.embedding)
        return parts
    return objective


def trainable(*modules: nn.Module) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


# ---------------------------------------------------------------- segment kind → objective

WARMUP_KINDS = ("layer", "embed", "joint")


@dataclass
class Taps:
    """The networks a unit's segments read: the one trained, the one it learns from in KD
    segments, and the one whose pruned features the warm-up matches (with ``select``)."""
    student: FeatureTap
    teacher: FeatureTap | None = None
    pruned: FeatureTap | None = None
    targets: PrunedTargets | None = None


def segment_for(plan: SegmentPlan, steps: int, model: nn.Module, taps: Taps, *, lr: float, warmup_lr: float,
                optimizer: str = "sgd", kd_loss: KDLoss | None = None) -> Segment:
    """The runtime segment of ``plan``: ``ce`` or ``kd`` (``kd_loss`` from ``taps.teacher``), with
    ``optimizer`` at ``lr``, or a warm-up kind ``layer``/``embed``/``joint`` (MSE to the pruned
    targets, plus the embedding loss named in ``plan.loss``; Adam at ``warmup_lr``, as the loss
    scales differ by layer)."""
    if plan.kind == "ce":
        return Segment(plan.name, steps, ce_objective(model), trainable(model), optimizer, lr)
    if plan.kind == "kd":
        return Segment(plan.name, steps, kd_objective(taps.student, taps.teacher, kd_loss),
                       trainable(model, kd_loss), optimizer, lr, (taps.teacher.model,))
    if plan.kind in WARMUP_KINDS:
        embed = next((WARMUP_LOSSES[n] for n in plan.loss.split("+") if n in EMBED_LOSSES), None)
        return Segment(plan.name, steps, warmup_objective(taps.student, taps.pruned, taps.targets, plan.layers, embed),
                       trainable(model), "adam", warmup_lr, (taps.pruned.model,))
    raise ValueError(f"unknown segment kind {plan.kind!r}")
