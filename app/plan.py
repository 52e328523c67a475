"""Check a configuration and work out what it will do, without data or training.

``make_plan`` validates every setting (collecting all problems, each naming the setting
and what is accepted), assesses the teacher/student pair and builds the schedules. The
app calls it on every change to show the verdict and the timeline; the experiment calls
it before doing anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from models import MODELS, ModelSpec

from .config import ConfigError, ExperimentConfig
from .device import PRECISIONS
from .losses import EMBED_LOSSES, LOSSES, ParamError, resolve_params
from .pairing import PairVerdict, assess_pair, spec_of
from .recipe import REFERENCE_BASELINE, check_recipe, resolve_recipe
from .schedule import WARMUP_MODES, SegmentPlan, check_budget, check_curriculum, student_schedules, warmup_epochs

PROCEDURES = ("studio", "reference")


def stage2_loss(cfg: ExperimentConfig) -> tuple[str, dict]:
    """The KD and InDistill arms' stage-2 loss and parameters.

    ``studio``: ``kd.loss`` with ``kd.params``. ``reference``: the InDistill PKT variant
    without cross-entropy (``kd.params`` apply when ``kd.loss`` is pkt_indistill).
    """
    if cfg.indistill.procedure == "reference":
        # weight 2: the reference's PKT_loss sums the two kernels' Jeffreys terms; ours averages them
        params = dict(cfg.kd.params) if cfg.kd.loss == "pkt_indistill" else {}
        return "pkt_indistill", {"weight": 2.0} | params | {"ce": 0.0}
    return cfg.kd.loss, dict(cfg.kd.params)


@dataclass
class Plan:
    cfg: ExperimentConfig
    problems: list[str] = field(default_factory=list)
    teacher: ModelSpec | None = None
    student: ModelSpec | None = None
    verdict: PairVerdict | None = None
    schedules: dict[str, list[SegmentPlan]] = field(default_factory=dict)
    warmup_epochs: float = 0.0   # Σ S_l of the InDistill arm, unscaled as student.epochs (0: no warm-up)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def use_aux(self) -> bool:
        return bool(self.cfg.phases.indistill and self.verdict and self.verdict.use_aux)

    def raise_if_invalid(self) -> None:
        if self.problems:
            raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(self.problems))

    def schedule_dicts(self) -> dict[str, list[dict]]:
        return {k: [p.to_dict() for p in v] for k, v in self.schedules.items()}


def _range(problems: list[str], name: str, value, low, high, note: str = "") -> None:
    if value is None or not (low <= value <= high):
        problems.append(f"{name} must be in [{low:g}, {high:g}]{note}, got {value}")


def make_plan(cfg: ExperimentConfig) -> Plan:
    plan = Plan(cfg)
    p = plan.problems
    for role, arch in (("teacher.arch", cfg.teacher.arch), ("student.arch", cfg.student.arch)):
        if arch not in MODELS:
            p.append(f"{role}: unknown architecture {arch!r}; available: {', '.join(MODELS)}")
    if cfg.kd.loss not in LOSSES:
        p.append(f"kd.loss: unknown loss {cfg.kd.loss!r}; available: {', '.join(LOSSES)}")
    else:
        try:
            resolve_params(cfg.kd.loss, LOSSES[cfg.kd.loss].params, cfg.kd.params)
        except ParamError as exc:
            p.append(f"kd.params: {exc}")
    ind = cfg.indistill
    if ind.mode not in WARMUP_MODES:
        p.append(f"indistill.mode must be one of {', '.join(WARMUP_MODES)}, got {ind.mode!r}")
    if ind.aux not in ("auto", "on", "off"):
        p.append(f"indistill.aux must be auto, on or off, got {ind.aux!r}")
    if ind.embed_loss not in EMBED_LOSSES:
        p.append(f"indistill.embed_loss must be {' or '.join(EMBED_LOSSES)}, got {ind.embed_loss!r}")
    if ind.procedure not in PROCEDURES:
        p.append(f"indistill.procedure must be studio (the project's default) or reference (the InDistill code's "
                 f"chain), got {ind.procedure!r}")
    p.extend(check_recipe(cfg))
    if ind.aux_loss not in LOSSES:
        p.append(f"indistill.aux_loss: unknown loss {ind.aux_loss!r}; available: {', '.join(LOSSES)}")
    _range(p, "indistill.aux_width", ind.aux_width, 1, 8)
    _range(p, "indistill.ratio_threshold", ind.ratio_threshold, 1, 1000)
    _range(p, "indistill.lr", ind.lr, 1e-6, 1)
    if ind.aux_epochs is not None:
        _range(p, "indistill.aux_epochs", ind.aux_epochs, 0.01, 10000)
    _range(p, "teacher.epochs", cfg.teacher.epochs, 0 if cfg.teacher.checkpoint else 0.01, 10000,
           "" if cfg.teacher.checkpoint else " (or give teacher.checkpoint)")
    _range(p, "teacher.lr", cfg.teacher.lr, 1e-6, 10)
    _range(p, "student.epochs", cfg.student.epochs, 0.01, 10000)
    _range(p, "optim.batch_size", cfg.optim.batch_size, 2, 8192)
    _range(p, "optim.lr", cfg.optim.lr, 1e-6, 10)
    _range(p, "optim.momentum", cfg.optim.momentum, 0, 0.999)
    _range(p, "optim.weight_decay", cfg.optim.weight_decay, 0, 0.1)
    _range(p, "seeds", cfg.seeds, 1, 20)
    _range(p, "epochs_scale", cfg.epochs_scale, 0.0001, 100)
    _range(p, "data.input_size", cfg.data.input_size, 16, 256)
    _range(p, "eval.info_batch", cfg.eval.info_batch, 16, 4096)
    _range(p, "eval.latency_runs", cfg.eval.latency_runs, 1, 100000)
    _range(p, "eval.query_batch", cfg.eval.query_batch, 1, 10 ** 6)
    if cfg.eval.max_queries is not None:
        _range(p, "eval.max_queries", cfg.eval.max_queries, 1, 10 ** 7)
    for key in ("train_per_class", "test_per_class"):
        v = getattr(cfg.data, key)
        if v is not None:
            _range(p, f"data.{key}", v, 1, 10 ** 7)
    _range(p, "data.val_per_class", cfg.data.val_per_class, 0, 10 ** 6)
    if cfg.data.dataset not in ("cifar10", "cifar100", "folder"):
        p.append(f"data.dataset must be cifar10, cifar100 or folder, got {cfg.data.dataset!r}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        p.append(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.precision not in PRECISIONS:
        p.append(f"precision must be {', '.join(PRECISIONS)} (auto: bf16 on CUDA, fp32 on the CPU), "
                 f"got {cfg.precision!r}")
    size = cfg.data.input_size
    embed = resolve_recipe(cfg).embed
    if cfg.student.arch in MODELS and 16 <= size <= 256:
        plan.student = spec_of(cfg.student.arch, 10, 1.0, size)
        n_segments = len(plan.student.stages) + (1 if embed else 0)
        if cfg.phases.indistill and ind.mode != "off":
            curriculum = check_curriculum(ind.a, ind.b, len(plan.student.stages), embed)
            p.extend(f"indistill: {msg}" for msg in curriculum)
            if not curriculum:
                plan.warmup_epochs = warmup_epochs(len(plan.student.stages), ind.a, ind.b, ind.mode, embed)
        p.extend(check_budget(cfg.budget, cfg.student.epochs, plan.warmup_epochs, ind.a, ind.b, n_segments))
    else:
        p.extend(check_budget(cfg.budget, cfg.student.epochs, 0.0, ind.a, ind.b, 1))
    if p:
        return plan
    plan.teacher = spec_of(cfg.teacher.arch, 10, 1.0, size)
    n_layers = len(plan.student.stages)
    if cfg.phases.indistill:
        plan.verdict = assess_pair(cfg.teacher.arch, cfg.student.arch, ind.aux, ind.aux_width, ind.ratio_threshold,
                                   10, size)
        if not plan.verdict.ok:
            p.append(plan.verdict.summary + (" — " + "; ".join(plan.verdict.suggestions) if plan.verdict.suggestions else ""))
    if p:
        return plan
    mode = ind.mode if cfg.phases.indistill else "off"
    recipe = resolve_recipe(cfg)
    plan.schedules = student_schedules(n_layers, cfg.student.epochs, stage2_loss(cfg)[0], a=ind.a, b=ind.b, mode=mode,
                                       embed=recipe.embed, embed_loss=ind.embed_loss, budget=cfg.budget,
                                       scale=cfg.epochs_scale,
                                       baseline_epochs=REFERENCE_BASELINE["epochs"] if recipe.baseline == "reference"
                                       else None)
    plan.schedules = {k: v for k, v in plan.schedules.items() if getattr(cfg.phases, k)}
    return plan
