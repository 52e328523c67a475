"""The server's own secrets, kept in the runs folder so they survive a restart: the key that signs
API session keys (:mod:`app.ui.api`) and the key of the browser-stored session (:mod:`app.ui.layout`).

:func:`server_secret` is the one way to get one: random once, written whole and owner-only (0600),
created once even when threads or processes ask at the same time (a lock on the folder), and a
missing, emptied or damaged file replaced by a new secret (never used weak).
"""
from __future__ import annotations

import os
import secrets
import threading
from contextlib import contextmanager
from pathlib import Path

_CACHE: dict[Path, bytes] = {}
_LOCK = threading.Lock()


def _read(path: Path, nbytes: int) -> bytes | None:
    """The secret in ``path`` (hex text), or None if it is missing or not ``nbytes`` long."""
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return key if len(key) == nbytes else None


@contextmanager
def _folder_lock(folder: Path):
    """Hold an exclusive lock on ``folder`` (``flock``: threads and processes alike wait their turn)."""
    try:
        import fcntl
    except ImportError:   # not POSIX: the process's own lock is all there is
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # closing releases the lock


def read_or_create(path: Path, nbytes: int) -> bytes:
    """The secret of ``nbytes`` random bytes kept in ``path``, made there if it is missing or damaged.

    Made under a lock on the folder, so of threads or processes asking at once one makes it and the
    others read it; written whole to a scratch file (0600), then renamed into place."""
    found = _read(path, nbytes)
    if found is not None:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(path.parent):
        found = _read(path, nbytes)   # made by whoever held the lock before
        if found is not None:
            return found
        key = secrets.token_bytes(nbytes)
        scratch = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        try:
            with os.fdopen(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
                fh.write(key.hex())
            os.replace(scratch, path)
        finally:
            scratch.unlink(missing_ok=True)
        return key


def server_secret(root: Path, name: str, nbytes: int) -> bytes:
    """The secret ``root/name`` (``nbytes`` random bytes), read once per process under a lock."""
    path = Path(root) / name
    with _LOCK:
        if path not in _CACHE:
            _CACHE[path] = read_or_create(path, nbytes)
        return _CACHE[path]


def forget() -> None:
    """Drop the secrets read so far: the next :func:`server_secret` reads its file again (tests)."""
    with _LOCK:
        _CACHE.clear()
