"""One typed home for a run's results and the page's snapshot of a run.

``results.json`` holds a :class:`RunResults`: per phase a :class:`PhaseResults` (the phase's
aggregate over its seeds and its :class:`UnitResult` per unit), each unit's per-epoch history of
:class:`EpochRecord` s, the paired :class:`Comparison` s, costs, data, … . :class:`UnitKey` names a
unit, with its three spellings (checkpoint name ``kd-s0``, slot in ``results.json`` ``"0"`` /
``"single"``, snapshot series ``kd/0``) and their parsers.

The records are ``TypedDict`` s, not dataclasses: every reader of a run (the views, the report, the
CLI, the API, the benches, the tests, the shipped library) reads them as JSON mappings, and a run's
results are folded in place while it trains and copied for the page under a lock; a typed dict
keeps all of that and every key of any ``results.json`` written so far (unknown keys pass through)
while naming the shape in one place. :func:`read_results` is the one reader (a missing or damaged
part defaults to empty), :func:`to_json` the one writer's form; :func:`aggregate`, :func:`compare`
and :func:`snapshot` are pure functions of them (no disk here).

A new per-epoch figure is declared once, as a field of :class:`EpochRecord`; with
``metadata={"series": name}`` it is drawn from the history of an ended run and from a live
run's epochs alike (:func:`eval_series`, :func:`add_epoch`).
"""
from __future__ import annotations

import copy
import dataclasses
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, TypedDict

from . import stats

LIVE_STATES = ("queued", "running")
PHASES = ("teacher", "aux", "baseline", "kd", "indistill")   # in the order a run trains and a table shows them
STUDENT_PHASES = ("baseline", "kd", "indistill")
COMPARISONS = (("baseline", "kd"), ("kd", "indistill"))
SINGLE = "single"   # the slot of a unit trained once per run (teacher, aux)


# ---------------------------------------------------------------- unit keys

@dataclass(frozen=True)
class UnitKey:
    """One unit: a phase, and its seed (None for a unit trained once per run: teacher, aux)."""

    phase: str
    seed: int | None = None

    @property
    def name(self) -> str:
        """Checkpoint and log name: ``teacher``, ``kd-s0``."""
        return self.phase if self.seed is None else f"{self.phase}-s{self.seed}"

    @property
    def slot(self) -> str:
        """Key under ``results.json: phases[phase].units``: ``"single"`` or ``"0"``."""
        return SINGLE if self.seed is None else str(self.seed)

    @property
    def series(self) -> str:
        """Key of the unit's curves in a snapshot: ``kd/0``, ``teacher/single``."""
        return f"{self.phase}/{self.slot}"

    @classmethod
    def from_slot(cls, phase: str, slot: str) -> "UnitKey":
        return cls(phase, None if slot == SINGLE else int(slot))

    @classmethod
    def from_name(cls, name: str) -> "UnitKey":
        m = re.fullmatch(r"(.+)-s(\d+)", name)
        return cls(m[1], int(m[2])) if m else cls(name)

    @classmethod
    def from_series(cls, key: str) -> "UnitKey":
        phase, _, slot = key.partition("/")
        return cls.from_slot(phase, slot or SINGLE)

    @property
    def label_seed(self) -> str:
        """The seed as shown on the page (``"0"``), or ``""`` for a once-per-run unit."""
        return "" if self.seed is None else str(self.seed)


# ---------------------------------------------------------------- the records

@dataclass
class EpochRecord:
    """One epoch of a unit's ``history``: THE declaration of a per-epoch figure. A field with
    ``metadata={"series": name}`` is drawn as the snapshot's ``eval[unit][name]`` curve, from an
    ended run's history and from a live run's epochs alike; every other key is kept as recorded."""

    epoch: float
    eval_acc: float | None = field(default=None, metadata={"series": "acc"})
    eval_map: float | None = field(default=None, metadata={"series": "map"})   # a unit without a classifier
    eval_split: str | None = None
    eval_images: int | None = None
    info_flow: list[float] | None = field(default=None, metadata={"series": "info_flow"})
    feature_mse: list[float] | None = field(default=None, metadata={"series": "feature_mse"})
    flow_divergence: float | None = field(default=None, metadata={"series": "flow_divergence"})
    train_loss: dict[str, float] | None = None   # the epoch's mean training losses by component
    segment: str | None = None                   # the epoch's last curriculum segment


def epoch_series() -> dict[str, str]:
    """Snapshot series name → :class:`EpochRecord` field, in declaration order."""
    return {f.metadata["series"]: f.name for f in dataclasses.fields(EpochRecord) if "series" in f.metadata}


def epoch_record(epoch: float, metrics: Mapping[str, Any], more: Mapping[str, Any] | None = None) -> dict:
    """A history entry as recorded: the epoch, its metrics (:class:`EpochRecord` fields), then ``more``
    (the epoch's ``train_loss`` and ``segment``) when given."""
    return {"epoch": epoch, **metrics, **(more or {})}


class UnitResult(TypedDict, total=False):
    """One unit's result (``phases[phase].units[slot]``)."""

    arch: str
    test_acc: float | None
    test_acc_ci: list[float]
    test_images: int
    test_data: str
    correct: str                  # per-image correctness, base64 bits
    classifier_trained: bool
    retrieval: dict[str, dict]    # metric → {map, map_ci, ap, map_reference, precision_at_100, pr_curve, …}
    info_flow: list[float]
    cost_key: str                 # names its architecture's entry in ``RunResults.costs``
    cost_pending: bool
    train_seconds: float
    epochs: float
    history: list[dict]           # EpochRecord entries
    reused_from: dict
    unit_key: str


class PhaseResults(UnitResult, total=False):
    """A phase: its aggregate over seeds (mean, sd, interval, method) and its units by slot."""

    test_acc_std: float | None
    test_acc_seeds: list[float]
    test_acc_ci_method: str
    units: dict[str, UnitResult]


class Comparison(TypedDict, total=False):
    """B − A on one metric over the seeds both phases have (``results.json: comparisons``)."""

    a: str
    b: str
    metric: str                   # test_acc, map_cosine, map_euclidean
    diff: float | None
    ci: list[float] | None
    per_seed: list[float]
    method: str
    verdict: str


class GridCell(TypedDict, total=False):
    """One run of the a × b curriculum grid, or a control (``mode``: curriculum, joint, off)."""

    mode: str
    a: float
    b: float
    warmup_epochs: float
    kd_epochs: float
    total_epochs: float
    test_acc: float
    test_acc_ci: list[float]
    test_images: int
    correct: str
    info_flow: list             # the InDistill student's per-epoch information (its eval series)
    epochs: list[float]


class GridResults(TypedDict, total=False):
    """``results.json: grid``: the axes, the total epochs T, the cells and each cell minus the control."""

    a: list[float]
    b: list[float]
    total_epochs: float
    cells: list[GridCell]
    comparisons: list[dict]     # a Comparison of one cell with its mode, a and b


class RunResults(TypedDict, total=False):
    """``results.json`` of one run."""

    status: str                   # queued, running, finished, partial, cancelled, failed
    error: str
    config: dict
    schedule: dict
    verdict: dict
    device: str
    precision: str
    data: dict
    normalisation: dict
    procedure: dict
    phases: dict[str, PhaseResults]
    comparisons: list[Comparison]
    costs: dict[str, dict]
    latency: dict
    channel_maps: dict
    flow_reference: dict
    reuse: dict
    grid: GridResults


class Snapshot(TypedDict, total=False):
    """The page's picture of a run, live or ended (:func:`snapshot`)."""

    id: str
    state: str
    read_only: bool
    phase: str | None
    seed: int | None
    segment: str | None
    epoch: float
    series: dict[str, dict]       # unit series key → loss curves {step, epoch, segment, stride, losses}
    eval: dict[str, dict]         # unit series key → {epoch, <EpochRecord series>…}
    segments: dict[str, list]
    schedules: dict[str, list]
    results: dict[str, PhaseResults]
    comparisons: list[Comparison]
    grid: GridResults
    channel_maps: dict | None
    flow_reference: dict | None
    data: dict | None
    error: str | None
    log: list[str]
    progress: float
    queue_position: int
    eta_s: float | None


# ---------------------------------------------------------------- reading and writing

def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def read_results(raw: Any) -> RunResults:
    """Any ``results.json`` written so far as :class:`RunResults`: unknown keys kept, a missing or
    damaged ``phases``/``units``/``history`` read as empty (in place: the object is returned)."""
    results = _mapping(raw)
    phases = results["phases"] = _mapping(results.get("phases"))
    for name in list(phases):
        entry = phases[name] = _mapping(phases[name])
        units = entry["units"] = _mapping(entry.get("units"))
        for slot in list(units):
            unit = units[slot] = _mapping(units[slot])
            if not isinstance(unit.get("history", []), list):
                unit["history"] = []
    return results


def to_json(results: RunResults) -> dict:
    """The one writer's form of a run's results (what ``results.json`` holds)."""
    return dict(results)


def units(results: Mapping) -> Iterator[tuple[UnitKey, UnitResult]]:
    """Every recorded unit with its key, phase by phase."""
    for phase, entry in (results.get("phases") or {}).items():
        yield from phase_units(phase, entry)


def phase_units(phase: str, entry: Mapping | None) -> Iterator[tuple[UnitKey, UnitResult]]:
    """The recorded units of one phase with their keys."""
    for slot, unit in ((entry or {}).get("units") or {}).items():
        yield UnitKey.from_slot(phase, slot), unit


def unit_of(results: Mapping, key: UnitKey) -> UnitResult | None:
    return (((results.get("phases") or {}).get(key.phase) or {}).get("units") or {}).get(key.slot)


def record_unit(results: RunResults, key: UnitKey, result: UnitResult) -> None:
    """Record ``result`` as ``key``'s; a once-per-run unit's figures are also its phase's."""
    entry = results.setdefault("phases", {}).setdefault(key.phase, {"units": {}})
    entry.setdefault("units", {})[key.slot] = result
    if key.seed is None:
        entry.update({k: v for k, v in result.items() if k != "history"})


def seed_units(entry: Mapping, seeds: int) -> dict[str, UnitResult]:
    """The phase's units of seeds 0 … ``seeds`` − 1 that are recorded, by slot."""
    recorded = entry.get("units") or {}
    return {str(s): recorded[str(s)] for s in range(seeds) if str(s) in recorded}


def measured_phases(results: Mapping | None) -> Iterator[tuple[str, PhaseResults]]:
    """The phases with a test accuracy recorded, in :data:`PHASES` order (what every results table lists)."""
    phases = (results or {}).get("phases") or {}
    for phase in PHASES:
        entry = phases.get(phase)
        if entry and "test_acc" in entry:
            yield phase, entry


def phase_accuracies(phases: Mapping) -> dict[str, dict]:
    """Per phase with an accuracy: its mean and sd (the status answer's ``results``)."""
    return {p: {"test_acc": r.get("test_acc"), "test_acc_std": r.get("test_acc_std")}
            for p, r in (phases or {}).items() if isinstance(r, dict) and "test_acc" in r}


# ---------------------------------------------------------------- aggregate and compare

_UNIT_ONLY = ("history", "retrieval", "test_acc", "info_flow", "correct", "test_acc_ci", "reused_from", "unit_key")


def aggregate(entry: PhaseResults, seeds: int) -> PhaseResults:
    """The phase over its seeds: accuracy and mAP as mean ± sd with a 95 % interval (Wilson for one
    seed's accuracy, the bootstrap over queries for one seed's mAP, a t-interval for several); its
    architecture's figures from the first unit. Returns a new entry (``entry`` unchanged)."""
    units_ = list(seed_units(entry, seeds).values())
    out = copy.copy(entry)
    if not units_:
        return out
    first = units_[0]
    accs = [u["test_acc"] for u in units_]
    acc = stats.seeds_summary(accs, first.get("test_images"))
    out.update({k: v for k, v in first.items() if k not in _UNIT_ONLY})
    out.update({"test_acc": acc["mean"], "test_acc_std": acc["sd"], "test_acc_seeds": accs,
                "test_acc_ci": acc["ci"], "test_acc_ci_method": acc["method"],
                "train_seconds": statistics.fmean(u["train_seconds"] for u in units_)})
    if "retrieval" in first:
        out["retrieval"] = {metric: _aggregate_map([u["retrieval"][metric] for u in units_])
                            for metric in first["retrieval"]}
    if "info_flow" in first:
        out["info_flow"] = [statistics.fmean(v) for v in zip(*(u["info_flow"] for u in units_))]
    return out


def _aggregate_map(rs: list[dict]) -> dict:
    maps_ = [r["map"] for r in rs]
    m = stats.seeds_summary(maps_)
    ci, method = (m["ci"], m["method"]) if len(rs) > 1 else \
        (rs[0].get("map_ci"), f"bootstrap over {rs[0].get('queries', 0):,} queries, 1 seed")
    return {"map": m["mean"], "map_std": m["sd"], "map_seeds": maps_, "map_ci": ci, "map_ci_method": method,
            "map_reference": statistics.fmean(r.get("map_reference", r["map"]) for r in rs),
            "map_reference_query_batch": rs[0].get("map_reference_query_batch"),
            "precision_at_100": statistics.fmean(r.get("precision_at_100", 0.0) for r in rs),
            "pr_curve": {"recall": rs[0]["pr_curve"]["recall"],
                         "precision": [statistics.fmean(c) for c in zip(*(r["pr_curve"]["precision"] for r in rs))]}}


def compare(phases: Mapping[str, PhaseResults], seeds: int) -> list[Comparison]:
    """B − A for KD − baseline and InDistill+KD − KD, on test accuracy (when both trained their
    classifier) and each retrieval mAP, over the seeds both have, with a 95 % interval and a verdict."""
    out: list[Comparison] = []
    for a, b in COMPARISONS:
        if a not in phases or b not in phases:
            continue
        in_a, in_b = seed_units(phases[a], seeds), seed_units(phases[b], seeds)
        both = [s for s in in_a if s in in_b]
        if not both:
            continue
        ua, ub = [in_a[s] for s in both], [in_b[s] for s in both]
        one = len(both) == 1
        if all(u.get("classifier_trained", True) for u in ua + ub):
            items = (stats.unpack_bits(ua[0]["correct"], ua[0]["test_images"]),
                     stats.unpack_bits(ub[0]["correct"], ub[0]["test_images"])) if one and "correct" in ua[0] \
                else (None, None)
            d = stats.paired_difference([u["test_acc"] for u in ua], [u["test_acc"] for u in ub],
                                        a_items=items[0], b_items=items[1], kind="correct")
            out.append({"a": a, "b": b, "metric": "test_acc"} | d)
        for metric in (ua[0].get("retrieval") or {}):
            ra, rb = [u["retrieval"][metric] for u in ua], [u["retrieval"][metric] for u in ub]
            aps = (stats.unpack_unit(ra[0]["ap"]), stats.unpack_unit(rb[0]["ap"])) if one and "ap" in ra[0] \
                else (None, None)
            d = stats.paired_difference([r["map"] for r in ra], [r["map"] for r in rb],
                                        a_items=aps[0], b_items=aps[1], kind="ap")
            out.append({"a": a, "b": b, "metric": f"map_{metric}"} | d)
    return out


# ---------------------------------------------------------------- the snapshot

def eval_series(history: list[Mapping] = ()) -> dict:
    """A unit's per-epoch history as the snapshot's curves: epoch and every series of :class:`EpochRecord`."""
    series = {"epoch": []} | {name: [] for name in epoch_series()}
    for record in history:
        add_epoch(series, record)
    return series


def add_epoch(series: dict, record: Mapping) -> None:
    """Append one epoch (a history entry, or a live run's ``{"epoch", **metrics}``) to a unit's curves."""
    series["epoch"].append(record.get("epoch"))
    for name, key in epoch_series().items():
        series.setdefault(name, [None] * (len(series["epoch"]) - 1)).append(record.get(key))


def epoch_loss_series(history: list[Mapping]) -> dict:
    """A unit's per-epoch mean training losses (``history[].train_loss``) in the shape of a live
    loss series (``{step, epoch, segment, losses: {name: [mean or None]}}``), one point per epoch."""
    rows = [r for r in history if isinstance(r.get("train_loss"), dict)]
    names = sorted({n for r in rows for n in r["train_loss"]})
    return {"step": [r["epoch"] for r in rows], "epoch": [r["epoch"] for r in rows],
            "segment": [r.get("segment", "") for r in rows], "stride": 1,
            "losses": {n: [r["train_loss"].get(n) for r in rows] for n in names}}


def snapshot(run_id: str, results: Mapping, live: Mapping | None = None) -> Snapshot:
    """The page's picture of a run from its results: every recorded unit's per-epoch curves and
    losses, its phases, comparisons, maps and data. ``live``: a running job's own facts (state,
    progress, per-step loss series, the current unit's curves, log, …) laid over that picture.
    Without it the run has ended and is read-only; one recorded as live was interrupted."""
    state, log = results.get("status") or "finished", [f"re-opened run {run_id}"]
    if live is None and state in LIVE_STATES:
        state, log = "interrupted", [f"run {run_id} was interrupted (the server restarted); finished phases are kept"]
    evals, series = {}, {}
    for key, unit in units(results):
        history = unit.get("history") or []
        evals[key.series] = eval_series(history)
        if any("train_loss" in r for r in history):  # runs recorded before per-epoch losses have none
            series[key.series] = epoch_loss_series(history)
    snap: Snapshot = {
        "id": run_id, "state": state, "read_only": live is None, "phase": None, "seed": None, "segment": None,
        "epoch": 0, "series": series, "eval": evals, "segments": {}, "schedules": {},
        "results": results.get("phases") or {}, "channel_maps": results.get("channel_maps"),
        "flow_reference": results.get("flow_reference"), "data": results.get("data"), "error": results.get("error"),
        "log": log, "progress": 1.0, "queue_position": 0, "eta_s": None}
    for extra in ("comparisons", "grid"):
        if extra in results:
            snap[extra] = results[extra]
    if live is not None:
        snap.update({k: v for k, v in live.items() if k not in ("eval", "series")})
        snap["eval"] = {**evals, **(live.get("eval") or {})}
        snap["series"] = {**series, **(live.get("series") or {})}
    return snap


def last_step(snap: Mapping) -> tuple[str, int, float] | None:
    """(unit series key, step, total loss) of the newest logged training step of the unit on show."""
    if not snap.get("phase"):
        return None
    key = UnitKey(snap["phase"], snap.get("seed")).series
    series = (snap.get("series") or {}).get(key)
    if not series or not series["step"] or "total" not in series["losses"]:
        return None
    return key, series["step"][-1], series["losses"]["total"][-1]


def status(snap: Mapping, last: tuple[str, int, float] | None = None) -> dict:
    """The status answer's facts of a run (a live job's light snapshot or an ended run's): state,
    progress, queue place, ETA, the unit on show, its newest step and loss, phase accuracies, error."""
    return {"run": snap["id"], "state": snap["state"], "progress": snap.get("progress"),
            "queue_position": snap.get("queue_position"), "eta_s": snap.get("eta_s"), "phase": snap.get("phase"),
            "step": last[1] if last else None, "loss": last[2] if last else None,
            "results": phase_accuracies(snap.get("results")), "error": snap.get("error")}
