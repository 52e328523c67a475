"""The models run on a picture: retrieval (Retrieval tab: predicted class and nearest database
images per model) and feature maps (Pruning tab), with the built models cached per run (the
studio's :class:`app.ui.studio.ModelCache`, ``limits.retrieval.model_sets`` of them).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from app.config import ASSETS, SAMPLE_DATA

from . import views
from .form import shipped_teachers
from .sessions import access, folder_of, session_of
from .studio import shown, studio
from .uploads import UploadError, load_upload

_BUILD_LOCK = threading.Lock()


class NotVisible(LookupError):
    """The session names a run it may not see: answer with that, never with other networks."""


def model_set(session: dict):
    """Models to query: the visible run's checkpoints when it has any, else the shipped teachers (LRU-cached);
    :class:`NotVisible` for a run this session may not see."""
    from .inspect import ModelSet
    folder = folder_of(session)
    if folder is None and session.get("run"):
        raise NotVisible(access(session)[2] or f"No run `{session['run']}` on this server.")
    data_cfg = ((folder.read_results() or {}).get("config") or {}).get("data") if folder is not None else None
    if data_cfg and folder.checkpoint("teacher").is_file():   # a folder not yet written (or evicted): no networks
        try:
            key = (folder.id, tuple(sorted(p.name for p in folder.checkpoints.glob("*.pt"))))
        except OSError:   # the folder went while it was listed
            raise NotVisible(f"Run `{folder.id}` is no longer on this server.") from None
        make = lambda: ModelSet.from_run(folder.path, data_cfg)  # noqa: E731
    else:
        key = ("shipped",)
        make = lambda: ModelSet.from_files({f"teacher:{Path(t['file']).stem}": ASSETS / t["file"]  # noqa: E731
                                            for t in shipped_teachers().values()},
                                           {"dataset": "folder", "data_dir": str(SAMPLE_DATA)})
    with _BUILD_LOCK:  # one build at a time: concurrent requests for the same run wait and share it
        return studio().models.get(key, make)


SHORT = {"teacher": "T", "aux": "Aux", "baseline": "Base", "kd": "KD", "indistill": "InD"}


def _tag(model) -> str:
    """A short caption tag: T, Aux, Base, KD, InD, or the architecture of a shipped teacher."""
    if model.key in SHORT:
        return SHORT[model.key]
    arch = str(model.meta.get("arch", "T"))
    return f"{arch}·authors" if (model.meta.get("provenance") or {}).get("origin") else arch


def _label_from_name(file, classes: list[str]) -> int | None:
    stem = Path(str(file)).stem.lower() if file else ""
    return classes.index(stem) if stem in classes else None


def retrieve(file, session: Any, metric: str, k):
    """Predicted class and nearest database images for each model; messages for bad uploads."""
    session = session_of(session)
    limits = studio().limits
    try:
        picture, notes = load_upload(file, limits.picture)
    except UploadError as exc:
        return None, f"**{exc}**", []
    top_k = limits.retrieval.max_k
    try:
        k = int(k)
    except (TypeError, ValueError, OverflowError):  # OverflowError: k = inf
        return picture, f"**Neighbours per model must be a whole number from 1 to {top_k}.**", []
    if not 1 <= k <= top_k:
        return picture, f"**Neighbours per model must be 1 to {top_k}; got {k}.**", []
    metric = metric if metric in ("cosine", "euclidean") else "cosine"
    try:
        ms = model_set(session)
        if not ms.models:
            return picture, "No models yet: train a run, or ship teachers in assets/.", []
        answers = ms.query(picture, k, metric)
    except NotVisible as exc:
        return picture, shown(f"**{exc}**"), []
    except Exception as exc:  # a bad checkpoint or data folder must not break the page
        return picture, shown(f"**Could not run the models:** {type(exc).__name__}: {str(exc)[:300]}"), []
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
    preview = picture.resize((128, 128 * picture.height // max(picture.width, 1)), Image.NEAREST) \
        if picture.width < 128 else picture
    return preview, "\n\n".join(x for x in lines if x), gr.update(value=gallery, columns=k)


def feature_maps(example: str, session: Any):
    """Feature maps per layer (HTML): the pruned-from network's full stage, its kept channels and
    the student after warm-up, side by side, every channel shown."""
    from .inspect import feature_grid, load_model, stage_maps, to_input
    session = session_of(session)
    folder = folder_of(session)
    maps = ((folder.read_results() or {}) if folder else {}).get("channel_maps")
    if not maps or folder is None:
        return "", "Feature maps need a run with InDistill: start one in the Train tab."
    examples = {p.stem: p for p in (ASSETS / "examples").glob("*.jpg")}
    if example not in examples:
        return "", f"Pick one of the sample images: {', '.join(sorted(examples))}."
    pruned_path = folder.checkpoint("aux") if folder.checkpoint("aux").is_file() else folder.checkpoint("teacher")
    student_path = folder.checkpoint("indistill-s0-warmup")
    if not pruned_path.is_file():
        return "", "The teacher is not ready yet."
    try:
        picture, _ = load_upload(examples[example])
        pruned = load_model(pruned_path, "pruned")
        p_maps = stage_maps(pruned.model, to_input(picture, pruned.meta))
        s_maps = None
        if student_path.is_file():
            student = load_model(student_path, "student")
            s_maps = stage_maps(student.model, to_input(picture, student.meta))
        layers = []
        for i, st in enumerate(maps["stages"]):
            figures = [(f"{maps['pruned_arch']} full ({st['teacher_channels']} ch)", feature_grid(p_maps[i])),
                       (f"kept channels ({len(st['kept'])})", feature_grid(p_maps[i], st["kept"]))]
            if s_maps is not None:
                figures.append((f"student after warm-up ({st['student_channels']} ch)", feature_grid(s_maps[i])))
            layers.append((f"layer {i + 1}", figures))
    except Exception as exc:
        return "", shown(f"Could not draw feature maps: {type(exc).__name__}: {str(exc)[:300]}")
    note = "" if s_maps is not None else "The student's maps appear once its warm-up has finished."
    return views.feature_maps_html(layers), note


def run_on_show(session: Any) -> str | None:
    """The run whose feature maps were just drawn (kept in the page's state beside them)."""
    return session_of(session)["run"]


def clear_outdated_maps(session: Any, drawn_for: Any):
    """Feature maps belong to the run they were drawn for: once another run is on show, clear them
    and say how to draw the new one's; (maps, note, drawn_for)."""
    if not drawn_for or session_of(session)["run"] == drawn_for:
        return gr.skip(), gr.skip(), gr.skip()
    return "", "The run on show changed: press **Show feature maps** to draw its maps.", None
