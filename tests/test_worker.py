"""Jobs trained in a worker process (app/worker.py): the same results as in a thread, every event
relayed to the job, cancel obeyed with finished units kept, a child's crash a failed job (the
server and its queue go on), no child left behind."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import pytest

from app import events as ev
from app import results as rs
from app.config import preset
from app.runfolder import RunFolder
from app.runner import Job, JobManager
from app.settings import SettingError
from app.worker import backend, ending

SMALL = {"student.epochs": 2, "data.train_per_class": 12, "data.test_per_class": 3, "indistill.a": 0.25,
         "indistill.b": 0.0, "eval.latency_runs": 2, "eval.info_batch": 32, "seeds": 1, "device": "cpu"}


@pytest.fixture
def small(cache_dir, monkeypatch):
    """The workshop preset, tiny; one training thread in both backends, so that results compare."""
    monkeypatch.setenv("INDISTILL_TRAIN_THREADS", "1")
    return lambda **more: preset("workshop").with_overrides(SMALL | {"data.cache_dir": str(cache_dir)} | more)


def no_child_left() -> bool:
    return multiprocessing.active_children() == []


def unit_figures(results: dict) -> dict:
    return {key.name: (unit["test_acc"], unit["correct"]) for key, unit in rs.units(results)}


def test_the_backend_follows_the_setting_and_public_mode():
    assert backend({"INDISTILL_WORKER": "thread", "INDISTILL_PUBLIC": "1"}) == "thread"
    assert backend({"INDISTILL_WORKER": "Process"}) == "process"
    assert backend({"INDISTILL_PUBLIC": "1"}) == "process" and backend({}) == "thread"
    with pytest.raises(SettingError, match="INDISTILL_WORKER='fork' is not one of process, thread"):
        backend({"INDISTILL_WORKER": "fork"})


def test_how_a_child_ended_is_said_in_words():
    assert ending(-signal.SIGKILL) == "it was killed by SIGKILL (the system ran out of memory?)"
    assert ending(-signal.SIGSEGV) == "it was killed by SIGSEGV"
    assert ending(3) == "it exited with code 3"


def test_a_run_in_a_worker_process_equals_the_same_run_in_a_thread(small, tmp_path):
    manager = JobManager(1, tmp_path)
    jobs = {}
    for where in ("thread", "process"):
        jobs[where] = manager.submit(small(), backend=where)
        jobs[where].thread.join(300)
    thread, process = (jobs[w].snapshot() for w in ("thread", "process"))
    assert thread["state"] == process["state"] == "finished"
    on_disk = {w: RunFolder(j.run_dir).read_results() for w, j in jobs.items()}
    assert unit_figures(on_disk["process"]) == unit_figures(on_disk["thread"])
    assert set(unit_figures(on_disk["process"])) == {"teacher", "baseline-s0", "kd-s0", "indistill-s0"}
    # every event reached the job: the log from PhaseStarted to Finished, curves, progress, the record
    log = process["log"]
    assert log[0].startswith("training in worker process") and log[-1].startswith("finished — run")
    units = [[line.rsplit(" in ", 1)[0] for line in snap["log"] if line.startswith(("▶", "✔"))]  # less the seconds
             for snap in (process, thread)]
    assert units[0] == units[1] and len(units[0]) == 7
    assert process["steps_done"] == process["steps_total"] == thread["steps_total"] > 0
    assert process["series"]["indistill/0"]["step"] == thread["series"]["indistill/0"]["step"]
    assert process["segments"] == thread["segments"] and process["channel_maps"] == thread["channel_maps"]
    assert process["data"] == thread["data"]
    accuracy = [{phase: r["test_acc"] for phase, r in snap["results"].items()} for snap in (process, thread)]
    assert accuracy[0] == accuracy[1]
    assert jobs["process"].experiment.exitcode == 0 and no_child_left()


def test_cancel_stops_the_worker_and_keeps_the_finished_units(small, tmp_path):
    """Cancelled once the baseline is recorded: the KD arm (300 steps) stops within a few steps."""
    job = Job(small(**{"student.epochs": 20, "optim.batch_size": 8}), tmp_path, backend="process")
    run, at = job.experiment, {}

    def emit(e: ev.Event) -> None:
        job.apply(e)
        if isinstance(e, ev.PhaseResult) and e.phase == "baseline":
            at["done"] = run.done_steps
            job.cancel()
    run.emit = emit
    job.start().thread.join(300)
    assert job.state == "cancelled" and "done" in at
    assert run.done_steps - at["done"] < 60 < run.total_steps - at["done"]   # far from the arm's 300 steps
    on_disk = RunFolder(job.run_dir).read_results()
    assert on_disk["status"] == "cancelled" and {"teacher", "baseline"} <= set(on_disk["phases"])
    assert "kd" not in on_disk["phases"]
    assert job.log[-1].startswith("cancelled during kd") and no_child_left()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSEGV])
def test_a_worker_that_dies_fails_its_job_and_the_next_job_runs(small, tmp_path, how):
    manager = JobManager(1, tmp_path)
    started = threading.Event()
    job = Job(small(**{"student.epochs": 20, "optim.batch_size": 8}), tmp_path, manager, backend="process")
    run = job.experiment

    def emit(e: ev.Event) -> None:
        job.apply(e)
        if isinstance(e, ev.PhaseStarted) and e.phase == "baseline":
            os.kill(run.pid, how)   # as the kernel's out-of-memory killer, or a segfault, would
            started.set()
    run.emit = emit
    manager.admit_and_add(job).thread.join(300)
    snap = job.snapshot()
    assert started.is_set() and snap["state"] == "failed"
    assert snap["error"] == f"the training process ended without a result: {ending(-how)}"
    assert RunFolder(job.run_dir).read_results()["status"] == "failed"
    if how == signal.SIGKILL:   # the server goes on: the next job trains and finishes
        nxt = manager.submit(small(), backend="process")
        nxt.thread.join(300)
        assert nxt.snapshot()["state"] == "finished"
    assert no_child_left()
