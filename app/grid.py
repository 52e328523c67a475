"""The a × b curriculum grid (InDistill's Fig. 5 on a small budget), plus two controls:
the same warm-up without the curriculum (``joint``, Fig. 4's with/without comparison)
and no warm-up at all (``off``: KD only).

Equal totals, as in the reference: every cell and control trains its student for the same
budget T (``student.epochs``); the warm-up Σ S_l comes out of it and KD gets the rest,
T − Σ S_l. A cell whose warm-up leaves no KD epochs is refused. Every cell is an ordinary
:class:`~app.experiment.Experiment` with only the InDistill student; all share one teacher
and one auxiliary teacher (trained by the first cell unless given, then passed on as
``teacher.checkpoint`` and ``indistill.aux_checkpoint``). With a Ray backend
(:mod:`app.sweep`) the first cell runs as one task, then every other cell at once.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Callable

from . import events as ev
from . import stats
from .config import ConfigError, ExperimentConfig
from .experiment import Experiment
from models import MODELS

from .pairing import spec_of
from .plan import make_plan
from .recipe import resolve_recipe
from .results import RunResults, UnitKey, eval_series, unit_of
from .runfolder import RunFolder, read_json
from .schedule import curriculum_epochs
from .train import CancelledError


def parse_values(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{name}: give numbers separated by commas, e.g. 0, 1, 2 (got {text!r})") from None
    if not 1 <= len(values) <= 6:
        raise ConfigError(f"{name}: give 1 to 6 values, got {len(values)}")
    return values


class CurriculumGrid:
    """Runs the grid; exposes the same surface as Experiment for the job runner."""

    def __init__(self, cfg: ExperimentConfig, a_values: list[float], b_values: list[float], run_dir: str | Path, *,
                 emit: Callable[[ev.Event], None] | None = None, cancel: threading.Event | None = None,
                 include_joint: bool = True, include_off: bool = True, backend=None, store=None,
                 scope: str | None = None) -> None:
        self.cfg, self.run_dir, self.backend = cfg, Path(run_dir), backend  # backend: None (here) or app.sweep
        self.store, self.scope = store, scope  # app.unitstore.UnitStore: cells here take stored units
        self.emit = emit or (lambda e: None)
        self.cancel = cancel or threading.Event()
        self.total = cfg.student.epochs           # T: every cell's student epochs, warm-up included
        ind = cfg.indistill
        base = cfg.with_overrides({"phases.baseline": False, "phases.kd": False, "phases.indistill": True,
                                   "seeds": 1, "eval.retrieval": False, "eval.latency_runs": 3,
                                   "indistill.aux_epochs": ind.aux_epochs if ind.aux_epochs is not None
                                   else cfg.student.epochs})
        self.cells = [("curriculum", a, b) for a in a_values for b in b_values]
        if include_joint:
            self.cells.append(("joint", a_values[0], b_values[0]))
        if include_off:
            self.cells.append(("off", a_values[0], b_values[0]))
        problems, self.configs = [], []
        for i, (m, a, b) in enumerate(self.cells):
            warm = self.warmup_epochs(m, a, b)
            if warm >= self.total:
                problems.append(f"{m} a={a:g} b={b:g}: the warm-up (Σ S_l = {warm:g} epochs) leaves no KD epochs of "
                                f"the budget T = student.epochs = {self.total:g}; lower a or b, or raise student.epochs")
                continue
            c = base.with_overrides({"indistill.mode": m, "indistill.a": a, "indistill.b": b, "budget": "added",
                                     "student.epochs": self.total - warm, "name": f"grid-{i}"})  # KD: T − Σ S_l
            self.configs.append(c)
            problems += [f"{m} a={a:g} b={b:g}: {p}" for p in make_plan(c).problems]
        if problems:
            raise ConfigError("grid cells that cannot run:\n  - " + "\n  - ".join(problems))
        self.results: RunResults = {"grid": {"a": a_values, "b": b_values, "total_epochs": self.total, "cells": []},
                              "status": "queued", "run_dir": self.run_dir.name, "phases": {}}
        self.current: Experiment | None = None
        self.finished_cells = 0
        self.teacher_ckpt, self.aux_ckpt = cfg.teacher.checkpoint, cfg.indistill.aux_checkpoint

    def warmup_epochs(self, mode: str, a: float, b: float) -> float:
        """Σ S_l of a cell (0 for the no-warm-up control), unscaled, as in ``student.epochs``."""
        if mode == "off":
            return 0.0
        arch = self.cfg.student.arch
        n = len(spec_of(arch, 10, 1.0, self.cfg.data.input_size).stages) if arch in MODELS else 0
        return sum(v for v in curriculum_epochs(a, b, n + (1 if resolve_recipe(self.cfg).embed else 0)) if v > 0)

    @property
    def done_steps(self) -> int:
        frac = self.current.done_steps / max(self.current.total_steps, 1) if self.current else 0.0
        return int(1000 * (self.finished_cells + (frac if self.finished_cells < len(self.cells) else 0)))

    @property
    def total_steps(self) -> int:
        return 1000 * len(self.cells)

    def release(self) -> None:
        if self.current is not None:
            self.current.release()

    def cell_dir(self, i: int) -> Path:
        return self.run_dir / f"cell-{i}"

    def shared(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """``cfg`` with the teacher and auxiliary teacher of the first cell (once it ran)."""
        shared = {k: v for k, v in (("teacher.checkpoint", self.teacher_ckpt),
                                    ("indistill.aux_checkpoint", self.aux_ckpt)) if v}
        return cfg.with_overrides(shared) if shared else cfg

    def run(self) -> dict:
        """Every cell in order (the first trains the shared networks), recorded as it ends."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.results["status"] = "running"
        self.teacher_ckpt, self.aux_ckpt = self.cfg.teacher.checkpoint, self.cfg.indistill.aux_checkpoint
        try:
            for i, out in (self._cells_here() if self.backend is None else self._cells_on_ray()):
                if out["status"] != "finished":
                    self.results["status"] = out["status"]
                    RunFolder(self.run_dir).write_results(self.results)
                    return self.results
                self._record(i, out)
        except CancelledError:  # a sweep on Ray cancelled between cells (the local path returns it as status)
            self.results["status"] = "cancelled"
            RunFolder(self.run_dir).write_results(self.results)
            return self.results
        except Exception:
            self.results["status"] = "failed"
            RunFolder(self.run_dir).write_results(self.results)
            raise
        self.results["grid"]["comparisons"] = self.compare(self.results["grid"]["cells"])
        self.results["status"] = "finished"
        RunFolder(self.run_dir).write_results(self.results)
        self.emit(ev.Finished(str(self.run_dir), self.results))
        return self.results

    def finished_cell(self, i: int) -> dict | None:
        """A cell's results when an earlier run of this grid finished it (resume cell by cell)."""
        folder = RunFolder(self.cell_dir(i))
        results = folder.read_results() or {}
        if results.get("status") != "finished":
            return None
        def canonical(cfg: ExperimentConfig) -> dict:  # through the reader: an older spelling reads the same
            return json.loads(json.dumps(cfg.to_dict(), default=str))
        saved = read_json(folder.config)
        try:
            same = saved is not None and canonical(ExperimentConfig.from_dict(saved)) == \
                canonical(self.shared(self.configs[i]))
        except ConfigError:
            same = False
        return results if same else None  # settings changed: run it again

    def _cells_here(self):
        for i, ((mode, a, b), cfg) in enumerate(zip(self.cells, self.configs)):
            if (done := self.finished_cell(i)) is not None:
                self.emit(ev.Log(f"grid cell {i + 1}/{len(self.cells)}: finished earlier"))
                yield i, done
                continue
            self.emit(ev.Log(f"grid cell {i + 1}/{len(self.cells)}: {mode} a={a:g} b={b:g}"))
            self.current = Experiment(self.shared(cfg), self.cell_dir(i), emit=self._forward, cancel=self.cancel,
                                      store=self.store, scope=self.scope)
            yield i, self.current.run()

    def _cells_on_ray(self):
        """The first cell as one task; then every other cell at once, with the first's networks."""
        from .sweep import run_experiments
        self.emit(ev.Log(f"grid on {self.backend.describe()}: cell 1 trains the shared networks, then "
                         f"{len(self.cells) - 1} cells at once"))
        first = self.finished_cell(0) or run_experiments(
            self.backend, [(self.shared(self.configs[0]), self.cell_dir(0))], emit=self.emit, cancel=self.cancel)[0]
        yield 0, first
        todo = [i for i in range(1, len(self.configs)) if self.finished_cell(i) is None]
        outs = dict(zip(todo, run_experiments(self.backend, [(self.shared(self.configs[i]), self.cell_dir(i))
                                                             for i in todo], emit=self.emit, cancel=self.cancel)))
        for i in range(1, len(self.configs)):
            yield i, outs.get(i) or self.finished_cell(i)

    def _record(self, i: int, out: dict) -> None:
        mode, a, b = self.cells[i]
        folder = RunFolder(self.cell_dir(i))
        self.teacher_ckpt = self.teacher_ckpt or str(folder.checkpoint("teacher"))
        if "aux" in out["phases"] and not self.aux_ckpt:
            self.aux_ckpt = str(folder.checkpoint("aux"))
        ind = out["phases"]["indistill"]
        unit = unit_of(out, UnitKey("indistill", 0))
        curves = eval_series(unit.get("history", []))
        schedule = out["schedule"]["indistill"]
        self.results["grid"]["cells"].append({
            "mode": mode, "a": a, "b": b, "test_acc": ind["test_acc"], "test_acc_ci": ind.get("test_acc_ci"),
            "test_images": unit.get("test_images"), "correct": unit.get("correct"),
            "warmup_epochs": sum(p["epochs"] for p in schedule if p["kind"] != "kd"),
            "kd_epochs": sum(p["epochs"] for p in schedule if p["kind"] == "kd"),
            "total_epochs": sum(p["epochs"] for p in schedule),
            "info_flow": curves["info_flow"], "epochs": curves["epoch"]})
        for shared in ("teacher", "aux"):
            if shared in out["phases"] and shared not in self.results["phases"]:
                self.results["phases"][shared] = out["phases"][shared]
        self.finished_cells += 1
        RunFolder(self.run_dir).write_results(self.results)

    @staticmethod
    def compare(cells: list[dict]) -> list[dict]:
        """Each cell's accuracy minus the no-warm-up control's, at the same total, on the same
        test images: a McNemar-style 95 % interval and a verdict (one seed per cell)."""
        off = next((c for c in cells if c["mode"] == "off" and c.get("correct")), None)
        if off is None:
            return []
        base = stats.unpack_bits(off["correct"], off["test_images"])
        out = []
        for c in cells:
            if c is off or not c.get("correct"):
                continue
            d = stats.paired_difference([off["test_acc"]], [c["test_acc"]], a_items=base,
                                        b_items=stats.unpack_bits(c["correct"], c["test_images"]), kind="correct")
            out.append({"mode": c["mode"], "a": c["a"], "b": c["b"], "versus": "off"} | d)
        return out

    def _forward(self, e: ev.Event) -> None:
        if e.kind not in ("finished",):  # the grid announces its own end
            self.emit(e)

