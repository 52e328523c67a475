"""The run folder: one module owns its layout, file names, id format, path checks and
retention, so no other module builds a run path by hand.

A run folder is ``<runs root>/<run id>/`` holding::

    config.json          the experiment's configuration
    results.json         written after every finished unit (status, phases, data, …)
    owner.json           (app runs) a hash of the owning session's secret, and of its client address
    checkpoints/<unit>.pt

A run id is ``<slug>-<YYYYmmdd-HHMMSS>-<16 hex>``: the slug is the config name made
safe, the hex part is 64 random bits, so ids can't be guessed and stay inside their root.
Every id that comes from outside goes through :func:`check_id` and :func:`resolve`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .results import LIVE_STATES  # noqa: F401 (the states of a live run, named here for the folder's readers)
from .results import read_results as typed_results, snapshot, to_json

CONFIG, RESULTS, OWNER, CHECKPOINTS = "config.json", "results.json", "owner.json", "checkpoints"
MAX_ID_LENGTH = 80
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")
ACCEPTED_ID = "lower-case letters, digits, '-' and '_', at most 80 characters (as shown in the status line)"


class RunIdError(ValueError):
    """A run id that is not one this server could have made; the message says what is accepted."""


def slug(name: str, limit: int = 40) -> str:
    """``name`` as a safe folder-name prefix: lower-case letters, digits, '-' and '_' only."""
    text = re.sub(r"[^a-z0-9_-]+", "-", str(name).lower()).strip("-_")
    return text[:limit].strip("-_") or "run"


def new_run_id(name: str) -> str:
    return f"{slug(name)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(8)}"


def check_id(run_id: object) -> str:
    """The id if it has the accepted form; :class:`RunIdError` naming the rule otherwise."""
    if not isinstance(run_id, str):
        raise RunIdError(f"a run id must be text ({ACCEPTED_ID}); got {type(run_id).__name__}")
    run_id = run_id.strip()
    if not run_id:
        raise RunIdError(f"no run id given: paste one ({ACCEPTED_ID})")
    if len(run_id) > MAX_ID_LENGTH:
        raise RunIdError(f"a run id is at most {MAX_ID_LENGTH} characters; got {len(run_id):,}")
    if not ID_PATTERN.match(run_id):
        raise RunIdError(f"{run_id[:40]!r} is not a run id: use {ACCEPTED_ID}")
    return run_id


def resolve(root: str | Path, run_id: object) -> Path:
    """The folder of ``run_id`` under ``root``, checked to stay inside ``root``."""
    run_id = check_id(run_id)
    base = Path(root).resolve()
    path = (base / run_id).resolve()
    if path.parent != base:
        raise RunIdError(f"run id {run_id!r} leaves the runs folder")
    return path


def write_json(obj: dict, path: Path) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when missing or unreadable."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def owner_digest(secret: str) -> str:
    return hashlib.sha256(f"indistill-owner:{secret}".encode()).hexdigest()


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint(self, unit: str) -> Path:
        return self.checkpoints / f"{unit}.pt"

    def read_results(self) -> dict | None:
        """The run's :class:`app.results.RunResults`, or None when missing or unreadable."""
        raw = read_json(self.results)
        return None if raw is None else typed_results(raw)

    def write_results(self, results: dict) -> None:
        write_json(to_json(results), self.results)

    def set_owner(self, secret: str, address: str | None = None) -> None:
        """Record who made the run: the digest of the session's secret and, when known, the digest
        of the client address (:func:`app.ui.visitors.address_digest`), both of which retention counts."""
        write_json({"owner": owner_digest(secret)} | ({"address": address} if address else {}), self.path / OWNER)

    def owner_meta(self) -> dict:
        """``{"owner": digest, "address": digest}`` as recorded (either may be missing)."""
        return read_json(self.path / OWNER) or {}

    def owned_by(self, secret: str | None) -> bool:
        return bool(secret) and self.owner_meta().get("owner") == owner_digest(secret)

    def student_checkpoints(self) -> list[Path]:
        """Final student checkpoints (not the warm-up snapshots), sorted; none while the folder is not
        written yet or is being removed."""
        try:
            return sorted(p for p in self.checkpoints.glob("*-s*.pt") if "warmup" not in p.name and p.is_file())
        except OSError:
            return []

    def size_bytes(self) -> int:
        """Bytes held; files that vanish while counted (an atomic save's scratch file, a folder
        being removed) count as nothing."""
        total = 0
        try:
            for f in self.path.rglob("*"):
                try:
                    total += f.stat().st_size if f.is_file() else 0
                except OSError:
                    pass
        except OSError:
            pass
        return total


def snapshot_from_results(run_id: str, results: dict) -> dict:
    """The read-only snapshot of a run that no live job holds (finished, or left by a restart)."""
    return snapshot(run_id, results)


@dataclass(frozen=True)
class Retention:
    """How many run folders (and bytes) a server keeps, and how many one owner (a session key) and
    one client address may hold."""

    max_runs: int = 200
    max_bytes: int = 2 * 1024 ** 3
    max_per_owner: int = 20
    max_per_address: int = 20


@dataclass
class RunEntry:
    """What retention knows of one ended run folder."""

    path: Path
    mtime: float
    size: int
    owner: str | None = None
    address: str | None = None

    @classmethod
    def read(cls, path: Path) -> "RunEntry | None":
        """The entry of an ended run folder (one with a results.json), or None."""
        try:
            mtime = (path / RESULTS).stat().st_mtime
        except OSError:
            return None
        meta = RunFolder(path).owner_meta()
        return cls(path, mtime, RunFolder(path).size_bytes(), meta.get("owner"), meta.get("address"))


def scan_runs(root: str | Path, protect: set[str] = frozenset()) -> list[RunEntry]:
    """Every ended run folder under ``root`` but ``protect`` (one read of the whole folder)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = (RunEntry.read(p) for p in root.iterdir()
             if p.is_dir() and ID_PATTERN.match(p.name) and p.name not in protect)
    return [e for e in found if e is not None]


def doomed_runs(entries: list[RunEntry], keep: Retention) -> list[RunEntry]:
    """The entries retention removes, oldest first: each owner's and each address's oldest runs
    beyond their quotas (so one visitor, under any number of keys, can't push out everyone
    else's), then the oldest of all until the count and byte caps hold."""
    runs = sorted(entries, key=lambda e: e.mtime)
    doomed: set[int] = set()
    for who, quota in (("owner", keep.max_per_owner), ("address", keep.max_per_address)):
        held: dict[str, int] = {}
        for i in reversed(range(len(runs))):  # newest first: the runs beyond the quota are doomed
            key = getattr(runs[i], who)
            if key is not None:
                held[key] = held.get(key, 0) + 1
                if held[key] > quota:
                    doomed.add(i)
    kept = [i for i in range(len(runs)) if i not in doomed]
    total = sum(runs[i].size for i in kept)
    while kept and (len(kept) > keep.max_runs or total > keep.max_bytes):
        i = kept.pop(0)
        doomed.add(i)
        total -= runs[i].size
    return [runs[i] for i in sorted(doomed)]


def enforce_retention(root: str | Path, keep: Retention, protect: set[str] = frozenset()) -> list[str]:
    """Delete run folders under ``root`` until the caps hold (:func:`doomed_runs`), after one scan
    of the folder. Live runs (``protect``) and folders without a results.json are never deleted.
    Returns the ids removed, oldest first. A server keeps a :class:`RunIndex` instead of scanning."""
    removed = doomed_runs(scan_runs(root, protect), keep)
    for entry in removed:
        shutil.rmtree(entry.path, ignore_errors=True)
    return [e.path.name for e in removed]


class RunIndex:
    """The ended run folders of one runs folder, held in memory so retention costs no scan.

    The folder is read once, on first use; after that each run that ends is added by
    :meth:`ended` (one read of that run's own folder), and retention works on the index.
    Not thread-safe by itself: its owner (the job manager) calls it under one lock.
    """

    def __init__(self, root: str | Path, keep: Retention) -> None:
        self.root, self.keep = Path(root), keep
        self.entries: dict[str, RunEntry] | None = None

    def ended(self, path: str | Path, protect: set[str] = frozenset()) -> list[str]:
        """A run ended in ``path``: index it, then delete what the caps doom, never a run in ``protect``
        (the live ones); returns the ids removed."""
        if self.entries is None:
            self.entries = {e.path.name: e for e in scan_runs(self.root, protect)}
        entries = self.entries
        entry = RunEntry.read(Path(path))
        if entry is not None:
            entries[entry.path.name] = entry
        removed = doomed_runs([e for name, e in entries.items() if name not in protect], self.keep)
        for e in removed:
            del entries[e.path.name]
            shutil.rmtree(e.path, ignore_errors=True)
        return [e.path.name for e in removed]


def reap_old(folder: str | Path, max_age_s: float) -> None:
    """Remove entries of ``folder`` older than ``max_age_s`` (scratch copies, stale uploads)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    now = time.time()
    for entry in folder.iterdir():
        try:
            if now - entry.stat().st_mtime > max_age_s:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        except OSError:
            pass
