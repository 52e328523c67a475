"""Public mode: what a stranger on a shared Space may ask of the server.

On a Hugging Face Space (``SPACE_ID`` is set) or with ``INDISTILL_PUBLIC=1`` the app
admits a configuration only if it reads data the server offers (the embedded sample, a
dataset under ``INDISTILL_DATA_ROOT``, the visitor's own upload, or CIFAR downloaded
into the cache), loads only shipped teacher weights, and fits the :class:`Budget`:
an estimated training time, a per-step memory estimate, a batch-size and a seed cap.
Locally (``python app.py``) none of this applies. No Gradio here: the CLI and tests use it.

The time estimate is a cost model fitted on a 2-core CPU (see :data:`CPU_MODEL`):
each image seen in training costs a fixed overhead plus its forward+backward FLOPs at
an effective rate; frozen networks (teacher, auxiliary teacher) cost one forward pass.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from .config import ASSETS, SAMPLE_DATA, ExperimentConfig
from .plan import Plan
from .runfolder import slug

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
CIFAR_COUNTS = {"cifar10": (10, 5000, 1000), "cifar100": (100, 500, 100)}  # classes, train/class, test/class


def is_public(env: dict | None = None) -> bool:
    """Public unless told otherwise on a Space; off locally unless ``INDISTILL_PUBLIC=1``."""
    env = os.environ if env is None else env
    flag = env.get("INDISTILL_PUBLIC", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    return flag in ("1", "true", "yes", "on") or bool(env.get("SPACE_ID"))


@dataclass(frozen=True)
class CostModel:
    """Seconds per training image = ``overhead_s`` + ``step_s`` / batch + FLOPs / ``flops_per_s`` (per
    network), plus each unit's evaluation (forward passes, retrieval ranking, latency) and data decoding."""

    overhead_s: float = 169e-6      # per image: augmentation, Python (with step_s/128: the 200 µs measured at batch 128)
    step_s: float = 4e-3            # per optimizer step whatever its batch: hooks, events, the optimizer, Python.
    #                                 Measured: 12 ms a step at batch 2 beside a 2-thread study (about twice the load
    #                                 of a quiet machine), and a 200-epoch batch-2 workshop run's 54-min ETA (≈ 4 ms)
    flops_per_s: float = 100e9      # effective fp32 rate of small CNNs on 2 cores: measured 125 GFLOP/s
    backward_factor: float = 3.0    # forward + backward ≈ 3 forward passes
    pair_s: float = 1.2e-7          # retrieval: one query × database pair, per metric (5.8 s for 512 × 50k × 2)
    unit_s: float = 2.0             # latency/throughput timing and bookkeeping of one unit
    decode_s: float = 150e-6        # decoding one image (×(size/32)² when resized)


# Fitted on this project's 2-core VM, 2 threads: CNN 8/16/32 6,800 img/s and ResNet-20 479 img/s (fwd+bwd,
# batch 128). With fewer training threads (a public server keeps a core for its pages) the FLOP rate scales down.
CPU_MODEL = CostModel()


def cost_model() -> CostModel:
    """The CPU cost model for this server's training threads (fitted at 2)."""
    from .device import train_threads
    return dataclasses.replace(CPU_MODEL, flops_per_s=CPU_MODEL.flops_per_s * min(train_threads(), 2) / 2)


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

    @property
    def minutes(self) -> float:
        return self.seconds / 60


@functools.lru_cache(maxsize=64)
def _net_cost(arch: str, num_classes: int, width: float, input_size: int) -> tuple[float, float]:
    """(forward FLOPs, activation floats) of one image through ``arch`` (cached per shape)."""
    import torch
    from models import build_model
    from .profile import flops

    model = build_model(arch, num_classes, width).eval()
    elems = 0

    def count(_m, _i, out):
        nonlocal elems
        if isinstance(out, torch.Tensor):
            elems += out.numel()
    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    for h in hooks:
        h.remove()
    return float(flops(model, input_size)), float(elems)


def estimate(cfg: ExperimentConfig, plan: Plan, num_classes: int, train_images: int, eval_images: int,
             test_images: int | None = None, model: CostModel | None = None) -> Estimate:
    """Training time (every phase, arm and seed, plus per-epoch evaluation) and step memory."""
    size, n = cfg.data.input_size, num_classes
    test_images = eval_images if test_images is None else test_images
    model = model or cost_model()

    def cost(arch: str, width: float = 1.0) -> tuple[float, float]:
        return _net_cost(arch, n, width, size)

    per_step = model.step_s / max(1, min(cfg.optim.batch_size, train_images))  # small batches pay it more often

    def train_s(arch: str, width: float = 1.0) -> float:
        return model.overhead_s + per_step + model.backward_factor * cost(arch, width)[0] / model.flops_per_s

    def fwd_s(arch: str, width: float = 1.0) -> float:
        return cost(arch, width)[0] / model.flops_per_s

    teacher, student = cfg.teacher.arch, cfg.student.arch
    aux_width = cfg.indistill.aux_width
    queries = min(test_images, cfg.eval.max_queries or test_images)

    def evaluation(arch: str, width: float = 1.0) -> float:
        """One unit's final evaluation: test (and, for retrieval, training) forward passes and ranking."""
        seconds = model.unit_s + test_images * fwd_s(arch, width)
        if cfg.eval.retrieval:
            seconds += train_images * fwd_s(arch, width) + 2 * queries * train_images * model.pair_s
        return seconds

    parts: dict[str, float] = {}
    fixed = evaluation(teacher)
    parts["teacher"] = evaluation(teacher)
    if not cfg.teacher.checkpoint:
        ep = cfg.scaled(cfg.teacher.epochs)
        parts["teacher"] += ep * (train_images * train_s(teacher) + eval_images * fwd_s(teacher))
    reference = cfg.indistill.procedure == "reference"
    if plan.use_aux:
        ep = cfg.scaled(cfg.indistill.aux_epochs if cfg.indistill.aux_epochs is not None else cfg.student.epochs)
        ep = 0.0 if cfg.indistill.aux_checkpoint else ep * (2 if reference else 1)  # reference: CE, then PKT
        fixed += evaluation(student, aux_width)
        parts["aux"] = evaluation(student, aux_width) + ep * (
            train_images * (train_s(student, aux_width) + fwd_s(teacher)) + eval_images * fwd_s(student, aux_width))
    pruned = (student, aux_width) if plan.use_aux else (teacher, 1.0)
    stage2 = pruned if reference else (teacher, 1.0)
    for arm, schedule in plan.schedules.items():
        per_seed = evaluation(student)
        for p in schedule:
            frozen = {"kd": fwd_s(*stage2), "ce": 0.0}.get(p.kind, fwd_s(*pruned))
            per_seed += p.epochs * (train_images * (train_s(student) + frozen) + eval_images * fwd_s(student))
        parts[arm] = per_seed * cfg.seeds
        fixed += evaluation(student) * cfg.seeds
    parts["data"] = (train_images + test_images + eval_images) * model.decode_s * (size / 32) ** 2
    fixed += parts["data"]
    b = cfg.optim.batch_size
    step_floats = 2 * cost(student)[1] + cost(teacher)[1] + (cost(*pruned)[1] if plan.use_aux else 0.0)
    if not cfg.teacher.checkpoint:
        step_floats = max(step_floats, 2 * cost(teacher)[1])
    return Estimate(seconds=sum(parts.values()), step_mb=b * step_floats * 4 / 1e6, train_images=train_images,
                    parts={k: round(v, 1) for k, v in parts.items()}, fixed_seconds=fixed)


def check_budget(cfg: ExperimentConfig, est: Estimate, budget: Budget) -> list[str]:
    """Refusals (each names the limit and what would fit); empty when the job fits."""
    problems = []
    if cfg.optim.batch_size > budget.max_batch:
        problems.append(f"optim.batch_size {cfg.optim.batch_size} is over the public limit of {budget.max_batch} "
                        f"on the CPU; use {budget.max_batch} or less")
    if cfg.seeds > budget.max_seeds:
        problems.append(f"seeds {cfg.seeds} is over the public limit of {budget.max_seeds}")
    if est.step_mb > budget.max_step_mb:
        fit = int(cfg.optim.batch_size * budget.max_step_mb / est.step_mb)
        problems.append(f"one training step needs about {est.step_mb:,.0f} MB of activations, over the public limit "
                        f"of {budget.max_step_mb:,.0f} MB; a batch size of {max(fit, 1)} or less would fit")
    limit_s = budget.max_minutes * 60
    if est.seconds > limit_s:
        f = limit_s / est.seconds
        fits = []
        if est.fixed_seconds < 0.8 * limit_s:
            g = (limit_s - est.fixed_seconds) / max(est.seconds - est.fixed_seconds, 1e-9)
            fits.append(f"every epoch count × {g:.2g} (e.g. student epochs {cfg.student.epochs * g:.3g})")
        else:
            fits.append(f"evaluating every unit alone takes about {est.fixed_seconds / 60:.1f} min: fewer test "
                        "images, or eval.retrieval=false")
        if cfg.seeds > 1:
            fits.append(f"seeds {max(1, int(cfg.seeds * f))}")
        if est.train_images:
            fits.append(f"about {int(est.train_images * f):,} training images")
        problems.append(f"this run is estimated at {est.minutes:.1f} min on this server, over the public limit of "
                        f"{budget.max_minutes:g} min; what would fit: " + ", or ".join(fits))
    return problems


# ---------------------------------------------------------------- data the server offers

def data_root() -> Path | None:
    root = os.environ.get("INDISTILL_DATA_ROOT", "").strip()
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
        if path and Path(path).resolve() not in shipped_teacher_files():  # no server path is ever opened
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
    from .data import held_out
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
    n_eval = sum(held_out(c, val) for c in train.values()) if val else n_test
    return len(train), n_train, n_eval, n_test
