"""End to end in a real browser: Debian's chromium driven by Playwright (no browser
download). Starts the app, trains the quick preset on a tiny subset, watches the loss
curve gain points, cancels a second run, retrieves neighbours for an uploaded picture,
and saves a screenshot of every tab (at 1,024 and 1,440 px) under the test's temporary folder
(``$INDISTILL_ARTIFACTS`` keeps them elsewhere, e.g. as CI artifacts), for a person to look at."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ["INDISTILL_ARTIFACTS"]) if os.environ.get("INDISTILL_ARTIFACTS") else None
WIDTHS = (1024, 1440)   # a Space embeds the app at about 1,000 px
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
TABS = ["Setup", "Distill", "Train", "Pruning", "Compare", "Retrieval", "Information flow", "Learn"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, cache_dir):
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               INDISTILL_RUNS=str(tmp_path_factory.mktemp("runs")), INDISTILL_CACHE=str(cache_dir),
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    log = open(tmp_path_factory.mktemp("log") / "app.log", "w+")
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    while time.time() - t0 < 120:  # a fresh venv compiles its bytecode on the first start
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail("app exited:\n" + log.read())
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("app did not come up within 120 s")
    startup = time.time() - t0
    yield url, startup
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    path = ARTIFACTS or tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def page(server, request, artifacts):
    from playwright.sync_api import sync_playwright
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (apt-get install chromium); scripts/test.sh installs it"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(30000)
        pg.goto(server[0], wait_until="load")
        pg.wait_for_selector("text=InDistill Studio")
        yield pg
        if request.session.testsfailed:
            pg.screenshot(path=str(artifacts / "failure.png"), full_page=True)
        browser.close()


def tab(page, name):
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(400)


def fill_number(page, label, value):
    box = page.get_by_label(label, exact=False).first
    box.fill(str(value))
    box.press("Tab")


def loss_points(page) -> int:
    return page.evaluate("""() => {
        const el = document.querySelector('#loss-plot .js-plotly-plot');
        if (!el || !el.data) return 0;
        return el.data.reduce((n, t) => n + (t.x ? t.x.length : 0), 0);
    }""")


def status_text(page) -> str:
    return page.locator("#status").inner_text()


FITS = """(sel) => {
    // what is cut off or scrolls sideways: the page itself, and any element under ``sel`` wider than its parent
    const out = [];
    const doc = document.documentElement;
    if (doc.scrollWidth > window.innerWidth + 1) out.push(`page scrolls: ${doc.scrollWidth} > ${window.innerWidth}`);
    for (const el of document.querySelectorAll(sel)) {
        const r = el.getBoundingClientRect(), p = el.parentElement.getBoundingClientRect();
        if (r.width > 0 && (r.right > p.right + 1 || r.left < p.left - 1)) out.push(`${el.id || el.className} overflows its container`);
        if (el.scrollWidth > el.clientWidth + 1 && !el.closest('.js-plotly-plot')) out.push(`${el.id || el.className} scrolls sideways`);
    }
    return out;
}"""

WHOLE = """() => [...document.querySelectorAll('#feature-maps img')].map(img => {
    const r = img.getBoundingClientRect(), c = img.closest('#feature-maps').getBoundingClientRect();
    return {natural: img.naturalWidth / img.naturalHeight, shown: r.width / r.height, fit: getComputedStyle(img).objectFit,
            inside: r.left >= c.left - 1 && r.right <= c.right + 1, big: r.width >= 60};
})"""


def assert_fits(page, where: str, sel: str = "#feature-maps, #retrieval-gallery, .gallery, .grid-wrap, table") -> None:
    problems = page.evaluate(FITS, sel)
    assert not problems, f"{where}: {problems}"


def test_train_cancel_retrieve_and_screenshots(page, artifacts):
    tab(page, "Setup")
    page.get_by_role("button", name="quick-cpu").click()
    # the preset's values land asynchronously: wait for them before changing the dataset
    page.wait_for_function("() => document.querySelector('#field-train_per_class input').value === '400'")
    page.get_by_label("Embedded sample", exact=False).check()
    page.wait_for_function("() => document.querySelector('#field-dataset input:checked').value.startsWith('Embedded')")
    fill_number(page, "Train images per class", 40)
    fill_number(page, "Test images per class", 4)
    tab(page, "Distill")
    fill_number(page, "Teacher epochs", 1)
    box = page.locator("#field-student_epochs input")  # its label depends on the epoch budget
    box.fill("4")
    box.press("Tab")
    tab(page, "Train")
    page.wait_for_function("() => !document.querySelector('#start').disabled")
    page.locator("#start").click()
    # the loss curve gains points while training (sampled as the page polls)
    counts = []
    deadline = time.time() + 240
    while time.time() < deadline and "finished" not in status_text(page):
        counts.append(loss_points(page))
        page.wait_for_timeout(250)
    assert "finished" in status_text(page), status_text(page)
    counts.append(loss_points(page))
    assert len({c for c in counts if c > 0}) >= 2 and counts[-1] == max(counts), counts
    page.screenshot(path=str(artifacts / "tab-Train.png"), full_page=True)

    # the finished run's views: channel maps and feature maps, comparison table, information flow
    tab(page, "Pruning")
    page.wait_for_function("() => { const el = document.querySelector('#channel-plot .js-plotly-plot');"
                           " return el && el.data && el.data.length === 3; }")
    page.get_by_role("button", name="Show feature maps").click()
    page.wait_for_selector("#feature-maps img", timeout=60000)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(500)
        shown = page.evaluate(WHOLE)
        assert len(shown) == 9, shown                  # 3 layers × (full, kept, student after warm-up)
        for img in shown:                               # every mosaic whole: its own aspect, inside the view
            assert img["fit"] == "contain" and abs(img["shown"] / img["natural"] - 1) < 0.03, (width, img)
            assert img["inside"] and img["big"], (width, img)
        assert_fits(page, f"Pruning at {width} px")
        page.screenshot(path=str(artifacts / f"tab-Pruning-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})
    tab(page, "Compare")
    page.locator("#compare-refresh").click()
    page.wait_for_function("() => document.querySelector('#compare-table').innerText.includes('InDistill + KD')")
    # deploy a student: the picker lists the run's student checkpoints; the export shows its check
    page.wait_for_function("() => document.querySelector('#onnx-pick input').value.endsWith('-s0')")
    page.locator("#onnx-export").click()
    page.wait_for_function("() => document.querySelector('#onnx-md').innerText.includes('max |ONNX')", timeout=120000)
    assert "onnxruntime" in page.locator("#onnx-md").inner_text()
    page.wait_for_selector("#onnx-file a", timeout=30000)
    page.screenshot(path=str(artifacts / "tab-Compare.png"), full_page=True)
    tab(page, "Information flow")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(artifacts / "tab-Information_flow.png"), full_page=True)
    tab(page, "Train")

    # a second, longer run (a 200-epoch teacher), cancelled while it trains
    tab(page, "Distill")
    fill_number(page, "Teacher epochs", 200)
    tab(page, "Train")
    page.wait_for_function("() => !document.querySelector('#start').disabled")
    page.locator("#start").click()
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('running') || "
                           "document.querySelector('#status').innerText.includes('queued')", timeout=60000)
    page.wait_for_function("() => !document.querySelector('#cancel').disabled", timeout=30000)
    page.locator("#cancel").click()
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('cancelled')", timeout=60000)

    # retrieval: first a bad upload (a text file named .png), then a real picture
    tab(page, "Retrieval")
    bad = artifacts / "not-a-picture.png"
    bad.write_text("hello")
    page.locator("#upload input[type=file]").set_input_files(str(bad))
    page.wait_for_function("() => document.querySelector('#retrieval-msg').innerText.includes('not a readable picture')",
                           timeout=30000)
    bad.unlink()
    page.locator("#upload button[aria-label=Clear]").click()
    page.locator("#upload input[type=file]").set_input_files(str(ROOT / "assets" / "examples" / "cat.jpg"))
    page.wait_for_selector("#retrieval-gallery img", timeout=120000)
    assert page.locator("#retrieval-gallery img").count() >= 4
    for width in WIDTHS:                                 # the nearest images fit at the largest k too
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(500)
        assert_fits(page, f"Retrieval at {width} px")
        page.screenshot(path=str(artifacts / f"tab-Retrieval-{width}.png"), full_page=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 1000})
        for name in TABS:
            tab(page, name)
            page.wait_for_timeout(800)
            assert_fits(page, f"{name} at {width} px")
            page.screenshot(path=str(artifacts / f"tab-{name.replace(' ', '_')}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})


def test_the_results_library_opens_in_every_tab(page, artifacts):
    tab(page, "Train")
    page.locator("#library input").click()
    page.get_by_role("option", name="cpu-cnn", exact=True).click()
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('cpu-cnn')", timeout=30000)
    tab(page, "Compare")
    page.wait_for_function("() => document.querySelector('#compare-table').innerText.includes('InDistill + KD')",
                           timeout=30000)
    table = page.locator("#compare-table").inner_text()
    assert "Baseline (CE)" in table and "[" in table      # the shipped 5-seed run, with its intervals
    page.screenshot(path=str(artifacts / "library-Compare.png"), full_page=True)
