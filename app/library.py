"""The results library: finished runs shipped read-only in ``assets/library/<run id>/``.

Each shipped run is a ``results.json`` (per-epoch curves downsampled, no checkpoints)
that every tab opens by id like an ended run, without training anything. The library
is not under the runs root, so retention never sees it. ``ship`` copies a finished run
(e.g. one pair of the ``cpu`` study) in.
"""
from __future__ import annotations

import copy
from pathlib import Path

from .config import ASSETS, recorded_config
from .results import units
from .runfolder import ID_PATTERN, RunFolder, RunIdError, resolve, write_json, read_json

ROOT = ASSETS / "library"
MAX_POINTS = 40          # per-epoch records kept per unit


def _root(root: Path | None) -> Path:
    return Path(root) if root is not None else ROOT


def ids(root: Path | None = None) -> list[str]:
    """Ids of the shipped runs, sorted."""
    base = _root(root)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if ID_PATTERN.match(p.name) and (p / "results.json").is_file())


def folder(run_id: object, root: Path | None = None) -> RunFolder | None:
    """The shipped run's folder (id checked, inside the library), or None."""
    try:
        path = resolve(_root(root), run_id)
    except RunIdError:
        return None
    return RunFolder(path) if (path / "results.json").is_file() else None


def load(run_id: object, root: Path | None = None) -> dict | None:
    """A shipped run's results (marked ``library``), or None when there is no such run."""
    f = folder(run_id, root)
    results = f.read_results() if f is not None else None
    return None if results is None else results | {"library": True}


def downsample(history: list, max_points: int = MAX_POINTS) -> list:
    """At most ``max_points`` evenly spaced records, the first and last kept."""
    if len(history) <= max_points:
        return list(history)
    step = (len(history) - 1) / (max_points - 1)
    return [history[round(i * step)] for i in range(max_points)]


def ship(run_dir: str | Path, run_id: str, root: Path | None = None) -> Path:
    """Copy a finished run's results.json (curves downsampled) and config.json into the library,
    shipped checkpoints named relative to assets/ and no run folder path."""
    src = RunFolder(Path(run_dir))
    results = src.read_results()
    if not results or results.get("status") != "finished":
        raise ValueError(f"{run_dir} holds no finished run")
    results = copy.deepcopy(results)
    for _, unit in units(results):
        unit["history"] = downsample(unit.get("history", []))
    results.pop("run_dir", None)   # the library is read from any checkout: no machine path goes in
    results["config"] = recorded_config(results.get("config") or {})
    dest = RunFolder(resolve(_root(root), run_id))
    write_json(results, dest.results)
    write_json(recorded_config(read_json(src.config) or results["config"]), dest.config)
    return dest.path
