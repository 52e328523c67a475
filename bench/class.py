"""A class of thirty on one server: a scripted lesson over plain HTTP, sharing on and off.

Starts the app in public mode on 127.0.0.1 (``bench/public_http.py``; ``INDISTILL_TRUST_PROXY=1``,
and each visitor sends its own ``X-Forwarded-For: 10.0.0.<i>`` so per-address caps count them
apart) and drives ``--sessions`` visitors from one light client process, each with its own
connection and session key, through a lesson:

1. everyone starts the page's default preset (``DEFAULT_PRESET`` in ``app/ui/layout.py``);
2. everyone starts the instructor's change, ``indistill.a = 2``;
3. each starts their own ``a`` and ``b`` (visitor i: ``a = 0.3 + 0.1·i``, ``b = 0.25``).

Every run has the lesson's tiny overrides (``CLASS``: a small slice of the embedded sample, the
preset's epochs scaled by ``--epochs-scale``, retrieval off), so a lesson takes minutes. The
lesson runs twice, on two fresh servers: ``INDISTILL_SHARING=1`` (identical runs joined, units
taken from the store) and ``0``. Before each lesson one warm-up run and one timed solo run (each
with its own weight decay, so they share no unit with the lesson) give "one run's time".

Per step: ``last_s`` (from the step's first press until the last visitor has a result; it holds
the ``--spread`` of the presses and up to one poll ``--interval``), ``median_wait_s`` (a visitor's
press to their result, the median visitor), ``start_answer_max_s`` (the slowest ``/start``
answer), ``joined``, ``runs`` (distinct runs), ``units_asked`` (every visitor's units: a joined
visitor asks for the run's units) and ``units_trained`` (each distinct run's units once, less those its results record as reused:
``results["reuse"]["reused"]`` or a unit's ``reused_from``). ``ratios`` are off ÷ on.

``workshop`` projects the same figures for the real preset: the runs of each measured step, in
the order they ended, each costing a fixed part plus its trained units, with the workshop's unit
times: from the README's measured figure (``workshop preset … 1 min 28 s in all``, student phases
≈ 85 s: split over the arms as the solo run's measured training times split, per epoch) or, with
``--workshop``, measured once here (the real preset, alone, on the sharing-off server).

``--mint N`` (on the sharing-on server, after its lesson): one client address mints N session
keys, each starting a distinct tiny run, then posts N files of ``--mint-upload-mb`` to Gradio's
upload route; reports how many runs and bytes were admitted, the refusal, and whether a visitor
from another address is still admitted. Admitted runs are cancelled.

    python bench/class.py --sessions 6 --mint 10        # a smoke test (minutes)
    python bench/class.py --json                        # 30 visitors, sharing on and off, mint 50
"""
from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from public_http import ROOT, Server, Visitor, follow, load_average, visitor_address

MAX_SESSIONS = 100
CLASS = {"data.train_per_class": 60, "data.val_per_class": 6, "data.test_per_class": 5, "seeds": 1,
         "eval.retrieval": False, "eval.latency_runs": 2, "eval.info_batch": 32}
# the README's measured workshop preset (2 cores, local mode): 1 min 28 s in all, student phases ≈ 85 s
README_WORKSHOP = {"run_s": 88.0, "units_s": 85.0}
STUDENT_PHASES = ("baseline", "kd", "indistill")


def default_preset() -> str:
    """The page's ``DEFAULT_PRESET``, read from ``app/ui/layout.py`` without importing the app."""
    tree = ast.parse((ROOT / "app" / "ui" / "layout.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DEFAULT_PRESET" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit("app/ui/layout.py has no DEFAULT_PRESET")


def lesson_steps() -> list[tuple[str, Callable[[int], dict]]]:
    """(name, visitor index → that visitor's change) for the three steps."""
    return [("1 default", lambda i: {}),
            ("2 instructor a=2", lambda i: {"indistill.a": 2}),
            ("3 own a, b", lambda i: {"indistill.a": round(0.3 + 0.1 * i, 2), "indistill.b": 0.25})]


# ---------------------------------------------------------------- a run's units, from its results

def unit_records(results: dict | None) -> dict[str, dict]:
    """``{unit name: record}`` of a run's results (``teacher``, ``kd-s0``, …)."""
    out = {}
    for phase, entry in ((results or {}).get("phases") or {}).items():
        for seed, record in ((entry or {}).get("units") or {}).items():
            if isinstance(record, dict):
                out[phase if seed == "single" else f"{phase}-s{seed}"] = record
    return out


def reused_units(results: dict | None) -> set[str]:
    """Units the run took from the store: ``results["reuse"]["reused"]`` (names or records) or ``reused_from``."""
    listed = ((results or {}).get("reuse") or {}).get("reused") or []
    names = {e if isinstance(e, str) else (e.get("unit") or e.get("name")) for e in listed if isinstance(e, (str, dict))}
    return {n for n in names if n} | {n for n, r in unit_records(results).items() if r.get("reused_from")}


def asked_units(results: dict | None) -> list[str]:
    """Units the run asked for: every unit with training epochs, trained or taken from the store (a teacher
    loaded from its checkpoint file is neither, whether the file was read or the store's copy of it)."""
    trained = set(((results or {}).get("reuse") or {}).get("trained") or [])
    return [n for n, r in unit_records(results).items() if (r.get("epochs") or 0) > 0 or n in trained]


def trained_units(results: dict | None) -> list[str]:
    reused = reused_units(results)
    return [n for n in asked_units(results) if n not in reused]


def phase_of(unit: str) -> str:
    return unit.rsplit("-s", 1)[0]


# ---------------------------------------------------------------- visitors pressing Start

async def press(visitor: Visitor, preset: str, overrides: dict, at: float, deadline: float, interval: float) -> dict:
    """Wait until ``at``, start, follow the run to its end: what this visitor saw."""
    await asyncio.sleep(max(0.0, at - time.time()))
    out: dict = {"pressed": time.time()}
    try:
        started = await visitor.start(preset, overrides)
        out["answered"], out["message"] = time.time(), started.get("message")
        if not started.get("run"):
            out["error"] = started.get("message") or "no run"
            return out
        out["run"] = started["run"]
        followed = await follow(visitor, visitor.key, started["run"], deadline, interval)
        out.update(state=followed["state"], ended_at=followed["ended_at"], running_at=followed["running_at"],
                   phases=followed["phases"], polls=len(followed["polls"]),
                   joined=bool(started.get("joined") or followed["last"].get("joined")))
    except Exception as exc:  # a lost visitor is a result, not a crash of the benchmark
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def step_report(name: str, t0: float, outs: list[dict], server: Server) -> dict:
    """The step's figures, and its runs in the order they ended (for the workshop projection)."""
    done = [o for o in outs if o.get("state") == "finished" and o.get("ended_at")]
    runs = {o["run"]: server.results(o["run"]) for o in outs if o.get("run")}
    ended = {}
    for o in done:
        ended[o["run"]] = max(ended.get(o["run"], 0.0), o["ended_at"])
    errors = sorted({str(o.get("error") or o.get("state"))[:160] for o in outs if o not in done})
    return {"step": name, "visitors": len(outs), "served": len(done), "lost": len(outs) - len(done),
            "last_s": round(max(o["ended_at"] for o in done) - t0, 1) if done else None,
            "median_wait_s": round(statistics.median(o["ended_at"] - o["pressed"] for o in done), 1) if done else None,
            "start_answer_max_s": round(max(o["answered"] - o["pressed"] for o in outs if "answered" in o), 1)
            if any("answered" in o for o in outs) else None,
            "joined": sum(bool(o.get("joined")) for o in outs), "runs": len(runs),
            "units_asked": sum(len(asked_units(runs.get(o["run"]))) for o in outs if o.get("run")),
            "units_trained": sum(len(trained_units(r)) for r in runs.values()),
            "trained_by_phase": count_phases(u for r in runs.values() for u in trained_units(r)),
            "errors": errors[:3],
            "order": [{"run": run, "visitors": sum(o.get("run") == run for o in done),
                       "trained": [(phase_of(u), unit_records(runs[run])[u].get("epochs") or 0.0)
                                   for u in trained_units(runs[run])]}
                      for run in sorted(ended, key=ended.get)]}


def count_phases(units) -> dict[str, int]:
    counts: dict[str, int] = {}
    for u in units:
        counts[phase_of(u)] = counts.get(phase_of(u), 0) + 1
    return counts


async def solo(server: Server, preset: str, overrides: dict, address: str, timeout: float) -> dict:
    """One run alone, polled every 0.5 s: its wall time, unit wall times (from the phase changes) and results."""
    visitor = Visitor(server.url, address)
    try:
        out = await press(visitor, preset, overrides, 0.0, time.time() + timeout, 0.5)
    finally:
        await visitor.close()
    if out.get("state") != "finished":
        raise SystemExit(f"the solo run did not finish: {out.get('error') or out.get('state')}")
    results = server.results(out["run"])
    marks = out["phases"] + [(out["ended_at"], None)]
    unit_wall = {}
    for (t, phase), (t_next, _) in zip(marks, marks[1:]):
        unit_wall[phase] = unit_wall.get(phase, 0.0) + t_next - t
    records = unit_records(results)
    return {"run_s": round(out["ended_at"] - out["pressed"], 2),
            "unit_wall_s": {p: round(s, 2) for p, s in unit_wall.items()},
            "train_s": {phase_of(n): r.get("train_seconds") for n, r in records.items() if (r.get("epochs") or 0) > 0},
            "epochs": {phase_of(n): r.get("epochs") for n, r in records.items() if (r.get("epochs") or 0) > 0}}


async def lesson(server: Server, preset: str, base: dict, sessions: int, spread: float, interval: float,
                 timeout: float) -> list[dict]:
    """The three steps; each step begins once every visitor has the previous step's result."""
    visitors = [Visitor(server.url, visitor_address(i + 1)) for i in range(sessions)]
    reports = []
    try:
        for name, change in lesson_steps():
            t0 = time.time()
            outs = await asyncio.gather(*(press(v, preset, base | change(i), t0 + spread * i / sessions,
                                                t0 + timeout, interval) for i, v in enumerate(visitors)))
            reports.append(step_report(name, t0, outs, server))
    finally:
        await asyncio.gather(*(v.close() for v in visitors))
    return reports


# ---------------------------------------------------------------- one client, many keys

async def mint(server: Server, preset: str, base: dict, keys: int, upload_mb: float) -> dict:
    """One address mints ``keys`` sessions, each starting a distinct run, then posts ``keys`` uploads."""
    flood, other = Visitor(server.url, "10.0.9.1"), Visitor(server.url, "10.0.9.2")
    admitted, refusals = [], {}
    try:
        for k in range(keys):
            answer = await flood.start(preset, base | {"indistill.a": round(0.31 + 0.01 * k, 2)}, key="")
            if answer.get("run"):
                admitted.append((answer["session_key"], answer["run"]))
            else:
                first = str(answer.get("message"))[:200]
                refusals[first] = refusals.get(first, 0) + 1
        blob = bytes(range(256)) * int(upload_mb * 4096)
        codes: dict[int, int] = {}
        refused_upload = None
        for k in range(keys):
            code, text = await flood.upload(f"part{k}.bin", blob)
            codes[code] = codes.get(code, 0) + 1
            if code != 200 and refused_upload is None:
                refused_upload = text
        another = await other.start(preset, base | {"indistill.a": 0.29})
        for key, run in admitted:
            await flood.cancel(key, run)
        if another.get("run"):
            await other.cancel(other.key, another["run"])
    finally:
        await flood.close()
        await other.close()
    return {"keys_minted": keys, "runs_admitted": len(admitted), "refusals": refusals,
            "uploads_accepted": codes.get(200, 0), "upload_mb_accepted": round(codes.get(200, 0) * len(blob) / 2**20, 1),
            "upload_status_codes": codes, "upload_refusal": refused_upload,
            "other_address_admitted": bool(another.get("run")), "other_address_message": another.get("message")}


# ---------------------------------------------------------------- the real preset, projected

def unit_rates(tiny: dict, workshop: dict | None) -> tuple[dict, float, str]:
    """Seconds per epoch of each student phase at the workshop's size, the run's fixed part, and the source."""
    if workshop is not None:  # measured here: each phase's wall time over its epochs
        rates = {p: workshop["unit_wall_s"][p] / workshop["epochs"][p] for p in STUDENT_PHASES if p in workshop["epochs"]}
        fixed = workshop["run_s"] - sum(workshop["unit_wall_s"].get(p, 0.0) for p in STUDENT_PHASES)
        return rates, max(0.0, fixed), "measured here (--workshop: the preset alone, public mode)"
    # the README's figure, split over the arms as the solo run's training times split (per epoch)
    walls = {p: tiny["train_s"].get(p) or 0.0 for p in STUDENT_PHASES}
    scale = README_WORKSHOP["units_s"] / (sum(walls.values()) or 1.0)
    rates = {p: walls[p] * scale / tiny["epochs"][p] * tiny["epochs_scale"] for p in STUDENT_PHASES if tiny["epochs"].get(p)}
    return rates, README_WORKSHOP["run_s"] - README_WORKSHOP["units_s"], \
        "README: workshop preset 1 min 28 s in all, student phases ≈ 85 s (2 cores, local mode), split by this solo run"


def project(step: dict, rates: dict, fixed: float, epochs_scale: float) -> dict:
    """Replay a measured step with the workshop's unit times: its runs in the order they ended, one at a time."""
    clock, waits = 0.0, []
    for run in step["order"]:
        clock += fixed + sum(rates.get(p, 0.0) * e / epochs_scale for p, e in run["trained"])
        waits += [clock] * run["visitors"]
    return {"last_s": round(max(waits), 1) if waits else None,
            "median_wait_s": round(statistics.median(waits), 1) if waits else None}


def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None


def goals(on: dict, sessions: int) -> dict:
    steps, solo_s = on["steps"], on["solo"]["run_s"]
    third = steps[2]
    return {"step1_within_1.5_runs": steps[0]["last_s"] is not None and steps[0]["last_s"] <= 1.5 * solo_s,
            "step2_within_1.5_runs": steps[1]["last_s"] is not None and steps[1]["last_s"] <= 1.5 * solo_s,
            "step1_last_over_run": ratio(steps[0]["last_s"], solo_s),
            "step2_last_over_run": ratio(steps[1]["last_s"], solo_s),
            "step3_one_arm_each": third["units_trained"] == sessions and set(third["trained_by_phase"]) <= {"indistill"},
            "step3_trained_by_phase": third["trained_by_phase"]}


def run_lesson(sharing: bool, args, preset: str, base: dict, tmp: Path) -> dict:
    server = Server(tmp / f"sharing-{int(sharing)}", max_queue=max(30, args.sessions) + 2,
                    env={"INDISTILL_SHARING": "1" if sharing else "0", "INDISTILL_TRUST_PROXY": "1"})
    try:
        asyncio.run(solo(server, preset, base | {"optim.weight_decay": 5.01e-4}, "10.0.8.1", args.timeout))  # warm-up
        out = {"sharing": sharing, "solo": asyncio.run(solo(server, preset, base | {"optim.weight_decay": 5.02e-4},
                                                            "10.0.8.2", args.timeout))}
        out["solo"]["epochs_scale"] = args.epochs_scale
        if args.workshop and not sharing:
            out["workshop"] = asyncio.run(solo(server, preset, {}, "10.0.8.3", args.timeout))
        t0 = time.time()
        out["steps"] = asyncio.run(lesson(server, preset, base, args.sessions, args.spread, args.interval, args.timeout))
        out["lesson_s"] = round(time.time() - t0, 1)
        if sharing and args.mint:
            out["mint"] = asyncio.run(mint(server, preset, base, args.mint, args.mint_upload_mb))
        out["load_avg"] = load_average()
    finally:
        server.stop()
    return out


def summary(on: dict, off: dict, sessions: int) -> dict:
    rates, fixed, source = unit_rates(on["solo"], off.get("workshop"))
    scale = on["solo"]["epochs_scale"]
    workshop = {"source": source, "fixed_s": round(fixed, 1),
                "unit_s": {p: round(r * e / scale, 1) for p, r in rates.items() for e in [on["solo"]["epochs"][p]]},
                "one_run_s": round(fixed + sum(r * on["solo"]["epochs"][p] / scale for p, r in rates.items()), 1)}
    for name, lesson_ in (("on", on), ("off", off)):
        workshop[name] = [{"step": s["step"], **project(s, rates, fixed, scale)} for s in lesson_["steps"]]
    ratios = [{"step": a["step"], "last_off_over_on": ratio(b["last_s"], a["last_s"]),
               "median_off_over_on": ratio(b["median_wait_s"], a["median_wait_s"]),
               "trained_off_over_on": ratio(b["units_trained"], a["units_trained"])}
              for a, b in zip(on["steps"], off["steps"])]
    return {"ratios": ratios, "goals": goals(on, sessions), "workshop": workshop}


def table(out: dict) -> str:
    """The figures as text, one line per step and mode."""
    lines = [f"{out['sessions']} visitors, preset {out['preset']}, lesson overrides {json.dumps(out['overrides'])}"]
    for mode in ("on", "off"):
        m = out[f"sharing_{mode}"]
        lines.append(f"sharing {mode}: one run alone {m['solo']['run_s']} s; lesson {m['lesson_s']} s; load {m['load_avg']}")
        for s in m["steps"]:
            lines.append(f"  step {s['step']:<18} last {s['last_s']} s, median wait {s['median_wait_s']} s, "
                         f"served {s['served']}/{s['visitors']}, joined {s['joined']}, runs {s['runs']}, "
                         f"units trained {s['units_trained']} of {s['units_asked']} asked {s['trained_by_phase']}"
                         + (f"; errors {s['errors']}" if s["errors"] else ""))
    lines.append("off ÷ on: " + "; ".join(f"step {r['step']}: last ×{r['last_off_over_on']}, median ×"
                                        f"{r['median_off_over_on']}, trained ×{r['trained_off_over_on']}"
                                        for r in out["ratios"]))
    w = out["workshop"]
    lines.append(f"workshop preset ({w['source']}): one run {w['one_run_s']} s (units {w['unit_s']}, fixed {w['fixed_s']} s)")
    for mode in ("on", "off"):
        lines.append(f"  sharing {mode}: " + "; ".join(f"step {s['step']}: last {s['last_s']} s, median {s['median_wait_s']} s"
                                                      for s in w[mode]))
    lines.append(f"goals: {json.dumps(out['goals'])}")
    if "mint" in out["sharing_on"]:
        lines.append(f"mint: {json.dumps(out['sharing_on']['mint'])}")
    return "\n".join(lines)


def extra(item: str, parser: argparse.ArgumentParser) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--set`` as an override (VALUE read as JSON where it is JSON)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        parser.error(f"--set takes KEY=VALUE, got {item!r}")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=30, help=f"simulated visitors (1–{MAX_SESSIONS})")
    p.add_argument("--epochs-scale", type=float, default=0.3, help="the preset's epochs × this (tiny runs)")
    p.add_argument("--spread", type=float, default=2.0, help="seconds over which a step's presses are spread")
    p.add_argument("--interval", type=float, default=1.0, help="each visitor's status poll, seconds")
    p.add_argument("--mint", type=int, default=50, help="keys one client mints after the lesson (0: skip)")
    p.add_argument("--mint-upload-mb", type=float, default=5.0, help="size of each upload the minting client posts")
    p.add_argument("--workshop", action="store_true", help="measure the real workshop preset once (else: README figures)")
    p.add_argument("--only", choices=("on", "off"), help="run one lesson only (no ratios)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds a lesson step may take before it gives up")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one more override for every run of the lesson (VALUE as JSON, else text), e.g. equal_epochs=false")
    p.add_argument("--keep", type=Path, help="keep the servers' folders (runs, logs) here instead of a temporary folder")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.sessions <= MAX_SESSIONS:
        p.error(f"--sessions must be 1 to {MAX_SESSIONS}")
    if not 0 < args.epochs_scale <= 1:
        p.error("--epochs-scale must be in (0, 1]")
    if not 0 <= args.mint <= 200:
        p.error("--mint must be 0 to 200")
    preset = default_preset()
    base = CLASS | {"epochs_scale": args.epochs_scale} | dict(extra(item, p) for item in args.set)
    out: dict = {"sessions": args.sessions, "preset": preset, "overrides": base, "load_avg_before": load_average()}
    with contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="indistill-class-") as tmp:
        for sharing in (True, False):
            if args.only in (None, "on" if sharing else "off"):
                out[f"sharing_{'on' if sharing else 'off'}"] = run_lesson(sharing, args, preset, base, Path(tmp))
    if args.only is None:
        out.update(summary(out["sharing_on"], out["sharing_off"], args.sessions))
    for mode in ("sharing_on", "sharing_off"):
        for s in out.get(mode, {}).get("steps", []):
            s.pop("order")
    if args.json or args.only:
        print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    else:
        print(table(out))
    return 0 if all(s["lost"] == 0 for m in ("sharing_on", "sharing_off") for s in out.get(m, {}).get("steps", [])) else 1


if __name__ == "__main__":
    sys.exit(main())
