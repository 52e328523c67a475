"""The `report` command on the `smoke` study (seconds), its resume, and the Fig. 2 / Fig. 4 analogues."""
import csv
import json

import pytest

from app import events as ev
from app.cli import main as cli
from app.metrics import flow_divergence
from app.report import STUDIES, run_study, study
from app.runfolder import snapshot_from_results
from app.ui import views


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("reports"), tmp_path_factory.mktemp("cache")
    first, second = [], []
    root = run_study(study("smoke"), out, cache_dir=str(cache), emit=first.append)
    mtime = (root / "cnn" / "checkpoints" / "kd-s0.pt").stat().st_mtime_ns
    run_study(study("smoke"), out, cache_dir=str(cache), emit=second.append)
    return root, first, second, mtime


def test_smoke_report_writes_the_three_files(smoke):
    root = smoke[0]
    md = (root / "report.md").read_text()
    for heading in ("## cnn:", "### Accuracy and retrieval", "### Paired differences", "### Cost"):
        assert heading in md
    assert "| indistill (InDistill + Hinton KD + CE) − kd (Hinton KD + CE alone) | test_acc |" in md \
        and "t-interval over 2 seeds" in md
    page = (root / "report.html").read_text()
    assert page.count("Plotly.newPlot") >= 3 and "<script src=" not in page  # plotly inlined: self-contained
    assert "Fig. 2" in page and "Fig. 4" in page
    rows = list(csv.DictReader((root / "report.csv").open()))
    kinds = {(r["row"], r["name"]) for r in rows}
    assert ("unit", "kd") in kinds and ("aggregate", "indistill") in kinds and ("comparison", "indistill - kd") in kinds
    assert sum(r["row"] == "unit" and r["name"] == "indistill" for r in rows) == 2


def test_second_run_resumes_without_retraining(smoke):
    root, first, second, mtime = smoke
    assert sum(isinstance(e, ev.PhaseStarted) for e in first) == 6 + 3  # 3 arms × 2 seeds, 3 grid runs (teacher loaded)
    assert not any(isinstance(e, ev.PhaseStarted) for e in second)
    assert (root / "cnn" / "checkpoints" / "kd-s0.pt").stat().st_mtime_ns == mtime
    assert json.loads((root / "cnn" / "results.json").read_text())["status"] == "finished"


def test_history_has_fig2_and_fig4_fields(smoke):
    results = json.loads((smoke[0] / "cnn" / "results.json").read_text())
    ref = results["flow_reference"]
    assert len(ref["info_flow"]) == 4 and "Rényi" in ref["estimator"] and "Passalis" in ref["divergence"]
    for phase in ("kd", "indistill"):
        h = results["phases"][phase]["units"]["0"]["history"]
        assert all(len(r["feature_mse"]) == 3 and r["flow_divergence"] >= 0 for r in h)
        assert h[-1]["flow_divergence"] == pytest.approx(flow_divergence(h[-1]["info_flow"], ref["info_flow"]), abs=1e-4)
    snap = snapshot_from_results("x", results)
    fmse, fdiv = views.feature_mse_figure(snap), views.flow_divergence_figure(snap)
    assert {t.name.split(" (")[0] for t in fmse.data} == {"KD", "InDistill + KD"} and len(fmse.data) == 6
    assert [t.name for t in fdiv.data] == ["KD (2 seeds)", "InDistill + KD (2 seeds)"]
    assert "Fig. 2" in fmse.layout.title.text and "Fig. 4" in fdiv.layout.title.text


def test_flow_divergence_by_hand():
    assert flow_divergence([1.0, 2.0], [1.5, 2.0]) == pytest.approx(0.25)
    # a deeper teacher: student layer i ↔ teacher layer at the same relative depth (0 → 0, 1 → 2)
    assert flow_divergence([1.0, 2.0], [1.0, 9.0, 3.0]) == pytest.approx(1.0)
    assert views.flow_divergence_figure(None).data == ()


def test_studies_declared_and_cli_estimate(capsys):
    cpu, paper = STUDIES["cpu"], STUDIES["paper"]
    assert len(cpu.pairs) >= 2 and cpu.settings["seeds"] >= 5 and cpu.settings["data.test_per_class"] is None
    assert {p.name for p in cpu.pairs} == {"cnn", "resnet"} and paper.gpu
    assert cli(["report", "--study", "cpu", "--estimate", "--data-dir", "x"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"] < 90
    assert cli(["report", "--study", "nope"]) == 2


def test_library_ships_a_run_read_only(smoke, tmp_path, monkeypatch):
    from app import library
    from app.runfolder import Retention, enforce_retention
    from app.ui import handlers as ui
    root = tmp_path / "library"
    monkeypatch.setattr(library, "ROOT", root)
    library.ship(smoke[0] / "cnn", "smoke-cnn", root)
    assert library.ids() == ["smoke-cnn"] and library.load("../x") is None
    shipped = library.load("smoke-cnn")
    assert shipped["library"] and len(shipped["phases"]["kd"]["units"]["0"]["history"]) <= library.MAX_POINTS
    assert library.downsample(list(range(100)), 5) == [0, 25, 50, 74, 99]
    ui.configure(runs_root=tmp_path / "runs")
    session, message = ui.open_run_in(ui.session_of(None), "smoke-cnn")
    assert session["run"] == "smoke-cnn" and "read-only" in message
    assert ui.results_of(session)["phases"]["indistill"]["test_acc"] == shipped["phases"]["indistill"]["test_acc"]
    fmse = ui.info_views(session)[2]
    assert len(fmse.data) == 6
    enforce_retention(tmp_path / "runs", Retention(max_runs=0))
    assert library.ids() == ["smoke-cnn"]


def test_each_pair_has_its_curriculum_grid_fig5(smoke):
    root = smoke[0]
    grid = json.loads((root / "cnn-grid" / "results.json").read_text())["grid"]
    assert [(c["mode"], c["a"], c["b"]) for c in grid["cells"]] == [("curriculum", 0.1, 0.0), ("joint", 0.1, 0.0),
                                                                    ("off", 0.1, 0.0)]
    assert {c["total_epochs"] for c in grid["cells"]} == {1}           # equal totals: the warm-up comes out of T
    md = (root / "report.md").read_text()
    assert "### Curriculum grid (Fig. 5 analogue)" in md
    cur = grid["cells"][0]
    line = next(l for l in md.splitlines() if l.startswith("| curriculum | 0.1 | 0 |"))
    assert f"| {cur['test_acc'] * 100:.2f} |" in line and grid["comparisons"][0]["verdict"] in line
    assert "| off | – | – |" in md and "the control" in md
    page = (root / "report.html").read_text()
    assert "InDistill accuracy over the curriculum grid" in page
    rows = list(csv.DictReader((root / "report.csv").open()))
    assert [r["verdict"] for r in rows if r["row"] == "grid comparison"] == [c["verdict"] for c in grid["comparisons"]]


def test_report_marks_an_unfinished_grid_and_missing_arms(smoke, tmp_path):
    import shutil
    from app.report import write_report
    root = tmp_path / "smoke"
    shutil.copytree(smoke[0], root)
    shutil.rmtree(root / "cnn")                                      # the arms never ran
    grid = json.loads((root / "cnn-grid" / "results.json").read_text())
    grid["status"], grid["grid"]["cells"] = "failed", grid["grid"]["cells"][:2]
    (root / "cnn-grid" / "results.json").write_text(json.dumps(grid))
    write_report(study("smoke"), root)
    md = (root / "report.md").read_text()
    assert "Arms not run (or not finished)" in md and "Unfinished (failed): 2 runs recorded so far" in md
    assert "| curriculum | 0.1 | 0 |" in md and "Figures (the grid's heatmap)" in md


def test_an_unfinished_pair_is_reported_over_the_seeds_recorded_so_far(smoke, tmp_path):
    """A study that outlasts a session: its report shows what is recorded, marked unfinished, with
    the aggregates and paired differences over the finished seeds only."""
    import shutil
    from app.report import write_report
    root = tmp_path / "smoke"
    shutil.copytree(smoke[0], root)
    path = root / "cnn" / "results.json"
    results = json.loads(path.read_text())
    results["status"] = "running"
    for phase in ("baseline", "kd", "indistill"):
        results["phases"][phase]["units"].pop("1")
        for key in ("test_acc", "test_acc_seeds"):
            results["phases"][phase].pop(key, None)
    results.pop("comparisons")
    path.write_text(json.dumps(results))
    write_report(study("smoke"), root)
    md = (root / "report.md").read_text()
    assert "Unfinished (running): units recorded so far per arm: baseline 1, kd 1, indistill 1 of 2 seeds" in md
    kd0 = results["phases"]["kd"]["units"]["0"]["test_acc"]
    assert f"| kd (Hinton KD + CE alone) | {kd0 * 100:.2f} |" in md          # the one seed, not a stale mean
    assert "McNemar" in md or "1 seed" in md                               # one-seed paired differences
    assert json.loads(path.read_text())["status"] == "running"             # reporting wrote nothing back


def test_the_cli_eta_counts_only_this_experiments_own_pace():
    """A study's second pair (or a resumed run) starts a new clock: its ETA is not the first pair's
    hour divided by the second pair's first percent."""
    from types import SimpleNamespace
    from app.cli import Progress
    bar = Progress(quiet=True)
    first = bar.experiment = SimpleNamespace(done_steps=0, total_steps=100)
    assert bar.fraction_and_eta(now=0.0) == (0.0, None)
    first.done_steps = 50
    assert bar.fraction_and_eta(now=3600.0) == (0.5, 3600.0)              # half in an hour: an hour left
    second = bar.experiment = SimpleNamespace(done_steps=40, total_steps=100)  # resumed: 40 % already recorded
    assert bar.fraction_and_eta(now=3600.0) == (0.4, None)
    second.done_steps = 50
    frac, eta = bar.fraction_and_eta(now=3660.0)                          # 10 % in a minute: 5 minutes left
    assert frac == 0.5 and abs(eta - 300.0) < 1e-6


def test_an_unfinished_pair_whose_units_came_back_from_ray_reports_without_a_runtime(smoke, tmp_path):
    """Units a Ray task recorded carry ``cost_pending`` (their task's timing is dropped): reporting an
    unfinished pair over them needs no runtime and no data (issue 20: it raised AttributeError on
    ``self.rt``), and the student architecture's cost is measured there, beside the teacher's."""
    import shutil
    from app.report import partial_results, write_report
    root = tmp_path / "smoke"
    shutil.copytree(smoke[0], root)
    path = root / "cnn" / "results.json"
    results = json.loads(path.read_text())
    results["status"] = "running"
    student = "cnn_8_16_32@1"
    results["costs"].pop(student)                                       # absorb keeps no task's timing
    for phase in ("baseline", "kd", "indistill"):
        entry = results["phases"][phase]
        entry["units"].pop("1")
        unit = entry["units"]["0"]
        for key in ("params", "size_mb", "flops", "latency_ms_cpu_b1", "latency_ms_cpu_b1_spread", "throughput_b256",
                    "throughput_device", "latency"):
            unit.pop(key, None)
        unit["cost_pending"] = True
        for key in list(entry):
            if key != "units":
                entry.pop(key)
    results.pop("comparisons")
    path.write_text(json.dumps(results))
    merged = partial_results(root / "cnn")
    kd = merged["phases"]["kd"]
    assert "cost_pending" not in kd["units"]["0"] and kd["latency_ms_cpu_b1"] > 0 and "latency_ratio_cpu_b1" in kd
    assert kd["params"] == merged["costs"][student]["params"] and merged["latency"]["order"] == ["cnn_16_32_64@1", student]
    write_report(study("smoke"), root)
    md = (root / "report.md").read_text()
    assert "Unfinished (running)" in md and f"| {student} |" in md
    assert json.loads(path.read_text())["costs"].get(student) is None      # reporting wrote nothing back


def test_a_finished_pair_times_its_architectures_together(smoke):
    """Item 6 of issue 20: at the end of the run the teacher and the student are timed in alternating
    rounds; every unit and phase shows its architecture's figures and its ratio to the teacher."""
    results = json.loads((smoke[0] / "cnn" / "results.json").read_text())
    teacher, student = "cnn_16_32_64@1", "cnn_8_16_32@1"
    timing = results["latency"]
    assert timing["timed"] == "together" and timing["order"] == [teacher, student] and timing["reference"] == teacher
    assert isinstance(timing["cpu"]["busy"], bool) and timing["rounds"] == 2
    assert results["costs"][teacher]["latency_ratio_cpu_b1"]["median"] == 1.0
    ratio = results["costs"][student]["latency_ratio_cpu_b1"]
    assert ratio["q1"] <= ratio["median"] <= ratio["q3"] and ratio["runs"] == 2
    for phase in ("teacher", "baseline", "kd", "indistill"):
        entry = results["phases"][phase]
        for r in (entry, *entry["units"].values()):
            assert r["latency_ms_cpu_b1"] == results["costs"][r["cost_key"]]["latency_ms_cpu_b1"]
            assert "cost_pending" not in r
    md = (smoke[0] / "report.md").read_text()
    assert "timed together at the end of the run, alternating over 2 rounds" in md


def test_report_csv_leaves_an_untrained_classifiers_accuracy_blank():
    """The reference's PKT arms train no classifier: their chance accuracy is not a figure (as in the views)."""
    from app.report import csv_rows
    unit = {"test_acc": 0.0667, "test_acc_ci": [0.06, 0.07], "test_images": 10000, "train_seconds": 1.0}
    results = {"phases": {
        "kd": {"units": {"0": unit}, "test_acc": 0.0667, "test_acc_ci": [0.06, 0.07], "classifier_trained": False},
        "baseline": {"units": {"0": unit}, "test_acc": 0.0667, "test_acc_ci": [0.06, 0.07]}}}
    rows = {(r["name"], r["row"]): r for r in csv_rows("p", results)}
    assert rows[("kd", "unit")]["value"] == "" and rows[("kd", "aggregate")]["ci_low"] == ""
    assert rows[("baseline", "unit")]["value"] == 0.0667 and rows[("baseline", "aggregate")]["ci_high"] == 0.07
