"""Server-wide settings and state: the :class:`Studio` (the job manager, public mode and its
budget, the caps per client address, sharing and the unit store, folders), its one instance
(:func:`studio`, replaced by :func:`configure`), and :func:`shown`, which hides server paths
from a public visitor's messages.

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


def sharing_wanted(env: dict | None = None) -> bool:
    """Join identical runs and reuse stored units? ``INDISTILL_SHARING`` (default on; ``0`` off)."""
    return (os.environ if env is None else env).get("INDISTILL_SHARING", "1").strip() != "0"


def unit_store(root: Path):
    """The server's store of finished units (:mod:`app.unitstore`), or None where it is not available."""
    try:
        from app.unitstore import UnitStore
    except ImportError:
        return None
    return UnitStore(root)


@dataclass
class Studio:
    """Server-wide settings and state: the job manager, public mode and its budget, the caps per
    client address (public mode), sharing (joined runs, the unit store), folders."""

    runs_root: Path
    public: bool = False
    max_jobs: int = 1
    budget: policy.Budget = field(default_factory=policy.Budget)
    upload_limits: Any = None
    max_queue: int = 30
    max_live_per_address: int = 2            # live runs one client address may have, whatever its keys
    max_queue_minutes_per_address: float = 30.0
    sharing: bool = field(default_factory=sharing_wanted)
    manager: JobManager = field(init=False)
    store: Any = field(init=False)           # UnitStore | None: None when sharing is off
    scratch: Path = field(init=False)
    uploads: Path = field(init=False)

    def __post_init__(self) -> None:
        self.runs_root = Path(self.runs_root).resolve()
        public = self.public
        self.manager = JobManager(self.max_jobs, self.runs_root, max_queue=self.max_queue if public else None,
                                  max_queue_s=self.budget.max_queue_minutes * 60 if public else None,
                                  retention=runfolder.Retention() if public else None,
                                  max_live_per_address=self.max_live_per_address if public else None,
                                  max_queue_s_per_address=self.max_queue_minutes_per_address * 60 if public else None)
        self.store = unit_store(self.runs_root / ".units") if self.sharing else None
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
                             max_queue=int(os.environ.get("INDISTILL_MAX_QUEUE", "30")),
                             max_live_per_address=int(os.environ.get("INDISTILL_MAX_RUNS_PER_ADDRESS", "2")),
                             max_queue_minutes_per_address=float(
                                 os.environ.get("INDISTILL_MAX_QUEUE_MINUTES_PER_ADDRESS", "30")))
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
