"""Public mode: budgets, server paths, run ids, ownership, bounded memory, and the
scripting API driven by two ``gradio_client`` sessions against a live server."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app import public, runfolder
from app.config import ASSETS, SAMPLE_DATA, preset
from app.limits import Limits
from app.plan import make_plan
from app.runner import JobManager, JobRefused, LossSeries
from app.ui import form
from app.ui import handlers as ui
from conftest import served_app

TINY = {"budget": "added", "student.epochs": 0.5, "data.train_per_class": 12, "data.test_per_class": 3, "indistill.a": 0.25,
        "indistill.b": 0.0, "eval.latency_runs": 2, "eval.info_batch": 32, "seeds": 1}


def refusals(**overrides) -> list[str]:
    cfg = preset("workshop").with_overrides(overrides)
    plan = make_plan(cfg)
    plan.raise_if_invalid()
    problems = public.admit(cfg, {SAMPLE_DATA.resolve()}, public.Budget())
    if problems:  # nothing is sized (no path is listed) before the config is admitted
        return problems
    est = public.estimate(cfg, plan, *public.dataset_size(cfg))
    return public.check_budget(cfg, est, public.Budget())


# ---------------------------------------------------------------- budgets and server paths

def test_public_mode_switch():
    assert public.is_public({"SPACE_ID": "user/indistill"})
    assert public.is_public({"INDISTILL_PUBLIC": "1"})
    assert not public.is_public({})
    assert not public.is_public({"SPACE_ID": "user/x", "INDISTILL_PUBLIC": "0"})


def test_the_default_preset_fits_and_its_estimate_is_near_the_measured_time():
    cfg = preset("workshop")
    est = public.estimate(cfg, make_plan(cfg), *public.dataset_size(cfg))
    assert refusals() == []
    assert 45 < est.seconds < 180  # measured: student phases 85 s on 2 cores (README)


def test_small_batches_pay_their_per_step_cost():
    """Issue 14's probe: batch 2 × 200 student epochs was admitted at 8.6 min and took ~3× the cap.
    Priced per step as well as per image, it is refused; the same epochs at batch 128 cost far less."""
    small = refusals(**{"optim.batch_size": 2, "student.epochs": 200})
    assert any("10 min" in p for p in small), small
    cfg = preset("workshop")
    at = {b: public.estimate(cfg.with_overrides({"optim.batch_size": b}), make_plan(cfg), *public.dataset_size(cfg))
          for b in (2, 128)}
    assert at[2].seconds > 4 * at[128].seconds


@pytest.mark.parametrize("overrides, words", [
    ({"student.epochs": 10000}, ["10 min", "what would fit", "student epochs"]),
    ({"teacher.arch": "resnet110", "teacher.checkpoint": None, "teacher.epochs": 30, "student.arch": "resnet20",
      "seeds": 5}, ["10 min", "seeds"]),
    ({"teacher.arch": "resnet32x4", "teacher.checkpoint": None, "teacher.epochs": 1, "student.arch": "resnet8x4",
      "optim.batch_size": 8192}, ["limit of 512", "MB of activations", "batch size of"]),
    ({"seeds": 6}, ["public limit of 5"]),
    ({"data.input_size": 128}, ["data.input_size 128 is over the public limit of 64"]),
    ({"eval.latency_runs": 5000}, ["eval.latency_runs 5000 is over the public limit of 200"]),
])
def test_budgets_refuse_oversized_jobs_naming_the_limit(overrides, words):
    text = " ".join(refusals(**overrides))
    assert all(w in text for w in words), text


@pytest.mark.parametrize("overrides, words", [
    ({"data.data_dir": "/etc"}, "server paths are not accepted"),
    ({"data.dataset": "cifar10", "data.data_dir": "/tmp/anywhere"}, "downloaded into the server's cache"),
    ({"data.cache_dir": "/tmp/x"}, "data.cache_dir cannot be set"),
    ({"teacher.checkpoint": "/etc/passwd"}, "only the shipped teachers"),
    ({"indistill.aux": "on", "indistill.aux_checkpoint": "/srv/runs/x/checkpoints/aux.pt"},
     "indistill.aux_checkpoint: on a public server only the shipped teachers"),
])
def test_public_configs_cannot_name_server_paths(overrides, words):
    assert any(words in r for r in refusals(**overrides))


def test_cifar_downloads_go_to_the_cache_only():
    cfg = preset("workshop").with_overrides({"data.dataset": "cifar10", "data.data_dir": None})
    assert public.admit(cfg, set(), public.Budget()) == []
    assert public.dataset_size(cfg) == (10, 49700, 300, 10000)   # 30 per class held out for validation


# ---------------------------------------------------------------- run ids and folders

@pytest.mark.parametrize("bad, words", [
    ("x" * 5000, "at most 80 characters"), ("..", "is not a run id"), ("../etc", "is not a run id"),
    ("/etc/passwd", "is not a run id"), (7, "must be text"), (["a"], "must be text"), ("", "no run id"),
    ("Run ID", "is not a run id"),
])
def test_run_ids_are_checked(tmp_path, bad, words):
    with pytest.raises(runfolder.RunIdError, match=words):
        runfolder.resolve(tmp_path, bad)


def test_new_run_ids_are_unguessable_and_sanitised(tmp_path):
    a, b = runfolder.new_run_id("../../evil name"), runfolder.new_run_id("../../evil name")
    assert a != b and a.startswith("evil-name-") and len(a.rsplit("-", 1)[1]) == 16
    assert runfolder.resolve(tmp_path, a).parent == tmp_path.resolve()


def test_retention_deletes_the_oldest_finished_runs_first(tmp_path):
    ids = []
    for i in range(5):
        folder = runfolder.RunFolder(tmp_path / f"run-{i}")
        folder.write_results({"status": "finished"})
        ids.append(folder.id)
        time.sleep(0.02)
    (tmp_path / "shipped-notes").mkdir()  # not a run folder (no results.json): never touched
    removed = runfolder.enforce_retention(tmp_path, runfolder.Retention(max_runs=2), protect={"run-0"})
    assert removed == ["run-1", "run-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-0", "run-3", "run-4", "shipped-notes"]


def test_loss_series_stay_bounded_and_keep_the_mean():
    s = LossSeries(max_points=100)
    for step in range(1, 100_001):
        s.add(step, step / 100, "KD", {"total": float(step % 10), "kd": 1.0})
    d = s.to_dict()
    assert len(d["step"]) <= 100 and d["step"][-1] == 100_000
    assert all(v == 1.0 for v in d["losses"]["kd"])
    assert abs(sum(d["losses"]["total"]) / len(d["losses"]["total"]) - 4.5) < 0.05


# ---------------------------------------------------------------- sessions and ownership (handlers)

@pytest.fixture
def public_studio(tmp_path, monkeypatch):
    monkeypatch.setenv("INDISTILL_CACHE", str(tmp_path / "cache"))
    studio = ui.configure(runs_root=tmp_path / "runs", public=True, limits=Limits().changed(queue={"max_queue": 2}))
    yield studio
    for job in list(studio.manager.jobs.values()):
        job.cancel()
        job.thread.join(30)


def controls(**changes):
    cfg = preset("workshop").with_overrides(TINY)
    v = form.values_from(cfg, ui.studio().context(None))
    v.update(changes)
    return [v[k] for k in form.CONTROL_KEYS]


def wait_ended(manager, run_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = manager.get(run_id)
        if job is None or not job.live:
            return
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not end")


@pytest.mark.parametrize("stored", [None, "x", 42, {"secret": 5}, {"secret": "zz" * 16}, {"secret": "a" * 32, "run": ["x"]},
                                    {"secret": "a" * 32, "run": "../../etc"}, {"secret": "a" * 32, "upload": "/etc"}])
def test_a_forged_browser_session_gets_a_fresh_or_cleaned_one(public_studio, stored):
    from app.ui.sessions import SECRET
    s = ui.session_of(stored)
    assert SECRET.match(s["secret"]) and s["run"] is None and s["upload"] is None


def test_one_live_run_per_session_and_a_bounded_queue(public_studio):
    a, _, msg = ui.start(None, *controls(student_epochs=40))
    assert a["run"] and "Started" in msg
    _, _, msg = ui.start(a, *controls())
    assert "one live run per session" in msg
    # settings of their own (the same settings as a live run would join it: tests/test_queue.py)
    b, _, _ = ui.start(None, *controls(student_epochs=2))
    c, _, _ = ui.start(None, *controls(student_epochs=3))
    _, _, msg = ui.start(None, *controls(student_epochs=4))
    assert "queue is full" in msg and "limit is 2" in msg
    status = ui.tick_status(c, None)[0]
    assert "position 2 in the queue" in status and "estimated wait" in status
    for s in (a, b, c):
        ui.cancel(s)
    public_studio.manager.get(c["run"]).thread.join(10)
    # cancelled while queued: its folder says so, so retention can remove it like any ended run
    folder = runfolder.RunFolder(public_studio.runs_root / c["run"])
    assert folder.read_results()["status"] == "cancelled"


def test_another_session_can_neither_follow_nor_cancel_a_live_run(public_studio):
    a, _, _ = ui.start(None, *controls(student_epochs=40))
    b = ui.session_of(None)
    b2, _, msg = ui.open_run(b, a["run"])
    assert "belongs to another session" in msg and b2["run"] is None
    assert ui.cancel({**b, "run": a["run"]}).startswith("Nothing to cancel")
    assert ui.status_dict({**b, "run": a["run"]})["state"] is None
    assert ui.results_of({**b, "run": a["run"]}) == {}
    # the live run's uploaded dataset stays while the run lives: no new upload replaces it
    _, msg, _ = ui.upload_dataset(a, str(Path(__file__)))
    assert "your run is queued or training on your uploaded dataset" in msg
    assert "Cancelling" in ui.cancel(a)
    wait_ended(public_studio.manager, a["run"])
    b3, _, msg = ui.open_run(b, a["run"])
    assert b3["run"] == a["run"] and "read-only" in msg
    assert ui.status_dict(b3)["state"] == "cancelled" and ui.status_dict(b3)["read_only"]


def test_a_public_visitor_cannot_use_a_server_path_through_import(public_studio, tmp_path):
    cfg = preset("workshop").with_overrides({"data.data_dir": "/etc"}).to_dict()
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    assert "server paths are not accepted" in ui.import_config(None, str(path))[-1]


# ---------------------------------------------------------------- bounded memory

def test_the_job_table_is_bounded_and_finished_jobs_drop_their_data(tmp_path, monkeypatch):
    monkeypatch.setenv("INDISTILL_CACHE", str(tmp_path / "cache"))
    manager = JobManager(1, tmp_path / "runs", max_kept=2)
    cfg = preset("workshop").with_overrides({**TINY, "phases.kd": False, "phases.indistill": False,
                                             "eval.retrieval": False, "eval.info_flow": False})
    jobs = []
    for _ in range(4):
        job = manager.submit(cfg)
        job.thread.join(120)
        jobs.append(job)
    assert [j.state for j in jobs] == ["finished"] * 4
    assert len(manager.jobs) == 2 and list(manager.jobs) == [j.id for j in jobs[-2:]]
    assert all(not hasattr(j.experiment, "data") for j in jobs)
    assert manager.load_results(jobs[0].id)["status"] == "finished"  # evicted from memory, still on disk


# ---------------------------------------------------------------- the scripting API, two clients

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """MCP is off on a public server unless turned on: turned on here to test it."""
    with served_app(tmp_path_factory) as (url, _, runs):
        yield url, runs


def poll_until_ended(client, key, run, timeout=180) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.predict(key, run, api_name="/status")
        if status["state"] not in ("queued", "running"):
            return status
        time.sleep(0.5)
    raise AssertionError("run did not end")


def test_a_public_server_sends_no_usage_analytics(server):
    import urllib.request as rq
    config = json.loads(rq.urlopen(f"{server[0]}config").read())
    assert config["analytics_enabled"] is False


def test_two_clients_through_the_api(server):
    """The API keeps nothing between calls: a session is the key /start returned; a live run is
    visible and cancellable only with its own key, an ended one readable by anyone with its id."""
    from gradio_client import Client
    url, runs = server
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    api = a.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(api) == {"/start", "/cancel", "/status", "/retrieve"}

    long_run = a.predict("workshop", json.dumps({**TINY, "student.epochs": 60}), "", api_name="/start")
    key, run_id = long_run["session_key"], long_run["run"]
    assert run_id and len(key) == 32 and long_run["state"] in ("queued", "running")
    stranger = b.predict("", run_id, api_name="/status")
    assert stranger["state"] is None and "belongs to another session" in stranger["message"]
    other_key = b.predict("workshop", "{not json", "", api_name="/start")
    assert other_key["run"] is None and "must be a JSON object" in other_key["message"]
    from app.ui.api import issue_key
    b_key = issue_key()  # another session's valid key (this test's server runs in this process)
    assert b.predict(b_key, run_id, api_name="/cancel")["message"].startswith("Nothing to cancel")
    assert b.predict(b_key, "", api_name="/status")["state"] is None  # b's key has no live run
    # keys are the server's to make: a made-up one, a path, or a's key with a newline are refused
    for forged in ("0" * 32, "../../etc", key + "\n", key[:16] + "0" * 16):
        assert "a start call on this server returned" in b.predict(forged, run_id, api_name="/cancel")["message"]
        assert b.predict(forged, run_id, api_name="/status")["state"] is None
    forged_start = b.predict("workshop", json.dumps(TINY), key + "\n", api_name="/start")
    assert forged_start["run"] is None and forged_start["session_key"] is None
    assert "preset_name must be one of workshop" in b.predict("x" * 100_000, "", "", api_name="/start")["message"]
    assert a.predict(key, "", api_name="/status")["run"] == run_id   # empty run_id: the key's live run
    # a second run while the first is live is refused by the one-live-run rule, through the same checks
    again = a.predict("workshop", json.dumps(TINY), key, api_name="/start")
    assert again["run"] is None and "one live run per session" in again["message"]
    # run files are not served by Gradio's file route
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{url}gradio_api/file={runs.resolve() / run_id / 'config.json'}")
    assert err.value.code == 403
    assert "Cancelling" in a.predict(key, run_id, api_name="/cancel")["message"]
    assert poll_until_ended(a, key, run_id)["state"] == "cancelled"

    short = a.predict("workshop", json.dumps(TINY), key, api_name="/start")
    assert short["session_key"] == key
    done = poll_until_ended(a, key, short["run"])
    assert done["state"] == "finished" and set(done["results"]) == {"baseline", "kd", "indistill", "teacher"}
    opened = b.predict("", short["run"], api_name="/status")
    assert opened["read_only"] and opened["state"] == "finished"
    assert opened["results"]["kd"]["test_acc"] == done["results"]["kd"]["test_acc"]
    refused = a.predict("workshop", json.dumps({"student.epochs": 10000}), key, api_name="/start")
    assert refused["run"] is None and "public limit of 10 min" in refused["message"]
    from gradio_client import handle_file
    answer = b.predict(handle_file(str(ASSETS / "examples" / "cat.jpg")), 3, "cosine", short["run"], "",
                       api_name="/retrieve")
    assert "true class **cat**" in answer["message"] and len(answer["neighbours"]) >= 3


def test_agents_drive_the_same_api_as_mcp_tools(server):
    """With INDISTILL_MCP=1 the four endpoints are MCP tools whose descriptions state the public budget;
    an agent starts a run, follows it with its key, and a key-less agent cannot cancel it."""
    import asyncio
    pytest.importorskip("mcp")  # requirements-dev.txt installs it (requirements-mcp.txt)
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def agent() -> dict:
        async with streamablehttp_client(f"{server[0]}gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as mcp:
                await mcp.initialize()
                tools = {t.name: t for t in (await mcp.list_tools()).tools}

                async def call(name, **kw) -> dict:
                    # every answer is JSON text, /status (served without the queue) included
                    return json.loads((await mcp.call_tool(name, kw)).content[0].text)
                started = await call("start", preset_name="workshop", overrides=json.dumps(TINY), session_key="")
                refused = await call("start", preset_name="workshop", overrides='{"student.epochs": 10000}')
                from app.ui.api import issue_key
                stranger = await call("cancel", session_key=issue_key(), run_id=started["run"])
                for _ in range(240):
                    status = await call("status", session_key=started["session_key"], run_id=started["run"])
                    if status["state"] not in ("queued", "running"):
                        break
                    await asyncio.sleep(0.5)
                return {"tools": tools, "started": started, "refused": refused, "stranger": stranger, "status": status}

    out = asyncio.run(agent())
    assert set(out["tools"]) == {"start", "status", "cancel", "retrieve"}
    assert "at most 10 min" in out["tools"]["start"].description
    assert "session_key" in out["tools"]["status"].inputSchema["properties"]
    assert out["started"]["run"] and len(out["started"]["session_key"]) == 32
    assert out["refused"]["run"] is None and "public limit of 10 min" in out["refused"]["message"]
    assert out["stranger"]["message"].startswith("Nothing to cancel")
    assert out["status"]["state"] == "finished" and out["status"]["results"]["kd"]["test_acc"] is not None


def test_mcp_is_off_on_a_public_server_unless_turned_on(monkeypatch):
    from app.ui.main import mcp_wanted
    monkeypatch.delenv("INDISTILL_MCP", raising=False)
    assert mcp_wanted(public=True) is False
    monkeypatch.setenv("INDISTILL_MCP", "1")
    assert mcp_wanted(public=True) is True
    monkeypatch.setenv("INDISTILL_MCP", "0")
    assert mcp_wanted(public=False) is False


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` × ``height`` grey pixels and holds none (what a decompression bomb starts with)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_the_retrieve_endpoint_checks_pictures_before_anything_decodes_them(server, tmp_path):
    """/retrieve takes a file path, not a decoded image: the app's loader reads the header and refuses
    a 13,000 × 13,000 picture by its pixel limit, and a text file named .jpg, with its messages."""
    from gradio_client import Client, handle_file
    url, _ = server
    c = Client(url, verbose=False)
    big, text = tmp_path / "bomb.png", tmp_path / "note.jpg"
    big.write_bytes(png_header(13000, 13000))
    text.write_text("not a picture")
    answer = c.predict(handle_file(str(big)), 3, "cosine", "", "", api_name="/retrieve")
    assert "megapixel" in answer["message"] and answer["neighbours"] == []
    answer = c.predict(handle_file(str(text)), 3, "cosine", "", "", api_name="/retrieve")
    assert "not a readable picture" in answer["message"] and answer["neighbours"] == []


# ---------------------------------------------------------------- uploaded datasets

def zip_tree(tree, path):
    import zipfile
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted(tree.rglob("*")):
            if f.is_file():
                z.write(f, f"mydata/{f.relative_to(tree)}")
    return path


def test_an_uploaded_dataset_belongs_to_the_session_and_goes_with_it(public_studio, tmp_path):
    from conftest import make_image_folder
    tree = make_image_folder(tmp_path / "tree", classes=("ant", "bee"), per_class=8)
    archive = zip_tree(tree, tmp_path / "mine.zip")
    session, msg, radio = ui.upload_dataset(None, str(archive))
    assert "ready" in msg and radio["value"] == form.UPLOAD_LABEL and form.UPLOAD_LABEL in radio["choices"]
    upload = session["upload"]
    assert upload and ui.session_of(session)["upload"] == upload        # a stored upload path is kept …
    assert ui.session_of({**session, "upload": "/etc"})["upload"] is None  # … a forged one is not
    vals = dict(zip(form.CONTROL_KEYS, controls()))
    vals.update(dataset=form.UPLOAD_LABEL, teacher_weights=form.SCRATCH, teacher_epochs=1, train_per_class=0,
                test_per_class=0)
    session, _, msg = ui.start(session, *[vals[k] for k in form.CONTROL_KEYS])
    assert "Started" in msg, msg
    wait_ended(public_studio.manager, session["run"])
    results = ui.results_of(session)
    assert results["status"] == "finished" and results["data"]["classes"] == ["ant", "bee"]
    other = ui.session_of(None)   # another session cannot name this upload
    _, _, msg = ui.start(other, *[vals[k] for k in form.CONTROL_KEYS])
    assert "upload a dataset first" in msg
    ui.end_session(session)
    assert not Path(upload).exists()


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_text("not an archive"), "not a zip, tar.gz or tar archive"),
    (lambda p: zip_one_class(p), "2 to 100 classes"),
])
def test_a_bad_dataset_upload_is_refused_with_the_rule(public_studio, tmp_path, make, words):
    path = tmp_path / "bad.zip"
    make(path)
    session, msg, _ = ui.upload_dataset(None, str(path))
    assert msg.startswith("**Upload refused:**") and words in msg and session["upload"] is None


def test_a_full_upload_space_evicts_idle_datasets_first(public_studio, tmp_path, monkeypatch):
    """Issue 14's probe filled the space with idle uploads; a live visitor's upload then evicts the
    oldest idle ones (never one a live run uses) instead of being refused."""
    import os
    import time as _time
    from conftest import make_image_folder
    # an upload reserves what its headers declare
    public_studio.limits = public_studio.limits.changed(datasets={"total_bytes": 100 * 10 ** 6})
    uploads = public_studio.uploads
    old = []
    for i in range(3):                                              # three idle visitors, 60 MB each, oldest first
        home = uploads / f"{i:016x}" / "x"
        home.mkdir(parents=True)
        (home / "blob").write_bytes(b"\0" * 60 * 10 ** 6)
        os.utime(home.parent, (_time.time() - 1000 + i, _time.time() - 1000 + i))
        old.append(home.parent)
    tree = make_image_folder(tmp_path / "tree", classes=("ant", "bee"), per_class=4)
    session, msg, _ = ui.upload_dataset(None, str(zip_tree(tree, tmp_path / "mine.zip")))
    assert "ready" in msg, msg
    assert not old[0].exists() and not old[1].exists() and old[2].exists()   # the two oldest went, enough room


def test_files_that_are_not_pictures_take_no_upload_space(public_studio, tmp_path):
    """Zero-filled 'images' (within every per-archive limit) are dropped at extraction, not kept on disk."""
    from conftest import make_image_folder
    tree = make_image_folder(tmp_path / "tree", classes=("ant", "bee"), per_class=3)
    for i in range(5):
        (tree / "train" / "ant" / f"zero{i}.png").write_bytes(b"\0" * 2 * 10 ** 6)
    session, msg, _ = ui.upload_dataset(None, str(zip_tree(tree, tmp_path / "z.zip")))
    assert "ready" in msg, msg
    kept = list(Path(session["upload"]).rglob("*.png"))
    assert len(kept) == 12 and not any(p.name.startswith("zero") for p in kept)
    assert sum(p.stat().st_size for p in kept) < 10 ** 6


def zip_one_class(path):
    from conftest import make_image_folder
    return zip_tree(make_image_folder(path.parent / "one", classes=("cat",), per_class=2), path)


# ---------------------------------------------------------------- what an attacker tried (review findings)

def test_a_huge_auxiliary_teacher_is_refused_before_any_network_is_built(public_studio, monkeypatch):
    def no_planning(_cfg):
        raise AssertionError("planned (built networks) before the size caps were checked")
    from app.ui import runs
    monkeypatch.setattr(runs, "make_plan", no_planning)
    session, _, msg = ui.start(None, *controls(student="resnet18", aux="on", aux_width=7.77))
    assert "steps of 0.5" in msg and "M parameters, over the public limit of 25 M" in msg


def test_a_grid_is_estimated_cell_by_cell(public_studio):
    _, _, msg = ui.run_grid(None, "10,10,10,10,10,10", "5,5,5,5,5,5", 400, *controls(train_per_class=0))
    assert "Grid not started" in msg and "38 runs together are over the public budget" in msg
    _, _, msg = ui.run_grid(None, "10", "5", 4, *controls())
    assert "Grid not started" in msg and "leaves no KD epochs" in msg
    _, _, msg = ui.run_grid(None, "100", "0", 4, *controls())
    assert "a must be 0 to 10" in msg


def test_evaluation_cost_counts_even_with_almost_no_epochs():
    text = " ".join(refusals(**{"data.dataset": "cifar100", "data.data_dir": None, "student.epochs": 0.01,
                                "seeds": 5, "indistill.mode": "off"}))
    assert "public limit of 10 min" in text
    fits = text.split("what would fit", 1)[1]
    assert "seeds" in fits and "epochs" not in fits  # fewer epochs would not help: evaluation is the cost


def test_queued_work_is_capped(public_studio):
    from app.runner import Job
    m = public_studio.manager
    job = Job(preset("workshop").with_overrides(TINY), m.runs_root, m, estimate_s=public_studio.limits.budget.max_queue_minutes * 60 + 1)
    with pytest.raises(JobRefused, match="the limit is 120 min in all"):
        m.admit_and_add(job)


def test_compare_reuses_one_copy_per_run_version(public_studio):
    session, _, msg = ui.start(None, *controls())
    wait_ended(public_studio.manager, session["run"])
    first = ui.compare(session)[2]
    again = ui.compare(session)[2]
    assert first == again and len(first) >= 5
    assert len([p for p in public_studio.scratch.iterdir() if p.name.startswith("run-")]) == 1
    text = Path(first[0]).read_text()
    assert str(public_studio.runs_root) not in text and '"run_dir"' not in text


def test_retention_holds_each_owner_to_a_quota(tmp_path):
    for i in range(6):
        folder = runfolder.RunFolder(tmp_path / f"r-{i}")
        folder.write_results({"status": "finished"})
        folder.set_owner("a" * 32 if i < 4 else "b" * 32)
        time.sleep(0.02)
    removed = runfolder.enforce_retention(tmp_path, runfolder.Retention(max_per_owner=2))
    assert removed == ["r-0", "r-1"]  # the heavy owner's oldest, not the other owner's runs


@pytest.mark.parametrize("overrides, words", [
    ({"seeds": 1e999}, "seeds must be int"), ({"data.train_per_class": 1e999}, "must be int"),
    ({"eval.max_queries": -5}, "eval.max_queries must be in"), ({"student.epochs": float("nan")}, "student.epochs"),
])
def test_infinite_and_negative_numbers_get_messages(public_studio, overrides, words):
    out = ui.api_start("workshop", json.dumps(overrides))
    assert out["run"] is None and words in out["message"], out


def test_a_forged_upload_path_of_any_length_is_dropped(public_studio):
    assert ui.session_of({"secret": "0" * 32, "upload": "/" + "a" * 5000})["upload"] is None
