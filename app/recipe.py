"""How student units are optimised: the optimizer and learning rate of each stage, the
schedule the learning rate follows across a unit, when the optimizer is re-created, and the
InDistill procedure's other choices (embedding warm-up segment, pruned targets, baseline).

Every ``recipe.*`` setting left at ``None`` takes the value of ``indistill.procedure``
(:data:`PROCEDURE_RECIPES`); ``studio`` is the project's own recipe, ``reference`` the
InDistill code's (gsarridis/InDistill; docs/ARCHITECTURE.md lists file and line for each).
:func:`resolve_recipe` gives the concrete values; :class:`LRSchedule` is the learning rate
of every step of one unit.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("segment-cosine", "cosine", "step")
FRESH = ("segment", "epoch")
TARGETS = ("teacher-bn", "batch-gamma")
BASELINES = ("equal", "reference")

# The reference's cross-entropy baselines (train_baselines.py, train_baselines.sh): Adam, one
# optimizer per learning-rate stage, 1e-3 for 50 epochs then 1e-4 for 30.
REFERENCE_BASELINE = {"optimizer": "adam", "lr": 1e-3, "epochs": (50.0, 30.0), "step_factor": 0.1}

PROCEDURE_RECIPES: dict[str, dict] = {
    "studio": {"optimizer": "sgd", "lr": None, "schedule": "segment-cosine", "step_epoch": 0.0,
               "step_factor": 0.1, "fresh_optimizer": "segment", "embed": True, "targets": "teacher-bn",
               "baseline": "equal"},
    # kd_from_aux_to_student.py: Adam re-created every epoch, 1e-3 for 60 epochs then 1e-4 (one
    # schedule across warm-up and PKT), no embedding warm-up segment, the pruned network's own
    # BatchNorm (γ of the kept filters, β = 0) on batch statistics.
    "reference": {"optimizer": "adam", "lr": 1e-3, "schedule": "step", "step_epoch": 60.0, "step_factor": 0.1,
                  "fresh_optimizer": "epoch", "embed": False, "targets": "batch-gamma", "baseline": "reference"},
}


@dataclass(frozen=True)
class Recipe:
    procedure: str
    optimizer: str
    lr: float
    warmup_lr: float          # warm-up segments' Adam (studio: indistill.lr; reference: the recipe's lr, one
    #                           rate for the whole unit as there), under the same unit schedule
    schedule: str
    step_epoch: float
    step_factor: float
    fresh_optimizer: str
    embed: bool
    targets: str
    baseline: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class UnitOptim:
    """The optimizer settings of one unit (segments keep their own optimizer kind and base lr)."""
    optimizer: str
    lr: float
    schedule: str
    step_epoch: float
    step_factor: float
    fresh_optimizer: str


def resolve_recipe(cfg) -> Recipe:
    """Concrete values: each ``recipe.*`` setting, or the procedure's value where it is None."""
    proc = cfg.indistill.procedure if cfg.indistill.procedure in PROCEDURE_RECIPES else "studio"
    base = PROCEDURE_RECIPES[proc]
    r = cfg.recipe

    def pick(name):
        value = getattr(r, name)
        return base[name] if value is None else value
    lr = pick("lr")
    lr = cfg.optim.lr if lr is None else float(lr)
    return Recipe(proc, pick("optimizer"), lr, lr if proc == "reference" else cfg.indistill.lr,
                  pick("schedule"), float(pick("step_epoch")), float(pick("step_factor")), pick("fresh_optimizer"),
                  base["embed"] if cfg.indistill.embed is None else bool(cfg.indistill.embed),
                  pick("targets"), pick("baseline"))


def check_recipe(cfg) -> list[str]:
    """Problems with the ``recipe`` settings, each naming the setting and what is accepted."""
    r, p = cfg.recipe, []
    for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("fresh_optimizer", FRESH),
                          ("targets", TARGETS), ("baseline", BASELINES)):
        value = getattr(r, name)
        if value is not None and value not in allowed:
            p.append(f"recipe.{name} must be {', '.join(allowed)} (or none: the procedure's), got {value!r}")
    for name, low, high in (("lr", 1e-6, 10), ("step_epoch", 0, 10000), ("step_factor", 1e-4, 1)):
        value = getattr(r, name)
        if value is not None and not low <= value <= high:
            p.append(f"recipe.{name} must be in [{low:g}, {high:g}], got {value}")
    return p


def unit_optim(recipe: Recipe, phase: str, scale: float = 1.0) -> UnitOptim:
    """The student ``phase``'s optimizer settings (the baseline may follow the reference recipe)."""
    if phase == "baseline" and recipe.baseline == "reference":
        b = REFERENCE_BASELINE
        return UnitOptim(b["optimizer"], b["lr"], "step", b["epochs"][0] * scale, b["step_factor"], "segment")
    return UnitOptim(recipe.optimizer, recipe.lr, recipe.schedule, recipe.step_epoch * scale, recipe.step_factor,
                     recipe.fresh_optimizer)


@dataclass(frozen=True)
class LRSchedule:
    """Learning-rate factor of every step of a unit.

    ``segment-cosine``: a cosine from 1 to 0 inside each segment (restarts at every segment);
    ``cosine``: one cosine over the whole unit; ``step``: 1 before ``step_at`` (a unit step),
    ``factor`` from it on. Segment base rates multiply the factor.
    """
    kind: str = "segment-cosine"
    total_steps: int = 1
    step_at: int = 0
    factor: float = 0.1

    @classmethod
    def of(cls, optim: UnitOptim, total_steps: int, steps_per_epoch: int) -> "LRSchedule":
        return cls(optim.schedule, total_steps, round(optim.step_epoch * steps_per_epoch), optim.step_factor)

    def factor_at(self, step: int, seg_step: int, seg_steps: int) -> float:
        """The factor of unit step ``step`` (0-based), step ``seg_step`` of a ``seg_steps``-step segment."""
        if self.kind == "segment-cosine":
            n = max(seg_steps, 1)
            return 0.5 * (1 + math.cos(math.pi * min(seg_step, n) / n))
        if self.kind == "cosine":
            n = max(self.total_steps, 1)
            return 0.5 * (1 + math.cos(math.pi * min(step, n) / n))
        if self.kind == "step":
            return self.factor if self.step_at > 0 and step >= self.step_at else 1.0
        raise ValueError(f"unknown schedule {self.kind!r}; accepted: {', '.join(SCHEDULES)}")
