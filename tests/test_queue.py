"""The queue of a class on one server: identical runs joined, visitors served in turn, caps per
client address (whatever session keys it mints), queued work that cannot run away, retention
without a scan per job, and API answers that parse as JSON over every transport.

Training is stood in for by :class:`HeldTraining`: each run blocks until the test lets it go,
so the scheduler is tested by what starts when, not by timing."""
from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

from app import runfolder
from app.config import preset
from app.limits import Limits
from app.experiment import Experiment
from app.runner import Job, JobManager
from app.ui import form
from app.ui import handlers as ui
from conftest import served_app

TINY = {"budget": "added", "student.epochs": 0.5, "data.train_per_class": 12, "data.test_per_class": 3, "indistill.a": 0.25,
        "indistill.b": 0.0, "eval.latency_runs": 2, "eval.info_batch": 32, "seeds": 1}


class HeldTraining:
    """Stands in for ``Experiment.run``: records the order runs start and blocks each one until
    :meth:`finish` lets it go (or it is cancelled)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, threading.Event] = {}
        self.cond = threading.Condition()

    def gate(self, run_id: str) -> threading.Event:
        with self.cond:
            return self.gates.setdefault(run_id, threading.Event())

    def run(self, exp: Experiment) -> dict:
        gate = self.gate(exp.run_dir.name)
        with self.cond:
            self.started.append(exp.run_dir.name)
            self.cond.notify_all()
        while not gate.wait(0.02) and not exp.cancel.is_set():
            pass
        return {}

    def wait_started(self, count: int, timeout: float = 20) -> list[str]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.started) >= count, timeout), self.started
            return list(self.started)

    def finish(self, run_id: str) -> None:
        self.gate(run_id).set()


@pytest.fixture
def held(monkeypatch):
    training = HeldTraining()
    monkeypatch.setattr(Experiment, "run", lambda exp: training.run(exp))
    return training


@pytest.fixture
def public_studio(tmp_path, monkeypatch):
    monkeypatch.setenv("INDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("INDISTILL_TRUST_PROXY", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    studio = ui.configure(runs_root=tmp_path / "runs", public=True, limits=Limits().changed(queue={"max_queue": 10}),
                          sharing=True)
    yield studio
    stop_all(studio.manager)


def stop_all(manager: JobManager) -> None:
    for job in list(manager.jobs.values()):
        job.cancel()
    for job in list(manager.jobs.values()):
        job.thread.join(30)


def request_from(address: str):
    """What Gradio hands a handler: the client's socket address."""
    return SimpleNamespace(client=SimpleNamespace(host=address), headers={})


def controls(**changes):
    cfg = preset("workshop").with_overrides(TINY)
    v = form.values_from(cfg, ui.studio().context(None))
    v.update(changes)
    return [v[k] for k in form.CONTROL_KEYS]


def wait_until(predicate, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


# ---------------------------------------------------------------- joining

def test_identical_starts_join_one_run_and_each_follower_leaves_only_itself(public_studio, held):
    manager = public_studio.manager
    owner, _, started = ui.start(None, *controls(), request=request_from("10.0.0.1"))
    assert started.startswith("Started run")
    follower, _, joined = ui.start(None, *controls(), request=request_from("10.0.0.2"))
    third, _, _ = ui.start(None, *controls(), request=request_from("10.0.0.3"))
    assert follower["run"] == third["run"] == owner["run"] and len(manager.jobs) == 1
    assert joined.startswith(f"Joined run `{owner['run']}`: the same settings were already") and \
        "started by another visitor" in joined
    # the follower sees the same live run; its status line says it joined, the owner's does not
    status = ui.tick_status(follower, None)[0]
    assert owner["run"] in status and "joined: the same settings were already queued or training" in status
    assert "joined:" not in ui.tick_status(owner, None)[0]
    assert ui.status_dict(follower)["joined"] and not ui.status_dict(owner)["joined"]
    # a stranger still cannot follow or cancel it
    stranger = {**ui.session_of(None), "run": owner["run"]}
    assert ui.status_dict(stranger)["state"] is None
    assert ui.cancel(stranger).startswith("Nothing to cancel")
    job = manager.get(owner["run"])
    # a follower's cancel removes its own following only; so does the owner's while others follow
    assert "it goes on for the 2 other visitors" in ui.cancel(follower) and job.live
    assert ui.cancel(follower).startswith("You no longer follow")
    assert "it goes on for the 1 other visitor" in ui.cancel(owner) and job.live
    assert not job.cancel_event.is_set()
    # the last one to leave stops it
    assert ui.cancel(third).startswith("Cancelling run")
    job.thread.join(20)
    assert job.state == "cancelled"


def test_a_run_the_owner_left_stops_counting_for_its_address_and_a_closed_tab_leaves(public_studio, held):
    """The owner's Cancel while a visitor follows: the run goes on for the follower but no longer spends the
    owner address's live-run cap; the follower's tab closing (session end) leaves it, and a run nobody
    follows stops."""
    manager = public_studio.manager
    owner, _, _ = ui.start(None, *controls(), request=request_from("10.0.0.1"))
    follower, _, joined = ui.start(None, *controls(), request=request_from("10.0.0.2"))
    job = manager.get(owner["run"])
    assert joined.startswith("Joined") and job.address is not None
    ui.cancel(owner)
    assert job.live and job.address is None
    ui.end_session(follower)
    assert job.cancel_event.is_set()
    job.thread.join(20)
    assert job.state == "cancelled"


def test_the_last_leave_stops_the_run_before_anyone_can_join_it(public_studio, held):
    """No Start lands in a run being stopped: once its last follower leaves, an identical Start starts anew."""
    manager = public_studio.manager
    owner, _, _ = ui.start(None, *controls(), request=request_from("10.0.0.1"))
    first = manager.get(owner["run"])
    manager.leave(first, ui.owner(owner))
    again, _, message = ui.start(None, *controls(), request=request_from("10.0.0.2"))
    assert message.startswith("Started run") and again["run"] != first.id


def test_a_joined_run_costs_no_queue_and_a_session_holds_one_live_run(public_studio, held):
    public_studio.manager.max_queue = 1
    first, _, _ = ui.start(None, *controls(student_epochs=1), request=request_from("10.0.0.1"))
    second, _, msg = ui.start(None, *controls(student_epochs=2), request=request_from("10.0.0.2"))
    assert "Started" in msg                                   # queued behind the first: the queue is full now
    _, _, msg = ui.start(None, *controls(student_epochs=3), request=request_from("10.0.0.3"))
    assert "queue is full" in msg and "limit is 1" in msg
    joined, _, msg = ui.start(None, *controls(student_epochs=2), request=request_from("10.0.0.3"))
    assert msg.startswith("Joined run") and joined["run"] == second["run"]   # following is not capped
    _, _, msg = ui.start(joined, *controls(student_epochs=1))
    assert "one live run per session: the run you joined," in msg


def test_runs_on_uploaded_data_are_never_joined(public_studio, held, tmp_path):
    from test_public import zip_tree
    from conftest import make_image_folder
    archive = zip_tree(make_image_folder(tmp_path / "tree", classes=("ant", "bee"), per_class=4), tmp_path / "d.zip")
    vals = dict(zip(form.CONTROL_KEYS, controls()))
    vals.update(dataset=form.UPLOAD_LABEL, train_per_class=0, test_per_class=0)
    sessions = []
    for _ in range(2):
        session, msg, _ = ui.upload_dataset(None, str(archive))
        assert "ready" in msg, msg
        session, _, msg = ui.start(session, *[vals[k] for k in form.CONTROL_KEYS])
        assert msg.startswith("Started run"), msg
        sessions.append(session)
    assert sessions[0]["run"] != sessions[1]["run"]


# ---------------------------------------------------------------- the fair queue

def test_visitors_are_served_in_turn_and_the_queue_shows_that_order(public_studio, held):
    public_studio.manager.max_live_per_address = 5
    a = [ui.start(None, *controls(student_epochs=e), request=request_from("10.0.0.1"))[0] for e in (1, 2, 3)]
    b, _, _ = ui.start(None, *controls(student_epochs=4), request=request_from("10.0.0.2"))
    assert held.wait_started(1) == [a[0]["run"]]
    # B came last but has not been served: B's run is next, then A's others in their order
    places = {s["run"]: ui.status_dict(s)["queue_position"] for s in (a[1], a[2], b)}
    assert places == {b["run"]: 1, a[1]["run"]: 2, a[2]["run"]: 3}
    assert "position 1 in the queue" in ui.tick_status(b, None)[0]
    assert "position 3 in the queue" in ui.tick_status(a[2], None)[0]
    for i, expected in enumerate((b, a[1], a[2]), start=2):
        held.finish(held.started[-1])
        assert held.wait_started(i)[-1] == expected["run"]


# ---------------------------------------------------------------- caps per address

def test_one_address_minting_keys_gets_no_more_than_the_address_cap(public_studio, held):
    """50 fresh sessions from one address: two live runs, then refusals naming the cap; another
    address is still served."""
    answers = [ui.start(None, *controls(student_epochs=1 + i / 10), request=request_from("10.0.0.9"))[2]
               for i in range(50)]
    assert sum(a.startswith("Started run") for a in answers) == 2
    refused = [a for a in answers if a.startswith("Not started")]
    assert len(refused) == 48 and all("the limit per address is 2" in a for a in refused)
    _, _, msg = ui.start(None, *controls(student_epochs=9), request=request_from("10.0.0.10"))
    assert msg.startswith("Started run")


def test_queued_work_per_address_is_capped(tmp_path, held):
    manager = JobManager(1, tmp_path, max_queue_s_per_address=20 * 60)
    cfg = preset("workshop").with_overrides(TINY)
    manager.submit(cfg, owner="a", address="x", estimate_s=12 * 60)
    with pytest.raises(ValueError, match="adds 9.0 min; the limit per address is 20 min"):
        manager.submit(cfg, owner="b", address="x", estimate_s=9 * 60)
    assert manager.submit(cfg, owner="c", address="y", estimate_s=9 * 60).live
    stop_all(manager)


def test_a_running_job_counts_at_most_what_its_limit_leaves(tmp_path, held):
    """A start/cancel flood once made the running job's extrapolated ETA 1,586 min and closed the queue."""
    manager = JobManager(1, tmp_path, max_queue_s=20 * 60)
    cfg = preset("workshop").with_overrides(TINY)
    job = manager.submit(cfg, owner="a", limit_s=600)
    held.wait_started(1)
    job.started = time.time() - 100
    job.experiment.done_steps, job.experiment.total_steps = 1, 10 ** 6   # extrapolates to ~3 years
    assert 495 <= job.remaining_s() <= 500                             # what the 10-min limit leaves
    job.estimate_s = 160
    assert 55 <= job.remaining_s() <= 60                               # what the admitted estimate leaves
    job.estimate_s = 60
    assert job.remaining_s() == 0.0                                    # never below zero
    assert manager.submit(cfg, owner="b", estimate_s=15 * 60).live     # the queue stays open
    stop_all(manager)


# ---------------------------------------------------------------- retention without a scan

def test_job_ended_keeps_retention_without_scanning_the_runs_folder(tmp_path, held, monkeypatch):
    scans = []
    scan = runfolder.scan_runs
    monkeypatch.setattr(runfolder, "scan_runs", lambda *a, **k: scans.append(1) or scan(*a, **k))
    manager = JobManager(1, tmp_path, retention=runfolder.Retention(max_per_owner=20, max_per_address=2))
    cfg = preset("workshop").with_overrides(TINY)
    ids = []
    for i in range(4):   # four sessions of one address, one after another
        job = manager.submit(cfg, owner=f"o{i}", address="x")
        job.run_dir.mkdir(parents=True)
        runfolder.RunFolder(job.run_dir).set_owner(f"{i:032x}", "x")
        held.finish(job.id)
        job.thread.join(20)
        ids.append(job.id)
    assert len(scans) == 1                                   # read once, then kept in memory
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ids[-2:])   # the address's two newest


def test_a_run_cancelled_in_the_queue_ends_without_a_full_collection(tmp_path, held, monkeypatch):
    """gc.collect on the server's heap takes ~0.5 s of CPU: a start + cancel flood must not pay it per job."""
    import app.runner as runner
    collections = []
    monkeypatch.setattr(runner, "return_memory", lambda: collections.append(1))
    manager = JobManager(1, tmp_path)
    cfg = preset("workshop").with_overrides(TINY)
    first = manager.submit(cfg, owner="a")
    held.wait_started(1)
    for i in range(5):
        job = manager.submit(cfg, owner=f"b{i}")
        job.cancel()
        job.thread.join(10)
        assert job.state == "cancelled" and not job.thread.is_alive()
    assert collections == []
    held.finish(first.id)
    first.thread.join(10)
    assert collections == [1]                     # the run that trained hands its memory back


def test_a_run_folder_read_while_missing_or_removed_is_empty(tmp_path):
    folder = runfolder.RunFolder(tmp_path / "gone-20260101-000000-0123456789abcdef")
    assert folder.student_checkpoints() == [] and folder.size_bytes() == 0
    index = runfolder.RunIndex(tmp_path, runfolder.Retention())
    assert index.ended(folder.path) == []


# ---------------------------------------------------------------- over HTTP and MCP

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with served_app(tmp_path_factory, INDISTILL_TRUST_PROXY=None, SPACE_ID=None) as (url, _, _):
        yield url


def call(http, name: str, *data) -> dict:
    """A queued endpoint over plain HTTP: join, then read the event stream's answer (JSON)."""
    event = http.post(f"gradio_api/call/{name}", json={"data": list(data)}).json()["event_id"]
    kind = None
    with http.stream("GET", f"gradio_api/call/{name}/{event}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind == "complete":
                return json.loads(line[5:])[0]
    raise AssertionError(f"/{name}: no answer")


def test_minting_keys_over_http_gets_no_more_than_the_address_cap(server, tmp_path, held):
    """One client calling /start with empty keys 50 times (each a new session): two runs, the rest
    refused naming the cap; answers are JSON objects over plain HTTP."""
    import httpx
    ui.configure(runs_root=tmp_path / "runs", public=True)
    with httpx.Client(base_url=server, timeout=60) as http:
        answers = [call(http, "start", "workshop", json.dumps({**TINY, "student.epochs": 1 + i / 10}), "")
                   for i in range(50)]
        assert all(isinstance(a, dict) for a in answers)
        started = [a for a in answers if a["run"]]
        assert len(started) == 2 and len({a["session_key"] for a in started}) == 2
        assert all("the limit per address is 2" in a["message"] for a in answers if not a["run"])
        again = call(http, "start", "workshop", json.dumps({**TINY, "student.epochs": 1}), "")
        assert again["joined"] and again["run"] == started[0]["run"] and "Joined run" in again["message"]
        polled = http.post("gradio_api/run/status", json={"data": [started[0]["session_key"], ""]}).json()
        assert polled["data"][0]["run"] == started[0]["run"]
    stop_all(ui.studio().manager)


def test_mcp_answers_parse_as_json(server, tmp_path, held):
    import asyncio
    pytest.importorskip("mcp")
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client
    ui.configure(runs_root=tmp_path / "runs", public=True)

    async def agent() -> dict:
        async with streamablehttp_client(f"{server}gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as mcp:
                await mcp.initialize()

                async def ask(name, **kw) -> dict:
                    return json.loads((await mcp.call_tool(name, kw)).content[0].text)
                started = await ask("start", preset_name="workshop", overrides=json.dumps(TINY), session_key="")
                status = await ask("status", session_key=started["session_key"], run_id=started["run"])  # no queue
                cancelled = await ask("cancel", session_key=started["session_key"], run_id=started["run"])
                return {"started": started, "status": status, "cancelled": cancelled}

    out = asyncio.run(agent())
    assert out["started"]["run"] and out["status"]["run"] == out["started"]["run"]
    assert out["status"]["state"] in ("queued", "running") and out["status"]["read_only"] is False
    assert out["cancelled"]["message"].startswith("Cancelling run")
    stop_all(ui.studio().manager)
