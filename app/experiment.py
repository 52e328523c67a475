"""An experiment: teacher → (auxiliary teacher) → baseline, KD and InDistill+KD students.

Each phase unit (a phase for one seed) trains, evaluates, writes its checkpoint
atomically and records its result in ``results.json`` before the next starts, so a
cancelled or crashed run resumes from the last finished unit (``Experiment(resume=...)``).
Progress is published as :mod:`app.events`; nothing here knows about the UI.
"""
from __future__ import annotations

import statistics
import threading
from pathlib import Path
from typing import Callable

import torch

from models import build_model

from . import distributed
from . import events as ev
from .augment import BatchStream, steps_per_epoch
from .checkpoint import CheckpointError, atomic_save, load_checkpoint, load_into, save_model
from .config import ConfigError, ExperimentConfig
from .data import Dataset, load_dataset
from .device import Runtime, resolve, seed_everything
from .evaluate import eval_accuracy, evaluate_model, fixed_batch, layer_information
from .features import FeatureTap
from .fold import fold_batchnorm
from .losses import build_loss, pkt_indistill_loss, pkt_loss
from .pairing import spec_of
from .plan import Plan, make_plan
from .pruning import PrunedFeatures, plan_pruning
from .runfolder import RunFolder, new_run_id, read_json, unit_name, write_json
from .schedule import Phase
from .train import (CancelledError, LoopContext, Segment, ce_objective, kd_objective, run_segments, steps_for,
                    trainable, warmup_objective)

STUDENT_PHASES = ("baseline", "kd", "indistill")
EMBED_LOSSES = {"pkt": pkt_loss, "pkt_indistill": pkt_indistill_loss}


def new_run_dir(root: str | Path, name: str) -> Path:
    """A fresh run folder path under ``root`` (sanitised name + unguessable suffix)."""
    return Path(root) / new_run_id(name)


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


class Experiment:
    """Run (or resume) one experiment in ``run_dir``."""

    def __init__(self, cfg: ExperimentConfig | None = None, run_dir: str | Path | None = None, *,
                 runs_root: str | Path = "runs", emit: Callable[[ev.Event], None] | None = None,
                 cancel: threading.Event | None = None, resume: bool = False) -> None:
        if resume:
            config = read_json(RunFolder(Path(run_dir)).config) if run_dir is not None else None
            if config is None:
                raise ConfigError(f"cannot resume: {run_dir} has no readable config.json (not a run folder)")
            cfg = ExperimentConfig.from_dict(config)
        if cfg is None:
            raise ConfigError("an experiment needs a configuration")
        self.cfg = cfg
        self.plan: Plan = make_plan(cfg)
        self.plan.raise_if_invalid()
        self.run_dir = Path(run_dir) if run_dir is not None else new_run_dir(runs_root, cfg.name)
        self.dist = distributed.from_env()  # torchrun ranks; rank 0 alone writes and emits
        self.emit = (emit or (lambda e: None)) if self.dist.main else (lambda e: None)
        self.cancel = cancel or threading.Event()
        self.results: dict = {}
        if resume:
            self.results = RunFolder(self.run_dir).read_results() or {}
        self.total_steps = 0
        self.done_steps = 0
        self._verified: dict[str, bool] = {}

    # ------------------------------------------------------------ helpers
    def log(self, message: str) -> None:
        self.emit(ev.Log(message))

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    def ckpt(self, name: str) -> Path:
        return self.folder.checkpoint(name)

    def save_results(self) -> None:
        if self.dist.main:
            self.folder.write_results(self.results)

    def unit_done(self, phase: str, seed: int | None) -> bool:
        """Recorded in results.json and its checkpoint loads (checked once; a bad one is re-run)."""
        entry = self.results.get("phases", {}).get(phase, {})
        key = "single" if seed is None else str(seed)
        name = unit_name(phase, seed)
        if key not in entry.get("units", {}):
            return False
        if name not in self._verified:
            try:
                load_checkpoint(self.ckpt(name))
                self._verified[name] = True
            except CheckpointError as exc:
                self._verified[name] = False
                entry["units"].pop(key, None)
                self.log(f"resume: {name} is recorded as done but its checkpoint does not load ({exc}); "
                         "re-running that unit")
        return self._verified[name]

    def release(self) -> None:
        """Drop the dataset and evaluation batch (a finished job keeps only its results)."""
        for attr in ("data", "info_batch"):
            self.__dict__.pop(attr, None)

    def _tick(self) -> None:
        self.done_steps += 1

    def loop(self, phase: str, seed: int) -> LoopContext:
        o = self.cfg.optim
        return LoopContext(self.rt, self.emit, self.cancel, phase, seed, o.momentum, o.weight_decay, self._tick, self.dist)

    def stream(self, seed: int) -> BatchStream:
        o = self.cfg.optim
        return BatchStream(self.data.train, o.batch_size, self.rt.device, self.data.mean, self.data.std,
                           augment=o.augment, seed=seed, channels_last=self.rt.channels_last, shard=self.dist.shard)

    def build(self, arch: str, width: float = 1.0, seed: int = 0):
        seed_everything(seed)
        return self.rt.prepare(build_model(arch, self.data.num_classes, width))

    def spec(self, arch: str):
        """Stage spec of ``arch`` at width 1 for this dataset (cached; no forward pass per phase)."""
        return spec_of(arch, self.data.num_classes, 1.0, self.cfg.data.input_size)

    def meta(self, arch: str, width: float, phase: str, seed: int | None, acc: float | None) -> dict:
        d = self.data
        return {"arch": arch, "width": width, "num_classes": d.num_classes, "classes": d.classes,
                "mean": list(d.mean), "std": list(d.std), "input_size": self.cfg.data.input_size,
                "phase": phase, "seed": seed, "test_acc": acc, "data": d.description}

    # ------------------------------------------------------------ run
    def run(self) -> dict:
        """Run every remaining phase unit; returns ``results`` (also in ``results.json``)."""
        if self.cfg.optim.batch_size % self.dist.world:
            raise ConfigError(f"optim.batch_size={self.cfg.optim.batch_size} must be divisible by the "
                              f"{self.dist.world} processes torchrun started (each takes an equal slice of every batch)")
        self.dist.setup(self.cfg.device)
        self.run_dir = self.dist.from_main(self.run_dir)
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.cfg.to_dict(), self.folder.config)
        self.results.setdefault("phases", {})
        self.results.update({"config": self.cfg.to_dict(), "schedule": self.plan.schedule_dicts(),
                             "verdict": self.plan.verdict.to_dict() if self.plan.verdict else None,
                             "status": "running", "run_dir": str(self.run_dir)})
        phase = None
        try:
            self.rt: Runtime = resolve(self.cfg.device)
            self.dist.share_cores()
            self.results["device"] = self.rt.describe()
            self.log(f"device: {self.rt.describe()}")
            self.data: Dataset = load_dataset(self.cfg.data, self.log)
            d = self.data
            self.results["data"] = {"name": d.name, "description": d.description, "classes": d.classes,
                                    "train": len(d.train), "test": len(d.test), "val": len(d.val) if d.val else 0,
                                    "skipped": d.skipped[:50], "skipped_count": len(d.skipped),
                                    "eval_split": "val" if d.val is not None and len(d.val) else "test"}
            self.info_batch = fixed_batch(d.eval_split, self.cfg.eval.info_batch)
            self.total_steps = self._count_steps()
            self.save_results()
            phase = "teacher"
            teacher = self.teacher_phase()
            frozen_teacher = fold_batchnorm(teacher)  # only ever run for targets: BN folded, no gradients
            pruned, frozen_pruned = teacher, frozen_teacher
            if self.plan.use_aux:
                phase = "aux"
                pruned = self.aux_phase(frozen_teacher)
                frozen_pruned = fold_batchnorm(pruned)
            maps = None
            if self.cfg.phases.indistill:
                size, ind = self.cfg.data.input_size, self.cfg.indistill
                pruned_spec = spec_of(self.cfg.student.arch, d.num_classes, ind.aux_width, size) if self.plan.use_aux \
                    else self.spec(self.cfg.teacher.arch)
                maps = plan_pruning(pruned, pruned_spec, self.spec(self.cfg.student.arch))
                self.results["channel_maps"] = {"pruned_arch": pruned.arch, "stages": [m.to_dict() for m in maps]}
                self.emit(ev.ChannelMaps(pruned.arch, self.results["channel_maps"]["stages"]))
            for phase in self.plan.schedules:
                for seed in range(self.cfg.seeds):
                    if not self.unit_done(phase, seed):
                        self.student_phase(phase, seed, frozen_teacher, frozen_pruned, maps)
                self.aggregate(phase)
            self.dist.barrier()  # the other ranks wait for rank 0's last evaluation and writes
            self.results["status"] = "finished"
            self.save_results()
            self.emit(ev.Finished(str(self.run_dir), self.results))
        except CancelledError:
            self.results["status"] = "cancelled"
            self.save_results()
            self.emit(ev.Cancelled(phase))
        except Exception as exc:  # a failed phase is an event with a message, not a dead thread
            self.results["status"] = "failed"
            self.results["error"] = f"{type(exc).__name__}: {exc}"
            self.save_results()
            self.emit(ev.Failed(str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}", phase))
            raise
        return self.results

    def _count_steps(self) -> int:
        spe = steps_per_epoch(len(self.data.train), self.cfg.optim.batch_size)
        total = 0
        if not self.cfg.teacher.checkpoint and not self.unit_done("teacher", None):
            total += steps_for(self.cfg.scaled(self.cfg.teacher.epochs), spe)
        if self.plan.use_aux and not self.unit_done("aux", None):
            total += steps_for(self.cfg.scaled(self.aux_epochs), spe)
        for phase, schedule in self.plan.schedules.items():
            per_seed = sum(steps_for(p.epochs, spe) for p in schedule)
            total += per_seed * sum(not self.unit_done(phase, s) for s in range(self.cfg.seeds))
        return total

    @property
    def aux_epochs(self) -> float:
        return self.cfg.indistill.aux_epochs if self.cfg.indistill.aux_epochs is not None else self.cfg.student.epochs

    # ------------------------------------------------------------ phases
    def _record(self, phase: str, seed: int | None, result: dict) -> None:
        entry = self.results["phases"].setdefault(phase, {"units": {}})
        entry["units"]["single" if seed is None else str(seed)] = result
        if seed is None:
            entry.update({k: v for k, v in result.items() if k != "history"})
        self.save_results()
        self.emit(ev.PhaseResult(phase, seed, result))

    def _evaluate(self, model, train_seconds: float, epochs: float, history: list) -> dict:
        e = self.cfg.eval
        result = evaluate_model(model, self.data, self.rt, retrieval=e.retrieval, max_queries=e.max_queries,
                                latency_runs=e.latency_runs, input_size=self.cfg.data.input_size)
        result.update({"train_seconds": round(train_seconds, 3), "epochs": epochs, "history": history})
        if e.info_flow:
            result["info_flow"] = layer_information(model, self.info_batch, self.data, self.rt)
        return result

    def _finish(self, phase: str, seed: int | None, model, arch: str, width: float, seconds: float, epochs: float,
                history: list, shown_arch: str | None = None) -> None:
        """Evaluate a trained unit, write its checkpoint and record its result (rank 0 only)."""
        if not self.dist.main:
            return
        result = self._evaluate(model, seconds, epochs, history) | {"arch": shown_arch or arch}
        save_model(model, self.ckpt(unit_name(phase, seed)), self.meta(arch, width, phase, seed, result["test_acc"]))
        self._record(phase, seed, result)

    def _epoch_callback(self, model, history: list) -> Callable[[int], dict] | None:
        if not self.dist.main:  # rank 0 evaluates; the others go on to the next step
            return None

        def on_epoch(epoch: int) -> dict:
            metrics = {"eval_acc": round(eval_accuracy(model, self.data.eval_split, self.data, self.rt), 5),
                       "eval_split": self.results["data"]["eval_split"]}
            if self.cfg.eval.info_flow:
                metrics["info_flow"] = layer_information(model, self.info_batch, self.data, self.rt)
            history.append({"epoch": epoch, **metrics})
            return metrics
        return on_epoch

    def teacher_phase(self):
        cfg = self.cfg.teacher
        if self.unit_done("teacher", None):
            teacher = self.build(cfg.arch)
            load_into(teacher, load_checkpoint(self.ckpt("teacher")), "teacher (resumed)")
            self.log("teacher: resumed from checkpoint")
            return teacher.eval()
        teacher = self.build(cfg.arch)
        history: list = []
        if cfg.checkpoint:
            blob = load_checkpoint(cfg.checkpoint)
            meta = blob.get("meta", {})
            if meta.get("arch") not in (None, cfg.arch):
                raise CheckpointError(f"teacher.checkpoint {cfg.checkpoint} is a {meta['arch']}, not a {cfg.arch}; "
                                      f"set teacher.arch={meta['arch']} or pick another checkpoint")
            if meta.get("classes") not in (None, self.data.classes):
                raise CheckpointError(f"teacher.checkpoint was trained on classes {meta['classes'][:5]}…, "
                                      f"but the data has {self.data.classes[:5]}…")
            load_into(teacher, blob, "teacher.checkpoint")
            seconds, epochs = 0.0, 0.0
            self.log(f"teacher: loaded {cfg.checkpoint}")
        else:
            epochs = self.cfg.scaled(cfg.epochs)
            seconds = self._train_plain("teacher", None, teacher, epochs, cfg.lr, history)
        self._finish("teacher", None, teacher, cfg.arch, 1.0, seconds, epochs, history)
        return teacher.eval()

    def _train_plain(self, phase: str, seed: int | None, model, epochs: float, lr: float, history: list) -> float:
        stream = self.stream(seed or 0)
        steps = steps_for(epochs, stream.steps_per_epoch)
        schedule = [Phase("CE", "ce", (), "ce", epochs).to_dict()]
        self.emit(ev.PhaseStarted(phase, seed or 0, schedule, steps))
        seg = Segment("CE", steps, ce_objective(model), trainable(model), "sgd", lr)
        return run_segments(model, stream, [seg], self.loop(phase, seed or 0), self._epoch_callback(model, history))

    def aux_phase(self, teacher):
        """Train (or resume) the auxiliary teacher by KD from ``teacher`` (a frozen, folded copy)."""
        arch, width = self.cfg.student.arch, self.cfg.indistill.aux_width
        aux = self.build(arch, width)
        if self.unit_done("aux", None):
            load_into(aux, load_checkpoint(self.ckpt("aux")), "auxiliary teacher (resumed)")
            self.log("aux: resumed from checkpoint")
            return aux.eval()
        epochs = self.cfg.scaled(self.aux_epochs)
        stream = self.stream(0)
        steps = steps_for(epochs, stream.steps_per_epoch)
        loss = build_loss(self.cfg.indistill.aux_loss, spec_of(arch, self.data.num_classes, width, self.cfg.data.input_size),
                          self.spec(self.cfg.teacher.arch)).to(self.rt.device)
        self.emit(ev.PhaseStarted("aux", 0, [Phase("KD", "kd", (), loss.name, epochs).to_dict()], steps))
        history: list = []
        with FeatureTap(aux) as s_tap, FeatureTap(teacher) as t_tap:
            seg = Segment("KD", steps, kd_objective(s_tap, t_tap, loss), trainable(aux, loss), "sgd", self.cfg.optim.lr)
            seconds = run_segments(aux, stream, [seg], self.loop("aux", 0), self._epoch_callback(aux, history))
        self._finish("aux", None, aux, arch, width, seconds, epochs, history, shown_arch=aux.arch)
        return aux.eval()

    def student_phase(self, phase: str, seed: int, teacher, pruned, maps) -> None:
        """One student unit; ``teacher`` and ``pruned`` are frozen, folded copies (targets only;
        channel ``maps`` were chosen on the unfolded network's filters)."""
        cfg = self.cfg
        student = self.build(cfg.student.arch, 1.0, seed)
        s_spec, t_spec = self.spec(cfg.student.arch), self.spec(cfg.teacher.arch)
        schedule = self.plan.schedules[phase]
        stream = self.stream(seed)
        spe = stream.steps_per_epoch
        steps = [steps_for(p.epochs, spe) for p in schedule]
        self.emit(ev.PhaseStarted(phase, seed, [p.to_dict() for p in schedule], sum(steps)))
        kd_loss = build_loss(cfg.kd.loss, s_spec, t_spec, cfg.kd.params).to(self.rt.device)
        select = PrunedFeatures(maps, self.rt.device) if maps else None
        history: list = []
        with FeatureTap(student) as s_tap, FeatureTap(teacher) as t_tap, FeatureTap(pruned) as p_tap:
            segments = []
            for p, n in zip(schedule, steps):
                if p.kind == "ce":
                    segments.append(Segment(p.name, n, ce_objective(student), trainable(student), "sgd", cfg.optim.lr))
                elif p.kind == "kd":
                    segments.append(Segment(p.name, n, kd_objective(s_tap, t_tap, kd_loss), trainable(student, kd_loss),
                                            "sgd", cfg.optim.lr))
                else:  # warm-up: layer | embed | joint, Adam (the loss scales differ by layer)
                    embed = EMBED_LOSSES[cfg.indistill.embed_loss] if p.kind == "embed" or (
                        p.kind == "joint" and cfg.indistill.embed) else None
                    segments.append(Segment(p.name, n, warmup_objective(s_tap, p_tap, select, p.layers, embed),
                                            trainable(student), "adam", cfg.indistill.lr))
            last_warm = max((i for i, p in enumerate(schedule) if p.kind in ("layer", "embed", "joint")), default=None)

            def after_segment(index: int, _seg) -> None:  # keep the student as the warm-up left it
                if index == last_warm and self.dist.main:
                    save_model(student, self.ckpt(unit_name(phase, seed) + "-warmup"),
                               self.meta(cfg.student.arch, 1.0, f"{phase}-warmup", seed, None))
            seconds = run_segments(student, stream, segments, self.loop(phase, seed), self._epoch_callback(student, history),
                                   after_segment)
        self._finish(phase, seed, student, cfg.student.arch, 1.0, seconds, sum(p.epochs for p in schedule), history)

    def aggregate(self, phase: str) -> None:
        """Mean ± sd over seeds of accuracy and retrieval; cost from the first seed."""
        entry = self.results["phases"].get(phase)
        if entry is None:  # not rank 0 under torchrun: nothing recorded here
            return
        units = [entry["units"][str(s)] for s in range(self.cfg.seeds) if str(s) in entry["units"]]
        if not units:
            return
        accs = [u["test_acc"] for u in units]
        mean, sd = mean_sd(accs)
        first = units[0]
        entry.update({k: v for k, v in first.items() if k not in ("history", "retrieval", "test_acc", "info_flow")})
        entry.update({"test_acc": mean, "test_acc_std": sd, "test_acc_seeds": accs,
                      "train_seconds": statistics.fmean(u["train_seconds"] for u in units)})
        if "retrieval" in first:
            entry["retrieval"] = {}
            for metric in first["retrieval"]:
                maps_ = [u["retrieval"][metric]["map"] for u in units]
                curves = [u["retrieval"][metric]["pr_curve"]["precision"] for u in units]
                m, s = mean_sd(maps_)
                entry["retrieval"][metric] = {
                    "map": m, "map_std": s, "map_seeds": maps_,
                    "precision_at_100": statistics.fmean(u["retrieval"][metric].get("precision_at_100", 0.0) for u in units),
                    "pr_curve": {"recall": first["retrieval"][metric]["pr_curve"]["recall"],
                                 "precision": [statistics.fmean(c) for c in zip(*curves)]}}
        if "info_flow" in first:
            entry["info_flow"] = [statistics.fmean(v) for v in zip(*(u["info_flow"] for u in units))]
        self.save_results()
