"""Start the Gradio app: ``python app.py`` (local, full power) or on a Space (public mode).

The page is laid out in :mod:`app.ui.layout`, its events are handled in the files that
:mod:`app.ui.handlers` lists, its controls are the rows of :mod:`app.ui.form`. Runs are never
served from disk directly: downloads are copies handed out per request to whoever may see the run.
"""
from __future__ import annotations

import importlib.util
import os
import threading

from app.config import ASSETS

from . import views
from .layout import build_app
from .studio import studio

__all__ = ["build_app", "launch"]


def _warm_up_plotting() -> None:
    """Plotly's first figure costs ~0.5 s; pay it at start-up, not on the first training step."""
    views.loss_figure({"series": {"kd/0": {"step": [1], "epoch": [0.1], "segment": ["KD"], "losses": {"ce": [1.0]}}},
                       "schedules": {}})


def mcp_wanted(public: bool) -> bool:
    """Serve the API as MCP tools? ``INDISTILL_MCP=1``/``0`` decides; otherwise on locally when
    ``gradio[mcp]`` is installed (requirements-mcp.txt) and off on a public server."""
    setting = os.environ.get("INDISTILL_MCP")
    installed = importlib.util.find_spec("mcp") is not None
    if setting == "1" and not installed:
        print("INDISTILL_MCP=1 but the mcp package is missing: pip install -r requirements-mcp.txt; MCP is off.")
    if setting in ("0", "1"):
        return setting == "1" and installed
    return not public and installed


def launch(**kwargs):
    threading.Thread(target=_warm_up_plotting, daemon=True).start()
    s = studio()
    if s.public:  # visitors' pages keep a core: training takes the others (on 2 cores: one)
        from app.device import cpu_cores
        os.environ.setdefault("INDISTILL_TRAIN_THREADS", str(max(1, cpu_cores() - 1)))
    demo = build_app()
    demo.queue(default_concurrency_limit=8)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                max_file_size="50mb" if s.public else "500mb", allowed_paths=[str(ASSETS)],
                blocked_paths=[str(s.runs_root)], footer_links=["api", "gradio"],
                state_session_capacity=2000 if s.public else 10000,  # ~0.3 MB each: sessions stay bounded
                css=views.APP_CSS, **{"mcp_server": mcp_wanted(s.public), **kwargs})
    return demo
