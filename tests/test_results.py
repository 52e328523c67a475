"""The typed results (app/results.py): every results.json written so far reads and writes back
unchanged, a unit has one key with three spellings, a per-epoch figure is declared once,
aggregate/compare are pure and reproduce the committed studies, one snapshot builder and one
status summary serve a live job and an ended run, and the engine's report renders without the UI."""
from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from app import events as ev
from app import results as rs
from app.config import preset
from app.results import UnitKey
from app.runfolder import RunFolder, snapshot_from_results
from app.runner import Job

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(ROOT.glob("assets/library/*/results.json")) + sorted(ROOT.glob("studies/reference/*/results.json"))


def test_there_are_committed_results_to_read():
    assert len(COMMITTED) >= 8, COMMITTED  # six library runs and the two study pairs


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_every_committed_results_json_round_trips(path, tmp_path):
    raw = json.loads(path.read_text())
    first = rs.read_results(copy.deepcopy(raw))
    assert first == raw  # the reader keeps every key and adds nothing to a well-formed file
    folder = RunFolder(tmp_path / "run")
    folder.write_results(first)                  # the one writer
    assert folder.read_results() == first        # reader → writer → reader
    assert sum(1 for _ in rs.units(first)) == sum(len(e.get("units", {})) for e in raw.get("phases", {}).values())


def test_reader_defaults_what_is_missing_or_damaged_and_keeps_unknown_keys():
    got = rs.read_results({"status": "finished", "phases": {"kd": {"units": {"0": {"history": "?"}}, "x": 1},
                                                            "teacher": []}, "new_key": {"a": 1}})
    assert got["new_key"] == {"a": 1} and got["phases"]["kd"]["x"] == 1
    assert got["phases"]["kd"]["units"]["0"]["history"] == [] and got["phases"]["teacher"] == {"units": {}}
    assert rs.read_results(None) == {"phases": {}} and rs.read_results({"phases": [1]}) == {"phases": {}}


@pytest.mark.parametrize("key, name, slot, series", [
    (UnitKey("kd", 0), "kd-s0", "0", "kd/0"), (UnitKey("indistill", 12), "indistill-s12", "12", "indistill/12"),
    (UnitKey("teacher"), "teacher", "single", "teacher/single"), (UnitKey("aux", None), "aux", "single", "aux/single")])
def test_unit_key_spellings_and_parsers(key, name, slot, series):
    assert (key.name, key.slot, key.series) == (name, slot, series)
    assert UnitKey.from_name(name) == UnitKey.from_slot(key.phase, slot) == UnitKey.from_series(series) == key


def test_record_unit_files_a_unit_by_its_slot_and_a_single_unit_as_its_phase():
    results: rs.RunResults = {}
    rs.record_unit(results, UnitKey("teacher"), {"test_acc": 0.5, "history": [{"epoch": 1}]})
    rs.record_unit(results, UnitKey("kd", 1), {"test_acc": 0.25, "history": []})
    assert results["phases"]["teacher"] == {"units": {"single": {"test_acc": 0.5, "history": [{"epoch": 1}]}},
                                            "test_acc": 0.5}
    assert rs.unit_of(results, UnitKey("kd", 1))["test_acc"] == 0.25 and rs.unit_of(results, UnitKey("kd", 0)) is None
    assert [k.name for k, _ in rs.units(results)] == ["teacher", "kd-s1"]


def _job(tmp_path) -> Job:
    cfg = preset("quick-cpu").with_overrides({"seeds": 1, "student.epochs": 1})
    return Job(cfg, tmp_path)


@dataclasses.dataclass
class WithSharpness(rs.EpochRecord):
    sharpness: float | None = dataclasses.field(default=None, metadata={"series": "sharpness"})


def test_a_per_epoch_figure_declared_once_reaches_the_live_and_the_ended_snapshot(tmp_path, monkeypatch):
    """Declaring a field on EpochRecord is the only change: the ended run's snapshot (from history)
    and a live job's (from its epoch events) both carry its curve."""
    monkeypatch.setattr(rs, "EpochRecord", WithSharpness)
    split = {"eval_split": "val", "eval_images": 30}
    history = [rs.epoch_record(1, {"eval_acc": 0.5, "sharpness": 2.0} | split), rs.epoch_record(2, {"eval_acc": 0.6} | split)]
    results = {"status": "finished", "phases": {"kd": {"units": {"0": {"history": history}}}}}
    assert snapshot_from_results("r", results)["eval"]["kd/0"]["sharpness"] == [2.0, None]
    job = _job(tmp_path)
    job.apply(ev.PhaseStarted("kd", 0, [], 10))
    for record in history:
        job.apply(ev.EpochMetrics("kd", 0, record["epoch"], {k: v for k, v in record.items() if k != "epoch"}))
    live = job.snapshot()["eval"]["kd/0"]
    assert live["sharpness"] == [2.0, None] and live["acc"] == [0.5, 0.6] and live["epoch"] == [1, 2]


def test_one_snapshot_builder_for_a_live_job_and_an_ended_run(tmp_path):
    """A live job's snapshot is the ended run's picture of what it has recorded, with the live facts
    laid over it: same keys, same units, same curves for a finished unit."""
    history = [rs.epoch_record(1, {"eval_acc": 0.5}, {"train_loss": {"total": 1.5}, "segment": "KD"})]
    recorded = {"phases": {"teacher": {"units": {"single": {"test_acc": 0.7, "history": history}}, "test_acc": 0.7}}}
    job = _job(tmp_path)
    job.experiment.results = copy.deepcopy(recorded)
    job.apply(ev.PhaseResult("teacher", None, recorded["phases"]["teacher"]["units"]["single"] | {"train_seconds": 1}))
    live, ended = job.snapshot(), snapshot_from_results("r", recorded)
    assert set(ended) <= set(live) and not live["read_only"] and ended["read_only"]
    assert live["eval"] == ended["eval"] == {"teacher/single": {"epoch": [1], **{n: [v] for n, v in (
        ("acc", 0.5), ("map", None), ("info_flow", None), ("feature_mse", None), ("flow_divergence", None))}}}
    assert live["series"]["teacher/single"]["losses"] == {"total": [1.5]} and live["results"] == ended["results"]
    assert live["state"] == "queued" and ended["state"] == "finished"
    assert snapshot_from_results("r", {"status": "running"})["state"] == "interrupted"


def test_one_status_summary_for_a_live_job_and_an_ended_run(tmp_path):
    job = _job(tmp_path)
    job.apply(ev.PhaseStarted("kd", 0, [], 10))
    job.apply(ev.StepLoss("kd", 0, 3, 0.1, "KD", {"total": 2.0, "kd": 1.0}))
    summary = job.summary()
    assert (summary["phase"], summary["step"], summary["loss"]) == ("kd", 3, 2.0)
    assert summary["results"] == {} and summary["following"] == 0
    results = {"status": "finished", "phases": {"kd": {"test_acc": 0.5, "test_acc_std": 0.1, "units": {}},
                                                "aux": {"units": {}}}}
    ended = rs.status(snapshot_from_results("r", results))
    assert set(ended) | {"following"} == set(summary)
    assert ended["results"] == {"kd": {"test_acc": 0.5, "test_acc_std": 0.1}} and ended["state"] == "finished"


@pytest.mark.parametrize("path", [p for p in COMMITTED if "reference" in str(p.parent)],
                         ids=lambda p: p.parent.name)
def test_aggregate_and_compare_are_pure_and_reproduce_the_committed_figures(path):
    results = rs.read_results(json.loads(path.read_text()))
    seeds = results["config"]["seeds"]
    before = copy.deepcopy(results)
    for phase in [p for p in rs.STUDENT_PHASES if p in results["phases"]]:
        again = rs.aggregate(results["phases"][phase], seeds)
        stored = results["phases"][phase]
        assert again["test_acc"] == pytest.approx(stored["test_acc"]) and again["test_acc_seeds"] == stored["test_acc_seeds"]
        assert again["retrieval"]["cosine"]["map"] == pytest.approx(stored["retrieval"]["cosine"]["map"])
    redone = rs.compare(results["phases"], seeds)
    assert [(c["a"], c["b"], c["metric"]) for c in redone] == [(c["a"], c["b"], c["metric"]) for c in results["comparisons"]]
    assert [c["diff"] for c in redone] == pytest.approx([c["diff"] for c in results["comparisons"]])
    assert results == before  # nothing changed in place


def test_the_report_imports_neither_gradio_nor_the_ui():
    """Importing the report and rendering a pair's tables and figures loads neither."""
    code = ("import json, sys, app.report as report; "
            "r = json.load(open('assets/library/reference-pkt/results.json')); "
            "report.arm_table(r); figures = report.pair_figures(r); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'gradio' or m.startswith('app.ui')); "
            "print(len(figures), bad); sys.exit(1 if bad or len(figures) != 4 else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_channel_maps_from_an_event_stay_on_show_after_a_unit_is_recorded(tmp_path):
    """A grid forwards its cells' channel maps as events only (its own results hold none): the live
    snapshot keeps them once a unit's result comes in."""
    job = _job(tmp_path)
    job.apply(ev.ChannelMaps("cnn_8_16_32", [{"stage": 0, "kept": [1], "norms": [0.1, 0.2], "teacher_channels": 2}]))
    job.experiment.results = {"phases": {"teacher": {"units": {"single": {"history": []}}}}}
    job.apply(ev.PhaseResult("teacher", None, {"test_acc": 0.5, "train_seconds": 1.0}))
    snap = job.snapshot()
    assert snap["channel_maps"]["pruned_arch"] == "cnn_8_16_32" and list(snap["results"]) == ["teacher"]
