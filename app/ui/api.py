"""The scripting API: ``/start``, ``/status``, ``/cancel``, ``/retrieve`` (wired in
:func:`app.ui.layout.api_endpoints`), the same for ``gradio_client``, plain HTTP and MCP agents.

It keeps nothing between calls: a caller's session is the ``session_key`` that ``start``
returns, sent back with every later call, so a key held by one agent or script is all the state
there is. Keys are made by the server and signed (64 random bits and a 64-bit HMAC under a key
kept in the runs folder, 32 hex characters like a browser's session secret), so a caller cannot
pick one, and two callers never share a session by choosing the same string. Each function is a
thin layer over the page's own: the same planning, public-server checks and budget as the Start
button (:func:`app.ui.runs.admit`), the same ownership rule (:func:`app.ui.sessions.access`),
the same picture loader. Docstrings are the tools' descriptions (Gradio's MCP server reads them);
:func:`limits_note` adds this server's budgets.

Every answer is a JSON object, over ``gradio_client``, plain HTTP and MCP alike: Gradio's MCP
server writes an answer as ``str(value)`` (Python's dict text, and ``root=…`` for a call served
without the queue, where the value is still Gradio's ``JsonData`` model), so
:func:`mcp_answers_as_json` has it write JSON text instead.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any

import gradio as gr

from app import runfolder
from app.config import PRESETS, ConfigError, preset
from app.limits import Limits
from app.runner import JobRefused

from .pictures import retrieve as retrieve_picture
from .keys import server_secret
from .runs import admit, cancel as cancel_run, joined_note, status_dict, submit
from .sessions import SECRET, owner, session_of
from .studio import studio
from .uploads import accepted

KEY_RULE = "session_key must be empty (a new session) or the session_key a start call on this server returned"
SIGNING_KEY_FILE = ".api-signing-key"


def signing_key() -> bytes:
    """The server's key for session keys (:func:`app.ui.keys.server_secret`: random once, kept owner-only
    in the runs folder so keys survive a restart, never sent anywhere; a damaged file gets a new key,
    and keys signed by the old one then end)."""
    return server_secret(studio().runs_root, SIGNING_KEY_FILE, 32)


def _mac(nonce: str) -> str:
    return hmac.new(signing_key(), nonce.encode(), hashlib.sha256).hexdigest()[:16]


def issue_key() -> str:
    """A new session key: 16 random hex characters and their 16-character HMAC."""
    nonce = secrets.token_hex(8)
    return nonce + _mac(nonce)


def key_valid(key: str) -> bool:
    return isinstance(key, str) and SECRET.fullmatch(key) is not None and hmac.compare_digest(key[16:], _mac(key[:16]))


class ApiError(ValueError):
    """A bad argument: the message names it and what is accepted."""


def _overrides(text: Any) -> dict:
    if text in (None, ""):
        return {}
    if isinstance(text, dict):
        return text
    cap = studio().limits.server.import_max_bytes
    if not isinstance(text, str) or len(text) > cap:
        raise ConfigError(f"overrides must be a JSON object of setting: value, at most {cap:,} characters")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ConfigError('overrides must be a JSON object, e.g. {"student.epochs": 2, "seeds": 1}') from None
    if not isinstance(obj, dict):
        raise ConfigError('overrides must be a JSON object, e.g. {"student.epochs": 2, "seeds": 1}')
    return obj


def _session(session_key: Any, run_id: Any = None) -> dict:
    """The session a key names (a new one for an empty key) with ``run_id`` on show.

    An empty ``run_id`` means the session's live run, if it has one."""
    key = "" if session_key is None else session_key
    if not isinstance(key, str) or (key and not key_valid(key)):
        raise ApiError(KEY_RULE)
    session = session_of({"secret": key or issue_key()})
    if run_id not in (None, ""):
        try:
            session["run"] = runfolder.check_id(run_id)
        except runfolder.RunIdError as exc:
            raise ApiError(f"run_id: {exc}") from None
    elif key:
        job = studio().manager.held_by(owner(session)) or studio().manager.live_job_of(owner(session))
        session["run"] = job.id if job is not None else None
    return session


def _answer(session: dict, key: bool = True, **extra) -> dict:
    return ({"session_key": session["secret"]} if key else {}) | status_dict(session) | extra


def start(preset_name: str, overrides: str = "", session_key: str = "", request: gr.Request = None) -> dict:
    """Start a distillation run (teacher, baseline, KD and InDistill arms) from a preset with overrides; when a run with exactly the same settings is already queued or training, join it instead (joined is true).

    Args:
        preset_name: a preset: PRESET_NAMES.
        overrides: a JSON object of setting: value, e.g. {"student.epochs": 2, "seeds": 1}; empty for none.
        session_key: empty to begin a new session, or the session_key an earlier call returned.
    Returns:
        {session_key, run, state, joined, message, ...}: keep session_key and run for status and cancel; run is null and message says why when the run was not started.
    """
    try:
        session = _session(session_key)
        if not isinstance(preset_name, str) or preset_name not in PRESETS:
            raise ConfigError(f"preset_name must be one of {', '.join(PRESETS)}")
        cfg = preset(preset_name).with_overrides({"name": str(preset_name), **_overrides(overrides)})
        plan, est = admit(cfg, session)
        job, joined = submit(session, cfg, est, request=request)
    except (ApiError, ConfigError, JobRefused) as exc:
        key = session_key if key_valid(session_key) else None
        return {"session_key": key, "run": None, "state": None, "joined": False, "message": f"Not started: {exc}"}
    session = {**session, "run": job.id}
    eta = f" (estimated {est.minutes:.1f} min)" if est is not None else ""
    return _answer(session, message=joined_note(job).replace("`", "") if joined else f"Started run {job.id}{eta}")


start.__doc__ = start.__doc__.replace("PRESET_NAMES", ", ".join(PRESETS))  # the tool's description lists them all


def status(session_key: str = "", run_id: str = "") -> dict:
    """The state, progress, latest loss and test results of a run.

    Args:
        session_key: the session_key start returned; empty to read an ended run by its id (read-only).
        run_id: the run to read; empty for this session's live run. A run still training is visible only to its own session.
    Returns:
        {run, state (queued | running | finished | failed | cancelled | interrupted | null), progress, eta_s, phase, loss, results, read_only, message}; state is null, with a message, when there is no such run to show.
    """
    try:
        return _answer(_session(session_key, run_id), key=bool(session_key))
    except ApiError as exc:
        return {"run": None, "state": None, "message": str(exc)}


def cancel(session_key: str, run_id: str = "") -> dict:
    """Cancel a run this session started or joined: this session stops following it, and the run stops (within a training step, keeping finished arms) once no session follows it.

    Args:
        session_key: the session_key start returned.
        run_id: the run to cancel; empty for this session's live run.
    Returns:
        {message}: what happened.
    """
    try:
        session = _session(session_key, run_id)
    except ApiError as exc:
        return {"message": str(exc)}
    if not session_key:
        return {"message": "Nothing to cancel: a run is cancelled with the session_key its start call returned."}
    return {"message": cancel_run(session)}


def retrieve(picture, k: float = 8, metric: str = "cosine", run_id: str = "", session_key: str = "") -> dict:
    """Predicted class and the k nearest training pictures for a picture, for each network of a run.

    Args:
        picture: PICTURE_RULE, sent with the call (an MCP agent sends it as a data: URL, base64). A http(s) URL is refused: the server never fetches one.
        k: neighbours per network, 1 to MAX_K.
        metric: cosine or euclidean.
        run_id: the run whose networks to use (once it has checkpoints); empty: with a session_key, its live run, else the shipped teachers.
        session_key: the session_key start returned (needed for a run still training; empty otherwise).
    Returns:
        {message, neighbours}: the answer in Markdown and the captions of the neighbours.
    """
    try:
        session = _session(session_key, run_id)
    except ApiError as exc:
        return {"message": str(exc), "neighbours": []}
    _, text, gallery = retrieve_picture(picture, session, metric, k)
    items = gallery.get("value", []) if isinstance(gallery, dict) else gallery
    return {"message": text, "neighbours": [caption for _, caption in items]}


# the tool's description states the caps (those of app.limits: no environment variable changes them)
retrieve.__doc__ = retrieve.__doc__.replace("PICTURE_RULE", accepted(Limits().picture)) \
    .replace("MAX_K", str(Limits().retrieval.max_k))


def limits_note() -> str:
    """This server's budgets, for the tools' descriptions."""
    s = studio()
    if not s.public:
        return " This is a local server: no budgets apply."
    b, q = s.limits.budget, s.limits.queue
    return (f" Public server: a run must be estimated at most {b.max_minutes:g} min on this server and is "
            f"stopped when it passes that; one live run per session and {q.max_runs_per_address} per client "
            f"address; at most {b.max_queue_minutes:g} min of estimated work waits in the queue "
            f"({q.max_queue_minutes_per_address:g} min per address), served in turn by visitor; a run with "
            f"the same settings as a live one is joined, not repeated; networks up to {b.max_params:,} "
            "parameters; data from the offered list only.")


def json_text(value: Any) -> Any:
    """An answer as JSON text (a dict or list, or Gradio's ``JsonData`` model of one); anything else as it is."""
    data = getattr(value, "root", value)
    if isinstance(data, (dict, list)) and not (isinstance(data, dict) and "path" in data and "meta" in data):
        return json.dumps(data)
    return value


def mcp_answers_as_json() -> None:
    """Have Gradio's MCP server write each answer as JSON text, not ``str()`` of it (once per process)."""
    try:
        from gradio.mcp import GradioMCPServer
    except ImportError:
        return
    original = GradioMCPServer.postprocess_output_data
    if getattr(original, "answers_as_json", False):
        return

    def postprocess_output_data(self, data, root_url):
        return original(self, [json_text(v) for v in data], root_url)
    postprocess_output_data.answers_as_json = True
    GradioMCPServer.postprocess_output_data = postprocess_output_data


def describe(fn) -> str:
    """A function's description for the API page and MCP (Gradio's own docstring reading), with its Returns."""
    from gradio.utils import get_function_description
    text, _, returns = get_function_description(fn)
    return text + (f" Returns: {' '.join(' '.join(returns).split())}" if returns else "")
