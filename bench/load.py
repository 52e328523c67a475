"""A workshop's worth of visitors against the app in public mode, on loopback only.

Starts ``app.py`` with ``INDISTILL_PUBLIC=1`` on 127.0.0.1 (a free port, a fresh runs
folder) and drives ``--sessions`` simulated visitors with ``gradio_client``: each starts
a tiny run through the ``/start`` endpoint, polls ``/status`` until the run ends, and
leaves. The server's RSS is sampled throughout. ``--soak N`` instead runs N tiny runs
in a row from one visitor and reports the RSS after each.

    python bench/load.py --json                # 30 visitors
    python bench/load.py --soak 50 --json      # 50 runs in a row

Prints one JSON object: sessions, served, lost, queue_wait_p50_s/p95_s, poll_p50_s/p95_s,
rss_before_mb, rss_peak_mb, rss_after_mb (and the soak's RSS series). ``rss_before_mb`` is
taken after one warm-up run (the first run of a process loads torch's kernels, the shipped
teacher and the data once); ``rss_cold_mb`` is the RSS before that run.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
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
    """The app in its own process, public mode, loopback only."""

    def __init__(self, runs: Path, cache: Path, max_queue: int) -> None:
        self.port = free_port()
        env = dict(os.environ, INDISTILL_PUBLIC="1", INDISTILL_RUNS=str(runs), INDISTILL_CACHE=str(cache),
                   INDISTILL_MAX_QUEUE=str(max_queue), GRADIO_SERVER_NAME="127.0.0.1",
                   GRADIO_SERVER_PORT=str(self.port), GRADIO_ANALYTICS_ENABLED="False")
        self.log = open(runs.parent / "server.log", "w")
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
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

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


class Sampler(threading.Thread):
    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server, self.peak, self.stop_flag = server, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.peak = max(self.peak, self.server.rss())
            time.sleep(0.2)


def visitor(url: str, deadline: float, out: dict, interval: float = 1.0) -> None:
    """Start a tiny run, poll until it ends, leave; record waits and poll latencies."""
    from gradio_client import Client
    try:
        client = Client(url, verbose=False)
        t0 = time.time()
        started = client.predict("workshop", json.dumps(TINY), api_name="/start")
        if not started.get("run"):
            out["error"] = started.get("message")
            return
        running_at = None
        while time.time() < deadline:
            t = time.time()
            status = client.predict(api_name="/status")
            out.setdefault("polls", []).append(time.time() - t)
            if status["state"] == "running" and running_at is None:
                running_at = time.time()
            if status["state"] not in ("queued", "running"):
                out["state"] = status["state"]
                break
            time.sleep(interval)
        out["queue_wait"] = (running_at or time.time()) - t0
    except Exception as exc:  # a lost visitor is a result, not a crash of the benchmark
        out["error"] = f"{type(exc).__name__}: {exc}"


def warm_up(server: Server, timeout: float) -> float:
    """One run before measuring: the first run of a process loads torch's kernels, the shipped
    teacher and the sample once (+~170 MB measured); returns the RSS before it (cold)."""
    cold = server.rss()
    out: dict = {}
    visitor(server.url, time.time() + timeout, out)
    if out.get("state") != "finished":
        raise SystemExit(f"warm-up run did not finish: {out.get('error') or out.get('state')}")
    return cold


def visit(url: str, deadline: float, delay: float) -> dict:
    """One visitor in its own process: a staggered start, then :func:`visitor`."""
    time.sleep(delay)
    out: dict = {}
    visitor(url, deadline, out)
    return out


def load(server: Server, sessions: int, timeout: float) -> dict:
    cold = warm_up(server, timeout)
    before = server.rss()
    sampler = Sampler(server)
    sampler.start()
    deadline = time.time() + timeout
    t0 = time.time()
    # one process per visitor (as separate browsers/scripts would be): threads in one client process
    # would measure the client's own GIL contention, not the server
    with multiprocessing.get_context("spawn").Pool(sessions) as pool:
        pending = [pool.apply_async(visit, (server.url, deadline, 0.05 * i)) for i in range(sessions)]
        outs = [r.get(max(1.0, deadline - time.time() + 30)) for r in pending]
    wall = time.time() - t0
    time.sleep(3)
    sampler.stop_flag.set()
    polls = [p for o in outs for p in o.get("polls", [])]
    waits = [o["queue_wait"] for o in outs if "queue_wait" in o]
    served = sum(o.get("state") == "finished" for o in outs)
    errors = sorted({o["error"] for o in outs if o.get("error")})
    return {"sessions": sessions, "served": served, "lost": sessions - served, "wall_s": round(wall, 1),
            "queue_wait_p50_s": pct(waits, 0.5), "queue_wait_p95_s": pct(waits, 0.95),
            "poll_p50_s": pct(polls, 0.5), "poll_p95_s": pct(polls, 0.95), "polls": len(polls),
            "rss_cold_mb": round(cold, 1), "rss_before_mb": round(before, 1),
            "rss_peak_mb": round(max(sampler.peak, before), 1),
            "rss_after_mb": round(server.rss(), 1), "errors": errors[:5]}


def soak(server: Server, runs: int, timeout: float) -> dict:
    """``runs`` tiny runs in a row from one visitor; the RSS after each."""
    from gradio_client import Client
    client = Client(server.url, verbose=False)
    cold = warm_up(server, timeout)
    before, series, served = server.rss(), [], 0
    deadline = time.time() + timeout
    for _ in range(runs):
        if time.time() > deadline:
            break
        client.predict("workshop", json.dumps(TINY), api_name="/start")
        while time.time() < deadline:
            status = client.predict(api_name="/status")
            if status["state"] not in ("queued", "running"):
                served += status["state"] == "finished"
                break
            time.sleep(0.3)
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
        server = Server(Path(tmp) / "runs", Path(tmp) / "cache", max_queue=max(30, args.sessions))
        try:
            out = soak(server, args.soak, args.timeout) if args.soak else load(server, args.sessions, args.timeout)
        finally:
            server.stop()
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0 if out.get("served") == (args.soak or args.sessions) else 1


if __name__ == "__main__":
    sys.exit(main())
