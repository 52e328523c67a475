"""A workshop's worth of visitors against the app in public mode, on loopback only.

Starts the app with ``INDISTILL_PUBLIC=1`` on 127.0.0.1 (a free port, a fresh runs folder;
``bench/load_server.py``, which times the ``/status`` handler) and drives ``--sessions``
visitors the way browsers do: one light client process, one HTTP connection per visitor,
speaking the app's HTTP API (``POST /gradio_api/call/start`` and its event stream; ``POST
/gradio_api/run/status`` once a second). Each visitor starts a tiny run, polls until it ends,
and leaves. The server's RSS is sampled throughout. ``--soak N`` instead runs N tiny runs in a
row from one visitor and reports the RSS after each.

    python bench/load.py --json                # 30 visitors
    python bench/load.py --soak 50 --json      # 50 runs in a row

Prints one JSON object: sessions, served, lost, queue_wait_p50_s/p95_s, poll_p50_s/p95_s (as the
clients saw them), server_poll_p50_ms/p95_ms (the status handler's own time in the server),
rss_before_mb, rss_peak_mb, rss_after_mb (and the soak's RSS series). ``rss_before_mb`` is taken
after one warm-up run (the first run of a process loads torch's kernels, the shipped teacher and
the data once); ``rss_cold_mb`` is the RSS before that run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = {"student.epochs": 0.5, "data.train_per_class": 12, "data.test_per_class": 3, "indistill.a": 0.25,
        "indistill.b": 0.0, "eval.latency_runs": 2, "eval.info_batch": 32, "seeds": 1}
MAX_SESSIONS = 100


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


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


class Server:
    """The app in its own process, public mode, loopback only, its /status handler timed."""

    def __init__(self, tmp: Path, max_queue: int) -> None:
        self.port, self.times = free_port(), tmp / "status_times.json"
        env = dict(os.environ, INDISTILL_PUBLIC="1", INDISTILL_RUNS=str(tmp / "runs"), INDISTILL_CACHE=str(tmp / "cache"),
                   INDISTILL_MAX_QUEUE=str(max_queue), INDISTILL_LOAD_TIMES=str(self.times),
                   GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(self.port), GRADIO_ANALYTICS_ENABLED="False")
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

    def stop(self) -> list[float]:
        """Stop the app; the status handler's own times (seconds), one per poll."""
        self.proc.terminate()
        self.proc.wait(15)
        return json.loads(self.times.read_text()) if self.times.is_file() else []


class Sampler(threading.Thread):
    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server, self.peak, self.stop_flag = server, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.peak = max(self.peak, self.server.rss())
            time.sleep(0.2)


class Visitor:
    """One browser's worth of HTTP: its own connection, the app's API, no Gradio client."""

    def __init__(self, url: str) -> None:
        import httpx
        self.http = httpx.AsyncClient(base_url=url + "gradio_api/", timeout=120,
                                      limits=httpx.Limits(max_connections=1))

    async def call(self, name: str, *data) -> dict:
        """A queued endpoint: join, then read its event stream to the ``complete`` event."""
        event = (await self.http.post(f"call/{name}", json={"data": list(data)})).json()["event_id"]
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

    async def status(self, key: str, run: str) -> dict:
        """``/status`` is served without the queue: one request, one answer."""
        answer = await self.http.post("run/status", json={"data": [key, run]})
        answer.raise_for_status()
        return answer.json()["data"][0]

    async def close(self) -> None:
        await self.http.aclose()


async def visit(url: str, deadline: float, delay: float = 0.0, interval: float = 1.0) -> dict:
    """Start a tiny run, poll until it ends, leave; record waits and poll latencies."""
    await asyncio.sleep(delay)
    out: dict = {"polls": []}
    visitor = Visitor(url)
    try:
        t0 = time.time()
        started = await visitor.call("start", "workshop", json.dumps(TINY), "")
        if not started.get("run"):
            out["error"] = started.get("message")
            return out
        running_at = None
        while time.time() < deadline:
            t = time.perf_counter()
            status = await visitor.status(started["session_key"], started["run"])
            out["polls"].append(time.perf_counter() - t)
            if status["state"] == "running" and running_at is None:
                running_at = time.time()
            if status["state"] not in ("queued", "running"):
                out["state"] = status["state"]
                break
            await asyncio.sleep(interval)
        out["queue_wait"] = (running_at or time.time()) - t0
    except Exception as exc:  # a lost visitor is a result, not a crash of the benchmark
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        await visitor.close()
    return out


def warm_up(server: Server, timeout: float) -> tuple[float, int]:
    """One run before measuring: the first run of a process loads torch's kernels, the shipped
    teacher and the sample once (+~170 MB measured); returns the RSS before it (cold) and its polls."""
    cold = server.rss()
    out = asyncio.run(visit(server.url, time.time() + timeout))
    if out.get("state") != "finished":
        raise SystemExit(f"warm-up run did not finish: {out.get('error') or out.get('state')}")
    return cold, len(out["polls"])


async def crowd(url: str, sessions: int, deadline: float) -> list[dict]:
    return await asyncio.gather(*(visit(url, deadline, 0.05 * i) for i in range(sessions)))


def load(server: Server, sessions: int, timeout: float) -> dict:
    cold, warm_polls = warm_up(server, timeout)
    before = server.rss()
    sampler = Sampler(server)
    sampler.start()
    t0 = time.time()
    outs = asyncio.run(crowd(server.url, sessions, t0 + timeout))
    wall = time.time() - t0
    time.sleep(3)
    sampler.stop_flag.set()
    polls = [p for o in outs for p in o["polls"]]
    waits = [o["queue_wait"] for o in outs if "queue_wait" in o]
    served = sum(o.get("state") == "finished" for o in outs)
    errors = sorted({o["error"] for o in outs if o.get("error")})
    return {"sessions": sessions, "served": served, "lost": sessions - served, "wall_s": round(wall, 1),
            "queue_wait_p50_s": pct(waits, 0.5), "queue_wait_p95_s": pct(waits, 0.95),
            "poll_p50_s": pct(polls, 0.5), "poll_p95_s": pct(polls, 0.95), "polls": len(polls),
            "rss_cold_mb": round(cold, 1), "rss_before_mb": round(before, 1),
            "rss_peak_mb": round(max(sampler.peak, before), 1),
            "rss_after_mb": round(server.rss(), 1), "errors": errors[:5], "warm_up_polls": warm_polls}


def soak(server: Server, runs: int, timeout: float) -> dict:
    """``runs`` tiny runs in a row from one visitor; the RSS after each."""
    cold, _ = warm_up(server, timeout)
    before, series, served = server.rss(), [], 0
    deadline = time.time() + timeout
    for _ in range(runs):
        if time.time() > deadline:
            break
        out = asyncio.run(visit(server.url, deadline, interval=0.3))
        served += out.get("state") == "finished"
        series.append(round(server.rss(), 1))
    return {"soak_runs": runs, "served": served, "rss_cold_mb": round(cold, 1), "rss_before_mb": round(before, 1),
            "rss_after_first_mb": series[0],
            "rss_after_mb": series[-1], "rss_max_mb": max(series), "rss_series_mb": series}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=30, help=f"simulated visitors (1–{MAX_SESSIONS})")
    p.add_argument("--soak", type=int, default=0, help="instead: this many runs in a row from one visitor")
    p.add_argument("--timeout", type=float, default=900, help="seconds before the benchmark gives up")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.sessions <= MAX_SESSIONS:
        p.error(f"--sessions must be 1 to {MAX_SESSIONS}")
    if not 0 <= args.soak <= 500:
        p.error("--soak must be 0 to 500")
    with tempfile.TemporaryDirectory(prefix="indistill-load-") as tmp:
        server = Server(Path(tmp), max_queue=max(30, args.sessions))
        try:
            out = soak(server, args.soak, args.timeout) if args.soak else load(server, args.sessions, args.timeout)
        finally:
            times = server.stop()
        if not args.soak:  # the handler's times in call order: the warm-up run's polls came first
            times = times[out.pop("warm_up_polls"):]
            ms = [t * 1000 for t in times]
            out.update(server_poll_p50_ms=pct(ms, 0.5), server_poll_p95_ms=pct(ms, 0.95), server_polls=len(times))
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0 if out.get("served") == (args.soak or args.sessions) else 1


if __name__ == "__main__":
    sys.exit(main())
