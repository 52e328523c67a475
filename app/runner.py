"""Background experiments: one thread per job, a global cap on concurrent trainings, and
a snapshot that a poller (the app's timer, a test) can read at any time.

The job folds engine events into its snapshot (a reducer), so the snapshot is always a
consistent, JSON-ready picture: state, phase, segment, epoch, progress and ETA, loss
series by component, evaluation accuracy per epoch, channel maps, results, log lines.
"""
from __future__ import annotations

import copy
import itertools
import json
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from . import events as ev
from .config import ExperimentConfig
from .experiment import Experiment
from .grid import CurriculumGrid

LOG_LINES = 300


class Job:
    """One experiment in its own thread; ``cancel()`` stops it within one training step."""

    def __init__(self, cfg: ExperimentConfig, runs_root: str | Path, manager: "JobManager | None" = None,
                 resume_dir: str | Path | None = None, grid: tuple[list[float], list[float]] | None = None) -> None:
        self.id = uuid.uuid4().hex[:10] if resume_dir is None else Path(resume_dir).name
        self.cfg = cfg
        self.manager = manager
        self.cancel_event = threading.Event()
        self.lock = threading.Lock()
        self.revision = 0        # bumped by every change a poller could show
        self.maps_revision = 0   # bumped when the channel maps change
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.state = "queued"
        self.submitted = time.time()
        self.started: float | None = None
        self.view: dict = {"phase": None, "seed": None, "segment": None, "epoch": 0, "series": {}, "eval": {},
                           "segments": {}, "channel_maps": None, "results": {}, "error": None, "schedules": {}}
        run_dir = Path(resume_dir) if resume_dir else None
        if grid is not None:
            self.experiment = CurriculumGrid(cfg, grid[0], grid[1], Path(runs_root) / f"grid-{self.id}",
                                             emit=self.apply, cancel=self.cancel_event)
        else:
            self.experiment = Experiment(cfg if resume_dir is None else None, run_dir, runs_root=runs_root,
                                         emit=self.apply, cancel=self.cancel_event, resume=resume_dir is not None)
            if resume_dir is None:
                self.experiment.run_dir = Path(runs_root) / f"{cfg.name}-{self.id}"
        self.thread = threading.Thread(target=self._main, name=f"indistill-{self.id}", daemon=True)

    @property
    def run_dir(self) -> Path:
        return self.experiment.run_dir

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
                    return
        try:
            if self.cancel_event.is_set():
                return
            with self.lock:
                self.state, self.started = "running", time.time()
                self.revision += 1
            try:
                self.experiment.run()
            except Exception:
                pass  # already published as a Failed event by the experiment
        finally:
            if gate is not None:
                gate.release()

    # ------------------------------------------------------------ the reducer
    def apply(self, e: ev.Event) -> None:
        with self.lock:
            self.revision += 1
            v = self.view
            if e.kind == "log":
                self.log.append(e.message)
            elif e.kind == "phase_started":
                v.update(phase=e.phase, seed=e.seed, epoch=0, segment=None)
                key = f"{e.phase}/{e.seed}"
                v["schedules"][key] = e.schedule
                v["series"][key] = {"step": [], "epoch": [], "segment": [], "losses": {}}
                v["segments"][key] = []
                v["eval"][key] = {"epoch": [], "acc": [], "info_flow": []}
                self.log.append(f"▶ {e.phase}" + (f" (seed {e.seed})" if e.phase not in ("teacher", "aux") else "")
                                + f": {' → '.join(p['name'] for p in e.schedule)}")
            elif e.kind == "layer_switch":
                v["segment"] = e.name
                v["segments"][f"{e.phase}/{e.seed}"].append({"name": e.name, "step": e.step})
                self.log.append(f"  {e.phase}: now training {e.name}")
            elif e.kind == "step":
                s = v["series"][f"{e.phase}/{e.seed}"]
                s["step"].append(e.step)
                s["epoch"].append(e.epoch)
                s["segment"].append(e.segment)
                n = len(s["step"])
                for name, value in e.losses.items():
                    s["losses"].setdefault(name, [None] * (n - 1)).append(value)
                for name, values in s["losses"].items():
                    if len(values) < n:
                        values.append(None)
                v["epoch"] = e.epoch
            elif e.kind == "epoch":
                r = v["eval"][f"{e.phase}/{e.seed}"]
                r["epoch"].append(e.epoch)
                r["acc"].append(e.metrics.get("eval_acc"))
                r["info_flow"].append(e.metrics.get("info_flow"))
                self.log.append(f"  {e.phase} epoch {e.epoch}: {ev.eval_text(e.metrics)}")
            elif e.kind == "channel_maps":
                v["channel_maps"] = {"pruned_arch": e.pruned_arch, "stages": e.stages}
                self.maps_revision += 1
                self.log.append(f"pruned {e.pruned_arch}: kept " + ", ".join(f"{len(s['kept'])}/{s['teacher_channels']}"
                                                                             for s in e.stages))
            elif e.kind == "phase_result":
                self.log.append(f"✔ {e.phase}" + (f" seed {e.seed}" if e.seed is not None else "")
                                + f": {ev.test_text(e.result)} in {e.result['train_seconds']:.1f} s")
                v["results"] = copy.deepcopy(self.experiment.results.get("phases", {}))
            elif e.kind == "finished":
                self.state = "finished"
                v["results"] = copy.deepcopy(e.results.get("phases", {}))
                if "grid" in e.results:
                    v["grid"] = copy.deepcopy(e.results["grid"])
                self.log.append(f"finished — run folder {e.run_dir}")
            elif e.kind == "failed":
                self.state, v["error"] = "failed", e.message
                self.log.append(f"✖ failed{' in ' + e.phase if e.phase else ''}: {e.message}")
            elif e.kind == "cancelled":
                self.state = "cancelled"
                self.log.append(f"cancelled{' during ' + e.phase if e.phase else ''}; finished phases are kept "
                                f"and the run can be resumed")

    def snapshot(self) -> dict:
        """A JSON-ready copy of the job's state, safe to read from any thread."""
        with self.lock:
            exp = self.experiment
            done, total = exp.done_steps, exp.total_steps
            elapsed = (time.time() - self.started) if self.started else 0.0
            frac = done / total if total else (1.0 if self.state == "finished" else 0.0)
            eta = elapsed / frac - elapsed if 0 < frac < 1 else (0.0 if self.state == "finished" else None)
            snap = copy.deepcopy(self.view)
            snap.update(id=self.id, state=self.state, run_dir=str(exp.run_dir), steps_done=done, steps_total=total,
                        progress=round(frac, 4), elapsed_s=round(elapsed, 1), eta_s=None if eta is None else round(eta, 1),
                        queue_position=self.manager.queue_position(self) if self.manager else 0,
                        log=list(self.log), config=self.cfg.to_dict(), data=exp.results.get("data"))
            return snap


class JobManager:
    """Owns the jobs of every browser session; at most ``max_concurrent`` train at once."""

    def __init__(self, max_concurrent: int = 1, runs_root: str | Path = "runs") -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.gate = threading.BoundedSemaphore(max_concurrent)
        self.runs_root = Path(runs_root)
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self._order = itertools.count()

    def submit(self, cfg: ExperimentConfig) -> Job:
        job = Job(cfg, self.runs_root, self)
        with self.lock:
            self.jobs[job.id] = job
        return job.start()

    def submit_grid(self, cfg: ExperimentConfig, a_values: list[float], b_values: list[float]) -> Job:
        """The a × b curriculum grid (plus a joint run) as one background job."""
        job = Job(cfg, self.runs_root, self, grid=(a_values, b_values))
        with self.lock:
            self.jobs[job.id] = job
        return job.start()

    def resume(self, run_dir: str | Path) -> Job:
        job = Job(None, self.runs_root, self, resume_dir=run_dir)  # type: ignore[arg-type]
        job.cfg = job.experiment.cfg
        with self.lock:
            self.jobs[job.id] = job
        return job.start()

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def queue_position(self, job: Job) -> int:
        """1 for the next to start, 2 after it, …; 0 when running or done."""
        if job.state != "queued":
            return 0
        with self.lock:
            queued = [j for j in self.jobs.values() if j.state == "queued"]
        queued.sort(key=lambda j: j.submitted)
        return queued.index(job) + 1 if job in queued else 0

    def load_results(self, run_id: str) -> dict | None:
        """Results of a finished run by its folder name (a page refresh re-opens it)."""
        path = self.runs_root / Path(run_id).name / "results.json"
        return json.loads(path.read_text()) if path.is_file() else None
