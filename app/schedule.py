"""Training schedules as data: a unit's list of segments (what is learned, with which loss,
how long).

Vocabulary (used everywhere): a *phase* is a training role — teacher, aux, baseline, kd,
indistill; a *unit* is one phase for one seed (one checkpoint, one result); a *segment*
is one part of a unit's schedule ("layer 2", "embedding", "KD"). :class:`SegmentPlan` is
a segment as data; :class:`app.train.Segment` is its runtime form (steps, objective,
optimizer).

The InDistill warm-up learns layer l (1-based) for S_l = a + b·l epochs, shallow to deep,
with MSE to the pruned teacher feature, then (optionally) the embedding with PKT; then
stage 2 is the KD loss plus CE. ``joint`` learns all layers together for the same total
(the paper's "without curriculum" ablation); ``off`` skips the warm-up.

The *budget* rule (``ExperimentConfig.budget``) says what ``student.epochs`` means beside the
warm-up: ``added`` — it is the KD epochs, the warm-up comes on top, and the baseline and KD
arms train as long as the InDistill arm (KD + Σ S_l, so they depend on a and b); ``within`` —
it is every arm's whole budget, the warm-up comes out of it and KD gets the rest (the
curriculum grid's and the authors' rule: the baseline and KD arms do not depend on a and b);
``unequal`` — it is the KD epochs of every arm, and the InDistill arm trains Σ S_l longer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

WARMUP_MODES = ("curriculum", "joint", "off")
BUDGETS = ("added", "within", "unequal")


@dataclass(frozen=True)
class SegmentPlan:
    name: str                    # "layer 2", "embedding", "all layers", "KD", "CE"
    kind: str                    # layer | embed | joint | kd | ce
    layers: tuple[int, ...]      # 1-based stages trained against pruned features
    loss: str                    # mse | pkt_indistill | <kd loss> | ce
    epochs: float

    def to_dict(self) -> dict:
        return asdict(self)




def curriculum_epochs(a: float, b: float, n_layers: int) -> list[float]:
    """S_l = a + b·l for l = 1…n_layers."""
    return [a + b * l for l in range(1, n_layers + 1)]


def check_curriculum(a: float, b: float, n_layers: int, embed: bool) -> list[str]:
    """Problems with (a, b): every S_l must be ≥ 0 and at least one > 0."""
    n = n_layers + (1 if embed else 0)
    s = curriculum_epochs(a, b, n)
    problems = []
    if not (0 <= a <= 100):
        problems.append(f"a must be in [0, 100], got {a:g}")
    if not (-20 <= b <= 20):
        problems.append(f"b must be in [-20, 20], got {b:g}")
    negative = [i + 1 for i, v in enumerate(s) if v < 0]
    if negative:
        problems.append(f"S_l = a + b·l is negative for layer(s) {negative} (a={a:g}, b={b:g}); raise a or b")
    elif sum(s) <= 0:
        problems.append("the warm-up has no epochs (every S_l is 0); raise a or b, or set the mode to off")
    return problems


def warmup_phases(n_layers: int, a: float, b: float, mode: str, embed: bool, embed_loss: str,
                  scale: float = 1.0) -> list[SegmentPlan]:
    """The warm-up part of the InDistill schedule (empty when mode is ``off``)."""
    if mode not in WARMUP_MODES:
        raise ValueError(f"warm-up mode must be one of {', '.join(WARMUP_MODES)}, got {mode!r}")
    if mode == "off":
        return []
    epochs = [e * scale for e in curriculum_epochs(a, b, n_layers + (1 if embed else 0))]
    if mode == "joint":
        return [SegmentPlan("all layers", "joint", tuple(range(1, n_layers + 1)), "mse" + ("+" + embed_loss if embed else ""),
                      sum(epochs))]
    phases = [SegmentPlan(f"layer {l}", "layer", (l,), "mse", epochs[l - 1]) for l in range(1, n_layers + 1) if epochs[l - 1] > 0]
    if embed and epochs[-1] > 0:
        phases.append(SegmentPlan("embedding", "embed", (), embed_loss, epochs[-1]))
    return phases


def warmup_epochs(n_layers: int, a: float, b: float, mode: str, embed: bool) -> float:
    """Σ S_l of the warm-up, unscaled (as ``student.epochs`` is given): 0 when mode is ``off``."""
    if mode == "off":
        return 0.0
    return sum(v for v in curriculum_epochs(a, b, n_layers + (1 if embed else 0)) if v > 0)


def check_budget(budget: str, epochs: float, warm: float, a: float, b: float, n_segments: int) -> list[str]:
    """Problems with the budget rule: under ``within`` the warm-up (``warm`` = Σ S_l over
    ``n_segments`` segments, unscaled) must leave KD epochs of ``epochs`` = student.epochs."""
    if budget not in BUDGETS:
        return [f"budget must be one of {', '.join(BUDGETS)} (what student.epochs counts beside the warm-up), "
                f"got {budget!r}"]
    if budget != "within" or warm < epochs:
        return []
    slope = b * n_segments * (n_segments + 1) / 2          # Σ b·l; Σ S_l = n·a + slope
    a_below = (epochs - slope) / n_segments
    lower = f"lower a below {a_below:g} (at b={b:g})" if a_below > 0 else "lower a and b"
    return [f"budget=within: student.epochs = {epochs:g} is every arm's whole budget, but the InDistill warm-up "
            f"alone takes Σ S_l = {warm:g} epochs (a={a:g}, b={b:g}), leaving no KD epochs; raise student.epochs "
            f"above {warm:g} (e.g. {warm + epochs:g}: {warm:g} warm-up + {epochs:g} KD), {lower}, "
            f"or set budget=added (the warm-up on top)"]


def student_schedules(n_layers: int, epochs: float, kd_loss: str, *, a: float, b: float, mode: str,
                      embed: bool, embed_loss: str, budget: str, scale: float = 1.0,
                      baseline_epochs: tuple[float, ...] | None = None) -> dict[str, list[SegmentPlan]]:
    """Schedules of the three student phases: ``baseline`` (CE), ``kd``, ``indistill``.

    ``epochs`` is ``student.epochs``, read by the ``budget`` rule (module docstring): the KD
    epochs (``added``, ``unequal``) or every arm's total (``within``, checked first by
    :func:`check_budget`). ``baseline_epochs``: the baseline's own CE stages (the reference
    recipe's 50 + 30, one segment, hence one optimizer, per learning-rate stage) instead of
    the KD arms' total."""
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    warm = warmup_phases(n_layers, a, b, mode, embed, embed_loss, scale)
    warm_total = sum(p.epochs for p in warm)
    if budget == "within":
        total = epochs * scale
        kd = total - warm_total
        if kd <= 0:
            raise ValueError(f"budget=within: the warm-up ({warm_total:g} epochs) leaves no KD epochs of {total:g}")
    else:
        kd = epochs * scale
        total = kd + (warm_total if budget == "added" else 0.0)
    baseline = [SegmentPlan("CE", "ce", (), "ce", total)] if not baseline_epochs else \
        [SegmentPlan("CE" if i == 0 else f"CE (lr stage {i + 1})", "ce", (), "ce", e * scale)
         for i, e in enumerate(baseline_epochs)]
    return {
        "baseline": baseline,
        "kd": [SegmentPlan("KD", "kd", (), kd_loss, total)],
        "indistill": warm + [SegmentPlan("KD", "kd", (), kd_loss, kd)],
    }
