"""Training in a worker process: a job's experiment runs in a child process, so the server's
interpreter (its GIL) and its pages do not share a core with the training, a crash of the
training (an exception, a segfault, the kernel's out-of-memory kill) cannot take the server
down, and the training's memory goes back to the system when the child ends.

:class:`JobSpec` says what a job runs in picklable terms (the configuration as a dict, the run
folder, resume, the grid's values, the unit store's root and scope); :meth:`JobSpec.build` makes
the :class:`~app.experiment.Experiment` or :class:`~app.grid.CurriculumGrid` from it, in the
server (a thread job) or in the child. :class:`WorkerRun` stands where that object stands for
:class:`app.runner.Job` (``cfg``, ``run_dir``, ``cells``, ``results``, ``done_steps``,
``total_steps``, ``run()``, ``release()``): its ``run()`` starts the child and relays what the
child sends — every engine event, in order, with the progress counts (:class:`Message`) — to
the job, and forwards the job's cancel. :func:`backend` reads ``INDISTILL_WORKER``.

Children come from a fork server (``forkserver``, never a plain fork of the threaded server)
that imports torch and the engine once (:func:`prestart`): a child starts in a fraction of a
second instead of paying the ~4 s import at every Start. Like every multiprocessing child, it
imports the server's entry script again, so that script keeps its heavy imports under
``if __name__ == "__main__"``.

Cancel: the job's cancel sets the child's multiprocessing Event and sends SIGTERM (the child
treats both as a cancel, so finished units are kept); a child still there after
:data:`GRACE_S` is killed. A child that ends without a last event (killed, crashed) becomes a
``Failed`` event naming how it ended (or ``Cancelled`` when a cancel was asked).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, NamedTuple

from . import events as ev
from . import runfolder, settings

BACKENDS = ("process", "thread")
GRACE_S = 10.0      # a cancelled child still running after this is killed
FLUSH_S = 0.2       # training steps' events and progress reach the server at least this often
POLL_S = 0.1        # how often the relay looks at the job's cancel while no message comes
ENDINGS = (ev.Finished, ev.Failed, ev.Cancelled)
# what the fork server imports once for every child: the engine, and torch's compiler stack, which the
# first FLOP count imports (~1 s a run otherwise: a tiny run took 2.3 s in a child, 1.3 s in a thread)
PRELOAD = ["app.worker", "app.experiment", "app.grid", "app.unitstore", "torch._dynamo", "torch.utils.flop_counter"]


def backend(env=None) -> str:
    """Where a job trains: ``INDISTILL_WORKER`` (process | thread); unset: a worker process in
    public mode, a thread of the server locally."""
    value = settings.read("INDISTILL_WORKER", env)
    if value is None:
        return "process" if settings.public(env) else "thread"
    if value.lower() not in BACKENDS:
        raise settings.SettingError(f"INDISTILL_WORKER={value!r} is not one of {', '.join(BACKENDS)}: it says where "
                                    "a run trains; unset it for the default (process in public mode, else thread)")
    return value.lower()


@dataclass(frozen=True)
class JobSpec:
    """A job in picklable terms: what a child needs to build the same run as the server would."""

    config: dict | None                       # ExperimentConfig.to_dict(); None: resume from the folder's
    run_dir: str                              # as the server names it (the child works in ``cwd``)
    resume: bool = False
    grid: tuple[list[float], list[float]] | None = None
    store_root: str | None = None             # the unit store (sharing on), recreated in the child
    store_caps: dict = field(default_factory=dict)
    scope: str | None = None
    cwd: str = field(default_factory=os.getcwd)   # relative paths in a configuration are read from here
    env: dict = field(default_factory=lambda: dict(os.environ))

    @classmethod
    def of(cls, cfg, runs_root: str | Path, resume_dir: str | Path | None = None,
           grid: tuple[list[float], list[float]] | None = None, store: Any = None,
           scope: str | None = None) -> "JobSpec":
        """The spec of a job as :class:`app.runner.Job` takes it (its run folder chosen now)."""
        if resume_dir is not None:
            return cls(None, str(resume_dir), resume=True)
        name = f"grid-{cfg.name}" if grid is not None else cfg.name
        run_dir = Path(runs_root) / runfolder.new_run_id(name)
        if grid is not None:
            return cls(cfg.to_dict(), str(run_dir), grid=(list(grid[0]), list(grid[1])))
        caps = {"max_entries": store.max_entries, "max_bytes": store.max_bytes} if store is not None else {}
        root = None if store is None else str(store.root)
        return cls(cfg.to_dict(), str(run_dir), store_root=root, store_caps=caps, scope=scope)

    def build(self, emit: Callable[[ev.Event], None] | None = None, cancel: Any = None, store: Any = None):
        """The Experiment or CurriculumGrid this spec names; ``store``: the server's own unit store
        (a thread job), else one on ``store_root`` is made."""
        from .config import ExperimentConfig
        from .experiment import Experiment
        from .grid import CurriculumGrid
        cfg = None if self.config is None else ExperimentConfig.from_dict(self.config)
        if self.grid is not None:
            return CurriculumGrid(cfg, self.grid[0], self.grid[1], self.run_dir, emit=emit, cancel=cancel)
        if self.resume:
            return Experiment(None, self.run_dir, emit=emit, cancel=cancel, resume=True)
        if store is None and self.store_root is not None:
            from .unitstore import UnitStore
            store = UnitStore(self.store_root, **self.store_caps)
        shared = {"store": store, "scope": self.scope} if store is not None else {}
        return Experiment(cfg, self.run_dir, emit=emit, cancel=cancel, **shared)


class Message(NamedTuple):
    """What a child sends: events in the order emitted, the progress counts after them, and the
    run's record when it changed in a way the job reads (after a unit's result; once the data is
    known) — None otherwise (``Finished`` carries its own)."""

    events: list
    done: int
    total: int
    results: dict | None = None


# ---------------------------------------------------------------- the child

class ChildCancel:
    """The child's cancel, as the engine checks it (``is_set()``): the parent's multiprocessing
    Event, or a SIGTERM (the handler only sets a flag: taking the Event's lock inside a signal
    handler could deadlock with the check it interrupted), or the server gone."""

    def __init__(self, event) -> None:
        self.event, self.flag = event, False

    def is_set(self) -> bool:
        return self.flag or self.event.is_set()

    def set(self) -> None:
        self.flag = True

    def on_signal(self, *_) -> None:
        self.flag = True


class Outbox:
    """The child's end of the pipe: other events go out at once (with the record when the job
    reads it), training steps' events at most :data:`FLUSH_S` later (a heartbeat thread also sends
    the progress counts), all under one lock so that messages stay whole and in order."""

    def __init__(self, conn: Connection, cancel: ChildCancel) -> None:
        self.conn, self.cancel = conn, cancel
        self.lock = threading.Lock()
        self.steps: list[ev.StepLoss] = []
        self.run: Any = None
        self.ended = False
        self.data_sent = False
        self.closed = threading.Event()

    def progress(self) -> tuple[int, int]:
        run = self.run
        return (run.done_steps, run.total_steps) if run is not None else (0, 0)

    def _send(self, events: list, results: dict | None = None) -> None:
        """Under the lock: one message (a server gone cancels the run)."""
        try:
            self.conn.send(Message(events, *self.progress(), results))
        except (OSError, ValueError):
            self.cancel.set()

    def emit(self, e: ev.Event) -> None:
        """The engine's ``emit`` (its own thread: the record may be read here, never elsewhere)."""
        with self.lock:
            if isinstance(e, ev.StepLoss):
                self.steps.append(e)
                return
            results = None
            record = getattr(self.run, "results", None) or {}
            if isinstance(e, (ev.PhaseResult, ev.Failed, ev.Cancelled)) or (not self.data_sent and "data" in record):
                results, self.data_sent = record, True
            self.ended = self.ended or isinstance(e, ENDINGS)
            events, self.steps = self.steps + [e], []
            self._send(events, results)

    def flush(self) -> None:
        with self.lock:
            events, self.steps = self.steps, []
            self._send(events)

    def heartbeat(self) -> None:
        parent = multiprocessing.parent_process()
        while not self.closed.wait(FLUSH_S):
            self.flush()
            if parent is not None and not parent.is_alive():  # the server is gone: nobody to train for
                self.cancel.set()


def serve(conn: Connection, spec: JobSpec, event) -> None:
    """The child's whole life: take the server's environment, build the run, run it, send
    everything; a run that raises without its own last event ends with a ``Failed`` one."""
    cancel = ChildCancel(event)
    signal.signal(signal.SIGTERM, cancel.on_signal)
    os.environ.clear()
    os.environ.update(spec.env)
    os.chdir(spec.cwd)
    import torch
    from .device import train_threads
    torch.set_num_threads(train_threads())
    outbox = Outbox(conn, cancel)
    beat = threading.Thread(target=outbox.heartbeat, name="indistill-worker-heartbeat", daemon=True)
    beat.start()
    outbox.flush()  # "started": the server times the start from this
    try:
        outbox.run = spec.build(emit=outbox.emit, cancel=cancel)
        outbox.run.run()
    except Exception as exc:  # noqa: BLE001 - a run's error is a Failed event, whatever it is
        if not outbox.ended:
            outbox.emit(ev.Failed(str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"))
    finally:
        outbox.closed.set()
        beat.join()
        outbox.flush()
        conn.close()


# ---------------------------------------------------------------- the server's side

def context():
    """The multiprocessing context for workers: a fork server that has imported the engine
    (spawn where there is none); never a plain fork of the threaded server."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def prestart() -> None:
    """Start the fork server now (it imports torch and the engine, ~4 s, in its own process), so
    the first Start does not wait for it. Idempotent; nothing to do without a fork server."""
    ctx = context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver
        forkserver.ensure_running()


def ending(exitcode: int | None) -> str:
    """How a child ended, in words, for a Failed event's message."""
    if exitcode is None:
        return "it did not end"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.Signals._value2member_map_ else str(-exitcode)
        why = " (the system ran out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"it was killed by {name}{why}"
    return f"it exited with code {exitcode}"


class WorkerRun:
    """A job's run trained in a worker process: the attributes :class:`app.runner.Job` reads from an
    Experiment (or grid), mirrored from the child's messages; ``run()`` relays until the child ends."""

    def __init__(self, spec: JobSpec, emit: Callable[[ev.Event], None], cancel: threading.Event) -> None:
        built = spec.build()  # here too: a configuration that cannot run is refused at Start
        self.spec, self.emit, self.cancel = spec, emit, cancel
        self.cfg, self.run_dir = built.cfg, Path(built.run_dir)
        self.cells = list(getattr(built, "cells", []))
        self.results: dict = built.results
        self.done_steps, self.total_steps = 0, built.total_steps
        self.pid: int | None = None
        self.exitcode: int | None = None
        self.start_s: float | None = None   # from starting the child to its first message

    def release(self) -> None:
        """Nothing held here: the child's memory went back to the system when it ended."""

    def run(self) -> dict:
        ctx = context()
        stop = ctx.Event()
        inbox, outbox = ctx.Pipe(duplex=False)
        child = ctx.Process(target=serve, args=(outbox, self.spec, stop), daemon=True,
                            name=f"indistill-worker-{self.run_dir.name}")
        t0 = time.perf_counter()
        child.start()
        outbox.close()
        self.pid = child.pid
        last: ev.Event | None = None
        asked: float | None = None    # when the cancel was passed on
        try:
            while True:
                if asked is None and self.cancel.is_set():
                    stop.set()
                    child.terminate()
                    asked = time.monotonic()
                elif asked is not None and time.monotonic() - asked > GRACE_S and child.is_alive():
                    child.kill()
                if not inbox.poll(POLL_S):
                    if not child.is_alive() and not inbox.poll(0):
                        break
                    continue
                try:
                    message = inbox.recv()
                except (EOFError, OSError):
                    break
                if self.start_s is None:
                    self.start_s = time.perf_counter() - t0
                    self.emit(ev.Log(f"training in worker process {child.pid} (started in {self.start_s:.2f} s)"))
                last = self.take(message) or last
        finally:
            child.join(GRACE_S)
            if child.is_alive():
                child.kill()
                child.join()
            inbox.close()
            self.exitcode = child.exitcode
        if not isinstance(last, ENDINGS):
            self.ended_silently(asked is not None)
        return self.results

    def take(self, message: Message) -> ev.Event | None:
        """Mirror the child's progress and record, then hand its events to the job; the last one."""
        self.done_steps, self.total_steps = message.done, message.total
        if message.results is not None:
            self.results = message.results
        for e in message.events:
            if isinstance(e, ev.Finished):
                self.results = e.results
            self.emit(e)
        return message.events[-1] if message.events else None

    def ended_silently(self, cancelled: bool) -> None:
        """The child ended without its last event: say how, in the job and in the run's record."""
        folder = runfolder.RunFolder(self.run_dir)
        record = folder.read_results() if folder.path.is_dir() else None
        if cancelled:
            self.results = dict(record or self.results, status="cancelled")
            event: ev.Event = ev.Cancelled(None)
        else:
            message = f"the training process ended without a result: {ending(self.exitcode)}"
            self.results = dict(record or self.results, status="failed", error=message)
            event = ev.Failed(message)
        if record is not None:
            folder.write_results(self.results)
        self.emit(event)
