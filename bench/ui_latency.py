"""How long until a training step shows on the page, and how long the page takes to come up.

Serves the app in this process, drives Debian's chromium with Playwright, starts the
``workshop`` preset, and for each of the first ``--samples`` chart updates compares the
moment a loss value lands in the job's snapshot (server side) with the moment the page's
loss chart shows it. Server, training and browser share this machine's cores.

    python bench/ui_latency.py --json
"""
from __future__ import annotations

import argparse
import json
import re
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=7871)
    p.add_argument("--samples", type=int, default=10, help="chart updates to time")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("INDISTILL_RUNS", tempfile.mkdtemp(prefix="indistill-bench-"))
    t0 = time.time()
    from app.ui import handlers, layout, views
    from app.ui import main as ui
    ui._warm_up_plotting()
    os.environ["GRADIO_SERVER_PORT"] = str(args.port)
    demo = ui.launch(prevent_thread_lock=True, quiet=True)   # the app as users get it (queue, paths, limits)
    startup = time.time() - t0

    # server side: when each (phase, step) reached the job's snapshot, and each chart point count
    steps_at: dict[tuple[str, int], float] = {}
    points_at: dict[int, float] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for job in list(handlers.studio().manager.jobs.values()):
                last = job.last_step()  # read without a snapshot (a copy every tick would skew timing)
                phase = views.LABELS.get(job.view["phase"])
                if last and (phase, last[1]) not in steps_at:
                    steps_at[(phase, last[1])] = time.time()
                with job.lock:
                    n = sum(len(s) for s in job.series.values())
                points_at.setdefault(n, time.time())
            time.sleep(0.005)
    threading.Thread(target=watch, daemon=True).start()

    from playwright.sync_api import sync_playwright
    status_seen: dict[tuple[str, int], float] = {}
    chart_seen: dict[int, float] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        t1 = time.time()
        page.goto(f"http://127.0.0.1:{args.port}", wait_until="load")
        page.wait_for_selector("text=InDistill Studio")
        page_ready = time.time() - t1
        page.get_by_role("tab", name="Train").click()
        page.wait_for_function("() => !document.querySelector('#start').disabled")
        page.locator("#start").click()
        deadline = time.time() + 300
        while len(status_seen) < args.samples and time.time() < deadline:
            text, n = page.evaluate("""() => { const el = document.querySelector('#loss-plot .js-plotly-plot');
                const n = el && el.data ? el.data.filter(d => d.name === 'total').reduce((k, d) => k + d.x.length, 0) : 0;
                return [document.querySelector('#status').innerText, n]; }""")
            now = time.time()
            m = re.search(r"phase (.+?)(?: \(seed \d+\))? · .*step (\d+)", text)
            if m:
                status_seen.setdefault((m.group(1), int(m.group(2))), now)
            if n:
                chart_seen.setdefault(n, now)
            time.sleep(0.01)
        for job in handlers.studio().manager.jobs.values():
            job.cancel()
        browser.close()
    stop.set()
    status_lags = sorted(t - steps_at[k] for k, t in status_seen.items() if k in steps_at)
    chart_lags = sorted(t - points_at[n] for n, t in chart_seen.items() if n in points_at)
    def med(v):
        return round(statistics.median(v), 3) if v else None

    def top(v):
        return round(max(v), 3) if v else None
    out = {"app_build_and_serve_s": round(startup, 2), "page_load_s": round(page_ready, 2), "poll_s": layout.POLL_SECONDS,
           "status_updates": len(status_lags), "step_to_status_median_s": med(status_lags),
           "step_to_status_max_s": top(status_lags),
           "chart_updates": len(chart_lags), "step_to_chart_median_s": med(chart_lags),
           "step_to_chart_max_s": top(chart_lags)}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    demo.close()


if __name__ == "__main__":
    main()
