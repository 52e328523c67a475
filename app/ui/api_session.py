"""One Gradio session state per client address for the unqueued API calls that carry none.

A plain-HTTP script polling ``/gradio_api/run/status`` usually sends no ``session_hash``; Gradio
then builds a fresh whole-page ``SessionState`` for every call (about 15 ms of server CPU on this
page, 60× the status handler), so thirty polling scripts slow every page. The four API endpoints
keep no state between calls (:mod:`app.ui.api`), so such calls may share one session state: this
middleware gives each a stable ``session_hash`` made from the client address's digest. A body that
already names a session keeps it; nothing else is touched.
"""
from __future__ import annotations

import json

from .visitors import address_digest, address_of

MAX_BODY = 1 << 20           # a larger body is passed on untouched (Gradio answers it)
ROUTES = ("/gradio_api/run/", "/gradio_api/api/")   # Gradio's unqueued call and its alias
PREFIX = "api-"


def shared_hash(address: str) -> str:
    return PREFIX + address_digest(address)


class ApiSessionPerAddress:
    """ASGI middleware for ``POST …/gradio_api/run/<endpoint>`` bodies without a ``session_hash``."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not any(route in scope["path"] for route in ROUTES):
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_BODY:
                return await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks),
                                                       "more_body": more}], receive), send)
        body = b"".join(chunks)
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict) and not data.get("session_hash"):
            from starlette.requests import Request
            data["session_hash"] = shared_hash(address_of(Request(scope)))
            body = json.dumps(data).encode()
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
            scope = {**scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _replay(messages: list, then):
    """A ``receive`` that hands out ``messages`` first, then defers to ``then`` (the connection's own:
    it answers when the client disconnects)."""
    queue = list(messages)

    async def receive():
        return queue.pop(0) if queue else await then()
    return receive
