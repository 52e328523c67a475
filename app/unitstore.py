"""Finished units known by what they were trained from: a server-wide store a run takes
units from instead of training them again.

A unit's *key* (:func:`unit_key`) is the sha256 of a canonical JSON of everything its
training and evaluation read — the experiment builds that description
(:meth:`app.experiment.Experiment.unit_spec`); this module only hashes it, hashes what it
points at (checkpoint files, the decoded data) and keeps the entries.

Layout under ``root``: ``shared/`` for the shared namespace and ``scopes/<slug>/`` for each
private one (a visitor's uploaded data: the slug is a digest of the scope, so nothing in a
scope's name reaches a path). Each entry is ``<key>.json`` (the record, written last and
atomically) beside ``<key>-<nonce>/`` (its files, renamed into place whole). A record whose
files are missing or differ from their recorded digests reads as a miss; the oldest entries
(last used) go first once the store holds more than ``max_entries`` or ``max_bytes``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .runfolder import read_json, write_json

# Bump when training or evaluation changes numerics or what a unit's record holds: every
# stored unit then misses and is trained again.
ENGINE_VERSION = 1

KEY_PATTERN = re.compile(r"[0-9a-f]{64}")
SHARED = "shared"
SCOPES = "scopes"
STALE_S = 600.0      # temporary or unreferenced entry folders older than this are removed


# ---------------------------------------------------------------- keys

def _canonical(obj):
    """``obj`` as plain JSON data: floats to 12 significant digits (an epoch count computed two
    ways must not differ by its last bit), tuples as lists, keys sorted by ``json.dumps``."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return repr(obj)
        rounded = float(f"{obj:.12g}")
        return int(rounded) if rounded.is_integer() else rounded
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    raise TypeError(f"a unit key holds plain data only, got {type(obj).__name__}")


def canonical_json(spec: dict) -> str:
    return json.dumps(_canonical(spec), sort_keys=True, separators=(",", ":"))


def unit_key(spec: dict) -> str:
    """The key of the unit described by ``spec`` (a sha256 hex digest)."""
    return hashlib.sha256(canonical_json({"engine": ENGINE_VERSION, "unit": spec}).encode()).hexdigest()


_file_digests: dict[tuple[str, int, int], str] = {}
_file_lock = threading.Lock()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, remembered by (path, mtime, size)."""
    path = Path(path).resolve()
    st = path.stat()
    memo = (str(path), st.st_mtime_ns, st.st_size)
    with _file_lock:
        if memo in _file_digests:
            return _file_digests[memo]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    with _file_lock:
        if len(_file_digests) > 256:
            _file_digests.clear()
        _file_digests[memo] = digest.hexdigest()
    return _file_digests[memo]


def tensors_digest(*tensors) -> str:
    """sha256 over tensors' dtypes, shapes and bytes (the decoded data a run trains and tests on)."""
    digest = hashlib.sha256()
    for t in tensors:
        if t is None:
            digest.update(b"none;")
            continue
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)};".encode())
        digest.update(memoryview(t.view(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def check_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise ValueError(f"a unit key is 64 lowercase hex digits, got {key!r:.80}")
    return key


def scope_slug(scope: str | None) -> str:
    """The folder of a namespace: ``shared``, or ``scopes/<digest of the scope>``."""
    if scope is None:
        return SHARED
    return f"{SCOPES}/{hashlib.sha256(f'indistill-scope:{scope}'.encode()).hexdigest()[:32]}"


# ---------------------------------------------------------------- the store

@dataclass
class StoredUnit:
    key: str
    result: dict                  # the unit's result record as it was recorded
    checkpoint: Path              # its weights (read-only: copy or load, never write)
    run_id: str                   # the run that trained it
    unit_name: str                # e.g. kd-s0
    cost: dict | None = None      # its architecture's cost figures in that run (results["costs"])
    extras: dict[str, Path] = field(default_factory=dict)   # other files stored with it (e.g. "warmup")


class UnitStore:
    """Finished units by key, in a shared namespace and private ones (``scope``)."""

    def __init__(self, root: str | Path, *, max_entries: int = 500, max_bytes: int = 2 << 30) -> None:
        self.root = Path(root)
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._lock = threading.Lock()

    def _dir(self, scope: str | None) -> Path:
        return self.root / scope_slug(scope)

    def _record_path(self, key: str, scope: str | None) -> Path:
        return self._dir(scope) / f"{check_key(key)}.json"

    def _files_of(self, record: dict, folder: Path) -> dict[str, Path] | None:
        """The entry's files, each checked against its recorded size and digest (None: damaged)."""
        files = record.get("files")
        if not isinstance(files, dict) or "model" not in files:
            return None
        out = {}
        for name, info in files.items():
            try:
                path = folder / info["path"]
                if path.parent.parent != folder or not path.is_file() or path.stat().st_size != info["bytes"] \
                        or file_digest(path) != info["sha256"]:
                    return None
            except (KeyError, TypeError, OSError, ValueError):
                return None
            out[name] = path
        return out

    def has(self, key: str, scope: str | None = None) -> bool:
        """A readable record for ``key`` (files not checked: :meth:`get` does)."""
        record = read_json(self._record_path(key, scope))
        return record is not None and record.get("key") == key

    def get(self, key: str, scope: str | None = None) -> StoredUnit | None:
        """The stored unit under ``key`` in ``scope``'s namespace only, or None (missing or damaged)."""
        path = self._record_path(key, scope)
        with self._lock:
            record = read_json(path)
            if record is None or record.get("key") != key or not isinstance(record.get("result"), dict):
                return None
            files = self._files_of(record, path.parent)
            if files is None:
                return None
            try:
                os.utime(path)  # last used: eviction takes the least recently used first
            except OSError:
                pass
        cost = record.get("cost")
        return StoredUnit(key, copy.deepcopy(record["result"]), files.pop("model"), str(record.get("run_id", "")),
                          str(record.get("unit_name", "")), cost if isinstance(cost, dict) else None, files)

    def put(self, key: str, result: dict, checkpoint_path: str | Path, run_id: str, unit_name: str,
            scope: str | None = None, *, cost: dict | None = None,
            extras: dict[str, str | Path] | None = None) -> bool:
        """Store a finished unit (its checkpoint and ``extras`` copied); False when ``key`` is
        already stored intact (the first one stays). Files are copied into a temporary folder
        renamed into place, then the record is written atomically, so a reader (or a second
        process writing the same key) never sees half an entry."""
        record_path = self._record_path(key, scope)
        folder = record_path.parent
        sources = {"model": Path(checkpoint_path)} | {k: Path(v) for k, v in (extras or {}).items()}
        for name in sources:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
                raise ValueError(f"an extra file's name is lowercase letters, digits and _, got {name!r}")
        with self._lock:
            old = read_json(record_path)
            if old is not None and old.get("key") == key and self._files_of(old, folder) is not None:
                return False
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".tmp-{secrets.token_hex(8)}"
            tmp.mkdir()
            try:
                files = {}
                for name, src in sources.items():
                    dst = tmp / f"{name}.pt"
                    shutil.copyfile(src, dst)
                    files[name] = {"bytes": dst.stat().st_size, "sha256": file_digest(dst)}
                entry = folder / f"{key}-{secrets.token_hex(6)}"
                os.replace(tmp, entry)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            for name, info in files.items():
                info["path"] = f"{entry.name}/{name}.pt"
            write_json({"key": key, "engine": ENGINE_VERSION, "run_id": run_id, "unit_name": unit_name,
                        "stored": time.time(), "cost": cost, "files": files, "result": result}, record_path)
            if old is not None:  # a damaged entry replaced: its folder goes
                self._remove_files(old, folder)
            self._evict()
        return True

    # ------------------------------------------------------------ bounds
    @staticmethod
    def _remove_files(record: dict, folder: Path) -> None:
        for info in (record.get("files") or {}).values():
            try:
                entry = (folder / info["path"]).parent
            except (KeyError, TypeError):
                continue
            if entry.parent == folder and entry.name != "." and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)

    def _namespaces(self) -> list[Path]:
        spaces = [self.root / SHARED]
        scopes = self.root / SCOPES
        if scopes.is_dir():
            spaces += [p for p in scopes.iterdir() if p.is_dir()]
        return [p for p in spaces if p.is_dir()]

    def _evict(self) -> None:
        """Drop the least recently used entries past the caps; sweep leftovers of failed writes and
        emptied private namespaces. Sized from the file system (an entry's folders are named
        ``<key>-<hex>``): no record is parsed, so a put costs a listing, not a read of every record."""
        entries, now = [], time.time()
        for space in self._namespaces():
            listing = list(space.iterdir())
            folders: dict[str, list[Path]] = {}
            for p in listing:
                if p.is_dir() and not p.name.startswith(".tmp-"):
                    folders.setdefault(p.name.rsplit("-", 1)[0], []).append(p)
            for record_path in (p for p in listing if p.suffix == ".json"):
                try:
                    mtime = record_path.stat().st_mtime
                    size = record_path.stat().st_size + sum(f.stat().st_size for d in folders.get(record_path.stem, [])
                                                            for f in d.iterdir())
                except OSError:
                    continue
                entries.append((mtime, size, record_path, folders.pop(record_path.stem, [])))
            for leftover in [d for ds in folders.values() for d in ds] + [p for p in listing if p.name.startswith(".tmp-")]:
                try:
                    if now - leftover.stat().st_mtime > STALE_S:
                        shutil.rmtree(leftover, ignore_errors=True)
                except OSError:
                    continue
        entries.sort(key=lambda e: e[0])
        count, total = len(entries), sum(e[1] for e in entries)
        for _mtime, size, record_path, entry_folders in entries:
            if count <= self.max_entries and total <= self.max_bytes:
                break
            record_path.unlink(missing_ok=True)
            for folder in entry_folders:
                shutil.rmtree(folder, ignore_errors=True)
            count, total = count - 1, total - size
        scopes = self.root / SCOPES
        for space in (scopes.iterdir() if scopes.is_dir() else ()):
            try:
                space.rmdir()  # only an emptied namespace goes (a visitor long gone)
            except OSError:
                pass
