"""The app's event handlers: plain functions of a session and control values, so tests
call them directly. Every value comes from a stranger: ids, numbers, files and the
browser-stored session are checked, and every failure is a message, never a traceback.

A session is ``{"secret": 32 hex, "run": run id | None, "upload": path | None}`` held
server-side in ``gr.State`` and mirrored in the browser (``gr.BrowserState``) so a
refresh or a restart finds it again. A run belongs to the session whose secret made it
(the job keeps a digest; so does the run folder): only that session can follow it live
or cancel it. Anyone with its id (the share link) can open it read-only once it has ended.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from app import public as policy
from app import library, runfolder
from app.config import ASSETS, SAMPLE_DATA, ConfigError, ExperimentConfig, preset
from app.plan import Plan, make_plan
from app.runner import JobManager, JobRefused

from . import views
from .form import CONTROL_KEYS, FormContext, config_from, param_specs, shipped_teachers, values_from
from .uploads import UploadError, load_upload

SECRET = re.compile(r"^[0-9a-f]{32}$")
MAX_IMPORT_BYTES = 64 * 1024
SCRATCH_MAX_AGE_S = 600
DOWNLOAD_MAX_BYTES = 200 * 10 ** 6   # student checkpoints offered as downloads, per run
UPLOAD_MAX_AGE_S = 24 * 3600          # an uploaded dataset lives at most a day
UPLOADS_MAX_BYTES = 3 * 10 ** 9       # all sessions' uploaded datasets together
LOG_TAIL = 80


@dataclass
class Studio:
    """Server-wide settings and state: the job manager, public mode and its budget, folders."""

    runs_root: Path
    public: bool = False
    max_jobs: int = 1
    budget: policy.Budget = field(default_factory=policy.Budget)
    upload_limits: Any = None
    max_queue: int = 30
    manager: JobManager = field(init=False)
    scratch: Path = field(init=False)
    uploads: Path = field(init=False)

    def __post_init__(self) -> None:
        self.runs_root = Path(self.runs_root).resolve()
        self.manager = JobManager(self.max_jobs, self.runs_root, max_queue=self.max_queue if self.public else None,
                                  max_queue_s=self.budget.max_queue_minutes * 60 if self.public else None,
                                  retention=runfolder.Retention() if self.public else None)
        import tempfile
        self.scratch = Path(tempfile.gettempdir()) / f"indistill-scratch-{os.getpid()}"
        import atexit
        atexit.register(shutil.rmtree, self.scratch, True)
        self.uploads = self.runs_root / ".uploads"
        from app.data import default_cache_dir
        roots = [(self.uploads, "<your upload>"), (self.runs_root, "<runs>"), (ASSETS, "assets"),
                 (default_cache_dir(), "<cache>"), (Path(tempfile.gettempdir()), "<tmp>")]
        if policy.data_root() is not None:
            roots.append((policy.data_root(), "<data root>"))
        # server paths a public message must not show, resolved once: (text, placeholder)
        self.places = [(str(p), name) for path, name in roots for p in dict.fromkeys((path.resolve(), path))]

    def context(self, session: dict | None) -> FormContext:
        upload = (session or {}).get("upload")
        return FormContext(public=self.public, offered=policy.offered_datasets(),
                           upload=Path(upload) if upload else None)


_STUDIO: Studio | None = None
_LOCK = threading.Lock()


def studio() -> Studio:
    global _STUDIO
    with _LOCK:
        if _STUDIO is None:
            _STUDIO = Studio(Path(os.environ.get("INDISTILL_RUNS", "runs")), public=policy.is_public(),
                             max_jobs=int(os.environ.get("INDISTILL_MAX_JOBS", "1")),
                             max_queue=int(os.environ.get("INDISTILL_MAX_QUEUE", "30")))
        return _STUDIO


def configure(**settings) -> Studio:
    """Replace the server settings (tests, the load benchmark)."""
    global _STUDIO
    with _LOCK:
        _STUDIO = Studio(**settings)
        _MODEL_SETS.clear()
    return _STUDIO


def shown(text: str) -> str:
    """A message as a visitor may see it: in public mode, server paths become placeholders."""
    s = studio()
    if not s.public or not text:
        return text
    for path, name in s.places:
        text = text.replace(path, name)
    return text


# ---------------------------------------------------------------- sessions

def new_session() -> dict:
    return {"secret": secrets.token_hex(16), "run": None, "upload": None}


def session_of(value: Any) -> dict:
    """A checked session from whatever the browser (or a script) sent; a fresh one if it is not valid."""
    if not isinstance(value, dict) or not isinstance(value.get("secret"), str) or not SECRET.match(value["secret"]):
        return new_session()
    run = value.get("run")
    try:
        run = runfolder.check_id(run) if run is not None else None
    except runfolder.RunIdError:
        run = None
    upload = value.get("upload")
    home = studio().uploads / runfolder.owner_digest(value["secret"])[:16]
    try:  # only this session's own uploaded dataset (checked as text before the file system is asked)
        ok = isinstance(upload, str) and len(upload) < 1024 and Path(upload).is_relative_to(home) \
            and ".." not in Path(upload).parts and Path(upload).is_dir()
    except (OSError, ValueError):
        ok = False
    if not ok:
        upload = None
    return {"secret": value["secret"], "run": run, "upload": upload}


def owner(session: dict) -> str:
    return runfolder.owner_digest(session["secret"])


def remembered(session: dict) -> dict:
    """What the browser keeps: the session secret and the run on show (not server paths)."""
    return {"secret": session["secret"], "run": session["run"]}


def restore(stored: Any, query_run: str | None = None) -> tuple[dict, str]:
    """Page load: the session from browser storage; a share link's run opened read-only."""
    session = session_of(stored)
    if query_run:
        session, message = open_run_in(session, query_run)
        return session, message
    if session["run"] and _view(session)[1]:
        session["run"] = None
    return session, session["run"] or ""


def _access(session: dict):
    """(job in memory | None, results on disk | None, refusal): the ownership rule, applied once.

    A live run is visible only to its owner; an ended run to anyone with its id."""
    run_id = session.get("run")
    if not run_id:
        return None, None, ""
    s = studio()
    job = s.manager.get(run_id)
    if job is not None:
        if job.live and job.owner != owner(session):
            return None, None, (f"Run `{run_id}` is still training and belongs to another session; its share link "
                                "opens it read-only once it has finished.")
        return job, None, ""
    results = s.manager.load_results(run_id)
    if results is None:
        results = library.load(run_id)    # a shipped run: read-only for everyone
    if results is None:
        return None, None, f"No run `{run_id}` on this server."
    return None, results, ""


def _view(session: dict) -> tuple[dict | None, str]:
    """(snapshot, refusal) of the run on show, if this session may see it."""
    job, results, refusal = _access(session)
    if job is not None:
        snap = job.snapshot()
        snap["read_only"] = job.owner != owner(session)
        return snap, ""
    if results is not None:
        return runfolder.snapshot_from_results(session["run"], results), ""
    return None, refusal


def _folder(session: dict) -> runfolder.RunFolder | None:
    """The run folder on show, if this session may see it."""
    job, results, _ = _access(session)
    if job is None and results is None:
        return None
    if results is not None and results.get("library"):
        return library.folder(session["run"])
    try:
        return runfolder.RunFolder(runfolder.resolve(studio().runs_root, session["run"]))
    except runfolder.RunIdError:
        return None


def results_of(session: Any) -> dict:
    folder = _folder(session_of(session))
    return (folder.read_results() or {}) if folder is not None else {}


def open_run_in(session: dict, run_id: Any) -> tuple[dict, str]:
    try:
        run_id = runfolder.check_id(run_id)
    except runfolder.RunIdError as exc:
        return session, f"Not opened: {exc}."
    trial = {**session, "run": run_id}
    snap, refusal = _view(trial)
    if snap is None:
        return session, f"Not opened: {refusal}"
    return trial, f"Opened run `{run_id}`" + (" (read-only)." if snap.get("read_only") else ".")


def end_session(session: Any) -> None:
    """The tab closed or the session expired: delete its uploaded dataset."""
    if isinstance(session, dict) and isinstance(session.get("secret"), str) and SECRET.match(session["secret"]):
        if studio().manager.live_job_of(owner(session)) is None:  # another tab's run may still read it
            shutil.rmtree(studio().uploads / owner(session)[:16], ignore_errors=True)


# ---------------------------------------------------------------- form checks

def _plan_for(session: dict, values: tuple) -> tuple[ExperimentConfig, Plan, policy.Estimate | None]:
    """Config, plan and (public) estimate from control values; ConfigError names what is wrong."""
    s = studio()
    if len(values) != len(CONTROL_KEYS):
        raise ConfigError(f"expected {len(CONTROL_KEYS)} control values, got {len(values)}")
    cfg = config_from(dict(zip(CONTROL_KEYS, values)), s.context(session))
    return (cfg, *_admit(cfg, session))


def _admit(cfg: ExperimentConfig, session: dict) -> tuple[Plan, policy.Estimate | None]:
    """Plan the config; in public mode also the server's rules and the budget."""
    s = studio()
    if s.public:  # size caps first: planning builds the networks (a wide auxiliary teacher can take GBs)
        problems = policy.network_problems(cfg, s.budget)
        if problems:
            raise ConfigError("not allowed on this public server:\n  - " + "\n  - ".join(problems))
    plan = make_plan(cfg)
    plan.raise_if_invalid()
    if not s.public:
        return plan, None
    allowed = policy.base_allowed_data() | ({Path(session["upload"]).resolve()} if session.get("upload") else set())
    problems = policy.admit(cfg, allowed, s.budget)
    if problems:
        raise ConfigError("not allowed on this public server:\n  - " + "\n  - ".join(problems))
    try:
        est = policy.estimate(cfg, plan, *policy.dataset_size(cfg))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot size the dataset: {exc}") from None
    problems = policy.check_budget(cfg, est, s.budget)
    if problems:
        raise ConfigError("over the public budget:\n  - " + "\n  - ".join(problems))
    return plan, est


def _problem_md(exc: Exception) -> str:
    lines = str(exc).split("\n")
    return "### ✖ Not ready\n- " + lines[0] + "".join(f"\n{line}" for line in lines[1:])


def check(session: Any, *values) -> tuple[str, dict, object, str]:
    """Validate the controls: (problems, Start button update, schedule timeline, pair verdict)."""
    session = session_of(session)
    try:
        cfg, plan, est = _plan_for(session, values)
    except ConfigError as exc:
        msg = shown(_problem_md(exc))
        return msg, gr.update(interactive=False), views.timeline_figure(Plan(ExperimentConfig())), msg
    verdict = views.verdict_markdown(plan)
    if est is not None:
        verdict += (f"\n\nEstimated run time: **{est.minutes:.1f} min** on this server "
                    f"(public limit {studio().budget.max_minutes:g} min).")
    return "", gr.update(interactive=True), views.timeline_figure(plan), verdict


def param_updates(loss: str, values: list | None = None) -> list:
    """Label, value and visibility of the loss-parameter inputs for ``loss``."""
    out = []
    for i, spec in enumerate(param_specs(loss)):
        if spec["visible"]:
            value = spec["default"] if values is None or values[i] is None else values[i]
            out.append(gr.update(label=spec["label"], value=value, visible=True))
        else:
            out.append(gr.update(visible=False, value=None))
    return out


def apply_preset(name: str, session: Any = None):
    try:
        vals = values_from(preset(name), studio().context(session_of(session)))
    except ConfigError:
        return [gr.skip()] * len(CONTROL_KEYS)
    return [vals[k] for k in CONTROL_KEYS]


# ---------------------------------------------------------------- jobs

def _submit(session: dict, cfg: ExperimentConfig, est, grid=None):
    s = studio()
    if session.get("upload") and cfg.data.data_dir and Path(cfg.data.data_dir).resolve() == Path(session["upload"]).resolve():
        cfg = cfg.with_overrides({"data.cache_dir": str(Path(session["upload"]).parent / "cache")})
    secs = est.seconds if est is not None else None
    limit = s.budget.max_minutes * 60 if s.public else None  # enforced while it runs, not only estimated
    job = s.manager.submit_grid(cfg, *grid, owner=owner(session), estimate_s=secs, limit_s=limit) if grid else \
        s.manager.submit(cfg, owner=owner(session), estimate_s=secs, limit_s=limit)
    job.experiment.run_dir.mkdir(parents=True, exist_ok=True)
    runfolder.RunFolder(job.run_dir).set_owner(session["secret"])
    return job


def start(session: Any, *values):
    """Start a run with the controls' settings: (session, browser copy, message)."""
    session = session_of(session)
    try:
        cfg, plan, est = _plan_for(session, values)
        job = _submit(session, cfg, est)
    except (ConfigError, JobRefused) as exc:
        return session, remembered(session), shown(f"Not started: {exc}")
    session = {**session, "run": job.id}
    eta = f" (estimated {est.minutes:.1f} min)" if est is not None else ""
    return session, remembered(session), f"Started run `{job.id}`{eta}."


def run_grid(session: Any, a_text: str, b_text: str, epochs, *values):
    """Start the a × b curriculum grid (InDistill student only) with the current settings."""
    from app.grid import parse_values
    session = session_of(session)
    try:
        cfg = config_from(dict(zip(CONTROL_KEYS, values)), studio().context(session))
        if epochs:
            cfg = cfg.with_overrides({"student.epochs": epochs})
        a_values, b_values = parse_values(str(a_text or ""), "a values"), parse_values(str(b_text or ""), "b values")
        est = _grid_estimate(cfg, a_values, b_values, session) if studio().public else None
        job = _submit(session, cfg, est, grid=(a_values, b_values))
    except (ConfigError, JobRefused) as exc:
        return session, remembered(session), shown(f"Grid not started: {exc}")
    session = {**session, "run": job.id}
    return session, remembered(session), f"Started grid `{job.id}` ({len(job.experiment.cells)} runs); progress in the Train tab."


def _grid_estimate(cfg: ExperimentConfig, a_values: list[float], b_values: list[float], session: dict):
    """The whole grid's estimate: every cell (its own a, b) admitted and summed against the budget."""
    from app.grid import CurriculumGrid
    if not all(0 <= a <= 10 for a in a_values) or not all(-3 <= b <= 5 for b in b_values):
        raise ConfigError("grid values: a must be 0 to 10 and b −3 to 5 on a public server (as on the sliders)")
    grid = CurriculumGrid(cfg, a_values, b_values, studio().runs_root / "unused")
    cells = [_admit(c, session)[1] for c in grid.configs]
    est = policy.Estimate(sum(c.seconds for c in cells), max(c.step_mb for c in cells), cells[0].train_images,
                          fixed_seconds=sum(c.fixed_seconds for c in cells))
    problems = policy.check_budget(cfg.with_overrides({"seeds": 1}), est, studio().budget)
    if problems:
        raise ConfigError(f"the grid's {len(cells)} runs together are over the public budget: " + "; ".join(problems))
    return est


def cancel(session: Any) -> str:
    session = session_of(session)
    job = studio().manager.get(session.get("run"))
    if job is None or job.owner != owner(session):
        return "Nothing to cancel: no run of this session is going."
    if not job.live:
        return f"Run `{job.id}` has already ended."
    job.cancel()
    return f"Cancelling run `{job.id}` — it stops within one training step."


def open_run(session: Any, run_id: Any):
    session, message = open_run_in(session_of(session), run_id)
    return session, remembered(session), message


# ---------------------------------------------------------------- page timers

def _version(session: dict) -> tuple | None:
    """What the status line depends on, read without copying the snapshot."""
    run_id = session.get("run")
    if not run_id:
        return None
    m = studio().manager
    job = m.get(run_id)
    if job is None:
        return run_id, "on disk"
    return job.id, job.revision, job.state, m.queue_position(job)


def _results_version(snap: dict | None) -> str:
    """Changes only when a phase unit finishes (or the run ends): the cue to redraw results views."""
    if not snap:
        return ""
    units = sum(len(p.get("units", {})) for p in (snap.get("results") or {}).values())
    return f"{snap['id']}:{snap['state']}:{units}"


def tick_status(session: Any, seen):
    """Fast timer: status line (with the newest step and loss), log, buttons, results cue."""
    session = session_of(session)
    version = _version(session)
    if version == seen and version is not None:
        return (gr.skip(),) * 5 + (seen,)
    snap, refusal = _view(session)
    live = bool(snap) and snap["state"] in runfolder.LIVE_STATES
    own = bool(snap) and not snap.get("read_only")
    status = views.status_markdown(snap) if snap or not refusal else refusal
    return (shown(status), shown("\n".join((snap or {}).get("log", [])[-LOG_TAIL:])),
            gr.update(interactive=not (live and own)),
            gr.update(interactive=live and own), _results_version(snap), version)


CHART_SECONDS = 2.0   # a live run's charts are redrawn at most this often: each redraw takes CPU from training


def tick_charts(session: Any, seen):
    """Chart timer: loss and accuracy curves when new points arrived (at most every ``CHART_SECONDS``
    for the same run); channel maps when they change. ``seen``: (version, maps revision, drawn at)."""
    session = session_of(session)
    job = studio().manager.get(session.get("run"))
    version = (_version(session), job.maps_revision if job else None)
    seen = seen if isinstance(seen, tuple) and len(seen) == 3 else None
    run_of = lambda v: v[0][0] if v and v[0] else None  # noqa: E731
    same_run = seen is not None and run_of(seen) == run_of(version) and seen[1] == version[1]
    if seen is not None and (version == seen[:2] or (same_run and time.time() - seen[2] < CHART_SECONDS)):
        return (gr.skip(),) * 3 + (seen,)
    snap = _view(session)[0]
    return (views.loss_figure(snap), views.accuracy_figure(snap),
            views.channel_figure((snap or {}).get("channel_maps")) if not same_run else gr.skip(),
            (*version, time.time()))


def status_dict(session: Any) -> dict:
    """The run on show as plain data (the ``status`` API endpoint)."""
    session = session_of(session)
    job, results, refusal = _access(session)
    if job is not None:  # live or recent: read the job's facts without copying its curves
        out = job.summary()
        return {**out, "read_only": job.owner != owner(session), "error": shown(out["error"] or "") or None}
    if results is None:
        return {"run": session.get("run"), "state": None, "message": refusal or "no run yet"}
    snap = runfolder.snapshot_from_results(session["run"], results)  # the one read of results.json
    last = views.last_step(snap)
    phases = {p: {"test_acc": r.get("test_acc"), "test_acc_std": r.get("test_acc_std")}
              for p, r in (snap.get("results") or {}).items() if isinstance(r, dict) and "test_acc" in r}
    return {"run": snap["id"], "state": snap["state"], "read_only": bool(snap.get("read_only")),
            "progress": snap.get("progress"), "queue_position": snap.get("queue_position"), "eta_s": snap.get("eta_s"),
            "phase": snap.get("phase"), "step": last[1] if last else None, "loss": last[2] if last else None,
            "results": phases, "error": shown(snap.get("error") or "") or None}


# ---------------------------------------------------------------- results views

def _scratch_dir() -> Path:
    """A fresh folder for files handed to Gradio (it copies them to its cache); old ones are reaped."""
    s = studio()
    runfolder.reap_old(s.scratch, SCRATCH_MAX_AGE_S)
    path = s.scratch / secrets.token_hex(8)
    path.mkdir(parents=True)
    return path


def _version_dir(kind: str, version: str) -> Path:
    """The scratch folder for one version of a download (``kind``: run, onnx), reaped with the others."""
    import hashlib
    s = studio()
    runfolder.reap_old(s.scratch, SCRATCH_MAX_AGE_S)
    return s.scratch / f"{kind}-{hashlib.sha1(version.encode()).hexdigest()[:16]}"


def _fill_once(out: Path, build) -> None:
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
    (reused while fresh), checkpoints only while they fit ``DOWNLOAD_MAX_BYTES``."""
    out = _version_dir("run", f"{folder.id}:{folder.results.stat().st_mtime_ns}")
    ckpts = folder.student_checkpoints()
    size = sum(p.stat().st_size for p in ckpts)
    note = "" if size <= DOWNLOAD_MAX_BYTES else \
        f"Student checkpoints ({size / 1e6:.0f} MB) are over the {DOWNLOAD_MAX_BYTES / 1e6:.0f} MB download limit: results only."
    names = ["results.json", "results.csv"] + ([p.name for p in ckpts] if not note else [])
    def build(tmp: Path) -> None:
        public_results = {k: v for k, v in results.items() if k != "run_dir"}
        (tmp / "results.json").write_text(shown(json.dumps(public_results, indent=2, default=str)))
        (tmp / "results.csv").write_text(views.results_csv(results))
        for p in ckpts if not note else ():
            shutil.copyfile(p, tmp / p.name)
    if not out.is_dir():
        _fill_once(out, build)
    os.utime(out)
    return [str(out / n) for n in names], note


def compare(session: Any):
    """Comparison table, scatter, and downloads (copies handed out per request to whoever may see the run)."""
    session = session_of(session)
    folder = _folder(session)
    results = (folder.read_results() or {}) if folder else {}
    rows = views.compare_rows(results)
    files, note = [], ""
    if results.get("phases") and folder is not None:
        files, note = _downloads(folder, results)
    note = " ".join(x for x in (views.compare_note(results), note) if x) if rows else \
        "No results yet: finished phases appear here (Train tab)."
    return gr.update(value=rows, headers=views.COMPARE_HEADERS), views.scatter_figure(results), files, note


ONNX_TIMED_RUNS = {"local": (200, 20), "public": (50, 5)}   # timed calls at batch 1 and 256
ONNX_SCRATCH_MAX_BYTES = 10 ** 9   # exported files kept for download (each for 10 min), all sessions together
_EXPORT_LOCK = threading.Lock()   # exports time the CPU: one at a time, so two don't skew each other


def onnx_choices(session: Any):
    """The student checkpoints of the run on show, for Compare's export picker."""
    folder = _folder(session_of(session))
    names = [p.stem for p in folder.student_checkpoints()] if folder is not None else []
    return gr.update(choices=names, value=names[0] if names else None)


def export_onnx(session: Any, name: Any):
    """One student checkpoint of the run on show as ONNX: checked against PyTorch on test images,
    both timed on this CPU. One export at a time; a repeat of the same checkpoint is served again."""
    from app.checkpoint import CheckpointError
    from app.export import ExportError, export_for_download
    folder = _folder(session_of(session))
    students = {p.stem: p for p in folder.student_checkpoints()} if folder is not None else {}
    if not students:
        return None, "Nothing to export: the run on show has no student checkpoints yet (start or open one in Train)."
    if not isinstance(name, str) or name not in students:
        return None, (f"Not exported: {str(name)[:40]!r} is not one of this run's student checkpoints "
                      f"({', '.join(sorted(students))}).")
    ckpt, s = students[name], studio()
    out = _version_dir("onnx", f"{folder.id}:{name}:{ckpt.stat().st_mtime_ns}")
    if not (out / "summary.md").is_file():
        try:
            held = sum(f.stat().st_size for d in s.scratch.glob("onnx-*") for f in d.iterdir() if f.is_file())
        except OSError:  # another request reaped a folder mid-count: count again next time, assume full now
            held = ONNX_SCRATCH_MAX_BYTES
        if held + ckpt.stat().st_size > ONNX_SCRATCH_MAX_BYTES:
            return None, (f"Not exported: exported models waiting for download already fill this server's "
                          f"{ONNX_SCRATCH_MAX_BYTES / 1e9:g} GB for them; each is kept 10 minutes, try again then.")
        if not _EXPORT_LOCK.acquire(blocking=False):
            return None, "Another ONNX export is running on this server (one at a time); try again in a few seconds."
        if (out / "summary.md").is_file():  # the same export finished while this request waited for the lock
            _EXPORT_LOCK.release()
            os.utime(out)
            return str(out / f"{name}.onnx"), (out / "summary.md").read_text()
        runs = ONNX_TIMED_RUNS["public" if policy.is_public() else "local"]

        def build(tmp: Path) -> None:
            _, md = export_for_download(ckpt, tmp, runs=runs[0], runs_b256=runs[1])
            (tmp / "summary.md").write_text(md)
        try:
            _fill_once(out, build)
        except Exception as exc:  # the exporter's own failures too: a message, never a trace
            text = str(exc) if isinstance(exc, (ExportError, CheckpointError)) else f"{type(exc).__name__}: {exc}"
            return None, "Not exported: " + shown(" ".join(text.split())[:500])
        finally:
            _EXPORT_LOCK.release()
    os.utime(out)
    return str(out / f"{name}.onnx"), (out / "summary.md").read_text()


def info_views(session: Any):
    """Per-layer information curves, the final divergence table, and the Fig. 2 / Fig. 4 analogues."""
    session = session_of(session)
    snap, results = _view(session)[0], results_of(session)
    return (views.info_flow_figure(snap, results), views.divergence_rows(snap, results),
            views.feature_mse_figure(snap), views.flow_divergence_figure(snap))


def pr_view(session: Any, metric: str):
    return views.pr_figure(results_of(session), metric if metric in ("cosine", "euclidean") else "cosine")


def grid_views(session: Any):
    return views.grid_figures(results_of(session).get("grid"))


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
        if path.stat().st_size > MAX_IMPORT_BYTES:
            raise ConfigError(f"the file is {path.stat().st_size:,} bytes; the limit is {MAX_IMPORT_BYTES:,}")
        cfg = ExperimentConfig.from_dict(json.loads(path.read_text()))
        if studio().public:
            _admit(cfg, session)
    except RecursionError:
        return fail + ["Import failed: the JSON is nested too deeply. Expected a configuration exported here or a "
                       "run folder's config.json."]
    except (ConfigError, ValueError, OSError, UnicodeDecodeError) as exc:
        return fail + [shown(f"Import failed: {exc}. Expected a JSON file exported here or a run folder's config.json.")]
    vals = values_from(cfg, studio().context(session))
    return [vals[k] for k in CONTROL_KEYS] + [f"Imported {cfg.name!r}."]


def _upload_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def _evict_idle_uploads(s, room: int) -> int:
    """Delete the oldest uploaded datasets whose visitors have no live run until ``room`` bytes are
    held at most; returns the bytes still held (those of live runs when the space is full)."""
    if not s.uploads.is_dir():
        return 0
    homes = sorted((p for p in s.uploads.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    held = {p: _upload_bytes(p) for p in homes}
    used = sum(held.values())
    busy = {j.owner[:16] for j in s.manager.jobs.values() if j.live and j.owner}
    for home in homes:
        if used <= room:
            break
        if home.name not in busy:
            shutil.rmtree(home, ignore_errors=True)
            used -= held[home]
    return used


def upload_dataset(session: Any, file):
    """A visitor's dataset archive: checked before decoding, extracted into this session's folder."""
    from app.archives import ArchiveError, extract_dataset
    from app.data import DataError
    session = session_of(session)
    s = studio()
    if not file:
        return session, "No archive given: upload a .zip or .tar.gz of an ImageFolder tree (train/ and test/ class folders).", gr.skip()
    if s.manager.live_job_of(owner(session)) is not None:
        return session, ("**Upload refused:** your run is queued or training on your uploaded dataset; upload a new "
                         "one when it has ended (or cancel it in the Train tab)."), gr.skip()
    home = s.uploads / owner(session)[:16]
    shutil.rmtree(home, ignore_errors=True)  # one uploaded dataset per session: a visitor holds at most one
    runfolder.reap_old(s.uploads, UPLOAD_MAX_AGE_S)  # sessions Gradio forgot without a callback
    from app.archives import ArchiveLimits
    room = UPLOADS_MAX_BYTES - (s.upload_limits or ArchiveLimits()).max_total_bytes  # this upload may take that
    used = _evict_idle_uploads(s, room)
    if used > room:
        return session, (f"**Upload refused:** the server's space for uploaded datasets is full ({used / 1e9:.1f} GB "
                         f"held by runs in progress; the limit is {UPLOADS_MAX_BYTES / 1e9:g} GB in all, one dataset "
                         "per visitor). Try again later, or use the sample."), gr.skip()
    dest = home / secrets.token_hex(6)
    try:
        tree = extract_dataset(Path(file if isinstance(file, str) else file.name), dest / "data",
                               **({"limits": s.upload_limits} if s.upload_limits else {}))
    except (ArchiveError, DataError, OSError) as exc:
        shutil.rmtree(home, ignore_errors=True)
        return {**session, "upload": None}, shown(f"**Upload refused:** {exc}"), gr.skip()
    session = {**session, "upload": str(Path(tree).resolve())}
    ctx = s.context(session)
    return session, f"Uploaded dataset ready ({Path(file if isinstance(file, str) else file.name).name}); " \
                    f"it belongs to this session and is deleted with it.", \
        gr.update(choices=ctx.dataset_choices(), value="Your uploaded dataset")


# ---------------------------------------------------------------- retrieval and pruning views

_MODEL_SETS: OrderedDict = OrderedDict()
_BUILD_LOCK = threading.Lock()
MAX_MODEL_SETS = 3


def model_set(session: dict):
    """Models to query: the visible run's checkpoints when it has any, else the shipped teachers (LRU-cached)."""
    from .inspect import ModelSet
    folder = _folder(session)
    if folder is not None and folder.checkpoint("teacher").is_file():
        key = (folder.id, tuple(sorted(p.name for p in folder.checkpoints.glob("*.pt"))))
        make = lambda: ModelSet.from_run(folder.path, (folder.read_results() or {})["config"]["data"])  # noqa: E731
    else:
        key = ("shipped",)
        make = lambda: ModelSet.from_files({f"teacher:{Path(t['file']).stem}": ASSETS / t["file"]  # noqa: E731
                                            for t in shipped_teachers().values()},
                                           {"dataset": "folder", "data_dir": str(SAMPLE_DATA)})
    with _BUILD_LOCK:  # one build at a time: concurrent requests for the same run wait and share it
        with _LOCK:
            if key in _MODEL_SETS:
                _MODEL_SETS.move_to_end(key)
                return _MODEL_SETS[key]
        made = make()
        with _LOCK:
            _MODEL_SETS[key] = made
            while len(_MODEL_SETS) > MAX_MODEL_SETS:
                _MODEL_SETS.popitem(last=False)
        return made


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
    try:
        picture, notes = load_upload(file)
    except UploadError as exc:
        return None, f"**{exc}**", []
    try:
        k = int(k)
    except (TypeError, ValueError):
        k = 8
    if not 1 <= k <= 16:
        return picture, f"**Neighbours per model must be 1 to 16; got {k}.**", []
    metric = metric if metric in ("cosine", "euclidean") else "cosine"
    try:
        ms = model_set(session)
        if not ms.models:
            return picture, "No models yet: train a run, or ship teachers in assets/.", []
        answers = ms.query(picture, k, metric)
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
    folder = _folder(session)
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


# ---------------------------------------------------------------- the scripting API

def _overrides(text: Any) -> dict:
    if text in (None, ""):
        return {}
    if isinstance(text, dict):
        return text
    if not isinstance(text, str) or len(text) > MAX_IMPORT_BYTES:
        raise ConfigError(f"overrides must be a JSON object of setting: value, at most {MAX_IMPORT_BYTES:,} characters")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ConfigError('overrides must be a JSON object, e.g. {"student.epochs": 2, "seeds": 1}') from None
    if not isinstance(obj, dict):
        raise ConfigError('overrides must be a JSON object, e.g. {"student.epochs": 2, "seeds": 1}')
    return obj


def api_start(session: Any, preset_name: str, overrides: str):
    """``/start``: a preset plus ``{"setting": value}`` overrides; returns (session, status dict)."""
    session = session_of(session)
    try:
        cfg = preset(str(preset_name)).with_overrides({"name": str(preset_name), **_overrides(overrides)})
        plan, est = _admit(cfg, session)
        job = _submit(session, cfg, est)
    except (ConfigError, JobRefused) as exc:
        return session, {"run": None, "state": None, "message": f"Not started: {exc}"}
    session = {**session, "run": job.id}
    return session, {**status_dict(session), "message": f"Started run {job.id}"}


def api_cancel(session: Any):
    return session_of(session), {"message": cancel(session)}


def api_open(session: Any, run_id: Any):
    session, message = open_run_in(session_of(session), run_id)
    return session, {**status_dict(session), "message": message}


def api_retrieve(session: Any, file, k, metric: str):
    picture, text, gallery = retrieve(file, session, metric, k)
    items = gallery.get("value", []) if isinstance(gallery, dict) else gallery
    return {"message": text, "neighbours": [caption for _, caption in items]}
