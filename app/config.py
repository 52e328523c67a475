"""Experiment configuration: typed sections, presets, ``key=value`` overrides, validation.

A config is plain data (``to_dict``/``from_dict`` round-trip through JSON), so the CLI,
the app's export/import and the run folder all use the same format.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SAMPLE_DATA = ASSETS / "sample" / "cifar10-sample.tar.gz"
SHIPPED_PREFIX = "assets/"   # a recorded path starting so names a file the app ships, in any checkout


def _shipped_file(path: str) -> Path | None:
    """The file of this checkout's ``assets/`` that ``path`` names, or None (see :func:`resolve_path`)."""
    p = Path(path)
    if not p.is_absolute():
        rest = p.parts[1:] if p.parts[:1] == ("assets",) else None
    else:
        try:
            rest = p.resolve().relative_to(ASSETS).parts
        except ValueError:  # another checkout's asset (an old record): taken only when that file is gone
            i = max((i for i, part in enumerate(p.parts) if part == "assets"), default=None)
            rest = p.parts[i + 1:] if i is not None and not p.exists() and ASSETS.joinpath(*p.parts[i + 1:]).is_file() \
                else None
    if not rest or ".." in rest:
        return None
    return ASSETS.joinpath(*rest)


def recorded_path(path: str | None) -> str | None:
    """How a checkpoint path is written into a config or results: a file the app ships as
    ``assets/<its path inside assets>`` (however it was given, old absolute records included),
    anything else as given."""
    if not isinstance(path, str) or not path:
        return path
    shipped = _shipped_file(path)
    return path if shipped is None else SHIPPED_PREFIX + shipped.relative_to(ASSETS).as_posix()


def recorded_config(config: dict) -> dict:
    """A config dict (as written in config.json or results.json) with its checkpoint paths as
    :func:`recorded_path` writes them: what the results library and the committed studies hold."""
    out = copy.deepcopy(config)
    for section, key in (("teacher", "checkpoint"), ("indistill", "aux_checkpoint")):
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section][key] = recorded_path(out[section][key])
    return out


def resolve_path(path: str | Path) -> Path:
    """The file a recorded checkpoint path names (the one rule every reader applies): ``assets/…``
    is in this checkout's assets folder, whatever the working directory; an absolute path that
    another checkout recorded (``…/assets/teachers/x.pt``, no longer there) is this checkout's
    shipped file; anything else as given (a relative path from the working directory)."""
    return _shipped_file(str(path)) or Path(path)


class ConfigError(ValueError):
    """A setting is unknown or out of range; the message names it and what is accepted."""


@dataclass
class DataConfig:
    dataset: str = "cifar10"          # cifar10 | cifar100 | folder
    data_dir: str | None = None       # folder/archive, or a folder holding torchvision's CIFAR files
    cache_dir: str | None = None      # default: $INDISTILL_CACHE or ~/.cache/indistill
    download: bool = True
    train_per_class: int | None = None
    test_per_class: int | None = None
    val_per_class: int = 0            # held out of train, watched every epoch (every preset sets one)
    input_size: int = 32


@dataclass
class OptimConfig:
    batch_size: int = 128
    lr: float = 0.05                  # SGD, cosine-annealed over each phase
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True              # random crop (pad 4) + horizontal flip


@dataclass
class TeacherConfig:
    arch: str = "resnet56"
    checkpoint: str | None = None     # load instead of training (a shipped one recorded as assets/…)
    epochs: float = 240.0
    lr: float = 0.1

    def __post_init__(self) -> None:
        self.checkpoint = recorded_path(self.checkpoint)


@dataclass
class StudentConfig:
    arch: str = "resnet20"
    epochs: float = 240.0             # stage-2 (KD + CE) epochs; every arm's total under budget=within


@dataclass
class KDConfig:
    loss: str = "kd"
    params: dict[str, float] = field(default_factory=dict)


@dataclass
class InDistillConfig:
    enabled: bool = True
    a: float = 2.0                    # S_l = a + b·l epochs for layer l (1-based)
    b: float = 1.0
    mode: str = "curriculum"          # curriculum | joint | off
    embed: bool | None = None         # then the embedding layer with embed_loss (None: the procedure's choice)
    embed_loss: str = "pkt_indistill"
    lr: float = 1e-3                  # Adam during warm-up (loss scales differ by layer)
    aux: str = "auto"                 # auto | on | off
    aux_width: float = 2.0
    aux_epochs: float | None = None   # default: student.epochs
    aux_loss: str = "kd"              # studio procedure: the auxiliary teacher's KD loss
    aux_checkpoint: str | None = None  # load the auxiliary teacher instead of training it (the grid shares one)
    ratio_threshold: float = 4.0      # teacher/student width ratio above which auto uses an aux
    procedure: str = "studio"         # studio | reference (see README: "Procedures")

    def __post_init__(self) -> None:
        self.aux_checkpoint = recorded_path(self.aux_checkpoint)


@dataclass
class RecipeConfig:
    """How student units are optimised. ``None`` takes the value of ``indistill.procedure``
    (``app.recipe.PROCEDURE_RECIPES``: studio or the InDistill reference code)."""
    optimizer: str | None = None      # sgd | adam: the KD arms' stage 2 (studio: sgd, reference: adam)
    lr: float | None = None           # its learning rate (studio: optim.lr, reference: 1e-3)
    schedule: str | None = None       # segment-cosine (restarts per segment) | cosine | step (one schedule per unit)
    step_epoch: float | None = None   # step: the unit epoch from which lr × step_factor (reference: 60)
    step_factor: float | None = None  # reference: 0.1
    fresh_optimizer: str | None = None  # segment | epoch: re-create the optimizer at every segment or epoch start
    targets: str | None = None        # teacher-bn | batch-gamma: how the pruned network computes its targets
    baseline: str | None = None       # equal (the KD arms' optimizer, schedule and total epochs) | reference


@dataclass
class PhasesConfig:
    baseline: bool = True
    kd: bool = True
    indistill: bool = True


@dataclass
class EvalConfig:
    retrieval: bool = True
    info_flow: bool = True
    info_batch: int = 256
    latency_runs: int = 50
    max_queries: int | None = None    # retrieval queries (test images); None = all
    query_batch: int = 128            # query batch of the reference-compatible mAP


@dataclass
class ExperimentConfig:
    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    indistill: InDistillConfig = field(default_factory=InDistillConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    phases: PhasesConfig = field(default_factory=PhasesConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seeds: int = 1
    budget: str = "added"             # what student.epochs counts (app.schedule): added (KD epochs, warm-up on
                                      # top, every arm as long), within (every arm's total, warm-up included),
                                      # unequal (KD epochs; only InDistill trains the warm-up longer)
    device: str = "auto"              # auto | cpu | cuda
    precision: str = "auto"           # auto | fp32 | bf16 (auto: bf16 autocast on CUDA, fp32 on the CPU)
    epochs_scale: float = 1.0

    # ------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        """The config ``d`` describes; a config written before ``budget`` existed holds
        ``equal_epochs`` instead and is read with the same schedules (:func:`budget_of_equal_epochs`)."""
        if isinstance(d, dict) and LEGACY_EQUAL_EPOCHS in d:
            d = dict(d)
            budget = budget_of_equal_epochs(d.pop(LEGACY_EQUAL_EPOCHS))
            if d.setdefault("budget", budget) != budget:
                raise ConfigError(f"{LEGACY_EQUAL_EPOCHS} (the old setting, read as budget={budget!r}) contradicts "
                                  f"budget={d['budget']!r}; give budget alone")
        return _build(cls, d, "")

    def copy(self) -> "ExperimentConfig":
        return copy.deepcopy(self)

    def with_overrides(self, items: list[str] | dict[str, Any]) -> "ExperimentConfig":
        """A copy with ``section.key=value`` overrides applied (values parsed by type)."""
        pairs = items.items() if isinstance(items, dict) else (_split_pair(s) for s in items)
        d = self.to_dict()
        for key, value in pairs:
            if key == LEGACY_EQUAL_EPOCHS:
                key, value = "budget", budget_of_equal_epochs(value)
            _assign(d, key, value)
        return ExperimentConfig.from_dict(d)

    def scaled(self, epochs: float) -> float:
        return epochs * self.epochs_scale


LEGACY_EQUAL_EPOCHS = "equal_epochs"   # the bool that ``budget`` replaced (old configs, studies, the library)


def budget_of_equal_epochs(value: Any) -> str:
    """The ``budget`` that the old ``equal_epochs`` setting meant: true → added (baseline and KD
    as long as warm-up + KD), false → unequal."""
    return "added" if _coerce(value, bool, LEGACY_EQUAL_EPOCHS) else "unequal"


def _split_pair(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. indistill.a=3)")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def _assign(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for i, p in enumerate(parts[:-1]):
        if not isinstance(node, dict) or p not in node:
            raise ConfigError(f"unknown setting {key!r}: {'.'.join(parts[:i + 1])!r} does not exist; sections: "
                              f"{', '.join(k for k, v in d.items() if isinstance(v, dict))}")
        node = node[p]
    if not isinstance(node, dict):
        raise ConfigError(f"unknown setting {key!r}")
    leaf = parts[-1]
    if leaf not in node and not (len(parts) >= 2 and parts[-2] == "params"):
        raise ConfigError(f"unknown setting {key!r}; {'.'.join(parts[:-1]) or 'top level'} accepts: {', '.join(node)}")
    node[leaf] = value


def _coerce(value: Any, typ: Any, where: str) -> Any:
    text = isinstance(value, str)
    opt = typ in (int | None, float | None, str | None, bool | None)
    if opt and (value is None or (text and value.lower() in ("none", "null", ""))):
        return None
    base = {int | None: int, float | None: float, str | None: str, bool | None: bool}.get(typ, typ)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if text and value.lower() in ("true", "1", "yes", "on"):
                return True
            if text and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if base is int:
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if base is float:
            return float(value)
        if base is str:
            return str(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        pass
    else:
        return value
    raise ConfigError(f"{where} must be {getattr(base, '__name__', base)}{' or none' if opt else ''}, got {value!r}")


def _build(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'} must be an object, got {type(d).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(prefix + u for u in unknown)}; accepted: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        typ, value, where = hints[f.name], d[f.name], prefix + f.name
        if dataclasses.is_dataclass(typ):
            kwargs[f.name] = _build(typ, value, where + ".")
        elif typ == dict[str, float]:
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be an object of name: number")
            kwargs[f.name] = {k: _coerce(v, float, f"{where}.{k}") for k, v in value.items()}
        else:
            kwargs[f.name] = _coerce(value, typ, where)
    return cls(**kwargs)


# ---------------------------------------------------------------- presets

# Every preset holds out a validation split of the training images (``data.val_per_class``:
# 10 % of the per-class training count — 30 of the sample's 300, 40 beside quick-cpu's 400,
# 500 of CIFAR's 5,000): per-epoch curves and the information batch use it, and the test
# split is used once, at the end of each unit.
PRESETS: dict[str, dict[str, Any]] = {
    "workshop": {
        "summary": "Shipped CNN 16/32/64 teacher → CNN 8/16/32 on the embedded CIFAR-10 sample; ~1.5 min on 2 CPU cores",
        "data.dataset": "folder", "data.data_dir": str(SAMPLE_DATA),
        "teacher.arch": "cnn_16_32_64", "teacher.checkpoint": SHIPPED_PREFIX + "teachers/cnn_16_32_64.pt",
        "teacher.epochs": 0, "student.arch": "cnn_8_16_32", "student.epochs": 39, "budget": "within",
        "indistill.a": 1.0, "indistill.b": 0.5, "eval.latency_runs": 50, "data.val_per_class": 30,
    },
    "quick-cpu": {
        "summary": "CNN 16/32/64 → CNN 8/16/32 on 400 images/class; a few minutes on 2 CPU cores",
        "teacher.arch": "cnn_16_32_64", "teacher.epochs": 15, "teacher.lr": 0.05,
        "student.arch": "cnn_8_16_32", "student.epochs": 8,
        "data.train_per_class": 400, "data.test_per_class": 100,
        "indistill.a": 1.0, "indistill.b": 0.5, "optim.batch_size": 128,
        "eval.latency_runs": 50, "data.val_per_class": 40,
    },
    "paper-cnn": {
        "summary": "InDistill reference: ResNet-18 → auxiliary CNN 16/32/64 → CNN 8/16/32",
        "teacher.arch": "resnet18", "teacher.epochs": 200, "teacher.lr": 0.1,
        "student.arch": "cnn_8_16_32", "student.epochs": 58,
        "indistill.aux": "on", "indistill.aux_width": 2.0, "indistill.a": 2.0, "indistill.b": 1.0,
        "indistill.procedure": "reference", "kd.loss": "pkt_indistill", "data.val_per_class": 500,
    },
    "reference-cifar10": {
        "summary": "The InDistill authors' auxiliary teacher (CNN 16/32/64, PKT from their ResNet-18) → CNN 8/16/32 "
                   "by their procedure: all 50,000 CIFAR-10 training images, 12 warm-up + 58 PKT epochs",
        "data.dataset": "cifar10", "data.val_per_class": 0,
        "teacher.arch": "cnn_16_32_64", "teacher.checkpoint": SHIPPED_PREFIX + "teachers/indistill_aux_cnn_16_32_64.pt",
        "teacher.epochs": 0, "student.arch": "cnn_8_16_32", "student.epochs": 58,
        "indistill.aux": "off", "indistill.a": 2.0, "indistill.b": 1.0,
        "indistill.procedure": "reference", "kd.loss": "pkt_indistill",
    },
    "resnet56-resnet20": {
        "summary": "CIFAR ResNet-56 → ResNet-20 (same widths, no pruning needed beyond identity)",
        "teacher.arch": "resnet56", "student.arch": "resnet20", "teacher.epochs": 240, "student.epochs": 240, "data.val_per_class": 500,
    },
    "wrn40_2-wrn16_2": {
        "summary": "WRN-40-2 → WRN-16-2",
        "teacher.arch": "wrn40_2", "student.arch": "wrn16_2", "teacher.epochs": 240, "student.epochs": 240, "data.val_per_class": 500,
    },
    "resnet32x4-resnet8x4": {
        "summary": "ResNet-32x4 → ResNet-8x4",
        "teacher.arch": "resnet32x4", "student.arch": "resnet8x4", "teacher.epochs": 240, "student.epochs": 240, "data.val_per_class": 500,
    },
    "seed-pair": {
        "summary": "ResNet-18 → the 4-block CNN 16/32/64/128 (width ratio 4: direct pruning)",
        "teacher.arch": "resnet18", "teacher.epochs": 200, "teacher.lr": 0.1,
        "student.arch": "cnn4", "student.epochs": 60, "data.val_per_class": 500,
    },
}


def preset(name: str) -> ExperimentConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    items = {k: v for k, v in PRESETS[name].items() if k != "summary"}
    return ExperimentConfig(name=name).with_overrides(items)
