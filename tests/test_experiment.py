"""Whole experiments on a small subset of the shared CIFAR-10 JPEG copy, on the CPU."""
import json
import threading

import pytest

from app import events as ev
from app.cli import main as cli
from app.config import preset
from app.experiment import Experiment
from app.runner import JobManager
from app.runfolder import RunFolder


def tiny(cifar_jpeg, cache_dir, **extra):
    items = {"data.data_dir": str(cifar_jpeg), "data.cache_dir": str(cache_dir), "data.train_per_class": 12,
             "data.test_per_class": 4, "teacher.epochs": 1, "student.epochs": 1, "indistill.a": 0.5,
             "indistill.b": 0.25, "optim.batch_size": 24, "eval.latency_runs": 2, "eval.info_batch": 32,
             "data.val_per_class": 3,
             "device": "cpu"}
    items.update(extra)
    return preset("quick-cpu").with_overrides(items)


def test_whole_experiment_writes_results(cifar_jpeg, cache_dir, tmp_path):
    seen = []
    cfg = tiny(cifar_jpeg, cache_dir, seeds=2)
    results = Experiment(cfg, runs_root=tmp_path, emit=seen.append).run()
    assert results["status"] == "finished"
    on_disk = json.loads((tmp_path / next(p.name for p in tmp_path.iterdir()) / "results.json").read_text())
    assert on_disk["status"] == "finished"
    assert set(on_disk["phases"]) == {"teacher", "baseline", "kd", "indistill"}
    ind = on_disk["phases"]["indistill"]
    for key in ("test_acc", "test_acc_seeds", "retrieval", "params", "flops", "latency_ms_cpu_b1", "train_seconds"):
        assert key in ind
    assert len(ind["test_acc_seeds"]) == 2 and 0 <= ind["test_acc"] <= 1
    assert ind["retrieval"]["cosine"]["map"] > 0 and len(ind["retrieval"]["euclidean"]["pr_curve"]["precision"]) == 11
    assert [p["name"] for p in on_disk["schedule"]["indistill"]] == ["layer 1", "layer 2", "layer 3", "embedding", "KD"]
    assert [len(s["kept"]) for s in on_disk["channel_maps"]["stages"]] == [8, 16, 32]
    kinds = [e.kind for e in seen]
    switches = [e.name for e in seen if e.kind == "layer_switch" and e.phase == "indistill" and e.seed == 0]
    assert switches == ["layer 1", "layer 2", "layer 3", "embedding", "KD"]
    assert kinds[-1] == "finished" and "channel_maps" in kinds and "epoch" in kinds
    # equal-epoch control: baseline and KD students trained as long as warm-up + KD
    assert on_disk["phases"]["baseline"]["epochs"] == pytest.approx(ind["epochs"])
    assert (tmp_path / on_disk["run_dir"].split("/")[-1] / "checkpoints" / "indistill-s1.pt").is_file()
    # one latency figure per architecture: the three students share the one measurement
    students = [on_disk["phases"][p] for p in ("baseline", "kd", "indistill")]
    assert {s["cost_key"] for s in students} == {"cnn_8_16_32@1"}
    assert len({s["latency_ms_cpu_b1"] for s in students}) == 1
    assert set(on_disk["costs"]) == {"cnn_16_32_64@1", "cnn_8_16_32@1"}
    assert on_disk["costs"]["cnn_8_16_32@1"]["latency_ms_cpu_b1_spread"]["runs"] == 2
    # intervals: a t-interval over the two seeds, paired differences with verdicts
    lo, hi = ind["test_acc_ci"]
    assert lo <= ind["test_acc"] <= hi and "t-interval" in ind["test_acc_ci_method"]
    unit = ind["units"]["0"]
    assert unit["test_images"] == 40 and unit["test_acc_ci"][0] <= unit["test_acc"] <= unit["test_acc_ci"][1]
    assert "map_ci" in ind["retrieval"]["cosine"] and "map_reference" in ind["retrieval"]["cosine"]
    pairs = {(c["a"], c["b"], c["metric"]): c for c in on_disk["comparisons"]}
    assert set(pairs) >= {("baseline", "kd", "test_acc"), ("kd", "indistill", "test_acc"), ("kd", "indistill", "map_cosine")}
    for c in pairs.values():
        assert c["verdict"] in ("better", "worse", "within noise") and len(c["per_seed"]) == 2
    # per-epoch curves on the validation split; the test split only at the end
    assert on_disk["data"]["eval_split"] == "val" and on_disk["data"]["val"] == 30
    assert all(h["eval_split"] == "val" for h in unit["history"])


def test_cancel_stops_within_one_step_and_resume_finishes(cifar_jpeg, cache_dir, tmp_path):
    cancel = threading.Event()
    steps_at_cancel = {}

    def emit(e):
        if e.kind == "step" and e.phase == "kd" and not cancel.is_set():
            cancel.set()
            steps_at_cancel["n"] = exp.done_steps
    exp = Experiment(tiny(cifar_jpeg, cache_dir), runs_root=tmp_path, emit=emit, cancel=cancel)
    results = exp.run()
    assert results["status"] == "cancelled"
    assert exp.done_steps == steps_at_cancel["n"]  # not one more step after the cancel
    assert set(results["phases"]) == {"teacher", "baseline"}
    teacher_seconds = results["phases"]["teacher"]["train_seconds"]

    logs = []
    resumed = Experiment(run_dir=exp.run_dir, resume=True, emit=lambda e: logs.append(e))
    out = resumed.run()
    assert out["status"] == "finished" and set(out["phases"]) == {"teacher", "baseline", "kd", "indistill"}
    assert out["phases"]["teacher"]["train_seconds"] == teacher_seconds  # not retrained
    started = [(e.phase, e.seed) for e in logs if e.kind == "phase_started"]
    assert ("teacher", 0) not in started and ("baseline", 0) not in started and ("kd", 0) in started


def test_a_cancel_during_evaluation_lands_within_two_seconds(cifar_jpeg, cache_dir, tmp_path):
    """The shipped teacher is loaded, then evaluated (accuracy and retrieval against 20,000 training
    images: several seconds): a cancel as the evaluation starts stops the run within 2 s."""
    import time
    cancel, at = threading.Event(), {}

    def emit(e):
        if e.kind == "log" and e.message.startswith("teacher: loaded") and not cancel.is_set():
            at["cancel"] = time.perf_counter()
            cancel.set()
    cfg = preset("workshop").with_overrides({
        "data.dataset": "cifar10", "data.data_dir": str(cifar_jpeg), "data.cache_dir": str(cache_dir),
        "data.train_per_class": 2000, "data.val_per_class": 0, "data.test_per_class": None, "device": "cpu"})
    results = Experiment(cfg, runs_root=tmp_path, emit=emit, cancel=cancel).run()
    assert results["status"] == "cancelled" and "cancel" in at
    assert time.perf_counter() - at["cancel"] < 2.0
    assert "teacher" not in results["phases"]    # nothing half-evaluated is recorded


def test_a_run_past_its_time_limit_stops_and_says_why(tmp_path, cache_dir):
    """Public mode enforces the budget while a run runs: past ``limit_s`` it stops at the next step
    with a message naming the limit; the units finished by then are kept."""
    manager = JobManager(1, tmp_path)
    cfg = preset("workshop").with_overrides({"data.cache_dir": str(cache_dir), "student.epochs": 200, "device": "cpu",
                                             "optim.batch_size": 2, "eval.latency_runs": 1})
    job = manager.submit(cfg, limit_s=6.0)
    job.thread.join(120)
    assert not job.thread.is_alive() and job.state == "cancelled"
    snap = job.snapshot()
    assert "passed the public limit of 0.1 min of training" in snap["error"]
    assert any("public limit" in line for line in snap["log"])
    on_disk = RunFolder(job.run_dir).read_results()
    assert on_disk["status"] == "cancelled" and "teacher" in on_disk["phases"]   # what finished is kept


def test_failure_is_an_event_not_a_dead_thread(tmp_path):
    manager = JobManager(1, tmp_path)
    cfg = preset("quick-cpu").with_overrides({"data.data_dir": str(tmp_path / "missing"), "device": "cpu"})
    job = manager.submit(cfg)
    job.thread.join(30)
    snap = job.snapshot()
    assert snap["state"] == "failed" and "does not exist" in snap["error"]


def test_job_manager_queues_beyond_the_cap_and_cancels(cifar_jpeg, cache_dir, tmp_path):
    manager = JobManager(1, tmp_path)
    first = manager.submit(tiny(cifar_jpeg, cache_dir))
    second = manager.submit(tiny(cifar_jpeg, cache_dir))
    assert manager.queue_position(second) == 1 or first.state != "running"
    second.cancel()
    first.thread.join(300)
    second.thread.join(10)
    assert first.snapshot()["state"] == "finished" and second.snapshot()["state"] == "cancelled"
    snap = first.snapshot()
    assert snap["progress"] == 1.0 and snap["steps_done"] == snap["steps_total"] > 0
    series = snap["series"]["indistill/0"]
    assert len(series["step"]) > 0 and "mse_l1" in series["losses"] and "total" in series["losses"]
    assert [s["name"] for s in snap["segments"]["indistill/0"]][0] == "layer 1"
    assert manager.load_results(first.run_dir.name)["status"] == "finished"


def test_cli_list_and_run(cifar_jpeg, cache_dir, tmp_path, capsys):
    assert cli(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert len(listing["teachers"]) >= 6 and len(listing["students"]) >= 8
    assert {"quick-cpu", "paper-cnn", "resnet56-resnet20", "wrn40_2-wrn16_2", "resnet32x4-resnet8x4",
            "seed-pair"} <= set(listing["presets"])
    code = cli(["run", "--preset", "quick-cpu", "--data-dir", str(cifar_jpeg), "--cache-dir", str(cache_dir),
                "--out", str(tmp_path), "--train-per-class", "8", "--test-per-class", "3", "--epochs-scale", "0.05",
                "--quiet", "--set", "phases.indistill=false", "--set", "eval.latency_runs=2"])
    out = capsys.readouterr().out
    assert code == 0 and "baseline" in out and "indistill" not in out.split("run folder")[0]


def test_cli_reports_bad_settings_without_a_traceback(capsys):
    assert cli(["run", "--preset", "quick-cpu", "--set", "indistill.a=-5"]) == 2
    err = capsys.readouterr().err
    assert "negative" in err and "Traceback" not in err


def test_curriculum_grid_cells_and_controls_have_equal_totals_and_share_the_teachers(cifar_jpeg, cache_dir, tmp_path):
    from app.grid import CurriculumGrid
    from app.ui.views import grid_figures
    cfg = tiny(cifar_jpeg, cache_dir, **{"student.epochs": 3, "indistill.aux": "on", "indistill.aux_epochs": 0.5,
                                         "epochs_scale": 0.5})
    grid = CurriculumGrid(cfg, [0.25, 0.5], [0.0], tmp_path / "grid")
    out = grid.run()
    cells = out["grid"]["cells"]
    assert out["status"] == "finished" and [(c["mode"], c["a"], c["b"]) for c in cells] == [
        ("curriculum", 0.25, 0.0), ("curriculum", 0.5, 0.0), ("joint", 0.25, 0.0), ("off", 0.25, 0.0)]
    # equal totals: the warm-up comes out of the budget T = 3 epochs (× epochs_scale 0.5)
    assert [c["total_epochs"] for c in cells] == pytest.approx([1.5] * 4)
    assert cells[0]["warmup_epochs"] == pytest.approx(0.5) and cells[1]["warmup_epochs"] == pytest.approx(1.0)
    assert cells[2]["warmup_epochs"] == cells[0]["warmup_epochs"] and cells[3]["warmup_epochs"] == 0
    assert [c["kd_epochs"] for c in cells] == pytest.approx([1.0, 0.5, 1.0, 1.5])
    # one teacher and one auxiliary teacher, trained by the first cell and loaded by the others
    for i in (1, 2, 3):
        later = json.loads((tmp_path / "grid" / f"cell-{i}" / "results.json").read_text())
        assert later["phases"]["teacher"]["train_seconds"] == 0 and later["phases"]["aux"]["train_seconds"] == 0
        assert later["config"]["indistill"]["aux_checkpoint"].endswith("cell-0/checkpoints/aux.pt")
    # every cell and the joint control against the no-warm-up control, paired on the same test images
    comps = out["grid"]["comparisons"]
    assert [(c["mode"], c["a"]) for c in comps] == [("curriculum", 0.25), ("curriculum", 0.5), ("joint", 0.25)]
    assert comps[0]["diff"] == pytest.approx(cells[0]["test_acc"] - cells[3]["test_acc"])
    assert all(c["verdict"] in ("better", "worse", "within noise") for c in comps)
    heat, flow = grid_figures(out["grid"])
    assert heat.data[0].z[0][0] == pytest.approx(cells[0]["test_acc"] * 100)
    assert len(flow.data) > 0


def test_grid_rejects_cells_that_cannot_run(cifar_jpeg, cache_dir, tmp_path):
    from app.config import ConfigError
    from app.grid import CurriculumGrid
    with pytest.raises(ConfigError, match="negative"):
        CurriculumGrid(tiny(cifar_jpeg, cache_dir, **{"student.epochs": 30}), [0.0], [-1.0], tmp_path / "g")
    # S_l = 2 + l over 3 layers and the embedding: 14 epochs, more than the budget of 10
    with pytest.raises(ConfigError, match="leaves no KD epochs"):
        CurriculumGrid(tiny(cifar_jpeg, cache_dir, **{"student.epochs": 10}), [2.0], [1.0], tmp_path / "g")


def test_reference_procedure_chain(cifar_jpeg, cache_dir, tmp_path):
    """aux: CE then PKT from the teacher; it teaches the warm-up and stage 2 (InDistill PKT, no CE)."""
    seen = []
    cfg = tiny(cifar_jpeg, cache_dir, **{"indistill.procedure": "reference", "indistill.aux": "on",
                                         "indistill.aux_epochs": 0.5, "phases.baseline": False,
                                         "eval.retrieval": False, "eval.info_flow": False})
    exp = Experiment(cfg, runs_root=tmp_path, emit=seen.append)
    out = exp.run()
    assert out["status"] == "finished"
    proc = out["procedure"]
    assert [(p["kind"], p["loss"]) for p in proc["aux"]] == [("ce", "ce"), ("kd", "pkt")]
    assert proc["warmup_source"] == "aux" and proc["stage2_teacher"] == "aux"
    assert proc["stage2_loss"] == "pkt_indistill" and proc["stage2_params"]["ce"] == 0.0
    assert out["schedule"]["indistill"][-1]["loss"] == "pkt_indistill" and out["schedule"]["kd"][0]["loss"] == "pkt_indistill"
    # no CE term in stage 2, nor in the auxiliary teacher's PKT segment
    kd_steps = [e for e in seen if e.kind == "step" and e.segment == "KD"]
    assert kd_steps and all("ce" not in e.losses for e in kd_steps)
    aux_pkt = [e for e in seen if e.kind == "step" and e.phase == "aux" and e.segment == "embedding PKT"]
    assert aux_pkt and all(set(e.losses) == {"pkt", "total"} for e in aux_pkt)
    assert [e.name for e in seen if e.kind == "layer_switch" and e.phase == "aux"] == ["CE", "embedding PKT"]


def test_each_epoch_records_its_mean_training_losses_for_a_reopened_run(cifar_jpeg, cache_dir, tmp_path):
    """history[].train_loss is the mean of the epoch's per-step losses (the tiny run logs every step),
    each part over the steps it was active and the total over all, also in epochs that span two
    curriculum segments; a re-opened run draws its loss chart from it."""
    from app.runfolder import snapshot_from_results
    from app.ui import views
    seen = []
    cfg = tiny(cifar_jpeg, cache_dir, seeds=1, **{"phases.baseline": False, "student.epochs": 2})
    results = Experiment(cfg, runs_root=tmp_path, emit=seen.append).run()
    spanning = 0
    for phase in ("kd", "indistill"):
        history = results["phases"][phase]["units"]["0"]["history"]
        steps = [e for e in seen if e.kind == "step" and e.phase == phase]
        for h in history:
            logged = [e for e in steps if h["epoch"] - 1 < e.epoch <= h["epoch"]]
            spanning += len({e.segment for e in logged}) > 1
            assert logged and set(h["train_loss"]) == {n for e in logged for n in e.losses}
            for name, mean in h["train_loss"].items():
                values = [e.losses[name] for e in logged if name in e.losses]
                assert mean == pytest.approx(sum(values) / len(values), rel=1e-4), (phase, h["epoch"], name)
        snap = snapshot_from_results("tiny-1", results)
        assert snap["series"][f"{phase}/0"]["epoch"] == [h["epoch"] for h in history]
        assert snap["series"][f"{phase}/0"]["losses"]["total"] == [h["train_loss"]["total"] for h in history]
    assert spanning, "a = 0.5, b = 0.25 puts two curriculum segments in one epoch"
    assert results["phases"]["kd"]["units"]["0"]["history"][-1]["segment"] == "KD"
    figure = views.loss_figure(snapshot_from_results("tiny-1", results))
    assert {"total", "kd"} <= {t.name for t in figure.data}


def test_a_grid_cell_saved_in_the_older_spelling_is_still_finished(cifar_jpeg, cache_dir, tmp_path):
    """A cell folder written before ``budget`` replaced ``equal_epochs`` resumes as finished, not retrained;
    a cell whose settings really differ is run again."""
    from app.grid import CurriculumGrid
    from app.runfolder import RunFolder, write_json
    grid = CurriculumGrid(tiny(cifar_jpeg, cache_dir, **{"student.epochs": 3}), [0.25], [0.0], tmp_path / "grid")
    saved = grid.shared(grid.configs[0]).to_dict()
    legacy = {k: v for k, v in saved.items() if k != "budget"} | {"equal_epochs": saved["budget"] == "added"}
    folder = RunFolder(grid.cell_dir(0))
    folder.path.mkdir(parents=True)
    write_json(legacy, folder.config)
    folder.write_results({"status": "finished", "phases": {}})
    assert grid.finished_cell(0) is not None
    write_json(legacy | {"seeds": saved["seeds"] + 1}, folder.config)
    assert grid.finished_cell(0) is None
