"""Results of the run on show: the Compare table with its downloads (copies in a scratch folder,
handed out per request to whoever may see the run), the information-flow, grid and
precision-recall views, and the form's configuration as a file (export and import).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import gradio as gr

from app import runfolder
from app.config import ConfigError, ExperimentConfig

from . import views
from .form import CONTROL_KEYS, config_from, values_from
from .runs import admit
from .sessions import folder_of, results_of, session_of, view_of
from .studio import shown, studio


# ---------------------------------------------------------------- scratch folders and downloads

def _scratch_dir() -> Path:
    """A fresh folder for files handed to Gradio (it copies them to its cache); old ones are reaped."""
    s = studio()
    runfolder.reap_old(s.scratch, s.limits.export.kept_s)
    path = s.scratch / secrets.token_hex(8)
    path.mkdir(parents=True)
    return path


def version_dir(kind: str, version: str) -> Path:
    """The scratch folder for one version of a download (``kind``: run, onnx; not made here), reaped with
    the others after ``limits.export.kept_s``."""
    import hashlib
    s = studio()
    runfolder.reap_old(s.scratch, s.limits.export.kept_s)
    return s.scratch / f"{kind}-{hashlib.sha1(version.encode()).hexdigest()[:16]}"


def fill_once(out: Path, build) -> None:
    """``build(folder)`` in a temporary folder, then renamed to ``out`` (a request that got there first
    keeps its copy); a failed build leaves nothing behind."""
    tmp = out.parent / f"tmp-{secrets.token_hex(6)}"
    tmp.mkdir(parents=True)
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _downloads(folder: runfolder.RunFolder, results: dict) -> tuple[list[str], str]:
    """Copies of the run's results and student checkpoints for Gradio to serve; one copy per run version
    (reused while fresh), checkpoints only while they fit ``limits.export.download_max_bytes``."""
    cap = studio().limits.export.download_max_bytes
    out = version_dir("run", f"{folder.id}:{folder.results.stat().st_mtime_ns}")
    ckpts = folder.student_checkpoints()
    size = sum(p.stat().st_size for p in ckpts)
    note = "" if size <= cap else \
        f"Student checkpoints ({size / 1e6:.0f} MB) are over the {cap / 1e6:.0f} MB download limit: results only."
    names = ["results.json", "results.csv"] + ([p.name for p in ckpts] if not note else [])
    def build(tmp: Path) -> None:
        public_results = {k: v for k, v in results.items() if k != "run_dir"}
        (tmp / "results.json").write_text(shown(json.dumps(public_results, indent=2, default=str)))
        (tmp / "results.csv").write_text(views.results_csv(results))
        for p in ckpts if not note else ():
            shutil.copyfile(p, tmp / p.name)
    if not out.is_dir():
        fill_once(out, build)
    os.utime(out)
    return [str(out / n) for n in names], note


def compare(session: Any):
    """Comparison table, scatter, and downloads (copies handed out per request to whoever may see the run)."""
    session = session_of(session)
    folder = folder_of(session)
    results = (folder.read_results() or {}) if folder else {}
    rows = views.compare_rows(results)
    files, note = [], ""
    if results.get("phases") and folder is not None:
        try:
            files, note = _downloads(folder, results)
        except OSError:  # the folder was removed (retention) or not yet written while it was read
            files, note = [], "The run's files are not on this server (any more): no downloads."
    note = " ".join(x for x in (views.compare_note(results), note) if x) if rows else \
        "No results yet: finished phases appear here (Train tab)."
    return gr.update(value=rows, headers=views.COMPARE_HEADERS), views.scatter_figure(results), files, note

# ---------------------------------------------------------------- result views

def info_views(session: Any):
    """Per-layer information curves, the final divergence table, and the Fig. 2 / Fig. 4 analogues."""
    session = session_of(session)
    snap, results = view_of(session)[0], results_of(session)
    return (views.info_flow_figure(snap, results), views.divergence_rows(snap, results),
            views.feature_mse_figure(snap), views.flow_divergence_figure(snap))


def pr_view(session: Any, metric: str):
    return views.pr_figure(results_of(session), metric if metric in ("cosine", "euclidean") else "cosine")


def grid_views(session: Any):
    return views.grid_figures(results_of(session).get("grid"))


# ---------------------------------------------------------------- the configuration as a file

def export_config(session: Any, *values):
    session = session_of(session)
    try:
        cfg = config_from(dict(zip(CONTROL_KEYS, values)), studio().context(session))
    except ConfigError as exc:
        return None, f"Cannot export: {exc}"
    path = _scratch_dir() / "indistill-config.json"
    path.write_text(shown(cfg.to_json()))
    return str(path), "Exported the configuration."


def import_config(session: Any, file):
    """Controls from an exported config or a run's config.json (size, depth and paths checked)."""
    session = session_of(session)
    fail = [gr.skip()] * len(CONTROL_KEYS)
    try:
        if not file:
            raise ConfigError("no file given")
        path = Path(file if isinstance(file, str) else file.name)
        cap = studio().limits.server.import_max_bytes
        if path.stat().st_size > cap:
            raise ConfigError(f"the file is {path.stat().st_size:,} bytes; the limit is {cap:,}")
        cfg = ExperimentConfig.from_dict(json.loads(path.read_text()))
        if studio().public:
            admit(cfg, session)
    except RecursionError:
        return fail + ["Import failed: the JSON is nested too deeply. Expected a configuration exported here or a "
                       "run folder's config.json."]
    except (ConfigError, ValueError, OSError, UnicodeDecodeError) as exc:
        return fail + [shown(f"Import failed: {exc}. Expected a JSON file exported here or a run folder's config.json.")]
    vals = values_from(cfg, studio().context(session))
    return [vals[k] for k in CONTROL_KEYS] + [f"Imported {cfg.name!r}."]
