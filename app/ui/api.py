"""The scripting API (``/start``, ``/cancel``, ``/status``, ``/open``, ``/retrieve``, wired in
:func:`app.ui.layout.api_endpoints`): a thin layer over the functions the page calls, returning
plain data; ``/status`` is :func:`app.ui.runs.status_dict` itself.
"""
from __future__ import annotations

import json
from typing import Any

from app.config import ConfigError, preset
from app.runner import JobRefused

from .pictures import retrieve
from .runs import _admit, _submit, cancel, status_dict
from .sessions import open_run_in, session_of
from .studio import MAX_IMPORT_BYTES

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
