"""Sweeps on Ray: the a × b grid's cells and a study's student units as Ray tasks.

Once a sweep's shared networks exist (the teacher, the auxiliary teacher), its units are
independent. A Ray task gets a self-contained :class:`Job` — the run folder's files as bytes,
the checkpoints its configuration names, the student units to run — recreates the folder in
a scratch directory, runs :class:`~app.experiment.Experiment` there (restricted to those
units with ``only=``) and returns the files it wrote. The driver writes them into the real
run folder, so results land where the local backend puts them, and the merge is the local
code itself: a resumed Experiment whose units are all recorded only aggregates and compares.

No node needs the driver's filesystem, except for the data: ``data.data_dir`` must exist at
the same path on every node (or pick CIFAR-10/100 by name, downloaded per node). Ray is an
optional extra: ``pip install -r requirements-ray.txt``.
"""
from __future__ import annotations

import copy
import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Sequence

from . import events as ev
from .config import ConfigError, ExperimentConfig, resolve_path
from .plan import make_plan
from .results import UnitKey, read_results, unit_of, units
from .runfolder import CONFIG, RESULTS, RunFolder, write_json

BACKENDS = ("local", "ray")
CHECKPOINT_KEYS = ("teacher.checkpoint", "indistill.aux_checkpoint")
SHARED_UNITS = ("teacher", "aux")
ROOT = Path(__file__).resolve().parents[1]
# what a remote cluster's working_dir upload leaves out (never code the tasks import)
UPLOAD_EXCLUDES = [".git", ".venv", ".cache", "runs", "reports", "test-artifacts", "docs", "assets/library"]


class SweepError(RuntimeError):
    """A Ray task failed; the message carries the task's own error."""


@dataclass
class Job:
    """One Ray task's whole input: nothing in it refers to the driver's filesystem."""
    config: dict                                   # the run's configuration (as the driver has it)
    files: dict[str, bytes] = field(default_factory=dict)    # run-folder files by relative path
    inputs: dict[str, bytes] = field(default_factory=dict)   # config key → bytes of the checkpoint it names
    only: list[str] | None = None                  # student units to run; None: the whole experiment
    threads: int = 1                               # CPU threads (the task's declared CPUs)
    label: str = ""
    root: str = str(ROOT)                          # the driver's checkout: shipped data in it is found in the task's


@dataclass
class Output:
    files: dict[str, bytes]                        # files the task wrote or changed (config.json aside)
    results: dict
    log: list[str]


def _digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _get(cfg: dict, key: str):
    for part in key.split("."):
        cfg = (cfg or {}).get(part)
    return cfg


def run_job(job: Job) -> Output:
    """Run ``job`` in a scratch run folder (the body of every Ray task; importable, pure)."""
    from .experiment import Experiment
    os.environ["INDISTILL_TRAIN_THREADS"] = str(job.threads)
    with tempfile.TemporaryDirectory(prefix="indistill-job-") as tmp:
        root, overrides = Path(tmp), {}
        data_dir = str(_get(job.config, "data.data_dir") or "")
        if data_dir.startswith(job.root + os.sep):  # e.g. the embedded sample: this node's copy of the checkout
            overrides["data.data_dir"] = str(ROOT / os.path.relpath(data_dir, job.root))
        for key, blob in job.inputs.items():  # same file name: it appears in logs and results
            path = root / "inputs" / key / Path(_get(job.config, key)).name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
            overrides[key] = str(path)
        folder = RunFolder(root / "run")
        for rel, blob in job.files.items():
            (folder.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder.path / rel).write_bytes(blob)
        write_json(ExperimentConfig.from_dict(job.config).with_overrides(overrides).to_dict(), folder.config)
        log: list[str] = []
        emit = lambda e: log.append(e.message) if isinstance(e, ev.Log) else None  # noqa: E731
        results = Experiment(run_dir=folder.path, resume=True, only=job.only, emit=emit).run()
        before = {rel: _digest(blob) for rel, blob in job.files.items()}
        changed = {}
        for path in sorted(p for p in folder.path.rglob("*") if p.is_file()):
            rel = path.relative_to(folder.path).as_posix()
            blob = path.read_bytes()
            if rel != CONFIG and before.get(rel) != _digest(blob):
                changed[rel] = blob
        return Output(changed, results, log)


# ---------------------------------------------------------------- backends

class RayBackend:
    """Runs jobs as Ray tasks, each declaring ``task_cpus`` CPUs and ``task_gpus`` GPUs.

    ``address=None`` starts a local Ray (``num_cpus`` CPUs, default all); ``"auto"`` or
    ``ray://host:10001`` joins a running cluster, which gets this checkout's code as its
    ``working_dir`` (the data must be reachable at the same path on every node).
    """
    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, task_cpus: int = 1,
                 task_gpus: float = 0) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--backend ray needs Ray, an optional extra: pip install -r requirements-ray.txt "
                              "(or use --backend local)") from None
        if task_cpus < 1 or task_gpus < 0:
            raise ConfigError(f"a task needs at least 1 CPU and 0 or more GPUs; got {task_cpus} CPUs, {task_gpus} GPUs")
        self.ray, self.address, self.task_cpus, self.task_gpus = ray, address, int(task_cpus), task_gpus
        self.started = not ray.is_initialized()
        if self.started:
            if address is None:  # this machine: the workers import the checkout in place
                env = {"env_vars": {"PYTHONPATH": str(ROOT)}}
            else:
                env = {"working_dir": str(ROOT), "excludes": UPLOAD_EXCLUDES}
            ray.init(address=address, num_cpus=num_cpus if address is None else None, runtime_env=env,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)

    def describe(self) -> str:
        res = self.ray.cluster_resources()
        return (f"Ray ({self.address or 'local'}: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs; "
                f"{self.task_cpus} CPU and {self.task_gpus:g} GPU per task)")

    def map(self, jobs: Sequence[Job], *, on_done: Callable[[int, Output], object] | None = None,
            emit: Callable[[ev.Event], None] | None = None, cancel: threading.Event | None = None) -> list[Output]:
        """Every job as a task, at once; the outputs in job order. ``on_done(i, output)`` runs as each
        task ends, so finished work is kept when another task fails (the rest still run; then
        SweepError names the failures) or the sweep is cancelled (pending tasks are cancelled).
        Lost workers or nodes are retried twice: a task only writes its own scratch folder."""
        ray = self.ray
        for j in jobs:
            j.threads = self.task_cpus
        task = ray.remote(num_cpus=self.task_cpus, num_gpus=self.task_gpus, max_retries=2)(run_job)
        refs = [task.remote(j) for j in jobs]
        index = {r: i for i, r in enumerate(refs)}
        outs: list[Output | None] = [None] * len(refs)
        failed: list[str] = []
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                if cancel is not None and cancel.is_set():
                    from .train import CancelledError
                    raise CancelledError()
                for r in done:
                    i = index[r]
                    try:
                        outs[i] = ray.get(r)
                    except ray.exceptions.RayError as exc:  # the others go on: their work is kept
                        cause = getattr(exc, "cause", None) or exc
                        failed.append(f"{jobs[i].label}: {type(cause).__name__}: {' '.join(str(cause).split())[:300]}")
                        continue
                    if on_done is not None:
                        on_done(i, outs[i])
                    if emit is not None:
                        emit(ev.Log(f"ray: {jobs[i].label} done ({sum(o is not None for o in outs)}/{len(jobs)})"))
                        for line in outs[i].log[-3:]:
                            emit(ev.Log(f"  {jobs[i].label}: {line}"))
        finally:
            for r in pending:
                ray.cancel(r, force=True)
        if failed:
            raise SweepError(f"{len(failed)} of {len(jobs)} Ray tasks failed (the others' results are kept; run the "
                             f"same command again to retry): " + "; ".join(failed[:3]))
        return outs

    def shutdown(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_backend(name: str, address: str | None = None, *, num_cpus: int | None = None, task_cpus: int = 1,
                 task_gpus: float = 0) -> RayBackend | None:
    """``local`` → None (the ordinary in-process path); ``ray`` → a :class:`RayBackend`."""
    if name not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "local":
        if address:
            raise ConfigError("--address joins a Ray cluster: use it with --backend ray")
        return None
    return RayBackend(address, num_cpus=num_cpus, task_cpus=task_cpus, task_gpus=task_gpus)


# ---------------------------------------------------------------- driver side

def make_job(cfg: ExperimentConfig, folder: RunFolder, only: Collection[str] | None, label: str,
             units: Collection[str] = SHARED_UNITS) -> Job:
    """A job for ``folder``: its results and the checkpoints of ``units`` (the shared networks by
    default), plus the checkpoints the configuration names."""
    config = cfg.to_dict()
    for key in ("data_dir", "cache_dir"):  # a task's working directory may not be this one
        if config["data"].get(key) and not Path(config["data"][key]).is_absolute():
            config["data"][key] = str(Path(config["data"][key]).resolve())
    files = {}
    if folder.results.is_file():
        files[RESULTS] = folder.results.read_bytes()
    for unit in units:
        if folder.checkpoint(unit).is_file():
            files[folder.checkpoint(unit).relative_to(folder.path).as_posix()] = folder.checkpoint(unit).read_bytes()
    inputs = {key: resolve_path(_get(config, key)).read_bytes() for key in CHECKPOINT_KEYS if _get(config, key)}
    return Job(config, files, inputs, None if only is None else sorted(only), label=label)


def absorb(cfg: ExperimentConfig, folder: RunFolder, out: Output, only: Collection[str] | None = None) -> dict:
    """Write a task's files into ``folder`` and its results into ``results.json``: all of them
    for a whole run (``only=None``), else just the units in ``only`` and the cost of their
    architecture is left to the merge (:meth:`Experiment.fill_costs`: one figure per architecture,
    measured outside the crowd of training tasks)."""
    folder.path.mkdir(parents=True, exist_ok=True)
    write_json(cfg.to_dict(), folder.config)
    for rel, blob in out.files.items():
        if rel == RESULTS:
            continue
        path = folder.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    theirs = copy.deepcopy(out.results)
    if only is None:
        results = theirs
    else:  # the task's cost figures are dropped: measured beside other tasks; the merge measures them
        results = folder.read_results() or {}
        for key, unit in units(read_results(theirs)):
            if key.name in only:
                mine = results.setdefault("phases", {}).setdefault(key.phase, {"units": {}})
                mine["units"][key.slot] = unit  # tasks end in any order; the units stay in seed order
                mine["units"] = dict(sorted(mine["units"].items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1))
    results.update({"config": cfg.to_dict(), "run_dir": folder.path.name})
    folder.write_results(results)
    return results


def run_experiments(backend: RayBackend, runs: Sequence[tuple[ExperimentConfig, Path]], *,
                    emit: Callable[[ev.Event], None] | None = None,
                    cancel: threading.Event | None = None) -> list[dict]:
    """Whole experiments, one task each (the grid's cells); their results, in order."""
    folders = [RunFolder(Path(path)) for _, path in runs]
    jobs = [make_job(cfg, f, None, cfg.name, units=()) for (cfg, _), f in zip(runs, folders)]
    results: list[dict | None] = [None] * len(jobs)

    def keep(i: int, out: Output) -> None:
        results[i] = absorb(runs[i][0], folders[i], out)
    backend.map(jobs, on_done=keep, emit=emit, cancel=cancel)
    return results


def pending_units(cfg: ExperimentConfig, results: dict) -> list[str]:
    """Student units of ``cfg`` not yet recorded in ``results``, in the local backend's order."""
    return [UnitKey(phase, seed).name for phase in make_plan(cfg).schedules for seed in range(cfg.seeds)
            if unit_of(results, UnitKey(phase, seed)) is None]


def run_units(backend: RayBackend, runs: Sequence[tuple[ExperimentConfig, Path]], *,
              emit: Callable[[ev.Event], None] | None = None,
              cancel: threading.Event | None = None) -> list[dict]:
    """Experiments split into units (a study): (1) each run's shared networks, one task per run;
    (2) every student unit left, of every run, one task each, all at once; (3) each run's merge,
    one task that finds every unit recorded and aggregates and compares. Resumable: recorded
    units are not run again."""
    folders = [RunFolder(Path(path)) for _, path in runs]
    for f in folders:
        f.path.mkdir(parents=True, exist_ok=True)
    backend.map([make_job(cfg, f, (), f"{cfg.name} teacher/aux") for (cfg, _), f in zip(runs, folders)],
                on_done=lambda i, out: absorb(runs[i][0], folders[i], out), emit=emit, cancel=cancel)
    todo = [(cfg, f, unit) for (cfg, _), f in zip(runs, folders)
            for unit in pending_units(cfg, f.read_results() or {})]
    backend.map([make_job(cfg, f, [unit], f"{cfg.name} {unit}") for cfg, f, unit in todo],
                on_done=lambda i, out: absorb(todo[i][0], todo[i][1], out, [todo[i][2]]), emit=emit, cancel=cancel)
    results: list[dict | None] = [None] * len(runs)

    def merged(i: int, out: Output) -> None:
        results[i] = absorb(runs[i][0], folders[i], out)
    backend.map([make_job(cfg, f, None, f"{cfg.name} merge", units=SHARED_UNITS + tuple(pending_units(cfg, {})))
                 for (cfg, _), f in zip(runs, folders)], on_done=merged, emit=emit, cancel=cancel)
    return results
