"""The app in public mode on loopback, and visitors that speak its HTTP API: shared by the
public-mode benches (``bench/load.py``, ``bench/class.py``).

:class:`Server` starts ``bench/load_server.py`` (``app.py`` in public mode with its ``/status``
handler timed) on 127.0.0.1, a free port and a fresh runs folder; :class:`Visitor` is one
browser's worth of HTTP (its own connection, optionally its own client address sent as
``X-Forwarded-For``, which the server reads when started with ``INDISTILL_TRUST_PROXY=1``);
the server's environment is this process's (``INDISTILL_WORKER`` included) plus what ``env`` adds;
:func:`follow` polls a run until it ends.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIVE = ("queued", "running")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (its children, theirs, …), read from /proc."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as fh:
                    kids = [int(k) for k in fh.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def visitor_address(n: int) -> str:
    """Visitor ``n``'s own client address (10.0.0.1, 10.0.0.2, …; 250 per /24)."""
    return f"10.0.{n // 250}.{n % 250 + 1}"


def load_average() -> list[float]:
    """The machine's 1, 5 and 15-minute load averages (how busy the cores were)."""
    return [round(x, 2) for x in os.getloadavg()]


class Server:
    """The app in its own process, public mode, loopback only, its /status handler timed.

    ``env``: more environment for the app (e.g. ``INDISTILL_SHARING``, ``INDISTILL_TRUST_PROXY``)."""

    def __init__(self, tmp: Path, max_queue: int, env: dict | None = None) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port, self.times, self.runs_root = free_port(), tmp / "status_times.json", tmp / "runs"
        env = dict(os.environ, INDISTILL_PUBLIC="1", INDISTILL_RUNS=str(self.runs_root),
                   INDISTILL_CACHE=str(tmp / "cache"), INDISTILL_MAX_QUEUE=str(max_queue),
                   INDISTILL_LOAD_TIMES=str(self.times), GRADIO_SERVER_NAME="127.0.0.1",
                   GRADIO_SERVER_PORT=str(self.port), GRADIO_ANALYTICS_ENABLED="False", **(env or {}))
        self.log = open(tmp / "server.log", "w")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "load_server.py")], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url, timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"the app exited; see {self.log.name}")
                time.sleep(0.3)
        raise SystemExit("the app did not come up within 90 s")

    def rss(self) -> float:
        return rss_mb(self.proc.pid)

    def children_rss(self) -> float:
        """The RSS of the server's child processes together (a worker process training, its fork server)."""
        total = 0.0
        for pid in descendants(self.proc.pid):
            try:
                total += rss_mb(pid)
            except OSError:  # ended meanwhile
                pass
        return total

    def results(self, run_id: str) -> dict | None:
        """A run's ``results.json`` as the server wrote it (None while it has none)."""
        try:
            return json.loads((self.runs_root / run_id / "results.json").read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> list[float]:
        """Stop the app; the status handler's own times (seconds), one per poll."""
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()
        return json.loads(self.times.read_text()) if self.times.is_file() else []


class Sampler(threading.Thread):
    """The server's peak RSS, and its child processes' together, sampled every 0.2 s until
    ``stop_flag`` is set."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server, self.peak, self.children_peak, self.stop_flag = server, 0.0, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.peak = max(self.peak, self.server.rss())
            self.children_peak = max(self.children_peak, self.server.children_rss())
            time.sleep(0.2)


class Visitor:
    """One browser's worth of HTTP: its own connection, the app's API, no Gradio client.

    ``address``: the client address this visitor stands for, sent as ``X-Forwarded-For`` (the
    right-most entry is what a trusted proxy appended); None sends none. ``session_hash``: sent with
    every call, as a browser and ``gradio_client`` do, so Gradio keeps one session state for the
    visitor; without it (a bare script), Gradio builds a fresh one per call: the configuration of
    every component of the page, ~15 ms of the server's CPU for a call whose handler takes 0.25 ms."""

    def __init__(self, url: str, address: str | None = None, session_hash: bool = False) -> None:
        import secrets

        import httpx
        headers = {"X-Forwarded-For": address} if address else {}
        self.url, self.address, self.key = url, address, ""
        self.body = {"session_hash": secrets.token_hex(6)} if session_hash else {}
        self.http = httpx.AsyncClient(base_url=url + "gradio_api/", timeout=120, headers=headers,
                                      limits=httpx.Limits(max_connections=1))

    async def call(self, name: str, *data) -> dict:
        """A queued endpoint: join, then read its event stream to the ``complete`` event."""
        event = (await self.http.post(f"call/{name}", json={"data": list(data)} | self.body)).json()["event_id"]
        async with self.http.stream("GET", f"call/{name}/{event}") as stream:
            kind = None
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind in ("complete", "error"):
                    if kind == "error":
                        raise RuntimeError(f"/{name} failed: {line[5:].strip()[:200]}")
                    return json.loads(line[5:])[0]
        raise RuntimeError(f"/{name}: the event stream ended without an answer")

    async def start(self, preset: str, overrides: dict, key: str | None = None) -> dict:
        """``/start``; keeps the session key it answers (``key=""`` mints a new session)."""
        answer = await self.call("start", preset, json.dumps(overrides), self.key if key is None else key)
        if answer.get("session_key") and key is None:
            self.key = answer["session_key"]
        return answer

    async def status(self, key: str, run: str) -> dict:
        """``/status`` is served without the queue: one request, one answer."""
        answer = await self.http.post("run/status", json={"data": [key, run]} | self.body)
        answer.raise_for_status()
        return answer.json()["data"][0]

    async def cancel(self, key: str, run: str = "") -> dict:
        return await self.call("cancel", key, run)

    async def upload(self, name: str, content: bytes) -> tuple[int, str]:
        """Gradio's own upload route (what the page's file inputs post to): status code and answer."""
        answer = await self.http.post("upload", files={"files": (name, content)})
        return answer.status_code, answer.text[:300]

    async def close(self) -> None:
        await self.http.aclose()


async def follow(visitor: Visitor, key: str, run: str, deadline: float, interval: float = 1.0) -> dict:
    """Poll ``run`` until it leaves the queue and ends (or ``deadline``): ``polls`` (seconds each),
    ``running_at`` and ``ended_at`` (wall clock), ``state``, the last status answer, and
    ``phases``: (wall clock, phase) each time the phase in training changed."""
    out: dict = {"polls": [], "running_at": None, "ended_at": None, "state": None, "last": {}, "phases": []}
    while time.time() < deadline:
        t = time.perf_counter()
        status = await visitor.status(key, run)
        out["polls"].append(time.perf_counter() - t)
        out["last"] = status
        if status.get("phase") and (not out["phases"] or out["phases"][-1][1] != status["phase"]):
            out["phases"].append((time.time(), status["phase"]))
        if status.get("state") == "running" and out["running_at"] is None:
            out["running_at"] = time.time()
        if status.get("state") not in LIVE:
            out["state"], out["ended_at"] = status.get("state"), time.time()
            break
        await asyncio.sleep(interval)
    return out
