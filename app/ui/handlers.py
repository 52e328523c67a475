"""The app's event handlers: plain functions of a session and control values, so tests
call them directly. Every value comes from a stranger: ids, numbers, files and the
browser-stored session are checked, and every failure is a message, never a traceback.

They live by concern in these files of ``app/ui/``; this module only re-exports their
public names, for scripts and tests (``from app.ui import handlers as ui``):

- ``studio.py``: server-wide settings and state (``Studio``, ``studio()``, ``configure()``) and ``shown()``
- ``sessions.py``: sessions and access: which run a session may see, live or read-only
- ``runs.py``: form checks, starting, cancelling and opening runs and grids, the page's timers
- ``results.py``: the Compare table and downloads, the result views, the configuration as a file
- ``onnx_export.py``: a student checkpoint exported as ONNX
- ``datasets.py``: a visitor's uploaded dataset
- ``pictures.py``: the models run on a picture: retrieval and feature maps
- ``api.py``: the scripting API, a thin layer over the functions above

Every handler the page wires (``layout.py``) is re-exported here; ``tests/test_limits.py`` checks it,
so a new handler cannot be left out. The caps are the studio's (``studio().limits``, an
:class:`app.limits.Limits`: configure a smaller one with ``configure(limits=…)``); other state
(``CHART_SECONDS``, the locks …) is not re-exported: read it in the module that holds it.
"""
from __future__ import annotations

from .api import cancel as api_cancel, retrieve as api_retrieve, start as api_start, status as api_status
from .datasets import upload_dataset
from .onnx_export import export_onnx, onnx_choices
from .pictures import clear_outdated_maps, feature_maps, model_set, retrieve, run_on_show
from .results import compare, export_config, grid_views, import_config, info_views, pr_view
from .runs import apply_preset, cancel, check, open_run, param_updates, run_grid, run_grid_on_page, start, \
    start_on_page, status_dict, tick_charts, tick_status
from .sessions import address_of_request, end_session, new_session, open_run_in, owner, remembered, restore, \
    results_of, session_of
from .studio import Studio, configure, shown, studio

__all__ = [
    "Studio", "studio", "configure", "shown",
    "new_session", "session_of", "owner", "remembered", "restore", "results_of", "open_run_in", "end_session",
    "address_of_request",
    "check", "param_updates", "apply_preset", "start", "start_on_page", "run_grid", "run_grid_on_page", "cancel",
    "open_run",
    "tick_status", "tick_charts", "status_dict",
    "compare", "info_views", "pr_view", "grid_views", "export_config", "import_config",
    "onnx_choices", "export_onnx",
    "upload_dataset",
    "model_set", "retrieve", "feature_maps", "run_on_show", "clear_outdated_maps",
    "api_start", "api_status", "api_cancel", "api_retrieve",
]
