"""How long until a training step shows on the page, and how long the page takes to come up.

Serves the app in this process, drives Debian's chromium with Playwright, starts the
``workshop`` preset, and compares the moment the first loss value lands in the job's
snapshot (server side) with the moment the page's loss chart first shows a point.

    python bench/ui_latency.py --json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
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
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("INDISTILL_RUNS", tempfile.mkdtemp(prefix="indistill-bench-"))
    t0 = time.time()
    from app.ui import main as ui
    demo = ui.build_app()
    demo.queue()
    demo.launch(server_port=args.port, prevent_thread_lock=True, quiet=True)
    startup = time.time() - t0

    first_step: dict = {}

    def watch() -> None:  # server side: when does the first loss value reach the snapshot?
        while "t" not in first_step:
            for job in list(ui.manager().jobs.values()):
                if any(s["step"] for s in job.view["series"].values()):
                    first_step["t"] = time.time()
            time.sleep(0.005)
    threading.Thread(target=watch, daemon=True).start()

    from playwright.sync_api import sync_playwright
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
        page.wait_for_function("""() => { const el = document.querySelector('#loss-plot .js-plotly-plot');
                                   return el && el.data && el.data.some(t => t.x && t.x.length); }""",
                               timeout=300000, polling=20)
        shown = time.time()
        ui.manager().get(page.evaluate("() => document.querySelector('#status').innerText.match(/run (\\\\w+)/)[1]")
                         if False else next(iter(ui.manager().jobs))).cancel()
        browser.close()
    out = {"app_build_and_serve_s": round(startup, 2), "page_load_s": round(page_ready, 2),
           "step_to_page_s": round(shown - first_step["t"], 3)}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    demo.close()


if __name__ == "__main__":
    main()
