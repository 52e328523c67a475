"""Background experiments: one thread per job, a global cap on concurrent trainings, and
a snapshot that a poller (the app's timer, a test, a script) can read at any time.

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
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path

from . import events as ev
from . import runfolder
from .config import ExperimentConfig
from .experiment import Experiment
from .grid import CurriculumGrid

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
    """One experiment in its own thread; ``cancel()`` stops it within one training step."""

    def __init__(self, cfg: ExperimentConfig | None, runs_root: str | Path, manager: "JobManager | None" = None,
                 resume_dir: str | Path | None = None, grid: tuple[list[float], list[float]] | None = None,
                 owner: str | None = None, estimate_s: float | None = None, limit_s: float | None = None) -> None:
        self.manager = manager
        self.owner = owner                 # digest of the owning session's secret (None: nobody's)
        self.estimate_s = estimate_s       # the budget's estimate of the training time
        self.limit_s = limit_s             # public mode: the run stops once it has run this long
        self.stop_reason: str | None = None
        self.cancel_event = threading.Event()
        self.lock = threading.Lock()
        self.revision = 0        # bumped by every change a poller could show
        self.maps_revision = 0   # bumped when the channel maps change
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.state = "queued"
        self.submitted = time.time()
        self.started: float | None = None
        self.series: dict[str, LossSeries] = {}
        self.view: dict = {"phase": None, "seed": None, "segment": None, "epoch": 0, "eval": {},
                           "segments": {}, "channel_maps": None, "results": {}, "error": None, "schedules": {}}
        if grid is not None:
            run_dir = Path(runs_root) / runfolder.new_run_id(f"grid-{cfg.name}")
            self.experiment = CurriculumGrid(cfg, grid[0], grid[1], run_dir, emit=self.apply, cancel=self.cancel_event)
        elif resume_dir is not None:
            self.experiment = Experiment(None, resume_dir, emit=self.apply, cancel=self.cancel_event, resume=True)
        else:
            self.experiment = Experiment(cfg, runs_root=runs_root, emit=self.apply, cancel=self.cancel_event)
        self.cfg = self.experiment.cfg
        self.id = self.experiment.run_dir.name
        self.thread = threading.Thread(target=self._main, name=f"indistill-{self.id}", daemon=True)

    @property
    def run_dir(self) -> Path:
        return self.experiment.run_dir

    @property
    def live(self) -> bool:
        return self.state in runfolder.LIVE_STATES

    def start(self) -> "Job":
        self.thread.start()
        return self

    def cancel(self) -> None:
        self.cancel_event.set()
        with self.lock:
            if self.state == "queued":
                self.state = "cancelled"
                self.log.append("cancelled before it started")
                self.revision += 1

    def _main(self) -> None:
        gate = self.manager.gate if self.manager else None
        if gate is not None:
            while not gate.acquire(timeout=0.2):
                if self.cancel_event.is_set():
                    self._done()
                    return
        try:
            if self.cancel_event.is_set():
                return
            with self.lock:
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
            if gate is not None:
                gate.release()
            self._done()

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

    def _done(self) -> None:
        """Free the dataset and models; the results stay in the snapshot and on disk."""
        self.experiment.release()
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
        key = f"{e.phase}/{e.seed}"
        v["schedules"][key] = e.schedule
        self.series[key] = LossSeries()
        v["segments"][key] = []
        v["eval"][key] = runfolder.eval_series([])

    def _layer_switch(self, v: dict, e: ev.LayerSwitch) -> None:
        v["segment"] = e.name
        v["segments"][f"{e.phase}/{e.seed}"].append({"name": e.name, "step": e.step})

    def _step(self, v: dict, e: ev.StepLoss) -> None:
        self.series[f"{e.phase}/{e.seed}"].add(e.step, e.epoch, e.segment, e.losses)
        v["epoch"] = e.epoch

    def _epoch(self, v: dict, e: ev.EpochMetrics) -> None:
        r = v["eval"][f"{e.phase}/{e.seed}"]
        r["epoch"].append(e.epoch)
        r["acc"].append(e.metrics.get("eval_acc"))
        r["map"].append(e.metrics.get("eval_map"))
        for k in runfolder.EVAL_FIELDS:
            r[k].append(e.metrics.get(k))

    def _channel_maps(self, v: dict, e: ev.ChannelMaps) -> None:
        v["channel_maps"] = {"pruned_arch": e.pruned_arch, "stages": e.stages}
        self.maps_revision += 1

    def _phase_result(self, v: dict, e: ev.PhaseResult) -> None:
        v["results"] = copy.deepcopy(self.experiment.results.get("phases", {}))

    def _finished(self, v: dict, e: ev.Finished) -> None:
        self.state = "finished"
        v["results"] = copy.deepcopy(e.results.get("phases", {}))
        if "grid" in e.results:
            v["grid"] = copy.deepcopy(e.results["grid"])
        if "comparisons" in e.results:
            v["comparisons"] = copy.deepcopy(e.results["comparisons"])

    def _failed(self, v: dict, e: ev.Failed) -> None:
        self.state, v["error"] = "failed", e.message

    def _cancelled(self, v: dict, e: ev.Cancelled) -> None:
        self.state = "cancelled"

    _REDUCERS = {ev.PhaseStarted: _phase_started, ev.LayerSwitch: _layer_switch, ev.StepLoss: _step,
                 ev.EpochMetrics: _epoch, ev.ChannelMaps: _channel_maps, ev.PhaseResult: _phase_result,
                 ev.Finished: _finished, ev.Failed: _failed, ev.Cancelled: _cancelled}

    def last_step(self) -> tuple[str, int, float] | None:
        """(phase unit, step, total loss) of the newest logged step, read without a snapshot."""
        with self.lock:
            key = f"{self.view['phase']}/{self.view['seed']}"
            s = self.series.get(key)
            point = s.last() if s else None
        if not point or "total" not in point["losses"]:
            return None
        total, count = point["losses"]["total"]
        return key, point["step"], total / count

    def remaining_s(self) -> float:
        """Seconds until this job ends: its ETA when running, its estimate when queued, 0 when done."""
        if not self.live:
            return 0.0
        if self.state == "running" and self.started:
            done, total = self.experiment.done_steps, self.experiment.total_steps
            elapsed = time.time() - self.started
            if total and done:
                return max(0.0, elapsed * (total - done) / done)
            return max(0.0, (self.estimate_s or 0.0) - elapsed)
        return self.estimate_s or 0.0

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
            results = {p: {"test_acc": r.get("test_acc"), "test_acc_std": r.get("test_acc_std")}
                       for p, r in self.view["results"].items() if isinstance(r, dict) and "test_acc" in r}
            return {"run": self.id, "state": self.state, "progress": round(frac, 4), "queue_position": position,
                    "eta_s": None if eta is None else round(eta, 1), "phase": self.view["phase"],
                    "step": last[1] if last else None, "loss": last[2] if last else None, "results": results,
                    "error": self.view["error"]}

    def snapshot(self) -> dict:
        """A JSON-ready copy of the job's state, safe to read from any thread."""
        queue_position, wait_s = self.manager.queue_place(self) if self.manager else (0, 0.0)
        with self.lock:
            done, total, elapsed, frac, eta = self._progress(wait_s)
            snap = copy.deepcopy(self.view)
            snap["series"] = {k: s.to_dict() for k, s in self.series.items()}
            snap.update(id=self.id, state=self.state, steps_done=done, steps_total=total,
                        progress=round(frac, 4), elapsed_s=round(elapsed, 1), eta_s=None if eta is None else round(eta, 1),
                        queue_position=queue_position, queue_wait_s=round(wait_s, 1),
                        estimate_s=None if self.estimate_s is None else round(self.estimate_s, 1),
                        log=list(self.log), config=self.cfg.to_dict(), data=self.experiment.results.get("data"), read_only=False)
            return snap


class JobManager:
    """Owns the jobs of every session; at most ``max_concurrent`` train at once.

    ``max_queue`` caps the jobs waiting; with owners, each owner has at most one live
    (queued or running) job. At most ``max_kept`` finished jobs stay in memory (least
    recently submitted go first; they remain on disk). With ``retention`` set, the
    oldest finished run folders are deleted when the runs folder passes its caps.
    """

    def __init__(self, max_concurrent: int = 1, runs_root: str | Path = "runs", *, max_queue: int | None = None,
                 max_queue_s: float | None = None, max_kept: int = 64,
                 retention: runfolder.Retention | None = None) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.max_concurrent = max_concurrent
        self.gate = threading.BoundedSemaphore(max_concurrent)
        self.runs_root = Path(runs_root)
        self.max_queue, self.max_queue_s, self.max_kept, self.retention = max_queue, max_queue_s, max_kept, retention
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.lock = threading.Lock()

    # ------------------------------------------------------------ submitting
    def _admit_and_add(self, job: Job) -> Job:
        """Take ``job`` if its owner has no live job and the queue has room (checked atomically), then start it."""
        with self.lock:
            live = [j for j in self.jobs.values() if j.live]
            mine = next((j for j in live if job.owner is not None and j.owner == job.owner), None)
            if mine is not None:
                raise JobRefused(f"one live run per session: your run {mine.id} is still {mine.state}; "
                                 "cancel it or wait for it to finish")
            waiting = sum(j.state == "queued" for j in live)
            if self.max_queue is not None and waiting >= self.max_queue:
                raise JobRefused(f"the queue is full ({waiting} runs waiting; the limit is {self.max_queue}); "
                                 "try again in a few minutes")
            work = sum(j.remaining_s() for j in live) / self.max_concurrent
            if self.max_queue_s is not None and work + (job.estimate_s or 0) > self.max_queue_s:
                raise JobRefused(f"the queue holds about {work / 60:.0f} min of work and this run adds "
                                 f"{(job.estimate_s or 0) / 60:.1f} min; the limit is {self.max_queue_s / 60:.0f} min "
                                 "in all — try again later, or a smaller run")
            self.jobs[job.id] = job
        self._evict()
        return job.start()

    def submit(self, cfg: ExperimentConfig, owner: str | None = None, estimate_s: float | None = None,
               limit_s: float | None = None) -> Job:
        """Start (or queue) ``cfg``; ``limit_s``: stop it once it has run that long (public mode)."""
        return self._admit_and_add(Job(cfg, self.runs_root, self, owner=owner, estimate_s=estimate_s, limit_s=limit_s))

    def submit_grid(self, cfg: ExperimentConfig, a_values: list[float], b_values: list[float],
                    owner: str | None = None, estimate_s: float | None = None, limit_s: float | None = None) -> Job:
        """The a × b curriculum grid (plus a joint run) as one background job."""
        return self._admit_and_add(Job(cfg, self.runs_root, self, grid=(a_values, b_values), owner=owner,
                                       estimate_s=estimate_s, limit_s=limit_s))

    # ------------------------------------------------------------ reading
    def get(self, job_id: object) -> Job | None:
        """The live or recently finished job with this id (ids are checked; a bad one is simply not found)."""
        if not isinstance(job_id, str):
            return None
        with self.lock:
            return self.jobs.get(job_id)

    def live_job_of(self, owner: str) -> Job | None:
        with self.lock:
            return next((j for j in self.jobs.values() if j.owner == owner and j.live), None)

    def queue_place(self, job: Job) -> tuple[int, float]:
        """(position, seconds of work ahead): 1 for the next to start; (0, 0) when running or done.

        The wait is the remaining time of the running jobs and of the queued jobs ahead,
        spread over the ``max_concurrent`` training slots.
        """
        if job.state != "queued":
            return 0, 0.0
        with self.lock:
            live = [j for j in self.jobs.values() if j.live]
        queued = sorted((j for j in live if j.state == "queued"), key=lambda j: j.submitted)
        if job not in queued:
            return 0, 0.0
        ahead = queued[:queued.index(job)] + [j for j in live if j.state == "running"]
        return queued.index(job) + 1, sum(j.remaining_s() for j in ahead) / self.max_concurrent

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
        self._evict()
        if self.retention is not None:
            with self.lock:
                live = {j.id for j in self.jobs.values() if j.live}
            runfolder.enforce_retention(self.runs_root, self.retention, protect=live)

    def _evict(self) -> None:
        with self.lock:
            done = [k for k, j in self.jobs.items() if not j.live]
            for key in done[:max(0, len(done) - self.max_kept)]:
                del self.jobs[key]
