"""Runs from the form: the controls checked (the plan, and in public mode the server's rules
and budget), a run or a curriculum grid started (or a live run with the very same settings
joined), left or cancelled, or opened, and the page's timers that follow the run on show
(:func:`tick_status`, :func:`tick_charts`; :func:`status_dict` for scripts).

Handlers that count a visitor by client address take the Gradio request: the page's events
call :func:`start_on_page` and :func:`run_grid_on_page`, which Gradio hands the request to.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gradio as gr

from app import public as policy
from app import runfolder
from app.config import ConfigError, ExperimentConfig, preset
from app.plan import Plan, make_plan
from app.results import last_step, status as run_status
from app.runner import JobRefused

from . import datasets, views
from .form import CONTROL_KEYS, config_from, param_specs, values_from
from .sessions import access, address_of_request, open_run_in, owner, remembered, session_of, view_of, viewer_of
from .studio import shown, studio

LOG_TAIL = 80


# ---------------------------------------------------------------- form checks

def _plan_for(session: dict, values: tuple) -> tuple[ExperimentConfig, Plan, policy.Estimate | None]:
    """Config, plan and (public) estimate from control values; ConfigError names what is wrong."""
    s = studio()
    if len(values) != len(CONTROL_KEYS):
        raise ConfigError(f"expected {len(CONTROL_KEYS)} control values, got {len(values)}")
    cfg = config_from(dict(zip(CONTROL_KEYS, values)), s.context(session))
    return (cfg, *admit(cfg, session))


def admit(cfg: ExperimentConfig, session: dict) -> tuple[Plan, policy.Estimate | None]:
    """(plan, estimate): the config planned, and in public mode checked against the server's rules and
    budget (estimate None locally); ConfigError names what is wrong. The Start button, ``/start``, grids
    and imported configurations all pass here."""
    s = studio()
    budget = s.limits.budget
    if s.public:  # size caps first: planning builds the networks (a wide auxiliary teacher can take GBs)
        problems = policy.network_problems(cfg, budget)
        if problems:
            raise ConfigError("not allowed on this public server:\n  - " + "\n  - ".join(problems))
    plan = make_plan(cfg)
    plan.raise_if_invalid()
    if not s.public:
        return plan, None
    allowed = policy.base_allowed_data() | ({Path(session["upload"]).resolve()} if session.get("upload") else set())
    problems = policy.admit(cfg, allowed, budget)
    if problems:
        raise ConfigError("not allowed on this public server:\n  - " + "\n  - ".join(problems))
    try:
        est = policy.estimate(cfg, plan, *policy.dataset_size(cfg))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot size the dataset: {exc}") from None
    problems = policy.check_budget(cfg, est, budget)
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
                    f"(public limit {studio().limits.budget.max_minutes:g} min).")
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

def submit(session: dict, cfg: ExperimentConfig, est, grid=None, request: Any = None):
    """(job, joined): the run queued for this session, or, when sharing is on and a live run has the very
    same configuration (never one reading a visitor's upload), that run joined. Public caps count the
    session and its client address."""
    s = studio()
    upload = session.get("upload")
    private = bool(upload and cfg.data.data_dir and Path(cfg.data.data_dir).resolve() == Path(upload).resolve())
    if private:
        cfg = cfg.with_overrides({"data.cache_dir": str(Path(upload).parent / "cache")})
    me, address = owner(session), address_of_request(request)
    settings = {"estimate_s": est.seconds if est is not None else None, "address": address,
                # public mode: enforced while it runs, not only estimated
                "limit_s": s.limits.budget.max_minutes * 60 if s.public else None}
    if grid:
        job, joined = s.manager.submit_grid(cfg, *grid, owner=me, **settings), False
    elif s.sharing and not private:
        job, joined = s.manager.submit_or_join(cfg, me, store=s.store, **settings)
    else:  # a visitor's own data: units are stored and looked up under their session alone
        job, joined = s.manager.submit(cfg, owner=me, store=s.store, scope=me if private else None, **settings), False
    if not joined:
        job.experiment.run_dir.mkdir(parents=True, exist_ok=True)
        runfolder.RunFolder(job.run_dir).set_owner(session["secret"], address)
    return job, joined


def joined_note(job) -> str:
    """What a visitor who joined a run is told (the status line and the start answers)."""
    return (f"Joined run `{job.id}`: the same settings were already {'training' if job.state == 'running' else 'queued'}"
            " — started by another visitor. You follow it: the same live curves and results; Cancel stops "
            "your following (the run goes on while anyone follows it).")


def start(session: Any, *values, request: Any = None):
    """Start a run with the controls' settings (or join a live run with the very same ones): (session,
    browser copy, message). ``request``: the Gradio request (its client address counts for the caps)."""
    session = session_of(session)
    datasets.mark_active(session)
    try:
        cfg, plan, est = _plan_for(session, values)
        job, joined = submit(session, cfg, est, request=request)
    except (ConfigError, JobRefused) as exc:
        return session, remembered(session), shown(f"Not started: {exc}")
    session = {**session, "run": job.id}
    if joined:
        return session, remembered(session), joined_note(job)
    eta = f" (estimated {est.minutes:.1f} min)" if est is not None else ""
    return session, remembered(session), f"Started run `{job.id}`{eta}."


def start_on_page(session: Any, request: gr.Request, *values):
    """The Start button: :func:`start` with the page's request."""
    return start(session, *values, request=request)


def run_grid(session: Any, a_text: str, b_text: str, epochs, *values, request: Any = None):
    """Start the a × b curriculum grid (InDistill student only) with the current settings."""
    from app.grid import parse_values
    session = session_of(session)
    try:
        cfg = config_from(dict(zip(CONTROL_KEYS, values)), studio().context(session))
        if epochs:
            cfg = cfg.with_overrides({"student.epochs": epochs})
        a_values, b_values = parse_values(str(a_text or ""), "a values"), parse_values(str(b_text or ""), "b values")
        est = _grid_estimate(cfg, a_values, b_values, session) if studio().public else None
        job, _ = submit(session, cfg, est, grid=(a_values, b_values), request=request)
    except (ConfigError, JobRefused) as exc:
        return session, remembered(session), shown(f"Grid not started: {exc}")
    session = {**session, "run": job.id}
    return session, remembered(session), f"Started grid `{job.id}` ({len(job.experiment.cells)} runs); progress in the Train tab."


def run_grid_on_page(session: Any, request: gr.Request, a_text: str, b_text: str, epochs, *values):
    """The grid button: :func:`run_grid` with the page's request."""
    return run_grid(session, a_text, b_text, epochs, *values, request=request)


def _grid_estimate(cfg: ExperimentConfig, a_values: list[float], b_values: list[float], session: dict):
    """The whole grid's estimate: every cell (its own a, b) admitted and summed against the budget."""
    from app.grid import CurriculumGrid
    if not all(0 <= a <= 10 for a in a_values) or not all(-3 <= b <= 5 for b in b_values):
        raise ConfigError("grid values: a must be 0 to 10 and b −3 to 5 on a public server (as on the sliders)")
    grid = CurriculumGrid(cfg, a_values, b_values, studio().runs_root / "unused")
    cells = [admit(c, session)[1] for c in grid.configs]
    est = policy.Estimate(sum(c.seconds for c in cells), max(c.step_mb for c in cells), cells[0].train_images,
                          fixed_seconds=sum(c.fixed_seconds for c in cells))
    problems = policy.check_budget(cfg.with_overrides({"seeds": 1}), est, studio().limits.budget)
    if problems:
        raise ConfigError(f"the grid's {len(cells)} runs together are over the public budget: " + "; ".join(problems))
    return est


def cancel(session: Any) -> str:
    """Stop following the run on show; the run itself stops when no one follows it any more."""
    session = session_of(session)
    me = owner(session)
    job = studio().manager.get(session.get("run"))
    if job is None or not job.watched_by(me):
        return "Nothing to cancel: no run of this session is going."
    if not job.live:
        return f"Run `{job.id}` has already ended."
    if me not in job.holders:
        return f"You no longer follow run `{job.id}`; it goes on for the visitors who still follow it."
    others = studio().manager.leave(job, me)
    if others:
        return (f"You left run `{job.id}`: it goes on for the {others} other visitor{'s' if others > 1 else ''} "
                "following it (it stops when no one follows it).")
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
    datasets.mark_active(session)  # the visitor is still here: their uploaded dataset is not evicted
    version = _version(session)
    if version == seen and version is not None:
        return (gr.skip(),) * 5 + (seen,)
    snap, refusal = view_of(session)
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
    snap = view_of(session)[0]
    return (views.loss_figure(snap), views.accuracy_figure(snap),
            views.channel_figure((snap or {}).get("channel_maps")) if not same_run else gr.skip(),
            (*version, time.time()))


def status_dict(session: Any) -> dict:
    """The run on show as plain data (the ``status`` API endpoint)."""
    session = session_of(session)
    job, results, refusal = access(session)
    if job is not None:  # live or recent: read the job's facts without copying its curves
        out = job.summary()
        return {**out, **viewer_of(job, session), "error": shown(out["error"] or "") or None}
    if results is None:
        return {"run": session.get("run"), "state": None, "message": refusal or "no run yet"}
    snap = runfolder.snapshot_from_results(session["run"], results)  # the one read of results.json
    out = run_status(snap, last_step(snap))  # the same summary as a live job's (app.results.status)
    return {**out, "read_only": bool(snap.get("read_only")), "error": shown(out["error"] or "") or None}
