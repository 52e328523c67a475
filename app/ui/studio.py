"""Server-wide settings and state: the :class:`Studio` (the job manager, public mode and its
budget, folders), its one instance (:func:`studio`, replaced by :func:`configure`), and
:func:`shown`, which hides server paths from a public visitor's messages.

The handlers' shared state lives here and only here: the studio and its lock, and the cache
of built retrieval models that :func:`configure` empties (:func:`app.ui.pictures.model_set` fills it).
"""
from __future__ import annotations

import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import public as policy
from app import runfolder
from app.config import ASSETS
from app.runner import JobManager

from .form import FormContext

MAX_IMPORT_BYTES = 64 * 1024   # an imported configuration file, or the API's overrides


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
_MODEL_SETS: OrderedDict = OrderedDict()   # built retrieval models, least recently used first


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
