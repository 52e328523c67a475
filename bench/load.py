"""A workshop's worth of visitors against the app in public mode, on loopback only.

Starts the app with ``INDISTILL_PUBLIC=1`` on 127.0.0.1 (a free port, a fresh runs folder;
``bench/load_server.py``, which times the ``/status`` handler) and drives ``--sessions``
visitors the way browsers do: one light client process, one HTTP connection per visitor,
speaking the app's HTTP API (``POST /gradio_api/call/start`` and its event stream; ``POST
/gradio_api/run/status`` once a second). Each visitor starts a tiny run, polls until it ends,
and leaves. Every visitor stands for its own client address (``X-Forwarded-For``, read by the
app under ``INDISTILL_TRUST_PROXY=1``) so per-address caps count them apart, and each run differs
(InDistill's ``a``), so none is joined or taken from the unit store: a run is always training.
The server's RSS is sampled throughout. ``--soak N`` instead runs N tiny runs in a row from one
visitor and reports the RSS after each.

    python bench/load.py --json                # 30 visitors
    python bench/load.py --soak 50 --json      # 50 runs in a row
    python bench/load.py --worker thread --json && python bench/load.py --worker process --json
    python bench/load.py --worker process --session-hash --json   # visitors as browsers: one session each

Prints one JSON object: sessions, served, lost, queue_wait_p50_s/p95_s, poll_p50_s/p95_s (as the
clients saw them), server_poll_p50_ms/p95_ms (the status handler's own time in the server),
rss_before_mb, rss_peak_mb, rss_after_mb (and the soak's RSS series), rss_children_peak_mb (the
server's child processes together: a worker process training, its fork server), worker (where runs
trained: ``--worker``, else the server's default, a worker process in public mode), session_hash (whether
visitors sent one, as browsers do: ``--session-hash``), load_avg (the machine's
1/5/15-minute load averages at the end: other work on the cores slows the polls). ``rss_before_mb`` is taken
after one warm-up run (the first run of a process loads torch's kernels, the shipped teacher and
the data once); ``rss_cold_mb`` is the RSS before that run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from public_http import Sampler, Server, Visitor, follow, load_average, pct, visitor_address

TINY = {"budget": "added", "student.epochs": 0.5, "data.train_per_class": 12, "data.test_per_class": 3, "indistill.a": 0.25,
        "indistill.b": 0.0, "eval.latency_runs": 2, "eval.info_batch": 32, "seeds": 1}
MAX_SESSIONS = 100


def tiny(n: int) -> dict:
    """Visitor ``n``'s tiny run: its own ``indistill.a``, so no two runs share a unit."""
    return TINY | {"indistill.a": round(TINY["indistill.a"] + 0.001 * n, 3)}


async def visit(url: str, n: int, deadline: float, delay: float = 0.0, interval: float = 1.0,
                session_hash: bool = False) -> dict:
    """Visitor ``n``: start a tiny run, poll until it ends, leave; record waits and poll latencies."""
    await asyncio.sleep(delay)
    out: dict = {"polls": []}
    visitor = Visitor(url, visitor_address(n), session_hash)
    try:
        t0 = time.time()
        started = await visitor.start("workshop", tiny(n), "")
        if not started.get("run"):
            out["error"] = started.get("message")
            return out
        followed = await follow(visitor, started["session_key"], started["run"], deadline, interval)
        out["polls"] = followed["polls"]
        if followed["state"] is not None:
            out["state"] = followed["state"]
        out["queue_wait"] = (followed["running_at"] or time.time()) - t0
    except Exception as exc:  # a lost visitor is a result, not a crash of the benchmark
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        await visitor.close()
    return out


def warm_up(server: Server, timeout: float) -> tuple[float, int]:
    """One run before measuring: the first run of a process loads torch's kernels, the shipped
    teacher and the sample once (+~170 MB measured); returns the RSS before it (cold) and its polls."""
    cold = server.rss()
    out = asyncio.run(visit(server.url, 0, time.time() + timeout))
    if out.get("state") != "finished":
        raise SystemExit(f"warm-up run did not finish: {out.get('error') or out.get('state')}")
    return cold, len(out["polls"])


async def crowd(url: str, sessions: int, deadline: float, session_hash: bool) -> list[dict]:
    return await asyncio.gather(*(visit(url, i + 1, deadline, 0.05 * i, session_hash=session_hash)
                                  for i in range(sessions)))


def load(server: Server, sessions: int, timeout: float, session_hash: bool = False) -> dict:
    cold, warm_polls = warm_up(server, timeout)
    before = server.rss()
    sampler = Sampler(server)
    sampler.start()
    t0 = time.time()
    outs = asyncio.run(crowd(server.url, sessions, t0 + timeout, session_hash))
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
            "rss_after_mb": round(server.rss(), 1), "rss_children_peak_mb": round(sampler.children_peak, 1),
            "errors": errors[:5], "load_avg": load_average(),
            "warm_up_polls": warm_polls}


def soak(server: Server, runs: int, timeout: float) -> dict:
    """``runs`` tiny runs in a row from one visitor; the RSS after each."""
    cold, _ = warm_up(server, timeout)
    before, series, served = server.rss(), [], 0
    deadline = time.time() + timeout
    for n in range(1, runs + 1):
        if time.time() > deadline:
            break
        out = asyncio.run(visit(server.url, n, deadline, interval=0.3))
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
    p.add_argument("--worker", choices=("process", "thread"),
                   help="where runs train (INDISTILL_WORKER; default: the server's, a worker process in public mode)")
    p.add_argument("--session-hash", action="store_true",
                   help="each visitor sends a session hash, as a browser or gradio_client does (without: a bare "
                        "script, for which Gradio builds a session state per call)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.sessions <= MAX_SESSIONS:
        p.error(f"--sessions must be 1 to {MAX_SESSIONS}")
    if not 0 <= args.soak <= 500:
        p.error("--soak must be 0 to 500")
    with tempfile.TemporaryDirectory(prefix="indistill-load-") as tmp:
        env = {"INDISTILL_TRUST_PROXY": "1"} | ({"INDISTILL_WORKER": args.worker} if args.worker else {})
        server = Server(Path(tmp), max_queue=max(30, args.sessions), env=env)
        try:
            if args.soak:
                out = soak(server, args.soak, args.timeout)
            else:
                out = load(server, args.sessions, args.timeout, args.session_hash)
        finally:
            times = server.stop()
        if not args.soak:  # the handler's times in call order: the warm-up run's polls came first
            times = times[out.pop("warm_up_polls"):]
            ms = [t * 1000 for t in times]
            out.update(server_poll_p50_ms=pct(ms, 0.5), server_poll_p95_ms=pct(ms, 0.95), server_polls=len(times))
    out["worker"] = args.worker or os.environ.get("INDISTILL_WORKER") or "default"
    out["session_hash"] = args.session_hash
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0 if out.get("served") == (args.soak or args.sessions) else 1


if __name__ == "__main__":
    sys.exit(main())
