"""What the server takes in from a visitor, and nothing else.

- Pictures: checked by :func:`load_upload` before any model sees them. A picture is an uploaded
  file or nothing: a URL is refused, never fetched, and a missing file gets a message.
- No input fetches a URL: :func:`refuse_url_inputs` stops Gradio from downloading the URL of any
  ``FileData`` a caller sends (page, plain HTTP API or MCP), with :data:`URL_REFUSED` as the answer.
- Gradio's upload route (public mode): :class:`UploadGuard` caps the bytes each client address and
  all clients together hold in Gradio's upload cache (:class:`app.limits.UploadCaps`), and the
  :class:`UploadLedger` deletes what no event handler took within minutes.

The caps are the studio's (``limits.picture``, ``limits.upload_route``: :mod:`app.limits`).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image, UnidentifiedImageError

from app.limits import PictureCaps, UploadCaps

from .visitors import address_of

URL_REFUSED = "this server never downloads a URL: upload the file itself"
MB = 1_000_000
_URL = re.compile(r"^\s*[a-z][a-z0-9+.-]*://", re.IGNORECASE)


class UploadError(ValueError):
    pass


def is_url(value: Any) -> bool:
    """Does ``value`` name a resource by URL (``http://…``, ``ftp://…``, ``file://…``)?"""
    return isinstance(value, (str, Path)) and bool(_URL.match(str(value)))


def _named(path: Any) -> str:
    text = str(path)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def accepted(caps: PictureCaps = PictureCaps()) -> str:
    """What a picture may be, as the refusals say it."""
    return (f"a JPEG, PNG, WebP, BMP or GIF picture under {caps.max_bytes / 1024 ** 2:g} MB and "
            f"{caps.max_pixels / 1e6:g} megapixels")



def load_upload(path: str | Path | None, caps: PictureCaps = PictureCaps()) -> tuple[Image.Image, list[str]]:
    """The upload as an RGB image plus notes on what was converted; UploadError naming ``caps`` if unusable."""
    wanted = accepted(caps)
    if not path:
        raise UploadError(f"No picture yet: upload {wanted}, or pick an example.")
    if is_url(path):
        raise UploadError(f"The picture {_named(path)} is a URL; {URL_REFUSED} ({wanted}).")
    path = Path(path)
    try:
        size = os.path.getsize(path)
    except OSError:
        raise UploadError(f"The picture {path.name!r} was not found (it may have expired): upload a picture "
                          f"file ({wanted}), or pick an example.") from None
    if size > caps.max_bytes:
        raise UploadError(f"{path.name} is {size / 1e6:.1f} MB; please upload {wanted}.")
    notes = []
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > caps.max_pixels:
                raise UploadError(f"{path.name} is {w}×{h} ({w * h / 1e6:.1f} megapixels); please upload {wanted}.")
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                notes.append(f"animated ({frames} frames): using the first frame")
            img.seek(0)
            if img.mode not in ("RGB",):
                notes.append(f"{ {'L': 'grayscale', 'RGBA': 'RGBA', 'LA': 'grayscale+alpha', 'P': 'palette'}.get(img.mode, img.mode)} "
                             "picture converted to RGB" + (" on white" if "A" in img.mode or img.mode == "P" else ""))
            if "A" in img.mode or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                rgb.paste(rgba, mask=rgba.split()[3])
            else:
                rgb = img.convert("RGB")
            rgb.load()
    except UploadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UploadError(f"{path.name} is not a readable picture ({type(exc).__name__}); please upload {wanted}.") from None
    return rgb, notes


# ---------------------------------------------------------------- no URL is fetched for anyone

def refuse_url_inputs(demo, claimed: Callable[[str], None] | None = None) -> None:
    """Make every input of ``demo`` take files uploaded to this server only, and never fetch a URL.

    Gradio moves each ``FileData`` an event receives into its cache before any handler runs, and
    downloads it when its ``path`` is a URL — for any input component, not only file ones. That move
    is each block's ``(async_)move_resource_to_block_cache``: wrapped here, a URL raises a
    ``gr.Error`` naming the rule (the caller's answer) and a local file goes on as before;
    ``claimed(path)`` hears of each file an event took (the upload ledger keeps those). A server path
    outside the upload folder, which Gradio refuses without a word, gets a message too."""
    import gradio as gr
    from gradio.exceptions import InvalidPathError

    def refuse(value) -> None:
        if is_url(value):
            raise gr.Error(f"Refused {_named(value)}: {URL_REFUSED}.", print_exception=False)

    def guarded_async(move):
        async def move_resource(url_or_file_path):
            refuse(url_or_file_path)
            out = await move(url_or_file_path)
            if claimed is not None and url_or_file_path is not None:
                claimed(str(url_or_file_path))
            return out
        return move_resource

    def guarded(move):
        def move_resource(url_or_file_path):
            refuse(url_or_file_path)
            return move(url_or_file_path)
        return move_resource

    for block in demo.blocks.values():
        if hasattr(block, "async_move_resource_to_block_cache"):
            block.async_move_resource_to_block_cache = guarded_async(block.async_move_resource_to_block_cache)
            block.move_resource_to_block_cache = guarded(block.move_resource_to_block_cache)

    preprocess = demo.preprocess_data

    async def preprocess_data(*args, **kwargs):
        try:
            return await preprocess(*args, **kwargs)
        except InvalidPathError:
            raise gr.Error("Refused a file that was not uploaded to this server: send the file itself (upload it "
                           "with the call); server paths and URLs are not read.", print_exception=False) from None
    demo.preprocess_data = preprocess_data


# ---------------------------------------------------------------- Gradio's upload route, capped

@dataclass
class _Held:
    size: int
    at: float
    owners: set[str] = field(default_factory=set)
    claimed: bool = False


class UploadRefused(Exception):
    """An upload over a cap; ``status`` is the HTTP answer's code."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _size(n: float) -> str:
    return f"{n / MB:,.1f} MB" if n < 10 * MB else f"{n / MB:,.0f} MB"


def _key(path: str) -> str:
    return os.path.abspath(path)


class UploadLedger:
    """Who holds which files of Gradio's upload cache, within :class:`app.limits.UploadCaps` (files an
    event took stay under Gradio's own ``delete_cache`` rule, an hour)."""

    def __init__(self, caps: UploadCaps = UploadCaps(), folder: str | Path | None = None) -> None:
        from gradio.utils import get_upload_folder
        self.caps = caps
        self.folder = Path(folder or get_upload_folder())
        self.files: dict[str, _Held] = {}
        self.pending: Counter[str] = Counter()
        self.lock = threading.Lock()

    def held(self, address: str | None = None) -> int:
        """Bytes held (and reserved by uploads under way) by ``address``, or by everyone."""
        with self.lock:
            return self._held(address)

    def _held(self, address: str | None) -> int:
        if address is None:
            return sum(h.size for h in self.files.values()) + sum(self.pending.values())
        return sum(h.size for h in self.files.values() if address in h.owners) + self.pending[address]

    def reserve(self, address: str, size: int) -> None:
        """Room for an upload of ``size`` bytes from ``address``, or :class:`UploadRefused` naming the cap."""
        caps = self.caps
        with self.lock:
            mine, everyone = self._held(address), self._held(None)
            files = sum(address in h.owners for h in self.files.values())
            if mine + size > caps.per_client_bytes or files >= caps.per_client_files:
                raise UploadRefused(
                    f"Upload refused: uploads from your address hold {_size(mine)} ({files:,} files) in this "
                    f"server's upload cache and this one adds {_size(size)}; the limit is {_size(caps.per_client_bytes)} and "
                    f"{caps.per_client_files:,} files per client address. Files no page or call used are "
                    f"deleted after {caps.unclaimed_s / 60:g} min: try again then.", 429)
            if everyone + size > caps.total_bytes:
                raise UploadRefused(
                    f"Upload refused: this server's upload cache is full ({_size(everyone)} held, this upload adds "
                    f"{_size(size)}; the limit is {_size(caps.total_bytes)} for all visitors). Try again in a few minutes.", 503)
            self.pending[address] += size

    def settle(self, address: str, reserved: int, paths: list[str], now: float | None = None) -> None:
        """An upload ended: its reservation goes, the files it wrote are held by ``address``."""
        now = time.time() if now is None else now
        with self.lock:
            self.pending[address] -= reserved
            if self.pending[address] <= 0:
                del self.pending[address]
            for path in paths:
                try:
                    size = os.path.getsize(path)
                except OSError:   # still being moved into place (another file system): its share of the upload
                    size = reserved // len(paths)
                held = self.files.setdefault(_key(path), _Held(size, now))
                held.size, held.at = size, now
                held.owners.add(address)

    def claim(self, path: str) -> None:
        """An event took this file: it stays (Gradio's own rule deletes it later)."""
        with self.lock:
            held = self.files.get(_key(path))
            if held is not None:
                held.claimed = True

    def reap(self, now: float | None = None) -> list[str]:
        """Delete uploads no event took within ``unclaimed_s`` and the partial files of cut uploads;
        forget files Gradio deleted. Returns the deleted paths."""
        now = time.time() if now is None else now
        doomed = []
        with self.lock:
            for path, held in list(self.files.items()):
                if not held.claimed and now - held.at > self.caps.unclaimed_s:
                    doomed.append(path)
                    del self.files[path]
                elif held.claimed and not os.path.exists(path):
                    del self.files[path]
        for path in doomed:
            _remove(Path(path), remove_empty_parent=True)
        try:  # multipart temp files (tmp*) at the top of the folder: what an upload cut short left behind
            partial = [p for p in self.folder.iterdir() if p.name.startswith("tmp") and p.is_file()
                       and now - p.stat().st_mtime > self.caps.unclaimed_s]
        except OSError:
            partial = []
        for p in partial:
            _remove(p)
        return doomed + [str(p) for p in partial]

    @asynccontextmanager
    async def sweeping(self, _app=None):
        """A server lifespan that sweeps every ``sweep_s`` while the server runs."""
        async def sweep():
            while True:
                await asyncio.sleep(self.caps.sweep_s)
                await asyncio.to_thread(self.reap)
        task = asyncio.create_task(sweep())
        try:
            yield
        finally:
            task.cancel()


def _remove(path: Path, remove_empty_parent: bool = False) -> None:
    try:
        path.unlink()
        if remove_empty_parent:
            path.parent.rmdir()
    except OSError:
        pass


class UploadGuard:
    """ASGI middleware: Gradio's upload route (``…/gradio_api/upload``) within the ledger's caps.

    An upload must declare its size (``Content-Length``, as browsers and Gradio's client do); that
    size is reserved for the client address before a byte is read and refused with 429 (this
    client's cap) or 503 (the server's) naming the cap; the files written are then held by the address."""

    def __init__(self, app, ledger: UploadLedger) -> None:
        self.app, self.ledger = app, ledger

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" \
                or not scope["path"].rstrip("/").endswith("/gradio_api/upload"):
            return await self.app(scope, receive, send)
        from starlette.requests import Request
        address = address_of(Request(scope))
        length = dict(scope["headers"]).get(b"content-length", b"")
        if not length.isdigit():
            return await _plain(send, 411, "Upload refused: an upload must declare its size (Content-Length).")
        declared = int(length)
        try:
            self.ledger.reserve(address, declared)
        except UploadRefused as exc:
            return await _plain(send, exc.status, str(exc))
        seen, status, body = 0, None, []

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > declared:
                raise UploadRefused(f"Upload refused: more bytes than the {declared:,} declared.", 400)
            return message

        async def recorded(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status == 200:
                body.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counted, recorded)
        except UploadRefused as exc:
            if status is None:
                await _plain(send, exc.status, str(exc))
        finally:
            self.ledger.settle(address, declared, _paths(b"".join(body)) if status == 200 else [])


def _paths(body: bytes) -> list[str]:
    try:
        out = json.loads(body)
    except ValueError:
        return []
    return [p for p in out if isinstance(p, str)] if isinstance(out, list) else []


async def _plain(send, status: int, text: str) -> None:
    data = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
