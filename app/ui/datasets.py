"""A visitor's uploaded dataset (Setup tab): an archive checked and extracted into the session's
own folder, one per session, within the server's space for uploads (idle ones evicted first).
"""
from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Any

import gradio as gr

from app import runfolder

from .sessions import owner, session_of
from .studio import shown, studio

UPLOAD_MAX_AGE_S = 24 * 3600          # an uploaded dataset lives at most a day
UPLOADS_MAX_BYTES = 3 * 10 ** 9       # all sessions' uploaded datasets together


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
    with s.manager.lock:  # the job table changes under other requests' threads
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
