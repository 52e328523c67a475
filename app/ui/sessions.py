"""Sessions and access: who a visitor is, and which run they may see.

A session is ``{"secret": 32 hex, "run": run id | None, "upload": path | None}``. The page
holds it server-side in ``gr.State`` and mirrors it in the browser (``gr.BrowserState``) so a
refresh or a restart finds it again; the API (:mod:`app.ui.api`) is stateless: its callers send
a signed ``session_key`` with every call. A run belongs to the session whose secret made it
(the job keeps a digest; so does the run folder): only that session, and the sessions that
joined it by starting the very same configuration (:meth:`app.runner.JobManager.submit_or_join`),
can follow it live; each of them can only leave it (the run stops when the last one leaves).
Anyone with its id (the share link) can open it read-only once it has ended. Caps count a
visitor by session and by client address (:func:`address_of_request`).
Handlers read the run on show through :func:`view_of` and :func:`folder_of`, which apply that
rule (:func:`access`).
"""
from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path
from typing import Any

from app import library, runfolder

from .studio import studio
from .visitors import LOCAL, address_digest, address_of

SECRET = re.compile(r"^[0-9a-f]{32}$")


def new_session() -> dict:
    return {"secret": secrets.token_hex(16), "run": None, "upload": None}


def session_of(value: Any) -> dict:
    """A checked session from whatever the browser (or a script) sent; a fresh one if it is not valid."""
    if not isinstance(value, dict) or not isinstance(value.get("secret"), str) or not SECRET.fullmatch(value["secret"]):
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


def address_of_request(request: Any) -> str | None:
    """The digest of a request's client address, as the caps per address count it; None without a
    request (a script or test calling the handlers: counted by session alone)."""
    address = address_of(request)
    return None if address == LOCAL else address_digest(address)


def remembered(session: dict) -> dict:
    """What the browser keeps: the session secret and the run on show (not server paths)."""
    return {"secret": session["secret"], "run": session["run"]}


def restore(stored: Any, query_run: str | None = None) -> tuple[dict, str]:
    """Page load: the session from browser storage; a share link's run opened read-only."""
    session = session_of(stored)
    if query_run:
        session, message = open_run_in(session, query_run)
        return session, message
    if session["run"] and view_of(session)[1]:
        session["run"] = None
    return session, session["run"] or ""


def access(session: dict):
    """(job in memory | None, results on disk | None, refusal): the ownership rule, applied once.

    A live run is visible only to its owner and the sessions that joined it; an ended run to anyone with its id."""
    run_id = session.get("run")
    if not run_id:
        return None, None, ""
    s = studio()
    job = s.manager.get(run_id)
    if job is not None:
        if job.live and not job.watched_by(owner(session)):
            return None, None, (f"Run `{run_id}` is still training and belongs to another session; its share link "
                                "opens it read-only once it has finished.")
        return job, None, ""
    results = s.manager.load_results(run_id)
    if results is None:
        results = library.load(run_id)    # a shipped run: read-only for everyone
    if results is None:
        return None, None, f"No run `{run_id}` on this server."
    return None, results, ""


def viewer_of(job, session: dict) -> dict:
    """How this session sees ``job``: ``read_only`` (a live run: unless it follows it; an ended one:
    unless it started it) and ``joined`` (it joined a run another visitor started)."""
    me = owner(session)
    return {"read_only": me not in job.holders if job.live else job.owner != me, "joined": me in job.joiners}


def view_of(session: dict) -> tuple[dict | None, str]:
    """(snapshot, refusal) of the run on show, if this session may see it (:func:`access`); the snapshot
    says whether it is read-only for this session and whether the session joined it."""
    job, results, refusal = access(session)
    if job is not None:
        return job.snapshot() | viewer_of(job, session), ""
    if results is not None:
        return runfolder.snapshot_from_results(session["run"], results), ""
    return None, refusal


def folder_of(session: dict) -> runfolder.RunFolder | None:
    """The run folder on show, if this session may see it (:func:`access`); a shipped run's in the library."""
    job, results, _ = access(session)
    if job is None and results is None:
        return None
    if results is not None and results.get("library"):
        return library.folder(session["run"])
    try:
        return runfolder.RunFolder(runfolder.resolve(studio().runs_root, session["run"]))
    except runfolder.RunIdError:
        return None


def results_of(session: Any) -> dict:
    folder = folder_of(session_of(session))
    return (folder.read_results() or {}) if folder is not None else {}


def open_run_in(session: dict, run_id: Any) -> tuple[dict, str]:
    try:
        run_id = runfolder.check_id(run_id)
    except runfolder.RunIdError as exc:
        return session, f"Not opened: {exc}."
    trial = {**session, "run": run_id}
    snap, refusal = view_of(trial)
    if snap is None:
        return session, f"Not opened: {refusal}"
    return trial, f"Opened run `{run_id}`" + (" (read-only)." if snap.get("read_only") else ".")


def end_session(session: Any) -> None:
    """The tab closed or the session expired: stop following a run it joined (a run nobody follows
    stops) and delete its uploaded dataset. A run the session started itself goes on (it reopens by id)."""
    if isinstance(session, dict) and isinstance(session.get("secret"), str) and SECRET.fullmatch(session["secret"]):
        manager, me = studio().manager, owner(session)
        joined = manager.held_by(me)
        if joined is not None and joined.owner != me:
            manager.leave(joined, me)
        if studio().manager.live_job_of(owner(session)) is None:  # another tab's run may still read it
            shutil.rmtree(studio().uploads / owner(session)[:16], ignore_errors=True)
