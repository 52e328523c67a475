"""An experiment: teacher → (auxiliary teacher) → baseline, KD and InDistill+KD students.

Every unit (one phase for one seed) goes through one runner, :meth:`Experiment.run_unit`:
build → stream → started → run segments → evaluate → save → record, so a cancelled or
crashed run resumes from the last finished unit (``Experiment(resume=...)``), and a sweep
backend can run chosen student units elsewhere (``only=``, :mod:`app.sweep`). Cost is
measured once per architecture and width (``results["costs"]``); after the students,
``results["comparisons"]`` holds the paired differences KD − baseline and
InDistill+KD − KD with their intervals and verdicts (:mod:`app.stats`).
Progress is published as :mod:`app.events`; nothing here knows about the UI.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Collection

from torch import nn

from models import build_model

from . import distributed
from . import events as ev
from .augment import BatchStream, steps_per_epoch
from .checkpoint import CheckpointError, atomic_save, load_checkpoint, load_into, save_model
from .config import ConfigError, ExperimentConfig, resolve_path
from .data import Dataset, Split, load_dataset
from .device import Runtime, resolve, seed_everything
from .evaluate import (eval_accuracy, evaluate_model, feature_mse, fixed_batch, information_of, layer_information,
                       representations, split_map)
from .features import FeatureTap
from .fold import fold_batchnorm
from .losses import LOSSES, KDLoss, build_loss, resolve_params
from .metrics import flow_divergence
from .pairing import spec_of
from .plan import Plan, make_plan, stage2_loss
from .profile import profile, time_together
from .pruning import PrunedTargets, make_targets, plan_pruning
from .recipe import LRSchedule, UnitOptim, resolve_recipe, unit_optim
from . import results as rs
from .results import STUDENT_PHASES, RunResults, UnitKey
from .runfolder import RunFolder, new_run_id, read_json, write_json
from .schedule import SegmentPlan
from .train import (WARMUP_KINDS, CancelledError, LoopContext, Taps, cancel_points, run_segments, segment_for,
                    steps_for)
from .unitstore import UnitStore, StoredUnit, file_digest, tensors_digest, unit_key

# the paired differences reported: (A, B) → B − A, the arms sharing seeds and test images


@dataclass
class Unit:
    """One phase for one seed: what to build, what it learns from, and its segments."""
    phase: str
    seed: int | None
    arch: str
    width: float = 1.0
    segments: list[SegmentPlan] = field(default_factory=list)
    lr: float = 0.05
    teacher: nn.Module | None = None          # read by kd segments
    pruned: nn.Module | None = None           # read by warm-up segments, through ``targets``
    targets: PrunedTargets | None = None
    kd_loss: KDLoss | None = None
    optim: UnitOptim | None = None            # None: Nesterov SGD at ``lr``, a cosine per segment
    load: dict | None = None                  # a checkpoint to load instead of training
    load_what: str = ""                       # the setting naming that checkpoint (teacher.checkpoint, …)
    loss: tuple[str, dict] | None = None      # the kd segments' loss as data: name and parameters


def new_run_dir(root: str | Path, name: str) -> Path:
    """A fresh run folder path under ``root`` (sanitised name + unguessable suffix)."""
    return Path(root) / new_run_id(name)


def _is_stats(values) -> bool:
    return isinstance(values, (list, tuple)) and len(values) == 3 and all(isinstance(v, (int, float)) for v in values)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


class Experiment:
    """Run (or resume) one experiment in ``run_dir``."""

    def __init__(self, cfg: ExperimentConfig | None = None, run_dir: str | Path | None = None, *,
                 runs_root: str | Path = "runs", emit: Callable[[ev.Event], None] | None = None,
                 cancel: threading.Event | None = None, resume: bool = False,
                 only: Collection[str] | None = None, store: UnitStore | None = None,
                 scope: str | None = None) -> None:
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
        self.recipe = resolve_recipe(cfg)
        self.run_dir = Path(run_dir) if run_dir is not None else new_run_dir(runs_root, cfg.name)
        self.dist = distributed.from_env()  # torchrun ranks; rank 0 alone writes and emits
        self.emit = (emit or (lambda e: None)) if self.dist.main else (lambda e: None)
        self.cancel = cancel or threading.Event()
        self.results: RunResults = {}
        self.resume_note = ""
        if resume:
            folder = RunFolder(self.run_dir)
            self.results = folder.read_results() or {}
            if folder.results.is_file() and not self.results:
                self.resume_note = (f"resume: {folder.results.name} is not readable JSON; every unit is re-run "
                                    "(checkpoints of finished units are overwritten)")
        self.total_steps = 0
        self.done_steps = 0
        self._verified: dict[str, bool] = {}
        self.flow_targets: list | None = None    # the pruned network's kept channels on the info batch
        # student units to run (names such as ``kd-s2``); None: all, then aggregate and compare.
        # A selection leaves the run ``partial``: the driver merges it (:mod:`app.sweep`).
        self.only = None if only is None else frozenset(only)
        self.trace: Callable[[dict], None] | None = None  # per training step (app.train.LoopContext.trace)
        # finished units taken instead of trained (rank 0 of one process only), looked up and kept
        # under ``scope`` alone when given (a visitor's private data)
        self.store = store if self.dist.world == 1 else None
        self.scope = scope
        self.unit_keys: dict[str, str] = {}      # unit name → key (with a store)
        self.planned_reuse: set[str] = set()     # units the store held when the steps were counted

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
        unit = UnitKey(phase, seed)
        name = unit.name
        if rs.unit_of(self.results, unit) is None:
            return False
        if name not in self._verified:
            try:
                load_checkpoint(self.ckpt(name))
                self._verified[name] = True
            except CheckpointError as exc:
                self._verified[name] = False
                self.results["phases"][phase]["units"].pop(unit.slot, None)
                self.log(f"resume: {name} is recorded as done but its checkpoint does not load ({exc}); "
                         "re-running that unit")
        return self._verified[name]

    def selected(self, phase: str, seed: int) -> bool:
        return self.only is None or UnitKey(phase, seed).name in self.only

    def release(self) -> None:
        """Drop the dataset and evaluation batch (a finished job keeps only its results)."""
        for attr in ("data", "info_batch", "flow_targets", "teacher_blob"):
            self.__dict__.pop(attr, None)

    def check_cancel(self) -> None:
        """Raise CancelledError once cancelled: evaluation and profiling call it between batches,
        so a cancel lands within about a second wherever the run is."""
        if self.cancel.is_set():
            raise CancelledError

    def _tick(self) -> None:
        self.done_steps += 1

    def loop(self, phase: str, seed: int, schedule: LRSchedule = LRSchedule(), fresh: str = "segment") -> LoopContext:
        o = self.cfg.optim
        return LoopContext(self.rt, self.emit, self.cancel, phase, seed, o.momentum, o.weight_decay, self._tick, self.dist,
                           schedule, fresh, self.trace)

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
                             "status": "running", "run_dir": self.run_dir.name})  # relative: a folder can move
        phase = None
        try:
            self.rt: Runtime = resolve(self.cfg.device, self.cfg.precision)
            self.dist.share_cores()
            self.results["device"] = self.rt.describe()
            self.results["precision"] = self.rt.precision
            self.log(f"device: {self.rt.describe()}")
            if self.resume_note:
                self.log(self.resume_note)
            self.data: Dataset = self.normalisation(load_dataset(self.cfg.data, self.log))
            d = self.data
            eval_split = d.eval_split_name
            self.results["data"] = {"name": d.name, "description": d.description, "classes": d.classes,
                                    "train": len(d.train), "test": len(d.test), "val": len(d.val) if d.val else 0,
                                    "skipped": d.skipped[:50], "skipped_count": len(d.skipped),
                                    "eval_split": eval_split, "eval_images": len(d.eval_split),
                                    "test_data": self.split_label("test", d.test),
                                    "eval_data": self.split_label(eval_split, d.eval_split)}
            self.info_batch = fixed_batch(d.eval_split, self.cfg.eval.info_batch)
            self.results.setdefault("reuse", {"reused": [], "trained": [], "loaded": []})
            if self.store is not None:
                self.plan_keys()
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
            # the reference procedure: the auxiliary teacher also teaches stage 2 (both arms)
            stage2 = frozen_pruned if self.reference else frozen_teacher
            self.results["procedure"] = self.procedure_record()
            targets = None
            if self.cfg.phases.indistill:
                pruned_spec = self.aux_spec if self.plan.use_aux else self.spec(self.cfg.teacher.arch)
                maps = plan_pruning(pruned, pruned_spec, self.spec(self.cfg.student.arch))
                targets = make_targets(self.recipe.targets, pruned, maps, self.rt.device)  # unfolded filters
                self.results["channel_maps"] = {"pruned_arch": pruned.arch, "stages": [m.to_dict() for m in maps],
                                                "targets": self.recipe.targets}
                self.emit(ev.ChannelMaps(pruned.arch, self.results["channel_maps"]["stages"]))
                self.flow_reference(frozen_pruned, targets)
            # seed by seed (every arm of seed 0, then of seed 1, …): a study stopped part-way
            # already holds complete paired comparisons for its finished seeds
            for seed in range(self.cfg.seeds):
                for phase in self.plan.schedules:
                    if self.selected(phase, seed):
                        self.student_phase(phase, seed, stage2, frozen_pruned, targets)
            if self.dist.main and self.only is None:  # rank 0 alone records results
                for phase in self.plan.schedules:
                    self.aggregate(phase)
            if self.dist.main and self.only is None:
                self.compare()
            self.dist.barrier()  # the other ranks wait for rank 0's last evaluation and writes
            self.results["status"] = "finished" if self.only is None else "partial"
            self.save_results()
            if self.only is None:
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

    def split_label(self, name: str, split: Split) -> str:
        """Which data an accuracy is measured on, e.g. 'test split, 1,000 images (folder from x.tar.gz)'."""
        return f"{name} split, {len(split):,} images ({self.data.description})"

    @property
    def reference(self) -> bool:
        return self.cfg.indistill.procedure == "reference"

    def procedure_record(self) -> dict:
        """``results["procedure"]``: which chain ran — who teaches the warm-up and stage 2, with what."""
        aux = self.plan.use_aux
        name, params = stage2_loss(self.cfg)
        return {"name": self.cfg.indistill.procedure, "recipe": self.recipe.to_dict(),
                "aux": [p.to_dict() for p in self.aux_segments()] if aux and not self.cfg.indistill.aux_checkpoint
                else ("loaded from indistill.aux_checkpoint" if aux else None),
                "warmup_source": "aux" if aux else "teacher",
                "stage2_teacher": "aux" if aux and self.reference else "teacher",
                "stage2_loss": name, "stage2_params": params}

    @property
    def aux_spec(self):
        ind = self.cfg.indistill
        return spec_of(self.cfg.student.arch, self.data.num_classes, ind.aux_width, self.cfg.data.input_size)

    def normalisation(self, data: Dataset) -> Dataset:
        """``data`` with the statistics every model of the run is fed with.

        A run that starts from a teacher checkpoint uses the statistics stored with it (the
        teacher, auxiliary teacher and students see the same batches); otherwise those of
        the training selection, computed when the data was decoded.
        """
        ckpt = self.cfg.teacher.checkpoint
        self.teacher_blob = load_checkpoint(resolve_path(ckpt)) if ckpt else None
        source = f"training selection ({len(data.train):,} images of {data.description})"
        if self.teacher_blob is not None:
            meta = self.teacher_blob.get("meta", {})
            mean, std = meta.get("mean"), meta.get("std")
            if _is_stats(mean) and _is_stats(std):
                data = dataclasses.replace(data, mean=tuple(map(float, mean)), std=tuple(map(float, std)))
                source = f"teacher checkpoint {Path(ckpt).name}" + (f" (trained on {meta['data']})" if meta.get("data") else "")
            else:
                source += f"; teacher checkpoint {Path(ckpt).name} stores no statistics"
        self.results["normalisation"] = {"mean": list(data.mean), "std": list(data.std), "source": source}
        self.log(f"normalisation: mean {_fmt(data.mean)}, std {_fmt(data.std)} from the {source}")
        return data

    def _count_steps(self) -> int:
        spe = steps_per_epoch(len(self.data.train), self.cfg.optim.batch_size)
        total = 0
        reused = self.planned_reuse
        if not self.cfg.teacher.checkpoint and not self.unit_done("teacher", None) and "teacher" not in reused:
            total += steps_for(self.cfg.scaled(self.cfg.teacher.epochs), spe)
        if self.plan.use_aux and not self.cfg.indistill.aux_checkpoint and not self.unit_done("aux", None) \
                and "aux" not in reused:
            total += sum(steps_for(p.epochs, spe) for p in self.aux_segments())
        for phase, schedule in self.plan.schedules.items():
            per_seed = sum(steps_for(p.epochs, spe) for p in schedule)
            total += per_seed * sum(self.selected(phase, s) and not self.unit_done(phase, s)
                                    and UnitKey(phase, s).name not in reused for s in range(self.cfg.seeds))
        return total

    @property
    def aux_epochs(self) -> float:
        return self.cfg.indistill.aux_epochs if self.cfg.indistill.aux_epochs is not None else self.cfg.student.epochs

    def aux_segments(self) -> list[SegmentPlan]:
        """studio: Hinton KD (``indistill.aux_loss``) from scratch; reference: CE, then PKT on
        the embedding from the teacher (no CE), each for the auxiliary epochs."""
        epochs = self.cfg.scaled(self.aux_epochs)
        if self.reference:
            return [SegmentPlan("CE", "ce", (), "ce", epochs), SegmentPlan("embedding PKT", "kd", (), "pkt", epochs)]
        return [SegmentPlan("KD", "kd", (), self.cfg.indistill.aux_loss, epochs)]

    # ------------------------------------------------------------ the unit runner
    def run_unit(self, u: Unit) -> nn.Module:
        """build → stream → started → run → evaluate → save → record; a finished unit is reloaded,
        a unit the store holds is taken from it (:meth:`reuse`), a trained one is stored."""
        name = UnitKey(u.phase, u.seed).name
        model = self.build(u.arch, u.width, u.seed or 0)
        if self.unit_done(u.phase, u.seed):
            load_into(model, load_checkpoint(self.ckpt(name)), f"{name} (resumed)")
            self.log(f"{name}: resumed from checkpoint")
            return model.eval()
        stored = self.stored(name, model)
        if stored is not None:
            self.reuse(u, model, stored)
            return model.eval()
        if name in self.planned_reuse and u.load is None:  # the entry went since the steps were counted
            self.total_steps += sum(steps_for(p.epochs, steps_per_epoch(len(self.data.train), self.cfg.optim.batch_size))
                                    for p in u.segments)
        history: list = []
        if u.load is not None:
            load_into(model, u.load, u.load_what)
            seconds, epochs = 0.0, 0.0
        else:
            seconds, epochs = self._train(model, u, history), sum(p.epochs for p in u.segments)
        if self.dist.main:  # under torchrun, rank 0 alone evaluates, writes and records
            result = self._evaluate(model, u.arch, u.width, seconds, epochs, history)
            result["classifier_trained"] = self.trains_classifier(u)
            if name in self.unit_keys:
                result["unit_key"] = self.unit_keys[name]
            save_model(model, self.ckpt(name), self.meta(u.arch, u.width, u.phase, u.seed, result["test_acc"]))
            self.tally("loaded" if u.load is not None else "trained", name)
            self._record(u.phase, u.seed, result)
            self.keep(u, name, result)
        return model.eval()

    # ------------------------------------------------------------ the unit store
    def plan_keys(self) -> None:
        """Every unit's key (teacher and aux first: the students' keys hold theirs), and which
        units the store holds now (they count no training steps)."""
        units = [self.plan_unit("teacher")] + ([self.plan_unit("aux")] if self.plan.use_aux else [])
        units += [self.plan_unit(phase, seed) for seed in range(self.cfg.seeds) for phase in self.plan.schedules
                  if self.selected(phase, seed)]
        for u in units:
            name = UnitKey(u.phase, u.seed).name
            self.unit_keys[name] = unit_key(self.unit_spec(u))
            if not self.unit_done(u.phase, u.seed) and self.store.has(self.unit_keys[name], self.scope):
                self.planned_reuse.add(name)

    @property
    def data_identity(self) -> dict:
        """The data every unit reads, by content: the decoded splits' bytes (so the selection is in
        it), the classes and the normalisation, beside the settings that chose them."""
        if "_data_identity" not in self.__dict__:
            d, c = self.data, self.cfg.data
            digest = tensors_digest(d.train.images, d.train.labels, d.test.images, d.test.labels,
                                    d.val.images if d.val else None, d.val.labels if d.val else None)
            self.__dict__["_data_identity"] = {
                "content": digest, "classes": d.classes, "mean": list(d.mean), "std": list(d.std),
                "dataset": c.dataset, "train_per_class": c.train_per_class, "test_per_class": c.test_per_class,
                "val_per_class": c.val_per_class, "input_size": c.input_size}
        return self.__dict__["_data_identity"]

    def unit_spec(self, u: Unit) -> dict:
        """Everything ``u``'s training and evaluation read, as plain data (its key is the digest,
        :func:`app.unitstore.unit_key`). A setting goes in only where the unit reads it: the
        networks it learns from by their keys, its loss only with kd segments, the pruned
        network with warm-up segments or the per-epoch feature error (students, InDistill on)."""
        cfg, e, o = self.cfg, self.cfg.eval, self.cfg.optim
        spec = {"phase": u.phase, "seed": u.seed, "arch": u.arch, "width": u.width, "data": self.data_identity,
                "runtime": {"device": self.rt.device.type, "precision": self.rt.precision,
                            "channels_last": self.rt.channels_last},
                "eval": {"retrieval": e.retrieval, "max_queries": e.max_queries, "query_batch": e.query_batch,
                         "info_flow": e.info_flow, "info_batch": e.info_batch, "latency_runs": e.latency_runs}}
        if u.load_what:
            path = cfg.teacher.checkpoint if u.phase == "teacher" else cfg.indistill.aux_checkpoint
            try:
                spec["load"] = {"setting": u.load_what, "sha256": file_digest(resolve_path(path))}
            except OSError as exc:
                raise CheckpointError(f"{u.load_what} {path} cannot be read ({type(exc).__name__})") from None
            return spec
        kinds = {p.kind for p in u.segments}
        spec["train"] = {"segments": [p.to_dict() for p in u.segments], "optim": asdict(self.optim_of(u)),
                         "batch_size": o.batch_size, "momentum": o.momentum, "weight_decay": o.weight_decay,
                         "augment": o.augment}
        if "kd" in kinds:
            name, params = u.loss
            spec["kd"] = {"loss": name, "params": resolve_params(name, LOSSES[name].params, params),
                          "teacher": self.unit_keys[self.kd_source(u.phase)]}
        warm = bool(kinds & set(WARMUP_KINDS))
        if warm:
            spec["warmup_lr"] = self.recipe.warmup_lr
        if warm or (u.phase in STUDENT_PHASES and cfg.phases.indistill):
            spec["pruned"] = {"from": self.unit_keys["aux" if self.plan.use_aux else "teacher"],
                              "targets": self.recipe.targets}
        return spec

    def kd_source(self, phase: str) -> str:
        """The unit whose outputs ``phase``'s kd segments learn from."""
        if phase in STUDENT_PHASES and self.reference and self.plan.use_aux:
            return "aux"
        return "teacher"

    def stored(self, name: str, model) -> StoredUnit | None:
        """The store's unit ``name`` loaded into ``model``, or None (no store, a miss, or weights that do
        not load: then it is trained)."""
        key = self.unit_keys.get(name)
        if self.store is None or key is None:
            return None
        stored = self.store.get(key, self.scope)
        if stored is None:
            return None
        try:
            load_into(model, load_checkpoint(stored.checkpoint), f"{name} (stored)")
        except (CheckpointError, OSError, RuntimeError) as exc:
            self.log(f"{name}: the stored unit does not load ({exc}); training it")
            return None
        return stored

    def reuse(self, u: Unit, model, stored: StoredUnit) -> None:
        """Record a stored unit as this run's: its result (curves included) with ``reused_from``,
        the events a finished unit emits, its checkpoint in this run folder; no training steps."""
        self.check_cancel()
        name, seed = UnitKey(u.phase, u.seed).name, u.seed or 0
        result = stored.result | {"reused_from": {"run": stored.run_id, "unit": stored.unit_name},
                                  "test_data": self.results["data"]["test_data"], "unit_key": stored.key}
        costs = self.results.setdefault("costs", {})
        if result.get("cost_key") and stored.cost and result["cost_key"] not in costs:
            costs[result["cost_key"]] = stored.cost
        self.log(f"{name}: reused from run {stored.run_id}, trained earlier with the same settings")
        self.emit(ev.PhaseStarted(u.phase, seed, [p.to_dict() for p in u.segments], 0))
        for h in result.get("history", []):
            self.emit(ev.EpochMetrics(u.phase, seed, h.get("epoch", 0),
                                      {k: v for k, v in h.items() if k not in ("epoch", "train_loss", "segment")}))
        save_model(model, self.ckpt(name), self.meta(u.arch, u.width, u.phase, u.seed, result.get("test_acc")))
        if "warmup" in stored.extras:
            try:
                atomic_save(load_checkpoint(stored.extras["warmup"]), self.ckpt(name + "-warmup"))
            except CheckpointError as exc:
                self.log(f"{name}: the stored warm-up checkpoint does not load ({exc})")
        self.tally("reused", name)
        self._record(u.phase, u.seed, result)

    def keep(self, u: Unit, name: str, result: dict) -> None:
        """Put a unit trained (or loaded and evaluated) here in the store."""
        key = self.unit_keys.get(name)
        if self.store is None or key is None:
            return
        warmup = self.ckpt(name + "-warmup")
        extras = {"warmup": warmup} if any(p.kind in WARMUP_KINDS for p in u.segments) and warmup.is_file() else {}
        try:
            self.store.put(key, result, self.ckpt(name), self.run_dir.name, name, self.scope,
                           cost=self.results.get("costs", {}).get(result.get("cost_key")), extras=extras)
        except OSError as exc:
            self.log(f"{name}: not kept in the unit store ({exc})")

    def tally(self, how: str, name: str) -> None:
        """``results["reuse"]``: the units this run trained, loaded from a checkpoint file, or reused."""
        self.results.setdefault("reuse", {"reused": [], "trained": [], "loaded": []}).setdefault(how, []).append(name)

    def optim_of(self, u: Unit) -> UnitOptim:
        """``u``'s optimizer settings (teacher and aux: Nesterov SGD at its lr, a cosine per segment)."""
        return u.optim or UnitOptim("sgd", u.lr, "segment-cosine", 0.0, 1.0, "segment")

    def _train(self, model, u: Unit, history: list) -> float:
        seed = u.seed or 0
        stream = self.stream(seed)
        steps = [steps_for(p.epochs, stream.steps_per_epoch) for p in u.segments]
        self.emit(ev.PhaseStarted(u.phase, seed, [p.to_dict() for p in u.segments], sum(steps)))
        with contextlib.ExitStack() as stack:
            def tap(m):
                return stack.enter_context(FeatureTap(m)) if m is not None else None
            taps = Taps(tap(model), tap(u.teacher), tap(u.pruned), u.targets)
            optim = self.optim_of(u)
            segments = [segment_for(p, n, model, taps, optimizer=optim.optimizer, lr=optim.lr,
                                    warmup_lr=self.recipe.warmup_lr, kd_loss=u.kd_loss)
                        for p, n in zip(u.segments, steps)]
            loop = self.loop(u.phase, seed, LRSchedule.of(optim, sum(steps), stream.steps_per_epoch),
                             optim.fresh_optimizer)
            last_warm = max((i for i, p in enumerate(u.segments) if p.kind in WARMUP_KINDS), default=None)

            def after_segment(index: int, _seg) -> None:  # keep the student as the warm-up left it
                if index == last_warm and self.dist.main:
                    save_model(model, self.ckpt(UnitKey(u.phase, u.seed).name + "-warmup"),
                               self.meta(u.arch, u.width, f"{u.phase}-warmup", u.seed, None))
            return run_segments(model, stream, segments, loop,
                                self._epoch_callback(model, history, u.phase, self.trains_classifier(u)),
                                after_segment)

    # ------------------------------------------------------------ results
    def _record(self, phase: str, seed: int | None, result: dict) -> None:
        rs.record_unit(self.results, UnitKey(phase, seed), result)
        self.save_results()
        self.emit(ev.PhaseResult(phase, seed, result))

    def cost(self, model, arch: str, width: float) -> dict:
        """Params, size, FLOPs, latency (median and quartiles) and throughput of ``arch`` at
        ``width``, measured once per run: every model of one architecture shows one figure.
        The latency taken here (alone, when the architecture's first model finishes) is what a
        live run shows; :meth:`fill_costs` replaces it by the run's architectures timed together."""
        key = f"{arch}@{width:g}"
        costs = self.results.setdefault("costs", {})
        if self.only and key not in costs:  # a student-unit task beside others: the merge measures it
            return {"cost_key": key, "cost_pending": True}
        if key not in costs:
            costs[key] = profile(model, self.rt.device, self.cfg.data.input_size, self.cfg.eval.latency_runs,
                                 self.check_cancel)
        return {"cost_key": key} | costs[key]

    def _evaluate(self, model, arch: str, width: float, train_seconds: float, epochs: float, history: list) -> dict:
        e = self.cfg.eval
        with cancel_points(self.cancel, model):  # a cancel lands within one layer, a large network's included
            result = evaluate_model(model, self.data, self.rt, retrieval=e.retrieval, max_queries=e.max_queries,
                                    query_batch=e.query_batch, check=self.check_cancel)
            result.update(self.cost(model, arch, width))
            result.update({"arch": arch, "test_data": self.results["data"]["test_data"],
                           "train_seconds": round(train_seconds, 3), "epochs": epochs, "history": history})
            if e.info_flow:
                result["info_flow"] = layer_information(model, self.info_batch, self.data, self.rt)
        return result

    def flow_reference(self, pruned, targets: PrunedTargets) -> None:
        """Once per run, on the information batch: the pruned network's targets (what each
        student's stages are compared with, InDistill's Fig. 2, computed as the warm-up computes
        them) and their per-layer information (the reference of the information-flow
        divergence, Fig. 4), in ``results["flow_reference"]``."""
        with cancel_points(self.cancel, pruned):
            out, y = representations(pruned, self.info_batch, self.data, self.rt, raw=True)
        reps = [f.float() for f in out.features] + [out.embedding.float()]
        self.flow_targets = [t.float() for t in targets.of(out)]
        role = "auxiliary teacher" if self.plan.use_aux else "teacher"
        self.results["flow_reference"] = {
            "network": f"{role} {pruned.arch}, pruned to the student's widths (kept channels), then its embedding",
            "info_flow": information_of(self.flow_targets + [reps[-1]], y), "images": len(self.info_batch),
            "estimator": "matrix-based Rényi α=2 information with the labels (Gaussian kernel, median bandwidth)",
            "divergence": "Σ over layers of (I_teacher − I_student)², Passalis et al. 2020 (an analogue: their "
                          "estimator is quadratic MI)"}

    def _epoch_callback(self, model, history: list, phase: str = "", classifier: bool = True) -> Callable[[int], dict]:
        """Per epoch: accuracy on the evaluation split (or, for a unit that trains no classifier,
        ``eval_map``: the split's images retrieving each other, :func:`app.evaluate.split_map`);
        on the information batch, per-layer information and, for students of a run with channel
        maps, ``feature_mse`` (per stage) and ``flow_divergence`` from the pruned network."""
        compare = phase in STUDENT_PHASES and self.flow_targets is not None
        if not self.dist.main:  # rank 0 evaluates; the others go on to the next step
            return None

        def on_epoch(epoch: int, losses: dict | None = None, segment: str = "") -> dict:
            split = self.data.eval_split
            metrics = {"eval_acc": round(eval_accuracy(model, split, self.data, self.rt), 5)} if classifier else \
                {"eval_map": round(split_map(model, split, self.data, self.rt), 5)}
            metrics |= {"eval_split": self.results["data"]["eval_split"], "eval_images": len(split)}
            if self.cfg.eval.info_flow or compare:
                reps, y = representations(model, self.info_batch, self.data, self.rt)
                if compare:
                    metrics["feature_mse"] = feature_mse(reps[:-1], self.flow_targets)
                if self.cfg.eval.info_flow:
                    metrics["info_flow"] = information_of(reps, y)
                    if compare:
                        ref = self.results["flow_reference"]["info_flow"]
                        metrics["flow_divergence"] = round(flow_divergence(metrics["info_flow"], ref), 5)
            # the epoch's mean training losses (the curves a re-opened run can still draw; under distributed
            # training, rank 0's share of the batches) and its last segment
            history.append(rs.epoch_record(epoch, metrics, {"train_loss": losses, "segment": segment} if losses else None))
            return metrics
        return on_epoch

    # ------------------------------------------------------------ the phases as units
    def _checked(self, path: str, arch: str, role: str) -> dict:
        blob = self.teacher_blob if role == "teacher.checkpoint" else load_checkpoint(resolve_path(path))
        meta = blob.get("meta", {})
        if meta.get("arch") not in (None, arch):
            raise CheckpointError(f"{role} {path} is a {meta['arch']}, not a {arch}; "
                                  f"set the architecture to {meta['arch']} or pick another checkpoint")
        if meta.get("classes") not in (None, self.data.classes):
            raise CheckpointError(f"{role} was trained on classes {meta['classes'][:5]}…, "
                                  f"but the data has {self.data.classes[:5]}…")
        self.log(f"{'teacher' if role.startswith('teacher') else 'aux'}: loaded {path}")
        return blob

    def plan_unit(self, phase: str, seed: int | None = None) -> Unit:
        """``phase``'s unit as data, before any network exists: what it builds, its segments, its
        optimizer and its kd loss (name and parameters), or the setting naming the checkpoint it
        loads. The phases add the networks; :meth:`unit_spec` makes the key of the same unit."""
        cfg, ind = self.cfg, self.cfg.indistill
        if phase == "teacher":
            t = cfg.teacher
            if t.checkpoint:
                return Unit("teacher", None, t.arch, lr=t.lr, load_what="teacher.checkpoint")
            return Unit("teacher", None, t.arch, segments=[SegmentPlan("CE", "ce", (), "ce", cfg.scaled(t.epochs))],
                        lr=t.lr)
        if phase == "aux":
            if ind.aux_checkpoint:
                return Unit("aux", None, cfg.student.arch, ind.aux_width, [], cfg.optim.lr,
                            load_what="indistill.aux_checkpoint")
            segments = self.aux_segments()
            return Unit("aux", None, cfg.student.arch, ind.aux_width, segments, cfg.optim.lr,
                        loss=(segments[-1].loss, {"ce": 0.0} if self.reference else {}))
        return Unit(phase, seed, cfg.student.arch, 1.0, self.plan.schedules[phase], cfg.optim.lr,
                    optim=unit_optim(self.recipe, phase, cfg.epochs_scale), loss=stage2_loss(cfg))

    def teacher_phase(self):
        cfg = self.cfg.teacher
        u = self.plan_unit("teacher")
        if u.load_what and not self.unit_done("teacher", None):
            u.load = self._checked(cfg.checkpoint, cfg.arch, "teacher.checkpoint")
        return self.run_unit(u)

    def aux_phase(self, teacher):
        ind = self.cfg.indistill
        u = self.plan_unit("aux")
        u.teacher = teacher
        if u.load_what:
            if not self.unit_done("aux", None):
                u.load = self._checked(ind.aux_checkpoint, self.cfg.student.arch, "indistill.aux_checkpoint")
        else:
            seed_everything(0)
            u.kd_loss = build_loss(u.loss[0], self.aux_spec, self.spec(self.cfg.teacher.arch),
                                   u.loss[1]).to(self.rt.device)
        return self.run_unit(u)

    def student_phase(self, phase: str, seed: int, teacher, pruned, targets) -> None:
        """One student unit; ``teacher`` and ``pruned`` are frozen, folded copies (``targets``
        were built from the unfolded network's filters)."""
        cfg = self.cfg
        if self.unit_done(phase, seed):
            return
        t_spec = self.aux_spec if self.kd_source(phase) == "aux" else self.spec(cfg.teacher.arch)
        u = self.plan_unit(phase, seed)
        u.teacher, u.pruned, u.targets = teacher, pruned, targets
        seed_everything(seed)  # a loss with parameters (FitNets' regressors) starts the same in any process
        u.kd_loss = build_loss(u.loss[0], self.spec(cfg.student.arch), t_spec, u.loss[1]).to(self.rt.device)
        self.run_unit(u)

    @staticmethod
    def trains_classifier(u: Unit) -> bool:
        """Whether a segment of ``u`` trains the classifier (CE, or a KD loss on logits or beside CE):
        the reference's PKT arms never train theirs, so their accuracy means nothing."""
        if not u.segments:
            return True  # a loaded network: its checkpoint's classifier
        return any(p.kind == "ce" or (p.kind == "kd" and u.kd_loss is not None
                                      and (u.kd_loss.ce_weight > 0 or u.kd_loss.uses_logits))
                   for p in u.segments)

    def fill_costs(self, phase: str) -> None:
        """Once the students are recorded (the first call for the run): every architecture of the
        run timed together, alternating, the teacher's as the reference
        (:func:`app.profile.time_together`; ``results["latency"]`` says how and whether the machine
        was busy); then every unit and phase takes its architecture's figures, those a sweep task
        left ``cost_pending`` included. Latency depends on the architecture, not the weights, so
        fresh networks are timed; without a runtime (a report over an unfinished pair) they are
        built and timed on the CPU."""
        results, runtime = self.results, getattr(self, "rt", None)
        holders = [u for e in results["phases"].values() for u in (e, *e.get("units", {}).values()) if "cost_key" in u]
        keys = list(dict.fromkeys(u["cost_key"] for u in holders))
        timed = set((results.get("latency") or {}).get("order", [])) & set(results.get("costs") or {})
        if set(keys) - timed:
            classes = len(self.data.classes) if hasattr(self, "data") else \
                len((results.get("data") or {}).get("classes") or []) or 10

            def build(key: str):
                arch, width = key.rsplit("@", 1)
                seed_everything(0)
                model = build_model(arch, classes, float(width))
                return (runtime.prepare(model) if runtime is not None else model).eval()
            costs, record = time_together({k: build(k) for k in keys}, results.get("costs") or {},
                                          runtime.device if runtime is not None else None,
                                          self.cfg.data.input_size, self.cfg.eval.latency_runs,
                                          f"{self.cfg.teacher.arch}@1", self.check_cancel)
            results["costs"], results["latency"] = costs, record
        for unit in holders:
            if unit["cost_key"] in results.get("costs", {}):
                unit.pop("cost_pending", None)
                unit.update(results["costs"][unit["cost_key"]])

    def aggregate(self, phase: str) -> None:
        """The phase over its seeds (:func:`app.results.aggregate`), its costs filled first; saved."""
        self.fill_costs(phase)
        phases = self.results["phases"]
        phases[phase] = rs.aggregate(phases[phase], self.cfg.seeds)
        self.save_results()

    def compare(self) -> None:
        """``results["comparisons"]`` (:func:`app.results.compare`); saved."""
        self.results["comparisons"] = rs.compare(self.results["phases"], self.cfg.seeds)
        self.save_results()
