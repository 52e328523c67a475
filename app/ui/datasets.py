"""A visitor's uploaded dataset (Setup tab): an archive checked and extracted into the session's
own folder, one per session, within the server's space for uploads.

Space is counted per session (one dataset each), per client address (``per_address_bytes``
whatever the number of sessions) and in all (``total_bytes``): the studio's
:class:`app.limits.DatasetCaps`. When the space is full, the oldest datasets of visitors who have
gone (no live run, not active for ``active_s``: :func:`mark_active`) make room; a visitor still there never loses theirs to a newcomer, who is
refused with the cap instead. Each dataset's folder records its address digest and size
(``visitor.json``), so the count costs no walk over the images.
"""
from __future__ import annotations

import json
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr

from app import runfolder

from .sessions import address_of_request, owner, session_of
from .studio import shown, studio

FORGET_AFTER = 10_000                 # visitors remembered as active before those long gone are forgotten
VISITOR = "visitor.json"              # in a dataset's home: {"address": digest | null, "bytes": n}

_LOCK = threading.Lock()
_ACTIVE: dict[str, float] = {}        # home name → when its visitor was last seen
_RESERVED: dict[str, tuple[str | None, int]] = {}   # home name → (address, bytes) of an extraction under way
_PRUNE = {"next": 0.0}                # when _ACTIVE may next be pruned (at most every PRUNE_S)
PRUNE_S = 10.0


def _home_name(session: dict) -> str:
    return owner(session)[:16]


def mark_active(session: Any) -> None:
    """The visitor of this session is still there (their page polled, uploaded or started): their
    uploaded dataset is not evicted for another's. Cheap: called on every status poll."""
    if isinstance(session, dict) and session.get("upload") and isinstance(session.get("secret"), str):
        now, active_s = time.time(), studio().limits.datasets.active_s
        with _LOCK:
            _ACTIVE[_home_name(session)] = now
            if len(_ACTIVE) > FORGET_AFTER and now >= _PRUNE["next"]:  # a scan at most every PRUNE_S, not per poll
                _PRUNE["next"] = now + PRUNE_S
                for name in [n for n, t in _ACTIVE.items() if now - t > active_s]:
                    del _ACTIVE[name]


def _active(name: str, now: float, active_s: float) -> bool:
    return now - _ACTIVE.get(name, float("-inf")) <= active_s


def _upload_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def _visitor(home: Path) -> dict:
    """What a dataset's home records, with what it holds now: the extracted tree (recorded once) plus the
    decoded-data caches its runs wrote since (``<home>/<token>/cache``, a few files each); the whole
    size walked when it records none (an older server's)."""
    try:
        meta = json.loads((home / VISITOR).read_text())
        if isinstance(meta, dict) and isinstance(meta.get("bytes"), int):
            return {**meta, "bytes": meta["bytes"] + sum(_upload_bytes(c) for c in home.glob("*/cache"))}
    except (OSError, ValueError):
        pass
    return {"address": None, "bytes": _upload_bytes(home)}


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n < 10 ** 9 else f"{n / 1e9:g} GB"


def _make_room(s, name: str, address: str | None, need: int, doomed: list[Path]) -> str | None:
    """Reserve ``need`` bytes for home ``name`` (under ``_LOCK``), evicting the oldest datasets of
    visitors who have gone if the space is full; the refusal naming the cap otherwise. An evicted home is
    only renamed here (``doomed``: the caller deletes it once the lock is released, so no status poll
    waits for a deletion)."""
    now, caps = time.time(), s.limits.datasets
    homes = sorted((p for p in s.uploads.iterdir() if p.is_dir() and p.name != name and not p.name.startswith(".")),
                   key=lambda p: p.stat().st_mtime) if s.uploads.is_dir() else []
    held = {p: _visitor(p) for p in homes}
    reserved = [r for n, r in _RESERVED.items() if n != name]
    if address is not None:
        mine = sum(m["bytes"] for m in held.values() if m.get("address") == address) \
            + sum(b for a, b in reserved if a == address)
        if mine + need > caps.per_address_bytes:
            return (f"**Upload refused:** datasets uploaded from your address already take {_mb(mine)} and this one "
                    f"needs up to {_mb(need)}; the limit is {_mb(caps.per_address_bytes)} per address, whatever the number "
                    "of sessions. Close another tab's session (its dataset goes with it), or use the sample.")
    used = sum(m["bytes"] for m in held.values()) + sum(b for _, b in reserved)
    busy = {o[:16] for o in s.manager.live_owners()}
    for home in homes:
        if used + need <= caps.total_bytes:
            break
        if home.name not in busy and home.name not in _RESERVED and not _active(home.name, now, caps.active_s):
            try:
                doomed.append(home.rename(home.with_name(f".evicted-{home.name}-{secrets.token_hex(4)}")))
            except OSError:
                continue
            used -= held[home]["bytes"]
    if used + need > caps.total_bytes:
        return (f"**Upload refused:** the server's space for uploaded datasets is full ({_mb(used)} held by visitors "
                f"still here or runs in progress; this dataset needs up to {_mb(need)}, and the limit is "
                f"{_mb(caps.total_bytes)} in all, one dataset per visitor). Try again later, or use the sample.")
    _RESERVED[name] = (address, need)
    return None


def upload_dataset(session: Any, file, request: gr.Request = None):
    """A visitor's dataset archive: checked before decoding, extracted into this session's folder,
    within the space per session, per client address and in all."""
    from app.archives import ArchiveError, extract_dataset, inspect_archive
    from app.data import DataError
    session = session_of(session)
    s = studio()
    if not file:
        return session, "No archive given: upload a .zip or .tar.gz of an ImageFolder tree (train/ and test/ class folders).", gr.skip()
    if s.manager.live_job_of(owner(session)) is not None:
        return session, ("**Upload refused:** your run is queued or training on your uploaded dataset; upload a new "
                         "one when it has ended (or cancel it in the Train tab)."), gr.skip()
    name, address = _home_name(session), address_of_request(request)
    home = s.uploads / name
    shutil.rmtree(home, ignore_errors=True)  # one uploaded dataset per session: a visitor holds at most one
    session = {**session, "upload": None}
    runfolder.reap_old(s.uploads, s.limits.datasets.max_age_s)  # sessions Gradio forgot without a callback
    path = Path(file if isinstance(file, str) else file.name)
    limits = s.limits.archive
    try:
        report = inspect_archive(path, limits)   # headers only: what extraction may write, at most
        need = sum(img.size for img in report.images)
        doomed: list[Path] = []
        with _LOCK:
            refusal = _make_room(s, name, address, need, doomed)
        for home_gone in doomed:
            shutil.rmtree(home_gone, ignore_errors=True)
        if refusal:
            return session, refusal, gr.skip()
        try:
            tree = extract_dataset(path, home / secrets.token_hex(6) / "data", limits, report=report)
            held = _upload_bytes(home)
            (home / VISITOR).write_text(json.dumps({"address": address, "bytes": held}))
        finally:
            with _LOCK:
                _RESERVED.pop(name, None)
    except (ArchiveError, DataError, OSError) as exc:
        shutil.rmtree(home, ignore_errors=True)
        return session, shown(f"**Upload refused:** {exc}"), gr.skip()
    session = {**session, "upload": str(Path(tree).resolve())}
    mark_active(session)
    ctx = s.context(session)
    return session, f"Uploaded dataset ready ({path.name}); " \
                    f"it belongs to this session and is deleted with it.", \
        gr.update(choices=ctx.dataset_choices(), value="Your uploaded dataset")
