"""The Gradio Blocks app: Setup, Distill, Train, Pruning, Compare, Retrieval,
Information flow, Learn. Handlers are plain functions of component values, so tests can
call them directly; the page polls job snapshots with a timer and never trains itself.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import gradio as gr
from PIL import Image

from app.config import ASSETS, PRESETS, SAMPLE_DATA, ConfigError, ExperimentConfig, preset
from app.losses import LOSSES
from app.plan import Plan, make_plan
from app.runner import JobManager
from models import MODELS

from . import views
from .learn import LEARN_MD
from .uploads import UploadError, load_upload

RUNS_ROOT = Path(os.environ.get("INDISTILL_RUNS", "runs"))
MAX_JOBS = int(os.environ.get("INDISTILL_MAX_JOBS", "1"))
DEFAULT_PRESET = "workshop"
SCRATCH = "train from scratch"
DATASETS = {"Embedded sample (CIFAR-10, 300/class)": "sample", "CIFAR-10": "cifar10", "CIFAR-100": "cifar100",
            "Folder or .tar.gz": "folder"}
MAX_PARAMS = 4
POLL_SECONDS = 0.5  # how often the page reads the job snapshot


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


# ---------------------------------------------------------------- controls ↔ config

CONTROL_KEYS = ["dataset", "data_path", "train_per_class", "test_per_class", "teacher", "teacher_weights",
                "teacher_epochs", "student", "student_epochs", "kd_loss", "p0", "p1", "p2", "p3", "indistill",
                "a", "b", "mode", "embed", "aux", "aux_width", "aux_epochs", "seeds", "equal_epochs",
                "baseline", "kd", "batch_size", "lr"]


def loss_param_names(loss: str) -> list[str]:
    return list(LOSSES[loss].params) if loss in LOSSES else []


def config_from(values: dict) -> ExperimentConfig:
    """Build a config from control values; raises ConfigError naming the bad control."""
    v = values
    ds = DATASETS.get(v["dataset"], v["dataset"])
    path = (v["data_path"] or "").strip() or None
    data: dict = {"data.dataset": "folder" if ds in ("sample", "folder") else ds,
                  "data.data_dir": str(SAMPLE_DATA) if ds == "sample" else path,
                  "data.train_per_class": int(v["train_per_class"]) if v["train_per_class"] else None,
                  "data.test_per_class": int(v["test_per_class"]) if v["test_per_class"] else None}
    if ds == "folder" and not path:
        raise ConfigError("Data: give the path of an ImageFolder tree or .tar.gz (train/ and test/ class folders)")
    weights = shipped_teachers().get(v["teacher_weights"])
    params = {name: v[f"p{i}"] for i, name in enumerate(loss_param_names(v["kd_loss"])[:MAX_PARAMS])
              if v[f"p{i}"] is not None}
    items = {**data, "name": "studio", "teacher.arch": v["teacher"],
             "teacher.checkpoint": str(ASSETS / weights["file"]) if weights else None,
             "teacher.epochs": v["teacher_epochs"] or 0, "student.arch": v["student"],
             "student.epochs": v["student_epochs"], "kd.loss": v["kd_loss"], "kd.params": params,
             "indistill.a": v["a"], "indistill.b": v["b"], "indistill.mode": v["mode"], "indistill.embed": v["embed"],
             "indistill.aux": v["aux"], "indistill.aux_width": v["aux_width"],
             "indistill.aux_epochs": v["aux_epochs"] or None, "seeds": v["seeds"], "equal_epochs": v["equal_epochs"],
             "phases.baseline": v["baseline"], "phases.kd": v["kd"], "phases.indistill": v["indistill"],
             "optim.batch_size": v["batch_size"], "optim.lr": v["lr"]}
    cfg = ExperimentConfig().with_overrides(items)
    if weights and weights["arch"] != v["teacher"]:
        raise ConfigError(f"Teacher weights are a {weights['arch']} but the teacher is {v['teacher']}: pick the "
                          f"{weights['arch']} teacher or '{SCRATCH}'")
    return cfg


def values_from(cfg: ExperimentConfig) -> dict:
    """Control values showing ``cfg`` (the inverse of :func:`config_from`)."""
    d = cfg.data
    if d.data_dir and Path(d.data_dir) == SAMPLE_DATA:
        dataset, path = "sample", ""
    elif d.dataset == "folder":
        dataset, path = "folder", d.data_dir or ""
    else:
        dataset, path = d.dataset, d.data_dir or ""
    weights = SCRATCH
    for label, t in shipped_teachers().items():
        if cfg.teacher.checkpoint and Path(cfg.teacher.checkpoint) == ASSETS / t["file"]:
            weights = label
    names = loss_param_names(cfg.kd.loss)
    pvals = [cfg.kd.params.get(n, LOSSES[cfg.kd.loss].params[n].default) for n in names][:MAX_PARAMS]
    pvals += [None] * (MAX_PARAMS - len(pvals))
    ind = cfg.indistill
    return {"dataset": next(k for k, v in DATASETS.items() if v == dataset), "data_path": path,
            "train_per_class": d.train_per_class or 0, "test_per_class": d.test_per_class or 0,
            "teacher": cfg.teacher.arch, "teacher_weights": weights, "teacher_epochs": cfg.teacher.epochs,
            "student": cfg.student.arch, "student_epochs": cfg.student.epochs, "kd_loss": cfg.kd.loss,
            **{f"p{i}": pvals[i] for i in range(MAX_PARAMS)}, "indistill": cfg.phases.indistill, "a": ind.a,
            "b": ind.b, "mode": ind.mode, "embed": ind.embed, "aux": ind.aux, "aux_width": ind.aux_width,
            "aux_epochs": ind.aux_epochs or 0, "seeds": cfg.seeds, "equal_epochs": cfg.equal_epochs,
            "baseline": cfg.phases.baseline, "kd": cfg.phases.kd, "batch_size": cfg.optim.batch_size,
            "lr": cfg.optim.lr}


def param_updates(loss: str, values: list | None = None) -> list:
    """Label, value and visibility of the four loss-parameter inputs for ``loss``."""
    names = loss_param_names(loss)[:MAX_PARAMS]
    out = []
    for i in range(MAX_PARAMS):
        if i < len(names):
            p = LOSSES[loss].params[names[i]]
            value = p.default if values is None or values[i] is None else values[i]
            out.append(gr.update(label=f"{names[i]} — {p.help} [{p.low:g}, {p.high:g}]", value=value, visible=True))
        else:
            out.append(gr.update(visible=False, value=None))
    return out


def check(*values) -> tuple[str, dict, object, str]:
    """Validate the controls: (problems, Start button update, schedule timeline, pair verdict)."""
    vals = dict(zip(CONTROL_KEYS, values))
    try:
        plan = make_plan(config_from(vals))
    except ConfigError as exc:
        msg = f"### ✖ Not ready\n- {exc}"
        return msg, gr.update(interactive=False), views.timeline_figure(Plan(ExperimentConfig())), msg
    verdict = views.verdict_markdown(plan)
    message = "" if plan.ok else verdict
    return message, gr.update(interactive=plan.ok), views.timeline_figure(plan), verdict


# ---------------------------------------------------------------- jobs

MANAGER: JobManager | None = None


def manager() -> JobManager:
    global MANAGER
    if MANAGER is None:
        MANAGER = JobManager(MAX_JOBS, RUNS_ROOT)
    return MANAGER


def start(job_id: str | None, *values):
    vals = dict(zip(CONTROL_KEYS, values))
    current = manager().get(job_id) if job_id else None
    if current is not None and current.state in ("queued", "running"):
        return job_id, job_id, "A run of yours is still going: cancel it first, or wait for it to finish."
    try:
        cfg = config_from(vals)
        make_plan(cfg).raise_if_invalid()
    except ConfigError as exc:
        return job_id, job_id, f"Not started: {exc}"
    job = manager().submit(cfg)
    return job.id, job.id, f"Started run `{job.id}`."


def run_grid(job_id: str | None, a_text: str, b_text: str, epochs, *values):
    """Start the a × b curriculum grid (InDistill student only) with the current settings."""
    from app.grid import parse_values
    current = manager().get(job_id) if job_id else None
    if current is not None and current.state in ("queued", "running"):
        return job_id, job_id, "A run of yours is still going: cancel it first, or wait for it to finish."
    try:
        cfg = config_from(dict(zip(CONTROL_KEYS, values)))
        if epochs:
            cfg = cfg.with_overrides({"student.epochs": epochs})
        job = manager().submit_grid(cfg, parse_values(a_text, "a values"), parse_values(b_text, "b values"))
    except ConfigError as exc:
        return job_id, job_id, f"Grid not started: {exc}"
    return job.id, job.id, f"Started grid `{job.id}` ({len(job.experiment.cells)} runs); progress in the Train tab."


def grid_views(job_id: str | None):
    return views.grid_figures(results_of(job_id).get("grid"))


def cancel(job_id: str | None) -> str:
    job = manager().get(job_id) if job_id else None
    if job is None:
        return "Nothing to cancel."
    job.cancel()
    return f"Cancelling run `{job.id}` — it stops within one training step."


def run_dir_of(job_id: str | None) -> Path | None:
    """The run folder of a live job, or of a finished run by its id."""
    if not job_id:
        return None
    job = manager().get(job_id)
    return job.run_dir if job is not None else manager().runs_root / Path(job_id).name


def results_of(job_id: str | None) -> dict:
    """The run's results.json (written after every finished phase unit), or {}."""
    run_dir = run_dir_of(job_id)
    path = run_dir / "results.json" if run_dir else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def snapshot_of(job_id: str | None) -> dict | None:
    """The live snapshot of a job, or a read-only one rebuilt from a finished run folder."""
    if not job_id:
        return None
    job = manager().get(job_id)
    if job is not None:
        return job.snapshot()
    results = results_of(job_id)
    if not results:
        return None
    return {"id": job_id, "state": results.get("status", "finished"), "phase": None, "segment": None,
            "series": {}, "eval": _eval_from_results(results), "schedules": {}, "results": results.get("phases", {}),
            "channel_maps": results.get("channel_maps"), "log": [f"re-opened finished run {job_id}"],
            "progress": 1.0, "queue_position": 0, "run_dir": results.get("run_dir"), "data": results.get("data"),
            "error": results.get("error")}


def _eval_from_results(results: dict) -> dict:
    out = {}
    for phase, entry in results.get("phases", {}).items():
        for seed, unit in entry.get("units", {}).items():
            h = unit.get("history", [])
            out[f"{phase}/{0 if seed == 'single' else seed}"] = {
                "epoch": [r["epoch"] for r in h], "acc": [r["eval_acc"] for r in h],
                "info_flow": [r.get("info_flow") for r in h]}
    return out


def _version(job_id: str | None) -> tuple | None:
    """What the status line depends on, read without copying the snapshot."""
    if not job_id:
        return None
    job = manager().get(job_id)
    if job is None:
        return job_id, "on disk"
    return job.id, job.revision, job.state, manager().queue_position(job)


def _results_version(snap: dict | None) -> str:
    """Changes only when a phase unit finishes (or the run ends): the cue to redraw results views."""
    if not snap:
        return ""
    units = sum(len(p.get("units", {})) for p in (snap.get("results") or {}).values())
    return f"{snap['id']}:{snap['state']}:{units}"


def tick_status(job_id: str | None, seen):
    """Fast timer: status line (with the newest step and loss), log, buttons, results cue."""
    version = _version(job_id)
    if version == seen:
        return (gr.skip(),) * 5 + (seen,)
    snap = snapshot_of(job_id)
    running = bool(snap) and snap["state"] in ("queued", "running")
    return (views.status_markdown(snap), "\n".join((snap or {}).get("log", [])[-80:]),
            gr.update(interactive=not running), gr.update(interactive=running), _results_version(snap), version)


def tick_charts(job_id: str | None, seen):
    """Chart timer: loss and accuracy curves when new points arrived; channel maps when they change."""
    job = manager().get(job_id) if job_id else None
    version = (_version(job_id), job.maps_revision if job else None)
    if version == seen:
        return (gr.skip(),) * 3 + (seen,)
    snap = snapshot_of(job_id)
    maps_changed = seen is None or seen[0] is None or seen[0][0] != job_id or seen[1] != version[1]
    return (views.loss_figure(snap), views.accuracy_figure(snap),
            views.channel_figure((snap or {}).get("channel_maps")) if maps_changed else gr.skip(), version)


def info_views(job_id: str | None):
    snap, results = snapshot_of(job_id), results_of(job_id)
    return views.info_flow_figure(snap, results), views.divergence_rows(snap, results)


def compare(job_id: str | None):
    """Comparison table, scatter, and downloads served from the run folder itself."""
    results = results_of(job_id)
    rows = views.compare_rows(results)
    files = []
    run_dir = run_dir_of(job_id)
    if results.get("phases") and run_dir is not None:
        (run_dir / "results.csv").write_text(views.results_csv(results))
        files = [str(run_dir / "results.json"), str(run_dir / "results.csv")]
        files += [str(p) for p in sorted((run_dir / "checkpoints").glob("*-s*.pt")) if "warmup" not in p.name]
    note = views.compare_note(results) if rows else "No results yet: finished phases appear here (Train tab)."
    return gr.update(value=rows, headers=views.COMPARE_HEADERS), views.scatter_figure(results), files, note


def export_config(*values):
    try:
        cfg = config_from(dict(zip(CONTROL_KEYS, values)))
    except ConfigError as exc:
        return None, f"Cannot export: {exc}"
    path = Path(tempfile.mkdtemp(prefix="indistill-")) / "indistill-config.json"
    path.write_text(cfg.to_json())
    return str(path), "Exported the configuration."


def import_config(file):
    try:
        if file is None:
            raise ConfigError("no file")
        text = Path(file if isinstance(file, str) else file.name).read_text()
        cfg = ExperimentConfig.from_dict(json.loads(text))
    except (ConfigError, ValueError, OSError, UnicodeDecodeError) as exc:
        return [gr.skip()] * len(CONTROL_KEYS) + [f"Import failed: {exc}. Expected a JSON file exported here or "
                                                  "a run folder's config.json."]
    vals = values_from(cfg)
    return [vals[k] for k in CONTROL_KEYS] + [f"Imported {cfg.name!r}."]


def apply_preset(name: str):
    vals = values_from(preset(name))
    return [vals[k] for k in CONTROL_KEYS]


# ---------------------------------------------------------------- retrieval and pruning views

_MODEL_SETS: dict = {}


def model_set(job_id: str | None):
    """Models to query: the run's checkpoints when it has any, else the shipped teachers."""
    from .inspect import ModelSet
    run_dir = run_dir_of(job_id)
    if run_dir is not None and (run_dir / "checkpoints" / "teacher.pt").is_file():
        files = tuple(sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")))
        key = (str(run_dir), files)
        if key not in _MODEL_SETS:
            _MODEL_SETS[key] = ModelSet.from_run(run_dir, results_of(job_id)["config"]["data"])
        return _MODEL_SETS[key]
    key = ("shipped",)
    if key not in _MODEL_SETS:
        _MODEL_SETS[key] = ModelSet.from_files({f"teacher:{t['arch']}": ASSETS / t["file"]
                                                for t in shipped_teachers().values()},
                                               {"dataset": "folder", "data_dir": str(SAMPLE_DATA)})
    return _MODEL_SETS[key]


def retrieve(file, job_id: str | None, metric: str, k: int):
    """Predicted class and nearest database images for each model; messages for bad uploads."""
    try:
        picture, notes = load_upload(file)
    except UploadError as exc:
        return None, f"**{exc}**", []
    try:
        ms = model_set(job_id)
        if not ms.models:
            return picture, "No models yet: train a run, or ship teachers in assets/.", []
        answers = ms.query(picture, int(k), metric)
    except Exception as exc:  # a bad checkpoint or data folder must not break the page
        return picture, f"**Could not run the models:** {exc}", []
    classes = ms.data.classes
    true = _label_from_name(file, classes)
    lines = [f"_{'; '.join(notes)}_" if notes else ""]
    gallery = []
    for a in answers:
        probs = a["probs"]
        top = probs.topk(min(3, len(probs)))
        pred = int(top.indices[0])
        ref = true if true is not None else pred
        lines.append(f"**{a['model'].label}** ({a['model'].meta.get('arch')}): "
                     + ", ".join(f"{classes[i]} {p * 100:.1f}%" for p, i in zip(top.values.tolist(), top.indices.tolist())))
        for idx in a["nearest"]:
            label = int(ms.data.train.labels[idx])
            mark = "✓" if label == ref else "✗"
            gallery.append((ms.thumbnail(idx), f"{_tag(a['model'])} {mark} {classes[label]}"))
    basis = f"true class **{classes[true]}** (from the example's name)" if true is not None else "each model's predicted class"
    legend = ", ".join(f"{_tag(a['model'])} = {a['model'].label}" for a in answers)
    lines.append(f"\nOne row per model ({legend}); neighbours marked ✓/✗ against {basis}; {metric} distance.")
    shown = picture.resize((128, 128 * picture.height // max(picture.width, 1)), Image.NEAREST) \
        if picture.width < 128 else picture
    return shown, "\n\n".join(x for x in lines if x), gr.update(value=gallery, columns=int(k))


SHORT = {"teacher": "T", "aux": "Aux", "baseline": "Base", "kd": "KD", "indistill": "InD"}


def _tag(model) -> str:
    """A short caption tag: T, Aux, Base, KD, InD, or the architecture of a shipped teacher."""
    return SHORT.get(model.key) or str(model.meta.get("arch", "T"))


def _label_from_name(file, classes: list[str]) -> int | None:
    stem = Path(str(file)).stem.lower() if file else ""
    return classes.index(stem) if stem in classes else None


def feature_maps(example: str, job_id: str | None):
    """Feature-map thumbnails: full pruned-network stage, kept channels, student after warm-up."""
    from .inspect import feature_grid, load_model, stage_maps, to_input
    maps = results_of(job_id).get("channel_maps")
    run_dir = run_dir_of(job_id)
    if not maps or run_dir is None:
        return [], "Feature maps need a run with InDistill: start one in the Train tab."
    ckpts = run_dir / "checkpoints"
    pruned_path = ckpts / ("aux.pt" if (ckpts / "aux.pt").is_file() else "teacher.pt")
    student_path = ckpts / "indistill-s0-warmup.pt"
    if not pruned_path.is_file():
        return [], "The teacher is not ready yet."
    try:
        picture, _ = load_upload(ASSETS / "examples" / f"{example}.jpg")
        pruned = load_model(pruned_path, "pruned")
        p_maps = stage_maps(pruned.model, to_input(picture, pruned.meta))
        s_maps = None
        if student_path.is_file():
            student = load_model(student_path, "student")
            s_maps = stage_maps(student.model, to_input(picture, student.meta))
    except Exception as exc:
        return [], f"Could not draw feature maps: {exc}"
    items = []
    for i, st in enumerate(maps["stages"]):
        items.append((feature_grid(p_maps[i]), f"layer {i + 1}: {maps['pruned_arch']} full ({st['teacher_channels']} ch)"))
        items.append((feature_grid(p_maps[i], st["kept"]), f"layer {i + 1}: kept channels ({len(st['kept'])})"))
        if s_maps is not None:
            items.append((feature_grid(s_maps[i]), f"layer {i + 1}: student after warm-up ({st['student_channels']} ch)"))
    note = "" if s_maps is not None else "The student's maps appear once its warm-up has finished."
    return items, note


def open_run(run_id: str):
    run_id = (run_id or "").strip()
    if not run_id:
        return gr.skip(), gr.skip(), "Give a run id (shown in the status line)."
    if manager().get(run_id) is None and manager().load_results(run_id) is None:
        return gr.skip(), gr.skip(), f"No run `{run_id}` on this server (runs/{run_id}/results.json not found)."
    return run_id, run_id, f"Opened run `{run_id}`."


# ---------------------------------------------------------------- layout

def build_app() -> gr.Blocks:
    teachers = [n for n, e in MODELS.items() if e.role == "teacher"] + \
               [n for n, e in MODELS.items() if e.role == "student"]
    students = [n for n, e in MODELS.items() if e.role == "student"] + \
               [n for n, e in MODELS.items() if e.role == "teacher"]
    weights_choices = [SCRATCH] + list(shipped_teachers())
    start_vals = values_from(preset(DEFAULT_PRESET)) if shipped_teachers() else \
        values_from(preset(DEFAULT_PRESET).with_overrides({"teacher.checkpoint": None, "teacher.epochs": 15}))
    examples = sorted(str(p) for p in (ASSETS / "examples").glob("*.jpg"))

    with gr.Blocks(title="InDistill Studio") as demo:
        job_state = gr.State(None)
        remembered = gr.BrowserState(None, storage_key="indistill-studio-job")
        seen = gr.State(None)
        gr.Markdown("# InDistill Studio\nDistil a big CNN into a small one — with InDistill's pruned, "
                    "layer-by-layer warm-up before ordinary knowledge distillation.")
        c: dict = {}
        with gr.Tabs():
            with gr.Tab("Setup", id="setup"):
                with gr.Row():
                    for name, p in PRESETS.items():
                        c[f"preset:{name}"] = gr.Button(name, size="sm",
                                                        variant="primary" if name == DEFAULT_PRESET else "secondary")
                with gr.Row():
                    with gr.Column():
                        c["dataset"] = gr.Radio(list(DATASETS), label="Dataset", value=start_vals["dataset"])
                        c["data_path"] = gr.Textbox(label="Data path (folder or .tar.gz; for CIFAR: an existing copy)",
                                                    value=start_vals["data_path"] or os.environ.get("INDISTILL_DATA_DIR", ""),
                                                    placeholder="e.g. /data/cifar10-jpeg.tar.gz")
                        with gr.Row():
                            c["train_per_class"] = gr.Number(label="Train images per class (0 = all)", precision=0,
                                                             value=start_vals["train_per_class"], minimum=0)
                            c["test_per_class"] = gr.Number(label="Test images per class (0 = all)", precision=0,
                                                            value=start_vals["test_per_class"], minimum=0)
                    with gr.Column():
                        c["teacher"] = gr.Dropdown(teachers, label="Teacher", value=start_vals["teacher"])
                        teacher_card = gr.Markdown()
                        c["teacher_weights"] = gr.Dropdown(weights_choices, label="Teacher weights",
                                                           value=start_vals["teacher_weights"])
                        c["student"] = gr.Dropdown(students, label="Student", value=start_vals["student"])
                        student_card = gr.Markdown()
                verdict = gr.Markdown(elem_id="verdict")
            with gr.Tab("Distill", id="distill"):
                with gr.Row():
                    with gr.Column():
                        c["kd_loss"] = gr.Dropdown(list(LOSSES), label="KD loss (stage 2)", value=start_vals["kd_loss"])
                        names = loss_param_names(start_vals["kd_loss"])
                        for i in range(MAX_PARAMS):
                            c[f"p{i}"] = gr.Number(label=names[i] if i < len(names) else f"param {i}",
                                                   value=start_vals[f"p{i}"], visible=i < len(names))
                    with gr.Column():
                        c["indistill"] = gr.Checkbox(label="InDistill warm-up", value=start_vals["indistill"])
                        c["a"] = gr.Slider(0, 10, step=0.5, label="a (S_l = a + b·l epochs for layer l)",
                                           value=start_vals["a"], elem_id="param-a")
                        c["b"] = gr.Slider(-3, 5, step=0.5, label="b", value=start_vals["b"], elem_id="param-b")
                        c["mode"] = gr.Radio(["curriculum", "joint", "off"], label="Warm-up mode",
                                             value=start_vals["mode"])
                        c["embed"] = gr.Checkbox(label="Then the embedding layer with InDistill PKT",
                                                 value=start_vals["embed"])
                        with gr.Row():
                            c["aux"] = gr.Radio(["auto", "on", "off"], label="Auxiliary teacher", value=start_vals["aux"])
                            c["aux_width"] = gr.Number(label="Aux width ×", value=start_vals["aux_width"], minimum=1)
                            c["aux_epochs"] = gr.Number(label="Aux epochs (0 = student's)", value=start_vals["aux_epochs"])
                    with gr.Column():
                        c["teacher_epochs"] = gr.Number(label="Teacher epochs (if trained here)",
                                                        value=start_vals["teacher_epochs"], minimum=0)
                        c["student_epochs"] = gr.Number(label="Student KD epochs (stage 2)",
                                                        value=start_vals["student_epochs"], minimum=0)
                        c["seeds"] = gr.Slider(1, 5, step=1, label="Seeds", value=start_vals["seeds"])
                        c["equal_epochs"] = gr.Checkbox(label="Equal-epoch control (baseline/KD train as long)",
                                                        value=start_vals["equal_epochs"])
                        with gr.Row():
                            c["baseline"] = gr.Checkbox(label="Baseline student", value=start_vals["baseline"])
                            c["kd"] = gr.Checkbox(label="KD student", value=start_vals["kd"])
                        with gr.Row():
                            c["batch_size"] = gr.Number(label="Batch size", value=start_vals["batch_size"], precision=0)
                            c["lr"] = gr.Number(label="Learning rate (SGD)", value=start_vals["lr"])
                timeline = gr.Plot(label="Schedule", elem_id="timeline")
                with gr.Row():
                    export_btn = gr.Button("Export configuration (JSON)", size="sm")
                    export_file = gr.File(label="Exported", interactive=False)
                    import_file = gr.File(label="Import configuration (JSON)", file_types=[".json"])
                io_msg = gr.Markdown()
            with gr.Tab("Train", id="train"):
                problems = gr.Markdown(elem_id="problems")
                with gr.Row():
                    start_btn = gr.Button("Start", variant="primary", elem_id="start")
                    cancel_btn = gr.Button("Cancel", variant="stop", interactive=False, elem_id="cancel")
                    run_id_box = gr.Textbox(label="Re-open a run by id", scale=2, elem_id="run-id")
                    open_btn = gr.Button("Open", size="sm")
                status = gr.Markdown("No run yet — press **Start**.", elem_id="status")
                action_msg = gr.Markdown(elem_id="action-msg")
                loss_plot = gr.Plot(label="Losses", elem_id="loss-plot")
                acc_plot = gr.Plot(label="Accuracy", elem_id="acc-plot")
                log_box = gr.Textbox(label="Events", lines=10, max_lines=20, elem_id="log", autoscroll=True)
            with gr.Tab("Pruning", id="pruning"):
                channel_plot = gr.Plot(label="Channel L1 norms", elem_id="channel-plot")
                with gr.Row():
                    fm_example = gr.Dropdown([Path(p).stem for p in examples], label="Sample image",
                                             value=Path(examples[0]).stem if examples else None)
                    fm_btn = gr.Button("Show feature maps")
                fm_note = gr.Markdown()
                fm_gallery = gr.Gallery(label="Feature maps", columns=3, height="auto", elem_id="feature-maps")
            with gr.Tab("Compare", id="compare"):
                compare_btn = gr.Button("Refresh", size="sm", elem_id="compare-refresh")
                compare_note = gr.Markdown()
                table = gr.Dataframe(headers=views.COMPARE_HEADERS, interactive=False, elem_id="compare-table")
                scatter = gr.Plot(label="Accuracy vs latency")
                downloads = gr.File(label="Downloads: results (JSON, CSV) and student checkpoints", file_count="multiple")
            with gr.Tab("Retrieval", id="retrieval"):
                with gr.Row():
                    with gr.Column(scale=1):
                        upload = gr.File(label="Upload a picture", file_types=["image"], elem_id="upload")
                        if examples:
                            gr.Examples(examples=[[e] for e in examples], inputs=[upload], label="Or pick an example")
                        metric = gr.Radio(["cosine", "euclidean"], value="cosine", label="Distance")
                        k = gr.Slider(1, 16, step=1, value=8, label="Neighbours per model")
                        ret_btn = gr.Button("Retrieve", variant="primary")
                    with gr.Column(scale=2):
                        query_img = gr.Image(label="Query", height=160, interactive=False)
                        ret_md = gr.Markdown(elem_id="retrieval-msg")
                        ret_gallery = gr.Gallery(label="Nearest training images", columns=8, height="auto",
                                                 elem_id="retrieval-gallery")
                pr_metric = gr.Radio(["cosine", "euclidean"], value="cosine", label="Test-set curves")
                pr_plot = gr.Plot(label="Precision–recall")
            with gr.Tab("Information flow", id="info"):
                info_btn = gr.Button("Refresh", size="sm")
                info_plot = gr.Plot(label="Information flow")
                div_table = gr.Dataframe(headers=["student", "seed", "mean |I_student − I_teacher| (bits)"],
                                         interactive=False)
                gr.Markdown("### Curriculum grid (the paper's Fig. 5, on a small budget)\n"
                            "Trains only the InDistill student for every (a, b), plus one run of the same warm-up "
                            "*without* curriculum (all layers jointly), with the Setup/Distill settings and one "
                            "shared teacher. Progress shows in the Train tab.")
                with gr.Row():
                    grid_a = gr.Textbox(label="a values", value="0, 1, 2")
                    grid_b = gr.Textbox(label="b values", value="0, 1")
                    grid_epochs = gr.Number(label="Student KD epochs per run", value=4, minimum=0.1)
                    grid_btn = gr.Button("Run grid", variant="primary")
                grid_msg = gr.Markdown()
                grid_heat = gr.Plot(label="Grid")
                grid_flow = gr.Plot(label="With vs without curriculum")
            with gr.Tab("Learn", id="learn"):
                gr.Markdown(LEARN_MD)

        controls = [c[k] for k in CONTROL_KEYS]
        check_outputs = [problems, start_btn, timeline, verdict]
        for comp in controls:
            comp.change(check, controls, check_outputs, show_progress="hidden")
        c["teacher"].change(views.model_card, c["teacher"], teacher_card, show_progress="hidden")
        c["student"].change(views.model_card, c["student"], student_card, show_progress="hidden")
        c["kd_loss"].input(lambda loss: param_updates(loss), c["kd_loss"], [c[f"p{i}"] for i in range(MAX_PARAMS)])
        for name in PRESETS:
            c[f"preset:{name}"].click(lambda n=name: apply_preset(n), None, controls)
        export_btn.click(export_config, controls, [export_file, io_msg])
        import_file.upload(import_config, import_file, controls + [io_msg])

        start_btn.click(start, [job_state] + controls, [job_state, remembered, action_msg])
        cancel_btn.click(cancel, job_state, action_msg)
        open_btn.click(open_run, run_id_box, [job_state, remembered, action_msg])
        timer = gr.Timer(POLL_SECONDS)
        seen_charts = gr.State(None)
        results_cue = gr.Textbox(visible=False)
        timer.tick(tick_status, [job_state, seen], [status, log_box, start_btn, cancel_btn, results_cue, seen],
                   show_progress="hidden")
        timer.tick(tick_charts, [job_state, seen_charts], [loss_plot, acc_plot, channel_plot, seen_charts],
                   show_progress="hidden")
        for trigger in (compare_btn.click, results_cue.change):
            trigger(compare, job_state, [table, scatter, downloads, compare_note], show_progress="hidden")
        for trigger in (info_btn.click, results_cue.change):
            trigger(info_views, job_state, [info_plot, div_table], show_progress="hidden")
        for trigger in (pr_metric.change, results_cue.change):
            trigger(lambda j, m: views.pr_figure(results_of(j), m), [job_state, pr_metric], pr_plot,
                    show_progress="hidden")
        grid_btn.click(run_grid, [job_state, grid_a, grid_b, grid_epochs] + controls, [job_state, remembered, grid_msg])
        for trigger in (info_btn.click, results_cue.change):
            trigger(grid_views, job_state, [grid_heat, grid_flow], show_progress="hidden")
        ret_btn.click(retrieve, [upload, job_state, metric, k], [query_img, ret_md, ret_gallery])
        upload.change(retrieve, [upload, job_state, metric, k], [query_img, ret_md, ret_gallery])
        fm_btn.click(feature_maps, [fm_example, job_state], [fm_gallery, fm_note])
        demo.load(lambda r: (r, r or ""), remembered, [job_state, run_id_box])
        demo.load(check, controls, check_outputs)
        demo.load(lambda t, s: (views.model_card(t), views.model_card(s)), [c["teacher"], c["student"]],
                  [teacher_card, student_card])
    return demo


def _warm_up_plotting() -> None:
    """Plotly's first figure costs ~0.5 s; pay it at start-up, not on the first training step."""
    views.loss_figure({"series": {"kd/0": {"step": [1], "epoch": [0.1], "segment": ["KD"], "losses": {"ce": [1.0]}}},
                       "schedules": {}})


def launch() -> None:
    import threading
    threading.Thread(target=_warm_up_plotting, daemon=True).start()
    demo = build_app()
    demo.queue(default_concurrency_limit=8)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                max_file_size="25mb", allowed_paths=[str(ASSETS), str(RUNS_ROOT)], footer_links=["api", "gradio"])
