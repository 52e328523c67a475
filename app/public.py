"""Public mode: what a stranger on a shared Space may ask of the server.

On a Hugging Face Space (``SPACE_ID`` is set) or with ``INDISTILL_PUBLIC=1`` the app
admits a configuration only if it reads data the server offers (the embedded sample, a
dataset under ``INDISTILL_DATA_ROOT``, the visitor's own upload, or CIFAR downloaded
into the cache), loads only shipped teacher weights, and fits the :class:`Budget`:
an estimated training time, a per-step memory estimate, a batch-size and a seed cap.
Locally (``python app.py``) none of this applies. No Gradio here: the CLI and tests use it.

The time estimate adds up what the engine runs (:class:`CostModel`): every segment's steps as
the engine counts them (at least one, at ``min(batch, training images)``), each step priced by
the trained network's measured step and per-image cost plus a forward pass of the network it
learns from, every epoch-end evaluation, every unit's final evaluation and every
architecture's profile. The per-architecture costs are measured on one CPU thread by
``bench/calibrate.py --measure`` (``assets/cost_table.json``). **Stated factor: the estimate is
within 2× either way of the measured time** of a run on this server's training thread, for every
architecture the page offers at every batch size it allows (2 … ``Budget.max_batch``);
``bench/calibrate.py`` checks it through the real engine. A refusal's "what would fit" lists
settings found by re-estimating (:func:`suggestions`), each admitted on its own.

Why a measured table rather than timing a few real steps before admitting: a probe spends
server CPU on every distinct configuration a stranger sends (and a stranger can vary them
without end), its timing follows the load of the moment (the same configuration admitted or
refused by chance), and one step of a large network at a large batch takes longer than any
probe may. The table costs nothing per request and gives the same answer every time.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import settings
from .config import ASSETS, SAMPLE_DATA, ExperimentConfig, resolve_path
from .plan import Plan
from .runfolder import slug

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
COST_TABLE = ASSETS / "cost_table.json"   # per architecture, measured by bench/calibrate.py --measure
CIFAR_COUNTS = {"cifar10": (10, 5000, 1000), "cifar100": (100, 500, 100)}  # classes, train/class, test/class


def is_public(env: dict | None = None) -> bool:
    """Public unless told otherwise on a Space; off locally unless ``INDISTILL_PUBLIC=1`` (:func:`app.settings.public`)."""
    return settings.public(env)


@dataclass(frozen=True)
class NetSpeed:
    """One architecture's measured cost on one CPU thread, at width 1 and 32 × 32 inputs
    (``bench/calibrate.py --measure``): a training step is ``train_step_s`` + batch ×
    ``train_image_s`` (forward, backward, optimizer), a forward pass over a batch without
    gradients ``fwd_batch_s`` + batch × ``fwd_image_s``. Other widths and input sizes scale
    the per-image costs by their FLOPs."""

    flops: float
    train_step_s: float
    train_image_s: float
    fwd_batch_s: float
    fwd_image_s: float

    @classmethod
    def from_flops(cls, flops: float, flops_per_s: float) -> "NetSpeed":
        """An architecture the table does not hold: costs from its FLOPs at a (slow) rate."""
        return cls(flops, 0.1, 3 * flops / flops_per_s, 0.03, flops / flops_per_s)


@functools.lru_cache(maxsize=4)
def _table(path: str, _stamp: float) -> dict[str, NetSpeed]:
    try:
        rows = json.loads(Path(path).read_text())["networks"]
        return {arch: NetSpeed(**{k: float(row[k]) for k in NetSpeed.__dataclass_fields__}) for arch, row in rows.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def speed_table(path: Path = COST_TABLE) -> dict[str, NetSpeed]:
    """The measured per-architecture table (empty if missing: every network then costs by its FLOPs)."""
    try:
        return _table(str(path), path.stat().st_mtime)
    except OSError:
        return {}


@dataclass(frozen=True)
class CostModel:
    """The engine's own costs around the networks' (seconds, one training thread), and how a run
    adds up: every segment trains ``steps_for(epochs)`` steps (at least one) at ``min(batch,
    training images)``; each step is the trained network's step, the engine's per-step and
    per-image work, and a forward pass of the network it learns from; every epoch end (and the
    unit's last step) evaluates; every unit ends with its evaluation, and every architecture
    of the run is profiled once (latency and throughput passes)."""

    engine_step_s: float = 2.5e-3   # per training step: batch stream, loss bookkeeping, events, hooks
    engine_image_s: float = 20e-6   # per training image: crop, flip, normalise
    pair_s: float = 1.2e-7          # retrieval: one query × database pair, per metric (5.8 s for 512 × 50k × 2)
    mi_flops_per_s: float = 30e9    # information estimates: Gram matrices of the information batch
    unit_s: float = 0.02            # per unit: checkpoint, results, bookkeeping
    run_s: float = 0.05             # per run: plan, data from the cache, results
    decode_s: float = 150e-6        # decoding one image (×(size/32)² when resized)
    threads_speedup: float = 1.0    # over the table's one thread (two threads: about 1.7)
    margin: float = 1.15            # over the table's best-of-repeats timings: a shared server is rarely quiet
    fallback_flops_per_s: float = 20e9  # an architecture missing from the table
    nets: dict[str, NetSpeed] | None = field(default=None, compare=False)  # None: the measured table

    def speed(self, arch: str, flops_w1: float) -> NetSpeed:
        table = speed_table() if self.nets is None else self.nets
        return table[arch] if arch in table else NetSpeed.from_flops(flops_w1, self.fallback_flops_per_s)


CPU_MODEL = CostModel(threads_speedup=1.7)   # two training threads: a 2-core machine to itself (app.report)


def cost_model() -> CostModel:
    """The cost model for this server's training threads (the table is measured on one)."""
    from .device import train_threads
    return dataclasses.replace(CPU_MODEL, threads_speedup=1.0 + 0.7 * (min(train_threads(), 2) - 1))


@dataclass(frozen=True)
class Budget:
    """Limits of one public job; each refusal names the limit it broke."""

    max_minutes: float = 10.0       # estimated run time on this server (fitted on 2 CPU cores)
    max_step_mb: float = 3072.0     # estimated activation memory of one training step
    max_batch: int = 512            # on the CPU
    max_seeds: int = 5
    max_input_size: int = 64
    max_latency_runs: int = 200
    max_info_batch: int = 512
    max_val_per_class: int = 1000
    max_aux_width: float = 4.0      # and a multiple of 0.5 (each width builds a model once)
    max_params: int = 25_000_000    # any network of the run (the auxiliary teacher grows as width²)
    max_queries: int = 10_000       # retrieval queries per evaluation
    max_queue_minutes: float = 120.0  # estimated work waiting in the queue, all sessions together


@dataclass
class Estimate:
    seconds: float
    step_mb: float
    train_images: int
    parts: dict[str, float] = field(default_factory=dict)
    fixed_seconds: float = 0.0      # evaluations and decoding: what does not shrink with the epochs
    sizes: tuple[int, int, int, int] | None = None  # (classes, train, eval, test images) it was made for

    @property
    def minutes(self) -> float:
        return self.seconds / 60


@functools.lru_cache(maxsize=128)
def _net_cost(arch: str, num_classes: int, width: float, input_size: int) -> tuple[float, float, float]:
    """(forward FLOPs, activation floats, floats of the stage outputs and embedding) of one image
    through ``arch`` (cached per shape)."""
    import torch
    from models import build_model
    from .features import FeatureTap
    from .profile import flops

    model = build_model(arch, num_classes, width).eval()
    elems = 0

    def count(_m, _i, out):
        nonlocal elems
        if isinstance(out, torch.Tensor):
            elems += out.numel()
    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    with torch.no_grad(), FeatureTap(model) as tap:
        out = tap(torch.zeros(1, 3, input_size, input_size))
    for h in hooks:
        h.remove()
    reps = sum(f.numel() for f in out.features) + out.embedding.numel()
    return float(flops(model, input_size)), float(elems), float(reps)


def estimate(cfg: ExperimentConfig, plan: Plan, num_classes: int, train_images: int, eval_images: int,
             test_images: int | None = None, model: CostModel | None = None) -> Estimate:
    """Run time (every unit's training steps as the engine counts them, its per-epoch and final
    evaluations, each architecture's profile) and step memory, from the measured table."""
    from .augment import eval_batch_for, steps_per_epoch
    from .train import steps_for

    size, n = cfg.data.input_size, num_classes
    test_images = eval_images if test_images is None else test_images
    m = model or cost_model()
    batch = max(1, min(cfg.optim.batch_size, train_images))      # as the batch stream takes it
    spe = steps_per_epoch(train_images, cfg.optim.batch_size)
    e = cfg.eval
    info = min(e.info_batch, eval_images)
    queries = min(test_images, e.max_queries or test_images)
    Net = tuple  # (arch, width)

    def flops(net: Net) -> float:
        return _net_cost(net[0], n, net[1], size)[0]

    def speed(net: Net) -> tuple[NetSpeed, float]:
        """The architecture's speed and this network's per-image scale (width, input size)."""
        s = m.speed(net[0], _net_cost(net[0], n, 1.0, 32)[0])
        return s, flops(net) / s.flops

    def forward(net: Net, images: int, per_batch: int | None = None) -> float:
        s, k = speed(net)
        per_batch = per_batch or eval_batch_for(flops(net))
        return -(-images // per_batch) * s.fwd_batch_s + images * s.fwd_image_s * k

    def step(net: Net, frozen: Net | None) -> float:
        s, k = speed(net)
        seconds = s.train_step_s + batch * s.train_image_s * k + m.engine_step_s + batch * m.engine_image_s
        return seconds + (forward(frozen, batch, batch) if frozen else 0.0)

    def information(net: Net) -> float:
        return forward(net, info) + 2 * info ** 2 * _net_cost(net[0], n, net[1], size)[2] / m.mi_flops_per_s

    profiled: set = set()

    def evaluation(net: Net) -> float:
        """A unit's final evaluation, and its architecture's profile the first time it is seen."""
        seconds = m.unit_s + forward(net, test_images) + (information(net) if e.info_flow else 0.0)
        if e.retrieval:
            seconds += forward(net, train_images) + 2 * queries * train_images * m.pair_s
        if net not in profiled:
            profiled.add(net)
            seconds += forward(net, e.latency_runs + 12, 1) + forward(net, 13 * 256, 256)
        return seconds

    def unit(net: Net, segments: list[tuple[float, Net | None]], compare: bool = False) -> tuple[float, float]:
        """(training with its per-epoch evaluations, final evaluation) of one unit."""
        steps = [steps_for(epochs, spe) for epochs, _ in segments]
        total = sum(steps)
        epoch_ends = total // spe + (1 if total % spe else 0)
        per_epoch = forward(net, eval_images) + (information(net) if e.info_flow or compare else 0.0)
        train = sum(k * step(net, frozen) for k, (_, frozen) in zip(steps, segments))
        return train + epoch_ends * per_epoch, evaluation(net)

    parts: dict[str, float] = {}
    fixed = m.run_s
    teacher: Net = (cfg.teacher.arch, 1.0)
    student: Net = (cfg.student.arch, 1.0)
    reference = cfg.indistill.procedure == "reference"
    t_epochs = 0.0 if cfg.teacher.checkpoint else cfg.scaled(cfg.teacher.epochs)
    train, final = unit(teacher, [(t_epochs, None)])
    parts["teacher"], fixed = train + final, fixed + final
    pruned = teacher
    if plan.use_aux:
        aux: Net = (cfg.student.arch, cfg.indistill.aux_width)
        ind = cfg.indistill
        ep = 0.0 if ind.aux_checkpoint else cfg.scaled(ind.aux_epochs if ind.aux_epochs is not None else cfg.student.epochs)
        train, final = unit(aux, [(ep, None), (ep, teacher)] if reference else [(ep, teacher)])
        parts["aux"], fixed, pruned = train + final, fixed + final, aux
    stage2 = pruned if reference else teacher
    warm = cfg.phases.indistill
    if warm:
        fixed += information(pruned)          # the flow reference, once per run
    for arm, schedule in plan.schedules.items():
        frozen = {"kd": stage2, "ce": None}
        train, final = unit(student, [(p.epochs, frozen.get(p.kind, pruned)) for p in schedule], compare=warm)
        parts[arm] = (train + final) * cfg.seeds
        fixed += final * cfg.seeds
    parts["data"] = (train_images + test_images + eval_images) * m.decode_s * (size / 32) ** 2
    fixed += parts["data"]
    scale = m.margin / m.threads_speedup
    b = cfg.optim.batch_size
    def activations(net: Net) -> float:
        return _net_cost(net[0], n, net[1], size)[1]
    step_floats = 2 * activations(student) + activations(teacher) + (activations(pruned) if plan.use_aux else 0.0)
    if not cfg.teacher.checkpoint:
        step_floats = max(step_floats, 2 * activations(teacher))
    return Estimate(seconds=scale * (sum(parts.values()) + m.run_s), step_mb=b * step_floats * 4 / 1e6,
                    train_images=train_images, parts={k: round(scale * v, 1) for k, v in parts.items()},
                    fixed_seconds=scale * fixed, sizes=(num_classes, train_images, eval_images, test_images))


def estimate_config(cfg: ExperimentConfig, sizes: tuple[int, int, int, int] | None = None,
                    plan: Plan | None = None) -> Estimate:
    """:func:`estimate` of ``cfg`` (its plan and dataset size found when not given)."""
    from .plan import make_plan
    return estimate(cfg, plan or make_plan(cfg), *(sizes or dataset_size(cfg)))


def _limit_problems(cfg: ExperimentConfig, est: Estimate, budget: Budget) -> list[str]:
    """The caps ``cfg`` and its estimate break, without what would fit."""
    problems = []
    if cfg.optim.batch_size > budget.max_batch:
        problems.append(f"optim.batch_size {cfg.optim.batch_size} is over the public limit of {budget.max_batch} "
                        f"on the CPU; use {budget.max_batch} or less")
    if cfg.seeds > budget.max_seeds:
        problems.append(f"seeds {cfg.seeds} is over the public limit of {budget.max_seeds}")
    if est.step_mb > budget.max_step_mb:
        fit = max(1, int(cfg.optim.batch_size * budget.max_step_mb / est.step_mb))  # memory is linear in the batch
        problems.append(f"one training step needs about {est.step_mb:,.0f} MB of activations, over the public limit "
                        f"of {budget.max_step_mb:,.0f} MB; a batch size of {fit} or less would fit it")
    if est.seconds > budget.max_minutes * 60:
        problems.append(f"this run is estimated at {est.minutes:.1f} min on this server, over the public limit of "
                        f"{budget.max_minutes:g} min ({_breakdown(cfg, est)})")
    return problems


def _breakdown(cfg: ExperimentConfig, est: Estimate) -> str:
    """Where the estimated time goes, e.g. 'teacher 95.1 min, baseline 16.0 min over 5 seeds'."""
    seeds = f" over {cfg.seeds} seeds" if cfg.seeds > 1 else ""
    return ", ".join(f"{name} {seconds / 60:.1f} min" + (seeds if name not in ("teacher", "aux", "data") else "")
                     for name, seconds in est.parts.items() if seconds >= 3)


def _largest(admitted: Callable[[float], bool], low: float, high: float, integer: bool) -> float | None:
    """The largest value in [low, high) that ``admitted`` (monotone: true below some value) accepts,
    by bisection; integers exactly, other values to about 0.1 % and then rounded down to 3 significant
    digits (as the refusal prints them), checked again. None when not even ``low`` is admitted."""
    if not admitted(low):
        return None
    lo, hi = low, high
    for _ in range(40):
        if (hi - lo <= 1) if integer else (hi - lo <= 1e-3 * hi):
            break
        mid = (lo + hi) // 2 if integer else (lo + hi) / 2
        lo, hi = (mid, hi) if admitted(mid) else (lo, mid)
    if integer:
        return int(lo)
    shown = float(f"{lo:.3g}")
    while shown > lo:  # rounded up by the 3 digits: step down to a printed value below lo
        shown = float(f"{shown - 10 ** (math.floor(math.log10(shown)) - 2):.3g}")
    return shown if shown > 0 and admitted(shown) else None


def suggestions(cfg: ExperimentConfig, est: Estimate, budget: Budget) -> dict[str, float | int]:
    """Settings that, each changed alone, make an over-budget run admitted: config path → value,
    each found by re-estimating (bisection over that setting) and checked by the same rules."""
    from .plan import make_plan
    if est.sizes is None:
        return {}
    plan = make_plan(cfg)

    def fits(changes: dict, replan: bool = False, resize: bool = False) -> bool:
        c = cfg.with_overrides(changes)
        again = estimate_config(c, None if resize else est.sizes, None if replan else plan)
        return not _limit_problems(c, again, budget)
    out: dict[str, float | int] = {}
    over_time = est.seconds > budget.max_minutes * 60
    if over_time and cfg.student.epochs > 0:
        v = _largest(lambda x: fits({"student.epochs": x}, replan=True), min(0.01, cfg.student.epochs),
                     cfg.student.epochs, False)
        if v is not None:
            out["student.epochs"] = v
    if over_time and not cfg.teacher.checkpoint and cfg.teacher.epochs > 0:
        v = _largest(lambda x: fits({"teacher.epochs": x}), min(0.01, cfg.teacher.epochs), cfg.teacher.epochs, False)
        if v is not None:
            out["teacher.epochs"] = v
    if over_time and cfg.seeds > 1:
        v = _largest(lambda k: fits({"seeds": int(k)}), 1, min(cfg.seeds, budget.max_seeds + 1), True)
        if v is not None:
            out["seeds"] = int(v)
    if over_time and est.train_images > 1:
        per_class = cfg.data.train_per_class or -(-est.train_images // max(est.sizes[0], 1)) + 1  # 0: every image
        v = _largest(lambda k: fits({"data.train_per_class": int(k)}, resize=True), 1, per_class, True)
        if v is not None:
            out["data.train_per_class"] = int(v)
    if est.step_mb > budget.max_step_mb and cfg.optim.batch_size > 2:
        v = _largest(lambda k: fits({"optim.batch_size": int(k)}), 2, cfg.optim.batch_size, True)
        if v is not None:
            out["optim.batch_size"] = int(v)
    return out


SUGGESTION_WORDS = {"student.epochs": "student epochs {}", "teacher.epochs": "teacher epochs {}", "seeds": "seeds {}",
                    "data.train_per_class": "train images per class {}", "optim.batch_size": "batch size {}"}


def check_budget(cfg: ExperimentConfig, est: Estimate, budget: Budget) -> list[str]:
    """Refusals (each names the limit); when the run is over the time or memory limit, what would fit:
    settings that, each changed alone, are admitted (:func:`suggestions`)."""
    problems = _limit_problems(cfg, est, budget)
    over = est.seconds > budget.max_minutes * 60 or est.step_mb > budget.max_step_mb
    if not over or cfg.optim.batch_size > budget.max_batch or cfg.seeds > budget.max_seeds:
        return problems
    fits = suggestions(cfg, est, budget)
    if fits:
        problems.append("what would fit (each alone): " + ", or ".join(
            SUGGESTION_WORDS[k].format(f"{v:g}" if isinstance(v, float) else v) for k, v in fits.items()))
    elif est.sizes is not None:
        problems.append(f"evaluating every unit alone takes about {est.fixed_seconds / 60:.1f} min: fewer test "
                        "images, eval.retrieval=false, or smaller networks")
    return problems


# ---------------------------------------------------------------- data the server offers

def data_root() -> Path | None:
    """``INDISTILL_DATA_ROOT``: the folder whose datasets a public server offers by name."""
    root = settings.read("INDISTILL_DATA_ROOT")
    return Path(root).expanduser().resolve() if root else None


def offered_datasets(root: Path | None = None) -> dict[str, Path]:
    """Name → path of every dataset directly under the data root (folders with train/, archives)."""
    root = data_root() if root is None else root
    out: dict[str, Path] = {}
    if root is None or not root.is_dir():
        return out
    for entry in sorted(root.iterdir()):
        name = entry.name
        for suffix in ARCHIVE_SUFFIXES:
            name = name.removesuffix(suffix)
        if (entry.is_dir() and (entry / "train").is_dir()) or (entry.is_file() and entry.name.endswith(ARCHIVE_SUFFIXES[:3])):
            out[slug(name)] = entry
    return out


def shipped_teacher_files() -> set[Path]:
    return {p.resolve() for p in (ASSETS / "teachers").glob("*.pt")}


def network_problems(cfg: ExperimentConfig, budget: Budget) -> list[str]:
    """Size caps checked before anything is built (a wide auxiliary teacher can take GBs to build)."""
    from models import MODELS
    problems = []
    width = cfg.indistill.aux_width
    if not (1 <= width <= budget.max_aux_width) or (width * 2) != int(width * 2):
        problems.append(f"indistill.aux_width {width:g} is not allowed on a public server: use 1 to "
                        f"{budget.max_aux_width:g} in steps of 0.5")
    for role, arch in (("teacher", cfg.teacher.arch), ("student", cfg.student.arch)):
        if arch in MODELS:
            aux = role == "student" and cfg.phases.indistill and cfg.indistill.aux != "off"
            params = _params(arch) * (width ** 2 if aux else 1)
            if params > budget.max_params:
                what = f"the auxiliary teacher ({arch} × {width:g})" if role == "student" else f"the {role} {arch}"
                problems.append(f"{what} has about {params / 1e6:.0f} M parameters, over the public limit of "
                                f"{budget.max_params / 1e6:.0f} M")
    return problems


@functools.lru_cache(maxsize=64)
def _params(arch: str) -> int:
    from models import build_model
    from .profile import param_count
    return param_count(build_model(arch, 10, 1.0))


def admit(cfg: ExperimentConfig, allowed_data: set[Path], budget: Budget) -> list[str]:
    """Settings a public visitor may not use (paths the server does not offer, caps); empty if none."""
    problems = network_problems(cfg, budget)
    d = cfg.data
    if d.cache_dir is not None:
        problems.append("data.cache_dir cannot be set on a public server (decoded data goes to the server's cache)")
    if d.dataset in CIFAR_COUNTS:
        if d.data_dir is not None:
            problems.append(f"data.data_dir cannot be set for {d.dataset} on a public server: it is downloaded into "
                            "the server's cache; pick the dataset by name")
    elif d.data_dir is None or Path(d.data_dir).expanduser().resolve() not in allowed_data:
        problems.append("data: on a public server pick the embedded sample, a dataset offered by name, or upload "
                        "your own (a .zip or .tar.gz of an ImageFolder tree); server paths are not accepted")
    for key, path in (("teacher.checkpoint", cfg.teacher.checkpoint),
                      ("indistill.aux_checkpoint", cfg.indistill.aux_checkpoint)):
        if path and resolve_path(path).resolve() not in shipped_teacher_files():  # no server path is ever opened
            problems.append(f"{key}: on a public server only the shipped teachers can be loaded "
                            f"({', '.join(sorted(p.stem for p in shipped_teacher_files())) or 'none shipped'})")
    if cfg.device == "cuda":
        problems.append("device: use auto on a public server")
    for name, value, limit in (("data.input_size", d.input_size, budget.max_input_size),
                               ("eval.latency_runs", cfg.eval.latency_runs, budget.max_latency_runs),
                               ("eval.info_batch", cfg.eval.info_batch, budget.max_info_batch),
                               ("data.val_per_class", d.val_per_class, budget.max_val_per_class),
                               ("eval.max_queries", cfg.eval.max_queries or 0, budget.max_queries)):
        if value > limit:
            problems.append(f"{name} {value} is over the public limit of {limit}")
    return problems


def base_allowed_data() -> set[Path]:
    return {SAMPLE_DATA.resolve(), *(p.resolve() for p in offered_datasets().values())}


# ---------------------------------------------------------------- sizes, from listings only

@functools.lru_cache(maxsize=32)
def _class_counts(path: str, _stamp: tuple) -> tuple[dict[str, int], dict[str, int]]:
    """Images per class in train/ and test/ (or val/) of a folder or archive, read from names only."""
    import tarfile
    from .data import IMAGE_EXTS, TEST_DIRS

    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}

    def add(parts: tuple[str, ...]) -> None:
        if len(parts) >= 3 and Path(parts[-1]).suffix.lower() in IMAGE_EXTS and not parts[-1].startswith("."):
            split = "train" if parts[-3] == "train" else "test" if parts[-3] in TEST_DIRS else None
            if split:
                counts[split][parts[-2]] = counts[split].get(parts[-2], 0) + 1
    p = Path(path)
    if p.is_dir():
        for f in p.glob("*/*/*"):
            add(f.relative_to(p).parts)
    else:
        with tarfile.open(p, "r:*") as tar:
            for member in tar:
                if member.isfile():
                    add(Path(member.name).parts)
    return counts["train"], counts["test"]


def dataset_size(cfg: ExperimentConfig) -> tuple[int, int, int, int]:
    """(classes, training images, images evaluated each epoch, test images) the config selects, without decoding."""
    from .data import TRAIN_PROBE, held_out
    d = cfg.data
    if d.dataset in CIFAR_COUNTS and (d.data_dir is None or not Path(d.data_dir).exists()):
        classes, tr, te = CIFAR_COUNTS[d.dataset]
        train, test = {i: tr for i in range(classes)}, {i: te for i in range(classes)}
    else:
        path = Path(d.data_dir).expanduser()
        st = path.stat()
        train, test = _class_counts(str(path.resolve()), (st.st_mtime_ns, st.st_size))
    val = d.val_per_class or 0
    n_train = sum(max(0, min(c - held_out(c, val), d.train_per_class or c)) for c in train.values())
    n_test = sum(min(c, d.test_per_class or c) for c in test.values())
    n_eval = sum(held_out(c, val) for c in train.values()) if val else min(TRAIN_PROBE, n_train)
    return len(train), n_train, n_eval, n_test
