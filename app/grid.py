"""The a × b curriculum grid (InDistill's Fig. 5 on a small budget), plus the same
warm-up without the curriculum (``joint``) for the with/without comparison of Fig. 4.

Every cell is an ordinary :class:`~app.experiment.Experiment` with only the InDistill
student, sharing one teacher checkpoint (trained by the first cell when none is given).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from . import events as ev
from .config import ConfigError, ExperimentConfig
from .experiment import Experiment
from .plan import make_plan
from .runfolder import RunFolder


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
                 include_joint: bool = True) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.emit = emit or (lambda e: None)
        self.cancel = cancel or threading.Event()
        base = cfg.with_overrides({"phases.baseline": False, "phases.kd": False, "phases.indistill": True,
                                   "seeds": 1, "eval.retrieval": False, "eval.latency_runs": 3})
        self.cells = [("curriculum", a, b) for a in a_values for b in b_values]
        if include_joint:
            self.cells.append(("joint", a_values[0], b_values[0]))
        self.configs = [base.with_overrides({"indistill.mode": m, "indistill.a": a, "indistill.b": b,
                                             "name": f"grid-{i}"}) for i, (m, a, b) in enumerate(self.cells)]
        problems = [f"{m} a={a:g} b={b:g}: {p}" for (m, a, b), c in zip(self.cells, self.configs)
                    for p in make_plan(c).problems]
        if problems:
            raise ConfigError("grid cells that cannot run:\n  - " + "\n  - ".join(problems))
        self.results: dict = {"grid": {"a": a_values, "b": b_values, "cells": []}, "status": "queued",
                              "run_dir": str(self.run_dir), "phases": {}}
        self.current: Experiment | None = None
        self.finished_cells = 0

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

    def run(self) -> dict:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.results["status"] = "running"
        teacher_ckpt = self.cfg.teacher.checkpoint
        for i, ((mode, a, b), cfg) in enumerate(zip(self.cells, self.configs)):
            if teacher_ckpt:
                cfg = cfg.with_overrides({"teacher.checkpoint": teacher_ckpt})
            self.emit(ev.Log(f"grid cell {i + 1}/{len(self.cells)}: {mode} a={a:g} b={b:g}"))
            self.current = Experiment(cfg, self.run_dir / f"cell-{i}", emit=self._forward, cancel=self.cancel)
            try:
                out = self.current.run()
            except Exception:
                self.results["status"] = "failed"
                RunFolder(self.run_dir).write_results(self.results)
                raise
            if out["status"] != "finished":
                self.results["status"] = out["status"]
                RunFolder(self.run_dir).write_results(self.results)
                return self.results
            teacher_ckpt = teacher_ckpt or str(self.current.ckpt("teacher"))
            ind = out["phases"]["indistill"]
            unit = ind["units"]["0"]
            self.results["grid"]["cells"].append({
                "mode": mode, "a": a, "b": b, "test_acc": ind["test_acc"],
                "warmup_epochs": sum(p["epochs"] for p in out["schedule"]["indistill"][:-1]),
                "info_flow": [h.get("info_flow") for h in unit.get("history", [])],
                "epochs": [h["epoch"] for h in unit.get("history", [])]})
            self.results["phases"]["teacher"] = out["phases"].get("teacher", {})
            self.finished_cells += 1
            RunFolder(self.run_dir).write_results(self.results)
        self.results["status"] = "finished"
        RunFolder(self.run_dir).write_results(self.results)
        self.emit(ev.Finished(str(self.run_dir), self.results))
        return self.results

    def _forward(self, e: ev.Event) -> None:
        if e.kind not in ("finished",):  # the grid announces its own end
            self.emit(e)


def load_grid(run_dir: str | Path) -> dict | None:
    return (RunFolder(Path(run_dir)).read_results() or {}).get("grid")
