"""Every cap a public server enforces, in one frozen :class:`Limits` (engine side, no Gradio):
the run budget, the queue, retention of run folders, uploaded datasets, Gradio's upload route,
pictures, retrieval, exports and downloads, the server's sessions. The :class:`app.ui.studio.Studio`
holds one; the handlers read their caps from it (a test configures a Studio with smaller ones).

:meth:`Limits.from_env` reads the caps that have an environment variable (through
:mod:`app.settings`); :func:`limits_table` writes the README's table of every cap (its default,
its variable, where it is enforced) from :data:`ROWS`, so the two cannot drift.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from .archives import ArchiveLimits
from .public import Budget
from .runfolder import Retention
from .settings import read

MB = 1_000_000


@dataclass(frozen=True)
class QueueCaps:
    """How many runs train at once, and what waits in the queue (public mode: per client address too)."""

    max_jobs: int = 1
    max_queue: int = 30
    max_runs_per_address: int = 2
    max_queue_minutes_per_address: float = 30.0


@dataclass(frozen=True)
class DatasetCaps:
    """Visitors' uploaded datasets on disk (one per session)."""

    total_bytes: int = 3 * 10 ** 9
    per_address_bytes: int = 1 * 10 ** 9
    active_s: float = 300.0
    max_age_s: float = 24 * 3600.0


@dataclass(frozen=True)
class UploadCaps:
    """Gradio's upload cache (public mode): bytes and files held per client address and in all;
    a file no event took within ``unclaimed_s`` is deleted (swept every ``sweep_s``)."""

    per_client_bytes: int = 200 * MB
    total_bytes: int = 2000 * MB
    per_client_files: int = 1000
    unclaimed_s: float = 300.0
    sweep_s: float = 30.0


@dataclass(frozen=True)
class PictureCaps:
    """A picture given to retrieval or feature maps, checked from its header."""

    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 20_000_000


@dataclass(frozen=True)
class RetrievalCaps:
    """Neighbours per network, and how many runs' loaded networks stay in memory."""

    max_k: int = 16
    model_sets: int = 3


@dataclass(frozen=True)
class ExportCaps:
    """ONNX exports and downloads, kept in the scratch folder for ``kept_s``."""

    onnx_timed_runs: int = 50
    onnx_timed_runs_b256: int = 5
    onnx_scratch_bytes: int = 10 ** 9
    download_max_bytes: int = 200 * MB
    kept_s: float = 600.0


@dataclass(frozen=True)
class ServerCaps:
    """The web server's own bounds (public mode)."""

    session_capacity: int = 2000
    max_file_mb: int = 50
    import_max_bytes: int = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """Every public cap, by group (each group's fields are described in :data:`ROWS`)."""

    budget: Budget = field(default_factory=Budget)
    queue: QueueCaps = field(default_factory=QueueCaps)
    retention: Retention = field(default_factory=Retention)
    archive: ArchiveLimits = field(default_factory=ArchiveLimits)
    datasets: DatasetCaps = field(default_factory=DatasetCaps)
    upload_route: UploadCaps = field(default_factory=UploadCaps)
    picture: PictureCaps = field(default_factory=PictureCaps)
    retrieval: RetrievalCaps = field(default_factory=RetrievalCaps)
    export: ExportCaps = field(default_factory=ExportCaps)
    server: ServerCaps = field(default_factory=ServerCaps)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Limits":
        """The defaults, with each cap that has an environment variable (:data:`ENV`) read from ``env``."""
        groups: dict[str, dict[str, Any]] = {}
        for (group, name), variable in ENV.items():
            groups.setdefault(group, {})[name] = read(variable, env)
        return cls().changed(**groups)

    def changed(self, **groups: Mapping[str, Any]) -> "Limits":
        """A copy with some caps changed: ``changed(queue={"max_queue": 2})``."""
        return dataclasses.replace(self, **{g: dataclasses.replace(getattr(self, g), **caps) for g, caps in groups.items()})


# Caps set by an environment variable: (group, field) → variable (see app.settings.VARIABLES).
ENV: dict[tuple[str, str], str] = {
    ("queue", "max_jobs"): "INDISTILL_MAX_JOBS",
    ("queue", "max_queue"): "INDISTILL_MAX_QUEUE",
    ("queue", "max_runs_per_address"): "INDISTILL_MAX_RUNS_PER_ADDRESS",
    ("queue", "max_queue_minutes_per_address"): "INDISTILL_MAX_QUEUE_MINUTES_PER_ADDRESS",
    ("retention", "max_per_address"): "INDISTILL_MAX_KEPT_PER_ADDRESS",
}

# group → (where it is enforced, {field: (what, unit) or (what, unit, where)}); unit: bytes, MB, s, min,
# × or "" (a count).
ROWS: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "budget": ("`app/public.py` (Start, `/start`, grids, imports)", {
        "max_minutes": ("a run's estimated time on this server (also enforced while it runs)", "min"),
        "max_step_mb": ("estimated activation memory of one training step", "MB"),
        "max_batch": ("batch size", ""),
        "max_seeds": ("seeds per run", ""),
        "max_input_size": ("input size (pixels a side)", ""),
        "max_latency_runs": ("timed calls per latency measurement", ""),
        "max_info_batch": ("images per information-flow batch", ""),
        "max_val_per_class": ("validation images per class", ""),
        "max_aux_width": ("auxiliary teacher width (a multiple of 0.5)", "×"),
        "max_params": ("parameters of any network of a run", ""),
        "max_queries": ("retrieval queries per evaluation", ""),
        "max_queue_minutes": ("estimated work waiting in the queue, all visitors", "min"),
    }),
    "queue": ("`app/runner.py` (`JobManager`)", {
        "max_jobs": ("runs training at once (local too)", ""),
        "max_queue": ("runs waiting in the queue", ""),
        "max_runs_per_address": ("live runs of one client address, whatever its sessions (one per session)", ""),
        "max_queue_minutes_per_address": ("estimated work of one client address in the queue", "min"),
    }),
    "retention": ("`app/runfolder.py` (`RunIndex`)", {
        "max_runs": ("run folders kept (the oldest ended runs go first)", ""),
        "max_bytes": ("bytes of run folders kept", "bytes"),
        "max_per_owner": ("run folders kept per session", ""),
        "max_per_address": ("run folders kept per client address", ""),
    }),
    "archive": ("`app/archives.py` (a dataset upload)", {
        "max_archive_bytes": ("an uploaded dataset archive, compressed", "bytes"),
        "max_members": ("entries (files and folders) in an archive", ""),
        "max_member_bytes": ("one file of an archive, uncompressed", "bytes"),
        "max_total_bytes": ("all files of an archive, uncompressed", "bytes"),
        "max_image_pixels": ("pixels of one image of an archive", ""),
        "max_total_pixels": ("pixels of all images of an archive", ""),
        "min_classes": ("fewest class folders", ""),
        "max_classes": ("most class folders", ""),
        "max_images_per_class": ("images per class and split", ""),
    }),
    "datasets": ("`app/ui/datasets.py`", {
        "total_bytes": ("uploaded datasets of all visitors (gone visitors' are evicted first)", "bytes"),
        "per_address_bytes": ("uploaded datasets of one client address", "bytes"),
        "active_s": ("a visitor whose page polled this recently keeps their dataset", "s"),
        "max_age_s": ("an uploaded dataset's lifetime", "s"),
    }),
    "upload_route": ("`app/ui/uploads.py` (`UploadGuard`, `UploadLedger`)", {
        "per_client_bytes": ("Gradio's upload cache held per client address", "bytes"),
        "total_bytes": ("Gradio's upload cache held by all clients", "bytes"),
        "per_client_files": ("files in Gradio's upload cache per client address", ""),
        "unclaimed_s": ("an uploaded file no event took is deleted after", "s"),
        "sweep_s": ("time between sweeps of unclaimed uploads", "s"),
    }),
    "picture": ("`app/ui/uploads.py` (`load_upload`)", {
        "max_bytes": ("a picture's file", "bytes"),
        "max_pixels": ("a picture's pixels", ""),
    }),
    "retrieval": ("`app/ui/pictures.py`", {
        "max_k": ("neighbours per network", ""),
        "model_sets": ("runs whose loaded networks stay in memory", ""),
    }),
    "export": ("`app/ui/onnx_export.py`", {
        "onnx_timed_runs": ("timed calls at batch 1 of an ONNX export", ""),
        "onnx_timed_runs_b256": ("timed calls at batch 256 of an ONNX export", ""),
        "onnx_scratch_bytes": ("exported ONNX files waiting for download, all visitors", "bytes"),
        "download_max_bytes": ("student checkpoints offered as downloads, per run", "bytes", "`app/ui/results.py`"),
        "kept_s": ("a download or export is kept for", "s", "`app/ui/results.py`"),
    }),
    "server": ("`app/ui/main.py` (Gradio's launch)", {
        "session_capacity": ("page sessions held in memory", ""),
        "max_file_mb": ("one upload to the server", "MB"),
        "import_max_bytes": ("an imported configuration or the API's overrides", "bytes",
                             "`app/ui/results.py`, `app/ui/api.py`"),
    }),
}


def _amount(value: float, unit: str) -> str:
    """A default as a person reads it: 25 MiB, 3 GB, 300 s, 24 h, 10 min, 20,000,000."""
    if unit == "bytes":
        for size, name in ((10 ** 9, "GB"), (10 ** 6, "MB"), (1024 ** 3, "GiB"), (1024 ** 2, "MiB"), (1024, "KiB")):
            if value >= size and value % size == 0:
                return f"{value // size:,} {name}"
        return f"{value:,} bytes"
    if unit == "s" and value >= 3600 and value % 3600 == 0:
        return f"{value / 3600:g} h"
    if unit in ("s", "min", "MB"):
        return f"{value:,g} {unit}"
    return f"{value:g}{unit}" if unit else f"{value:,}"


def limits_table(limits: Limits | None = None) -> str:
    """Every cap as a Markdown table: what it bounds, its default, its variable, where it is enforced."""
    limits = limits or Limits()
    lines = ["| Cap | Default | Environment variable | Enforced in |", "|---|---|---|---|"]
    for group, (where, fields) in ROWS.items():
        caps = getattr(limits, group)
        for name, (what, unit, *place) in fields.items():
            env = ENV.get((group, name))
            lines.append(f"| {what} (`{group}.{name}`) | {_amount(getattr(caps, name), unit)} | "
                         f"{f'`{env}`' if env else '—'} | {place[0] if place else where} |")
    return "\n".join(lines) + "\n"
