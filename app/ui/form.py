"""The form: one declarative table of controls (key, config path, widget, label, place)
from which the widgets, ``config_from`` and ``values_from`` are all derived, so a new
setting is one row. No Gradio here: widgets are built from these rows in ``layout.py``.

Most rows map one control to one config path. The few that don't (the dataset choice,
the free-text data path, the teacher's shipped weights, the loss parameters) are
resolved by :func:`config_from` / :func:`values_from` with a :class:`FormContext`
that says what this server offers (public mode: no server paths).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import ASSETS, SAMPLE_DATA, ConfigError, ExperimentConfig, resolve_path
from app.losses import LOSSES
from app.recipe import PROCEDURE_RECIPES, resolve_recipe
from app.schedule import BUDGETS
from models import MODELS

from . import views

SCRATCH = "train from scratch"
SAMPLE_LABEL = "Embedded sample (CIFAR-10, 300/class)"
UPLOAD_LABEL = "Your uploaded dataset"
FOLDER_LABEL = "Folder or .tar.gz"
CIFAR_LABELS = {"CIFAR-10": "cifar10", "CIFAR-100": "cifar100"}
SERVER_PREFIX = "Server: "
MAX_PARAMS = max(len(cls.params) for cls in LOSSES.values())  # one box per parameter of the widest loss


@dataclass(frozen=True)
class Field:
    """One control: ``path`` is its config setting (None: resolved by a rule below)."""

    key: str
    path: str | None
    widget: str                 # number | int | slider | checkbox | dropdown | radio | textbox
    label: str
    place: str                  # "<tab>/<column>" where layout.py puts it
    options: dict = field(default_factory=dict)
    zero_is_none: bool = False  # 0 in the box means "not set" (all images, the default epochs)
    follows: str = ""           # a recipe value (app.recipe): shown resolved; the procedure's own value sent as none


FIELDS: list[Field] = [
    Field("dataset", None, "radio", "Dataset", "setup/data"),
    Field("data_path", None, "textbox", "Data path (folder or .tar.gz; for CIFAR: an existing copy)", "setup/data",
          {"placeholder": "e.g. /data/cifar10-jpeg.tar.gz"}),
    Field("train_per_class", "data.train_per_class", "int", "Train images per class (0 = all)", "setup/data",
          {"minimum": 0}, zero_is_none=True),
    Field("test_per_class", "data.test_per_class", "int", "Test images per class (0 = all)", "setup/data",
          {"minimum": 0}, zero_is_none=True),
    Field("val_per_class", "data.val_per_class", "int", "Validation images per class (held out of train)",
          "setup/data", {"minimum": 0}),
    Field("teacher", "teacher.arch", "dropdown", "Teacher", "setup/models"),
    Field("teacher_weights", None, "dropdown", "Teacher weights", "setup/models"),
    Field("student", "student.arch", "dropdown", "Student", "setup/models"),
    Field("kd_loss", "kd.loss", "dropdown", "KD loss (stage 2)", "distill/loss", {"choices": list(LOSSES)}),
    *[Field(f"p{i}", None, "number", f"param {i}", "distill/loss") for i in range(MAX_PARAMS)],
    Field("indistill", "phases.indistill", "checkbox", "InDistill warm-up", "distill/indistill"),
    Field("a", "indistill.a", "slider", "a (S_l = a + b·l epochs for layer l)", "distill/indistill",
          {"minimum": 0, "maximum": 10, "step": 0.5}),
    Field("b", "indistill.b", "slider", "b", "distill/indistill", {"minimum": -3, "maximum": 5, "step": 0.5}),
    Field("mode", "indistill.mode", "radio", "Warm-up mode", "distill/indistill",
          {"choices": ["curriculum", "joint", "off"]}),
    Field("embed", "indistill.embed", "checkbox", "Then the embedding layer with InDistill PKT", "distill/indistill",
          follows="embed"),
    Field("aux", "indistill.aux", "radio", "Auxiliary teacher", "distill/indistill", {"choices": ["auto", "on", "off"]}),
    Field("aux_width", "indistill.aux_width", "number", "Aux width ×", "distill/indistill", {"minimum": 1}),
    Field("procedure", "indistill.procedure", "radio",
          "Procedure (reference: the InDistill code's recipe — Adam re-created every epoch, lr 1e-3 then 1e-4 from "
          "epoch 60, batch-statistics targets, no embedding segment, InDistill PKT without CE from the aux, the CE "
          "baseline Adam 50 + 30 epochs)",
          "distill/indistill", {"choices": ["studio", "reference"]}),
    Field("aux_epochs", "indistill.aux_epochs", "number", "Aux epochs (0 = student's)", "distill/indistill",
          {"minimum": 0}, zero_is_none=True),
    Field("teacher_epochs", "teacher.epochs", "number", "Teacher epochs (if trained here)", "distill/training",
          {"minimum": 0}),
    Field("student_epochs", "student.epochs", "number", "Student epochs (KD epochs, or every arm's total: see Epoch "
          "budget)", "distill/training",
          {"minimum": 0}),
    Field("seeds", "seeds", "slider", "Seeds", "distill/training", {"minimum": 1, "maximum": 5, "step": 1}),
    Field("budget", "budget", "radio",
          "Epoch budget — within: student epochs are every arm's total, the warm-up comes out of them and KD gets "
          "the rest (baseline and KD do not depend on a, b); added: student epochs are KD epochs, the warm-up comes "
          "on top and baseline/KD train as long; unequal: KD epochs for every arm, only InDistill trains longer",
          "distill/training", {"choices": list(BUDGETS)}),
    Field("baseline", "phases.baseline", "checkbox", "Baseline student", "distill/training"),
    Field("kd", "phases.kd", "checkbox", "KD student", "distill/training"),
    Field("batch_size", "optim.batch_size", "int", "Batch size", "distill/training"),
    Field("lr", "optim.lr", "number", "Learning rate (SGD)", "distill/training"),
]
CONTROL_KEYS = [f.key for f in FIELDS]
BY_KEY = {f.key: f for f in FIELDS}


@functools.lru_cache(maxsize=1)
def shipped_teachers() -> dict[str, dict]:
    """Label → manifest entry of every teacher checkpoint in assets/ (read once: assets/ ships with the app)."""
    try:
        manifest = json.loads((ASSETS / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    for t in manifest.get("teachers", []):
        if (ASSETS / t["file"]).is_file():
            out[views.shipped_label(t)] = t
    return out


@dataclass(frozen=True)
class FormContext:
    """What the server offers this visitor: public mode hides server paths."""

    public: bool = False
    offered: dict[str, Path] = field(default_factory=dict)   # data-root name → path
    upload: Path | None = None                               # this session's uploaded dataset

    def dataset_choices(self) -> list[str]:
        choices = [SAMPLE_LABEL, *CIFAR_LABELS]
        choices += [SERVER_PREFIX + name for name in self.offered]
        choices.append(UPLOAD_LABEL if self.public else FOLDER_LABEL)
        return choices


def loss_param_names(loss: str) -> list[str]:
    return list(LOSSES[loss].params) if loss in LOSSES else []


def choices(key: str, ctx: FormContext) -> list[str] | None:
    """The choices of a dropdown/radio control (architectures teacher-first or student-first, …)."""
    if key == "dataset":
        return ctx.dataset_choices()
    if key in ("teacher", "student"):
        first = "teacher" if key == "teacher" else "student"
        return [n for n, e in MODELS.items() if e.role == first] + [n for n, e in MODELS.items() if e.role != first]
    if key == "teacher_weights":
        return [SCRATCH, *shipped_teachers()]
    return BY_KEY[key].options.get("choices")


def _check_choice(key: str, value: Any, ctx: FormContext) -> None:
    options = choices(key, ctx)
    if options is not None and value not in options:
        shown = ", ".join(map(str, options[:12])) + (" …" if len(options) > 12 else "")
        raise ConfigError(f"{BY_KEY[key].label}: {str(value)[:60]!r} is not one of the choices ({shown})")


def _data_items(v: dict, ctx: FormContext) -> dict:
    """The dataset choice (and, locally, the typed path) as data.* settings."""
    choice = v["dataset"]
    path = (v.get("data_path") or "").strip() if not ctx.public else ""
    if choice == SAMPLE_LABEL:
        return {"data.dataset": "folder", "data.data_dir": str(SAMPLE_DATA)}
    if choice in CIFAR_LABELS:
        return {"data.dataset": CIFAR_LABELS[choice], "data.data_dir": path or None}
    if choice.startswith(SERVER_PREFIX):
        return {"data.dataset": "folder", "data.data_dir": str(ctx.offered[choice[len(SERVER_PREFIX):]])}
    if choice == UPLOAD_LABEL:
        if ctx.upload is None:
            raise ConfigError("Data: upload a dataset first (a .zip or .tar.gz with train/ and test/ class folders)")
        return {"data.dataset": "folder", "data.data_dir": str(ctx.upload)}
    if not path:
        raise ConfigError("Data: give the path of an ImageFolder tree or .tar.gz (train/ and test/ class folders)")
    return {"data.dataset": "folder", "data.data_dir": path}


def config_from(values: dict, ctx: FormContext = FormContext()) -> ExperimentConfig:
    """Build a config from control values; raises ConfigError naming the bad control."""
    v = values
    for key in ("dataset", "teacher", "student", "teacher_weights", "kd_loss"):
        _check_choice(key, v.get(key), ctx)
    items: dict[str, Any] = {"name": "studio", **_data_items(v, ctx)}
    for f in FIELDS:
        if f.path is not None:
            value = v.get(f.key)
            items[f.path] = None if f.zero_is_none and not value else value
    proc = PROCEDURE_RECIPES.get(items.get("indistill.procedure"), PROCEDURE_RECIPES["studio"])
    for f in FIELDS:  # a box left at the procedure's value follows the procedure (switching it switches them)
        if f.follows and items.get(f.path) == proc[f.follows]:
            items[f.path] = None
    items["kd.params"] = {name: v[f"p{i}"] for i, name in enumerate(loss_param_names(v["kd_loss"]))
                          if v.get(f"p{i}") is not None}
    weights = shipped_teachers().get(v["teacher_weights"])
    items["teacher.checkpoint"] = str(ASSETS / weights["file"]) if weights else None
    items["teacher.epochs"] = items["teacher.epochs"] or 0
    if weights and weights["arch"] != v["teacher"]:
        raise ConfigError(f"Teacher weights are a {weights['arch']} but the teacher is {v['teacher']}: pick the "
                          f"{weights['arch']} teacher or '{SCRATCH}'")
    return ExperimentConfig().with_overrides(items)


def _get(cfg: ExperimentConfig, path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        node = getattr(node, part)
    return node


def values_from(cfg: ExperimentConfig, ctx: FormContext = FormContext()) -> dict:
    """Control values showing ``cfg`` (the inverse of :func:`config_from`)."""
    out: dict[str, Any] = {}
    for f in FIELDS:
        if f.path is not None:
            value = _get(cfg, f.path)
            if f.follows and value is None:
                value = getattr(resolve_recipe(cfg), f.follows)
            out[f.key] = 0 if f.zero_is_none and value is None else value
    d = cfg.data
    data_dir = Path(d.data_dir).expanduser().resolve() if d.data_dir else None
    offered = {p.resolve(): name for name, p in ctx.offered.items()}
    out["data_path"] = ""
    if data_dir == SAMPLE_DATA.resolve():
        out["dataset"] = SAMPLE_LABEL
    elif data_dir is not None and data_dir in offered:
        out["dataset"] = SERVER_PREFIX + offered[data_dir]
    elif d.dataset != "folder":
        out["dataset"] = next(k for k, v in CIFAR_LABELS.items() if v == d.dataset)
        out["data_path"] = "" if ctx.public else d.data_dir or ""
    elif ctx.public:
        out["dataset"] = UPLOAD_LABEL if ctx.upload is not None and data_dir == ctx.upload.resolve() else SAMPLE_LABEL
    else:
        out["dataset"], out["data_path"] = FOLDER_LABEL, d.data_dir or ""
    out["teacher_weights"] = SCRATCH
    for label, t in shipped_teachers().items():
        if cfg.teacher.checkpoint and resolve_path(cfg.teacher.checkpoint).resolve() == (ASSETS / t["file"]).resolve():
            out["teacher_weights"] = label
    names = loss_param_names(cfg.kd.loss)
    for i in range(MAX_PARAMS):
        out[f"p{i}"] = cfg.kd.params.get(names[i], LOSSES[cfg.kd.loss].params[names[i]].default) \
            if i < len(names) else None
    return out


def param_specs(loss: str) -> list[dict]:
    """Label, default and visibility of each loss-parameter box for ``loss`` (in box order)."""
    names = loss_param_names(loss)
    out = []
    for i in range(MAX_PARAMS):
        if i < len(names):
            p = LOSSES[loss].params[names[i]]
            out.append({"label": f"{names[i]} — {p.help} [{p.low:g}, {p.high:g}]", "default": p.default,
                        "visible": True})
        else:
            out.append({"label": f"param {i}", "default": None, "visible": False})
    return out
