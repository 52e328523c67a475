"""Start the Gradio app: ``python app.py`` (local, full power) or on a Space (public mode).

The page is laid out in :mod:`app.ui.layout`, its events are handled in the files that
:mod:`app.ui.handlers` lists, its controls are the rows of :mod:`app.ui.form`. Runs are never
served from disk directly: downloads are copies handed out per request to whoever may see the run.
No input makes the server fetch a URL (:func:`app.ui.uploads.refuse_url_inputs`); on a public server
Gradio's upload route is capped per client address and in all, and what no event took is deleted
within minutes (:class:`app.ui.uploads.UploadGuard`, :class:`app.ui.uploads.UploadLedger`).
"""
from __future__ import annotations

import importlib.util
import os
import threading

from app import settings, worker
from app.config import ASSETS

from . import views
from .layout import build_app
from .api_session import ApiSessionPerAddress
from .studio import studio
from .uploads import UploadGuard, UploadLedger, refuse_url_inputs

__all__ = ["build_app", "launch"]
LOCAL_SESSIONS, LOCAL_MAX_FILE_MB = 10000, 500   # a local server's bounds (public: limits.server)


def _warm_up_plotting() -> None:
    """Plotly's first figure costs ~0.5 s; pay it at start-up, not on the first training step."""
    views.loss_figure({"series": {"kd/0": {"step": [1], "epoch": [0.1], "segment": ["KD"], "losses": {"ce": [1.0]}}},
                       "schedules": {}})


def mcp_wanted(public: bool, env: dict | None = None) -> bool:
    """Serve the API as MCP tools? ``INDISTILL_MCP=1``/``0`` decides; otherwise on locally when
    ``gradio[mcp]`` is installed (requirements-mcp.txt) and off on a public server."""
    setting = settings.read("INDISTILL_MCP", env)
    installed = importlib.util.find_spec("mcp") is not None
    if setting and not installed:
        print("INDISTILL_MCP=1 but the mcp package is missing: pip install -r requirements-mcp.txt; MCP is off.")
    if setting is not None:
        return setting and installed
    return not public and installed


def guarded_uploads(app_kwargs: dict | None, ledger: UploadLedger) -> dict:
    """The server's FastAPI settings plus the upload guard (innermost of the app's middleware, so it
    reads plain answers) and the ledger's sweeper (run for as long as the server does)."""
    from starlette.middleware import Middleware
    app_kwargs = dict(app_kwargs or {})
    if "lifespan" in app_kwargs:
        raise ValueError("launch: a lifespan of its own and the public upload sweeper cannot both run")
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(UploadGuard, ledger=ledger)]
    app_kwargs["lifespan"] = ledger.sweeping
    return app_kwargs


def shared_api_sessions(app_kwargs: dict | None) -> dict:
    """The server's FastAPI settings plus :class:`ApiSessionPerAddress` (API polls without a session)."""
    from starlette.middleware import Middleware
    app_kwargs = dict(app_kwargs or {})
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(ApiSessionPerAddress)]
    return app_kwargs


def launch(**kwargs):
    threading.Thread(target=_warm_up_plotting, daemon=True).start()
    s = studio()
    if s.public:  # visitors' pages keep a core: training takes the others (on 2 cores: one)
        from app.device import cpu_cores
        os.environ.setdefault("INDISTILL_TRAIN_THREADS", str(max(1, cpu_cores() - 1)))
    demo = build_app()
    ledger = UploadLedger(s.limits.upload_route) if s.public else None
    refuse_url_inputs(demo, claimed=ledger.claim if ledger else None)
    demo.upload_ledger = ledger  # who holds what in Gradio's upload cache (public mode), for tests and benches
    if ledger is not None:
        kwargs["app_kwargs"] = guarded_uploads(kwargs.get("app_kwargs"), ledger)
    kwargs["app_kwargs"] = shared_api_sessions(kwargs.get("app_kwargs"))
    if worker.backend() == "process":  # the fork server imports torch and the engine now, not at the first Start
        threading.Thread(target=worker.prestart, daemon=True).start()
    # public: /run/<name> may not bypass the queue for queued endpoints (start, cancel, retrieve); status is unqueued
    demo.queue(default_concurrency_limit=8, api_open=not s.public)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                max_file_size=f"{s.limits.server.max_file_mb if s.public else LOCAL_MAX_FILE_MB}mb",
                allowed_paths=[str(ASSETS)], blocked_paths=[str(s.runs_root)], footer_links=["api", "gradio"],
                # ~0.3 MB each: sessions stay bounded
                state_session_capacity=s.limits.server.session_capacity if s.public else LOCAL_SESSIONS,
                css=views.APP_CSS, **{"mcp_server": mcp_wanted(s.public), **kwargs})
    return demo
