"""Background experiments: one thread per job, a global cap on concurrent trainings served
in turn by visitor, joined identical runs, and a snapshot that a poller (the app's timer, a
test, a script) can read at any time.

The manager serves the queue round-robin by *visitor* (a client address, or the owner when
there is none): when a training slot frees, the next job is the oldest one of the visitor who
was served least recently (:func:`turn_order`), and the queue positions shown follow that same
order. A start whose whole configuration equals a live run's *joins* it (:func:`config_digest`):
the visitor becomes one of the run's holders, who see it live and may leave it; the run stops
only when its last holder leaves.

The job folds engine events into its snapshot (a reducer), so the snapshot is always a
consistent, JSON-ready picture: state, phase, segment, epoch, progress and ETA, loss
series by component, evaluation accuracy per epoch, channel maps, results, log lines.

Everything a job keeps is bounded: loss series are held at ≤ ``MAX_POINTS`` points each
(:class:`LossSeries`), the log at ``LOG_LINES`` lines; a finished job drops its dataset,
and the manager keeps at most ``max_kept`` finished jobs (they stay openable from disk).
"""
from __future__ import annotations

import copy
import ctypes
import gc
import hashlib
import itertools
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from . import events as ev
from . import results as rs
from . import runfolder, worker
from .config import ExperimentConfig

LOG_LINES = 300
MAX_POINTS = 2000


def return_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so a
    long-running server's RSS follows what it holds rather than its high-water mark."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


class JobRefused(ValueError):
    """A job the manager will not take (a live one already, or the queue is full); says which limit."""


def config_digest(cfg: ExperimentConfig) -> str:
    """What makes two runs the same run: the canonical whole configuration but its name."""
    from .unitstore import canonical_json  # one canonical form for keys: 30 and 30.0 epochs are one setting
    settings = cfg.to_dict()
    settings.pop("name", None)
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()


def turn_order(queued: list["Job"], served: dict[str, int]) -> list["Job"]:
    """The order in which ``queued`` jobs will start: round-robin by visitor. Each turn goes to the
    visitor served least recently (never served first; ties: whose oldest waiting job came first),
    and within a visitor, their jobs in submission order. ``served``: visitor → turn number of the
    last job of theirs that started (not changed here)."""
    waiting: dict[str, deque] = {}
    for job in sorted(queued, key=lambda j: j.submitted):
        waiting.setdefault(job.visitor, deque()).append(job)
    last = dict(served)
    turn = max(last.values(), default=0)
    order = []
    while waiting:
        visitor = min(waiting, key=lambda v: (last.get(v, -1), waiting[v][0].submitted))
        order.append(waiting[visitor].popleft())
        turn += 1
        last[visitor] = turn
        if not waiting[visitor]:
            del waiting[visitor]
    return order


class LossSeries:
    """Loss components of one phase unit at bounded resolution.

    Each point is the mean of ``stride`` consecutive steps; when the series would pass
    ``max_points``, neighbouring points merge (weighted by their step counts) and the
    stride doubles, so a poll costs the same at step 100 and at step 100,000.
    """

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        self.max_points = max(2, max_points)
        self.stride = 1
        self.points: list[dict] = []      # {step, epoch, segment, n, losses: {name: [sum, count]}}
        self._open: dict | None = None

    def add(self, step: int, epoch: float, segment: str, losses: dict[str, float]) -> None:
        b = self._open
        if b is not None and (b["segment"] != segment or b["n"] >= self.stride):
            self._close()
            b = None
        if b is None:
            b = self._open = {"n": 0, "losses": {}, "segment": segment}
        b.update(step=step, epoch=epoch, n=b["n"] + 1)
        for name, value in losses.items():
            acc = b["losses"].setdefault(name, [0.0, 0])
            acc[0] += value
            acc[1] += 1

    def _close(self) -> None:
        self.points.append(self._open)
        self._open = None
        if len(self.points) >= self.max_points:
            self.points = [self._merge(self.points[i:i + 2]) for i in range(0, len(self.points), 2)]
            self.stride *= 2

    @staticmethod
    def _merge(pair: list[dict]) -> dict:
        last = pair[-1]
        losses: dict[str, list] = {}
        for p in pair:
            for name, (total, count) in p["losses"].items():
                acc = losses.setdefault(name, [0.0, 0])
                acc[0] += total
                acc[1] += count
        return {"step": last["step"], "epoch": last["epoch"], "segment": last["segment"],
                "n": sum(p["n"] for p in pair), "losses": losses}

    def __len__(self) -> int:
        return len(self.points) + (self._open is not None)

    def last(self) -> dict | None:
        return self._open or (self.points[-1] if self.points else None)

    def to_dict(self) -> dict:
        """``{step, epoch, segment, losses: {name: [mean or None]}, stride}`` as the views read it."""
        pts = self.points + ([self._open] if self._open else [])
        names = sorted({n for p in pts for n in p["losses"]})
        return {"step": [p["step"] for p in pts], "epoch": [p["epoch"] for p in pts],
                "segment": [p["segment"] for p in pts], "stride": self.stride,
                "losses": {n: [p["losses"][n][0] / p["losses"][n][1] if n in p["losses"] else None for p in pts]
                           for n in names}}


class Job:
    """One experiment driven by its own thread, trained there or in a worker process (:mod:`app.worker`);
    ``cancel()`` stops it within one training step."""

    def __init__(self, cfg: ExperimentConfig | None, runs_root: str | Path, manager: "JobManager | None" = None,
                 resume_dir: str | Path | None = None, grid: tuple[list[float], list[float]] | None = None,
                 owner: str | None = None, estimate_s: float | None = None, limit_s: float | None = None,
                 address: str | None = None, joinable: bool = False, store: Any = None,
                 scope: str | None = None, backend: str | None = None) -> None:
        self.manager = manager
        self.owner = owner                 # digest of the owning session's secret (None: nobody's)
        self.address = address             # digest of the client address that started it (None: no request)
        self.holders: set[str] = {owner} if owner else set()   # who follow it live and may leave it
        self.joiners: set[str] = set()     # sessions that joined it (started the same configuration)
        self.estimate_s = estimate_s       # the budget's estimate of the training time
        self.limit_s = limit_s             # public mode: the run stops once it has run this long
        self.stop_reason: str | None = None
        self.cancel_event = threading.Event()
        self.turn = threading.Event()      # set when the manager gives it a training slot (or it is withdrawn)
        self.granted = False
        self.lock = threading.Lock()
        self.revision = 0        # bumped by every change a poller could show
        self.maps_revision = 0   # bumped when the channel maps change
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.state = "queued"
        self.submitted = time.time()
        self.started: float | None = None
        self.series: dict[str, LossSeries] = {}
        # the live facts a snapshot lays over the run's record (:func:`app.results.snapshot`)
        self.view: dict = {"phase": None, "seed": None, "segment": None, "epoch": 0, "eval": {},
                           "segments": {}, "error": None, "schedules": {}}
        self.record: rs.RunResults = {}   # what the run has recorded so far: phases, maps, comparisons, grid
        # where it trains (:func:`app.worker.backend`): a worker process, the job's thread relaying its
        # events; or this job's thread (the unit store, with sharing on, is then the server's own)
        spec = worker.JobSpec.of(cfg, runs_root, resume_dir, grid, store, scope)
        self.backend = backend or worker.backend()
        if self.backend == "process":
            self.experiment = worker.WorkerRun(spec, emit=self.apply, cancel=self.cancel_event)
        else:
            self.experiment = spec.build(emit=self.apply, cancel=self.cancel_event, store=store)
        self.cfg = self.experiment.cfg
        self.join_key = config_digest(self.cfg) if joinable and grid is None and resume_dir is None else None
        self.id = self.experiment.run_dir.name
        self.thread = threading.Thread(target=self._main, name=f"indistill-{self.id}", daemon=True)

    @property
    def run_dir(self) -> Path:
        return self.experiment.run_dir

    @property
    def live(self) -> bool:
        return self.state in runfolder.LIVE_STATES

    @property
    def visitor(self) -> str:
        """Whose turn this job takes in the queue: its client address, else its owner, else itself."""
        return self.address or self.owner or self.id

    def watched_by(self, owner: str | None) -> bool:
        """May this session follow the run live? Its owner (even after leaving it), and who joined it."""
        return owner is not None and (owner == self.owner or owner in self.holders or owner in self.joiners)

    def start(self) -> "Job":
        self.thread.start()
        return self

    def cancel(self) -> None:
        """Stop the run for everyone (a queued one leaves the queue at once)."""
        self.cancel_event.set()
        with self.lock:
            if self.state == "queued" and not self.granted:
                self.state = "cancelled"
                self.log.append("cancelled before it started")
                self.revision += 1
        if self.manager is not None:
            self.manager.withdraw(self)
        self.turn.set()

    def grant(self) -> None:
        """A training slot is this job's (the manager calls it under its lock)."""
        with self.lock:
            self.granted = True
            if self.state == "queued":
                self.state, self.started = "running", time.time()
                self.revision += 1
        self.turn.set()

    def _main(self) -> None:
        if self.manager is not None:
            self.turn.wait()
            if not self.granted:  # withdrawn from the queue before its turn
                self._done(ran=False)
                return
        ran = False
        try:
            if self.cancel_event.is_set():
                return
            ran = True
            with self.lock:
                if self.state == "queued":
                    self.state, self.started = "running", time.time()
                    self.revision += 1
            timer = threading.Timer(self.limit_s, self._over_limit) if self.limit_s else None
            if timer is not None:
                timer.daemon = True
                timer.start()
            try:
                self.experiment.run()
            except Exception:
                pass  # already published as a Failed event by the experiment
            finally:
                if timer is not None:
                    timer.cancel()
        finally:
            if self.manager is not None:
                self.manager.slot_freed(self)
            self._done(ran and self.backend == "thread")  # a worker's memory went back with its process

    def _over_limit(self) -> None:
        """The public time cap: stop at the next step (or evaluation batch), keeping finished units."""
        if self.cancel_event.is_set():
            return
        with self.lock:
            self.stop_reason = (f"stopped: the run passed the public limit of {self.limit_s / 60:g} min of training "
                                "on this server; its finished units are kept (open it, or start a smaller run)")
            self.log.append(self.stop_reason)
            self.view["error"] = self.stop_reason
            self.revision += 1
        self.cancel_event.set()

    def _done(self, ran: bool = True) -> None:
        """Free the dataset and models; the results stay in the snapshot and on disk. A job that never
        ran holds nothing to hand back (a full collection costs about 0.5 s of the server's CPU)."""
        self.experiment.release()
        if ran:
            return_memory()
        with self.lock:
            if self.state in runfolder.LIVE_STATES:  # ended without an event (cancelled while queued)
                self.state = "cancelled"
            self.revision += 1
        folder = runfolder.RunFolder(self.run_dir)
        if folder.path.is_dir() and not folder.results.is_file():  # never started: retention can see it now
            folder.write_results({"status": "cancelled", "phases": {}})
        if self.manager:
            self.manager.job_ended(self)

    # ------------------------------------------------------------ the reducer
    def apply(self, e: ev.Event) -> None:
        """Fold one event into the snapshot (dispatched on its type) and log its description."""
        with self.lock:
            self.revision += 1
            reduce = self._REDUCERS.get(type(e))
            if reduce is not None:
                reduce(self, self.view, e)
            line = e.describe()
            if line is not None:
                self.log.append(line)

    def _phase_started(self, v: dict, e: ev.PhaseStarted) -> None:
        v.update(phase=e.phase, seed=e.seed, epoch=0, segment=None)
        key = rs.UnitKey(e.phase, e.seed).series
        v["schedules"][key] = e.schedule
        self.series[key] = LossSeries()
        v["segments"][key] = []
        v["eval"][key] = rs.eval_series()

    def _layer_switch(self, v: dict, e: ev.LayerSwitch) -> None:
        v["segment"] = e.name
        v["segments"][rs.UnitKey(e.phase, e.seed).series].append({"name": e.name, "step": e.step})

    def _step(self, v: dict, e: ev.StepLoss) -> None:
        self.series[rs.UnitKey(e.phase, e.seed).series].add(e.step, e.epoch, e.segment, e.losses)
        v["epoch"] = e.epoch

    def _epoch(self, v: dict, e: ev.EpochMetrics) -> None:
        rs.add_epoch(v["eval"][rs.UnitKey(e.phase, e.seed).series], {"epoch": e.epoch, **e.metrics})

    def _channel_maps(self, v: dict, e: ev.ChannelMaps) -> None:
        self.record["channel_maps"] = {"pruned_arch": e.pruned_arch, "stages": e.stages}
        self.maps_revision += 1

    def _keep_record(self, results: dict) -> None:
        """A copy of what the run has recorded (its thread goes on changing the original)."""
        record = {k: copy.deepcopy(results[k]) for k in self.RECORD if k in results}
        record.setdefault("channel_maps", self.record.get("channel_maps"))  # a grid's come only as events
        self.record = record

    def _phase_result(self, v: dict, e: ev.PhaseResult) -> None:
        self._keep_record(self.experiment.results)

    def _finished(self, v: dict, e: ev.Finished) -> None:
        self.state = "finished"
        self._keep_record(e.results)

    def _failed(self, v: dict, e: ev.Failed) -> None:
        self.state, v["error"] = "failed", e.message

    def _cancelled(self, v: dict, e: ev.Cancelled) -> None:
        self.state = "cancelled"

    RECORD = ("phases", "comparisons", "grid", "channel_maps", "flow_reference")
    _REDUCERS = {ev.PhaseStarted: _phase_started, ev.LayerSwitch: _layer_switch, ev.StepLoss: _step,
                 ev.EpochMetrics: _epoch, ev.ChannelMaps: _channel_maps, ev.PhaseResult: _phase_result,
                 ev.Finished: _finished, ev.Failed: _failed, ev.Cancelled: _cancelled}

    def last_step(self) -> tuple[str, int, float] | None:
        """(phase unit, step, total loss) of the newest logged step, read without a snapshot."""
        with self.lock:
            key = rs.UnitKey(self.view["phase"], self.view["seed"]).series if self.view["phase"] else None
            s = self.series.get(key)
            point = s.last() if s else None
        if not point or "total" not in point["losses"]:
            return None
        total, count = point["losses"]["total"]
        return key, point["step"], total / count

    def remaining_s(self) -> float:
        """Seconds until this job ends, bounded so that it cannot run away: while running, the least of
        the extrapolation from its progress, what its admitted estimate leaves (at least 0) and what its
        time limit leaves; queued, its estimate (at most its limit); 0 when done."""
        if not self.live:
            return 0.0
        if self.state != "running" or not self.started:
            return min(self.estimate_s or 0.0, self.limit_s if self.limit_s is not None else float("inf"))
        done, total = self.experiment.done_steps, self.experiment.total_steps
        elapsed = time.time() - self.started
        bounds = [elapsed * (total - done) / done] if total and done else []
        if self.estimate_s is not None:
            bounds.append(self.estimate_s - elapsed)
        if self.limit_s is not None:
            bounds.append(self.limit_s - elapsed)
        return max(0.0, min(bounds)) if bounds else 0.0

    def _progress(self, wait_s: float) -> tuple[int, int, float, float, float | None]:
        """(steps done, steps in all, seconds running, fraction done, seconds until it ends: the queue
        wait plus :meth:`remaining_s` while live, None once ended); one rule for summary and snapshot."""
        done, total = self.experiment.done_steps, self.experiment.total_steps
        elapsed = (time.time() - self.started) if self.started else 0.0
        frac = done / total if total else (1.0 if self.state == "finished" else 0.0)
        return done, total, elapsed, frac, (wait_s + self.remaining_s() if self.live else None)

    def summary(self) -> dict:
        """The status line's facts without copying the curves (what a script polls)."""
        position, wait_s = self.manager.queue_place(self) if self.manager else (0, 0.0)
        last = self.last_step()
        with self.lock:
            _, _, _, frac, eta = self._progress(wait_s)
            light = {"id": self.id, "state": self.state, "progress": round(frac, 4), "queue_position": position,
                     "eta_s": None if eta is None else round(eta, 1), "phase": self.view["phase"],
                     "results": self.record.get("phases"), "error": self.view["error"]}
            return rs.status(light, last) | {"following": len(self.holders)}

    def snapshot(self) -> dict:
        """A JSON-ready copy of the job's state, safe to read from any thread."""
        queue_position, wait_s = self.manager.queue_place(self) if self.manager else (0, 0.0)
        with self.lock:
            done, total, elapsed, frac, eta = self._progress(wait_s)
            live = copy.deepcopy(self.view)
            live["series"] = {k: s.to_dict() for k, s in self.series.items()}
            live.update(state=self.state, steps_done=done, steps_total=total,
                        progress=round(frac, 4), elapsed_s=round(elapsed, 1), eta_s=None if eta is None else round(eta, 1),
                        queue_position=queue_position, queue_wait_s=round(wait_s, 1), following=len(self.holders),
                        estimate_s=None if self.estimate_s is None else round(self.estimate_s, 1),
                        log=list(self.log), config=self.cfg.to_dict(),
                        data=copy.deepcopy(self.experiment.results.get("data")))
            return rs.snapshot(self.id, copy.deepcopy(self.record), live)


class JobManager:
    """Owns the jobs of every session; at most ``max_concurrent`` train at once, served in turn by
    visitor (:func:`turn_order`).

    ``max_queue`` caps the jobs waiting and ``max_queue_s`` the work queued in all; with owners,
    each owner holds at most one live (queued or running) job, owned or joined. With addresses,
    ``max_live_per_address`` and ``max_queue_s_per_address`` cap what one client address has live,
    under any number of session keys. Joining a live run with the same configuration costs none
    of these. At most ``max_kept`` finished jobs stay in memory (least recently submitted go
    first; they remain on disk). With ``retention`` set, the oldest ended run folders are deleted
    when the runs folder passes its caps (kept in a :class:`runfolder.RunIndex`: no scan per job).
    """

    def __init__(self, max_concurrent: int = 1, runs_root: str | Path = "runs", *, max_queue: int | None = None,
                 max_queue_s: float | None = None, max_kept: int = 64,
                 retention: runfolder.Retention | None = None, max_live_per_address: int | None = None,
                 max_queue_s_per_address: float | None = None) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.max_concurrent = max_concurrent
        self.runs_root = Path(runs_root)
        self.max_queue, self.max_queue_s, self.max_kept, self.retention = max_queue, max_queue_s, max_kept, retention
        self.max_live_per_address, self.max_queue_s_per_address = max_live_per_address, max_queue_s_per_address
        self.index = runfolder.RunIndex(self.runs_root, retention) if retention is not None else None
        self.index_lock = threading.Lock()
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.lock = threading.Lock()
        self.busy = 0                         # training slots taken
        self.served: dict[str, int] = {}      # visitor → turn number of their last job that started
        self.turns = itertools.count(1)
        self._order: list[Job] | None = None  # the waiting jobs in turn order (None: to recompute)

    # ------------------------------------------------------------ submitting
    def admit_and_add(self, job: Job) -> Job:
        """Take ``job`` if its owner holds no live job and the queue and the caps of its address have
        room (checked atomically), then start its thread (it trains when its turn comes). A joinable
        job whose twin went live meanwhile joins that one instead (the twin is returned)."""
        with self.lock:
            live = [j for j in self.jobs.values() if j.live]
            self._check_owner(job.owner, live)
            twin = self._twin(job.join_key, job.owner, live)
            if twin is not None:
                return twin
            self._check_room(job.address, job.estimate_s, live)
            self.jobs[job.id] = job
            self._order = None
        self._evict()
        job.start()
        self._grant()
        return job

    @staticmethod
    def _check_owner(owner: str | None, live: list[Job]) -> None:
        held = next((j for j in live if owner is not None and owner in j.holders), None)
        if held is not None:
            how = "your run" if held.owner == owner else "the run you joined,"
            raise JobRefused(f"one live run per session: {how} {held.id} is still {held.state}; "
                             "cancel it or wait for it to finish")

    def _check_room(self, address: str | None, estimate_s: float | None, live: list[Job]) -> None:
        """The queue's caps in all, then those of one client address (whatever session keys it uses)."""
        adds = estimate_s or 0.0
        waiting = sum(j.state == "queued" for j in live)
        if self.max_queue is not None and waiting >= self.max_queue:
            raise JobRefused(f"the queue is full ({waiting} runs waiting; the limit is {self.max_queue}); "
                             "try again in a few minutes")
        work = sum(j.remaining_s() for j in live) / self.max_concurrent
        if self.max_queue_s is not None and work + adds > self.max_queue_s:
            raise JobRefused(f"the queue holds about {work / 60:.0f} min of work and this run adds "
                             f"{adds / 60:.1f} min; the limit is {self.max_queue_s / 60:.0f} min "
                             "in all — try again later, or a smaller run")
        mine = [j for j in live if address is not None and j.address == address]
        if self.max_live_per_address is not None and len(mine) >= self.max_live_per_address:
            raise JobRefused(f"your address already has {len(mine)} live runs (queued or training), the limit "
                             f"per address is {self.max_live_per_address} whatever the session; wait for one to "
                             "finish, or cancel one")
        work = sum(j.remaining_s() for j in mine)
        if self.max_queue_s_per_address is not None and work + adds > self.max_queue_s_per_address:
            raise JobRefused(f"your address has about {work / 60:.0f} min of work queued or training and this run "
                             f"adds {adds / 60:.1f} min; the limit per address is "
                             f"{self.max_queue_s_per_address / 60:g} min — wait for a run to finish, or a smaller run")

    def _precheck(self, owner: str | None, address: str | None, estimate_s: float | None) -> None:
        """The admission rules before a job is built (building one plans its networks): a flood of
        refused starts costs no more than this; :meth:`admit_and_add` checks again, atomically."""
        with self.lock:
            live = [j for j in self.jobs.values() if j.live]
            self._check_owner(owner, live)
            self._check_room(address, estimate_s, live)

    def submit(self, cfg: ExperimentConfig, owner: str | None = None, estimate_s: float | None = None,
               limit_s: float | None = None, **extra) -> Job:
        """Start (or queue) ``cfg``; ``limit_s``: stop it once it has run that long (public mode).
        ``extra``: the :class:`Job`'s ``address``, ``joinable``, ``store`` and ``scope``."""
        self._precheck(owner, extra.get("address"), estimate_s)
        return self.admit_and_add(Job(cfg, self.runs_root, self, owner=owner, estimate_s=estimate_s,
                                      limit_s=limit_s, **extra))

    def submit_or_join(self, cfg: ExperimentConfig, owner: str, **settings) -> tuple[Job, bool]:
        """(job, joined): join the live run whose whole configuration is ``cfg``'s if there is one (it
        costs no queue and no cap; the owner's one-live-run rule still holds), else :meth:`submit`."""
        with self.lock:
            live = [j for j in self.jobs.values() if j.live]
            self._check_owner(owner, live)
            twin = self._twin(config_digest(cfg), owner, live)
        if twin is not None:
            return twin, True
        job = self.submit(cfg, owner=owner, joinable=True, **settings)
        return job, owner != job.owner

    @staticmethod
    def _twin(key: str | None, owner: str | None, live: list[Job]) -> Job | None:
        """The live, joinable run with configuration digest ``key``, now also followed by ``owner``."""
        twin = next((j for j in live if key is not None and j.join_key == key and not j.cancel_event.is_set()), None)
        if twin is None or owner is None:
            return None
        twin.holders.add(owner)
        twin.joiners.add(owner)
        with twin.lock:
            twin.log.append("another visitor joined this run")
            twin.revision += 1
        return twin

    def submit_grid(self, cfg: ExperimentConfig, a_values: list[float], b_values: list[float],
                    owner: str | None = None, estimate_s: float | None = None, limit_s: float | None = None,
                    address: str | None = None) -> Job:
        """The a × b curriculum grid (plus a joint run) as one background job."""
        self._precheck(owner, address, estimate_s)
        return self.admit_and_add(Job(cfg, self.runs_root, self, grid=(a_values, b_values), owner=owner,
                                       estimate_s=estimate_s, limit_s=limit_s, address=address))

    def leave(self, job: Job, owner: str) -> int:
        """``owner`` stops following ``job``; the run is cancelled when no one follows it any more.
        Returns how many still follow it."""
        with self.lock:
            job.holders.discard(owner)
            left = len(job.holders)
            if left == 0:  # under the lock: no Start can join a run that is being stopped
                job.cancel_event.set()
            elif owner == job.owner:
                job.address = None  # followers keep it going: it no longer counts against the owner's address
        if left == 0:
            job.cancel()
        else:
            with job.lock:
                job.log.append(f"a visitor left this run; {left} still follow it")
                job.revision += 1
        return left

    # ------------------------------------------------------------ the turn order
    def _waiting(self) -> list[Job]:
        """The jobs waiting for a slot, in turn order (under the lock)."""
        if self._order is None:
            queued = [j for j in self.jobs.values() if j.state == "queued" and not j.granted]
            self._order = turn_order(queued, self.served)
        return self._order

    def _grant(self) -> None:
        """Give free training slots to the next jobs in turn order."""
        with self.lock:
            while self.busy < self.max_concurrent:
                nxt = next((j for j in self._waiting() if j.state == "queued" and not j.granted), None)
                if nxt is None:
                    break
                self.busy += 1
                self.served[nxt.visitor] = next(self.turns)
                if len(self.served) > 4096:  # bounded: the visitors served longest ago are forgotten
                    for v in sorted(self.served, key=self.served.get)[:2048]:
                        del self.served[v]
                nxt.grant()
                self._order = None

    def slot_freed(self, job: Job) -> None:
        """``job`` has stopped training: its slot goes to the next in turn."""
        with self.lock:
            self.busy -= 1
        self._grant()

    def withdraw(self, job: Job) -> None:
        """A job cancelled while waiting leaves the turn order."""
        with self.lock:
            self._order = None

    # ------------------------------------------------------------ reading
    def get(self, job_id: object) -> Job | None:
        """The live or recently finished job with this id (ids are checked; a bad one is simply not found)."""
        if not isinstance(job_id, str):
            return None
        with self.lock:
            return self.jobs.get(job_id)

    def live_owners(self) -> set[str]:
        """The owners (session digests) of the live jobs: whose uploaded data a run may still read."""
        with self.lock:
            return {j.owner for j in self.jobs.values() if j.live and j.owner}

    def live_job_of(self, owner: str) -> Job | None:
        """The live job this owner started (and may have left): what their uploaded data may be read by."""
        with self.lock:
            return next((j for j in self.jobs.values() if j.owner == owner and j.live), None)

    def held_by(self, owner: str) -> Job | None:
        """The live job this owner follows: started and not left, or joined."""
        with self.lock:
            return next((j for j in self.jobs.values() if owner in j.holders and j.live), None)

    def queue_place(self, job: Job) -> tuple[int, float]:
        """(position, seconds of work ahead): 1 for the next to start; (0, 0) when running or done.

        Positions follow the real turn order (:func:`turn_order`); the wait is the remaining time
        of the running jobs and of the waiting jobs ahead, spread over the ``max_concurrent`` slots.
        """
        if job.state != "queued" or job.granted:
            return 0, 0.0
        with self.lock:
            order = list(self._waiting())
            running = [j for j in self.jobs.values() if j.state == "running"]
        if job not in order:
            return 0, 0.0
        ahead = order[:order.index(job)] + running
        return order.index(job) + 1, sum(j.remaining_s() for j in ahead) / self.max_concurrent

    def queue_position(self, job: Job) -> int:
        return self.queue_place(job)[0]

    def load_results(self, run_id: object) -> dict | None:
        """Results of a run folder by id (checked: format, and the path stays in the runs folder)."""
        try:
            return runfolder.RunFolder(runfolder.resolve(self.runs_root, run_id)).read_results()
        except runfolder.RunIdError:
            return None

    # ------------------------------------------------------------ bounds
    def job_ended(self, job: Job) -> None:
        """Drop old finished jobs from memory; index the ended run's folder and apply retention
        (one read of that folder, never a scan of the runs folder)."""
        self._evict()
        if self.index is not None:
            with self.lock:
                live = {j.id for j in self.jobs.values() if j.live}
            with self.index_lock:
                self.index.ended(job.run_dir, protect=live)

    def _evict(self) -> None:
        with self.lock:
            done = [k for k, j in self.jobs.items() if not j.live]
            for key in done[:max(0, len(done) - self.max_kept)]:
                del self.jobs[key]
