"""How long a visitor waits for the results library: from picking a shipped run in the Train
tab's library menu until its multi-seed Compare table is on the page (and, server side, how
long the handlers behind it take).

Serves the app in this process and drives Debian's chromium with Playwright; alternates the
shipped runs for ``--rounds`` picks. Server and browser share this machine's cores.

    python bench/library_open.py --json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ARCH = {"cpu-cnn": "cnn_8_16_32", "cpu-resnet": "resnet8"}   # the student each shipped run's table names


def handler_seconds(run_id: str) -> float:
    """Server side: open the run, then every view a tab draws from it."""
    from app.ui import handlers as h
    start = time.perf_counter()
    session, _, _ = h.open_run(None, run_id)
    h.compare(session)
    h.info_views(session)
    h.pr_view(session, "cosine")
    h.grid_views(session)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=7872)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("INDISTILL_RUNS", tempfile.mkdtemp(prefix="indistill-bench-"))
    from app import library
    from app.ui import main as ui
    ids = [i for i in library.ids() if i in ARCH]
    if not ids:
        sys.exit("no shipped library runs (assets/library/cpu-*)")
    ui._warm_up_plotting()
    os.environ["GRADIO_SERVER_PORT"] = str(args.port)
    demo = ui.launch(prevent_thread_lock=True, quiet=True)   # the app as users get it (queue, paths, limits)
    server = [handler_seconds(ids[i % len(ids)]) for i in range(args.rounds)]

    from playwright.sync_api import sync_playwright
    waits = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{args.port}", wait_until="load")
        page.wait_for_selector("text=InDistill Studio")
        for i in range(args.rounds):
            run_id = ids[i % len(ids)]
            page.get_by_role("tab", name="Train").click()
            page.locator("#library input").click()
            option = page.get_by_role("option", name=run_id, exact=True)
            start = time.perf_counter()
            option.click()
            page.get_by_role("tab", name="Compare").click()
            page.wait_for_function(
                "arch => document.querySelector('#compare-table').innerText.includes(arch)", arg=ARCH[run_id],
                timeout=30000)
            waits.append(time.perf_counter() - start)
        browser.close()
    demo.close()
    out = {"runs": ids, "rounds": args.rounds, "pick_to_compare_table_median_s": round(statistics.median(waits), 3),
           "pick_to_compare_table_max_s": round(max(waits), 3),
           "handlers_median_s": round(statistics.median(server), 3), "handlers_max_s": round(max(server), 3)}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
