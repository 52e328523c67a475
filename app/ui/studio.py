"""Server-wide settings and state: the :class:`Studio` (the job manager, public mode and its
caps (:class:`app.limits.Limits`), sharing and the unit store, folders, the cache of built
retrieval models), its one instance (:func:`studio`, read from the environment through
:class:`app.settings.Settings`, replaced by :func:`configure`), and :func:`shown`, which hides
server paths from a public visitor's messages.

The handlers' shared state lives here and only here, on the studio: :func:`configure` gives a fresh
one (an empty model cache included).
"""
from __future__ import annotations

import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from app import public as policy
from app import settings
from app.config import ASSETS
from app.limits import Limits
from app.runner import JobManager

from .form import FormContext


def sharing_wanted(env: dict | None = None) -> bool:
    """Join identical runs and reuse stored units? ``INDISTILL_SHARING`` (default on; ``0`` off)."""
    return settings.read("INDISTILL_SHARING", env)


def unit_store(root: Path):
    """The server's store of finished units (:mod:`app.unitstore`), or None where it is not available."""
    try:
        from app.unitstore import UnitStore
    except ImportError:
        return None
    return UnitStore(root)


class ModelCache:
    """The least recently used built model sets (retrieval, feature maps), at most ``size``, keyed by run."""

    def __init__(self, size: int) -> None:
        self.size, self.lock, self.items = size, threading.Lock(), OrderedDict()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        """The cached value of ``key``, else ``make()`` cached (the oldest dropped past ``size``)."""
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        made = make()
        with self.lock:
            self.items[key] = made
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return made


@dataclass
class Studio:
    """Server-wide settings and state: the job manager, public mode and its caps (``limits``: the
    queue's, the budget, uploads, pictures, retrieval, exports, retention), sharing (joined runs, the
    unit store), folders, the cache of built models.

    The queue's and retention caps and the model cache's size are handed to the job manager and the
    cache when the studio is made (:func:`configure` a new one to change them); the handlers read the
    other caps from ``limits`` on each call."""

    runs_root: Path
    public: bool = False
    limits: Limits = field(default_factory=Limits)
    sharing: bool = field(default_factory=sharing_wanted)
    manager: JobManager = field(init=False)
    store: Any = field(init=False)           # UnitStore | None: None when sharing is off
    scratch: Path = field(init=False)
    uploads: Path = field(init=False)
    models: ModelCache = field(init=False)   # built retrieval models (app.ui.pictures.model_set)

    def __post_init__(self) -> None:
        self.runs_root = Path(self.runs_root).resolve()
        public, queue = self.public, self.limits.queue
        self.manager = JobManager(queue.max_jobs, self.runs_root, max_queue=queue.max_queue if public else None,
                                  max_queue_s=self.limits.budget.max_queue_minutes * 60 if public else None,
                                  retention=self.limits.retention if public else None,
                                  max_live_per_address=queue.max_runs_per_address if public else None,
                                  max_queue_s_per_address=queue.max_queue_minutes_per_address * 60 if public else None)
        self.models = ModelCache(self.limits.retrieval.model_sets)
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


def from_settings(found: settings.Settings) -> Studio:
    """The studio the environment describes (:meth:`app.settings.Settings.from_env`)."""
    return Studio(found.runs_root, public=found.public, limits=found.limits, sharing=found.sharing)


def studio() -> Studio:
    """The server's studio, made from the environment on first use."""
    global _STUDIO
    with _LOCK:
        if _STUDIO is None:
            _STUDIO = from_settings(settings.Settings.from_env())
        return _STUDIO


def reset() -> None:
    """Forget the studio: the next :func:`studio` reads the environment again (tests)."""
    global _STUDIO
    with _LOCK:
        _STUDIO = None


def configure(**fields) -> Studio:
    """Replace the server's studio (tests, benches): ``configure(runs_root=…, public=True,
    limits=Limits().changed(queue={"max_queue": 2}))``."""
    global _STUDIO
    with _LOCK:
        _STUDIO = Studio(**fields)
    return _STUDIO


def shown(text: str) -> str:
    """A message as a visitor may see it: in public mode, server paths become placeholders."""
    s = studio()
    if not s.public or not text:
        return text
    for path, name in s.places:
        text = text.replace(path, name)
    return text
