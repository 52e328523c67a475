"""Sweeps on Ray give what the local backend gives: the same accuracies (CPU runs are
deterministic at a fixed thread count), in the same run folders, merged by the same code."""
import builtins
import json

import pytest

from app.config import ConfigError
from app.grid import CurriculumGrid
from app.sweep import make_backend
from test_experiment import tiny


@pytest.fixture(scope="module")
def ray_backend():
    pytest.importorskip("ray", reason="Ray is an optional extra (requirements-ray.txt)")
    backend = make_backend("ray", num_cpus=2, task_cpus=1)   # a local Ray: 2 workers of 1 CPU
    yield backend
    backend.shutdown()


def _cells(results):
    return [(c["mode"], c["a"], c["b"], c["test_acc"], c["correct"], c["total_epochs"]) for c in results["grid"]["cells"]]


def test_a_grid_on_ray_equals_the_local_backend(ray_backend, cifar_jpeg, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("INDISTILL_TRAIN_THREADS", "1")   # each Ray task trains with its 1 CPU
    cfg = tiny(cifar_jpeg, cache_dir, **{"student.epochs": 3, "indistill.aux": "on", "indistill.aux_epochs": 0.5,
                                         "epochs_scale": 0.5})
    local = CurriculumGrid(cfg, [0.25, 0.5], [0.0], tmp_path / "local").run()
    seen = []
    on_ray = CurriculumGrid(cfg, [0.25, 0.5], [0.0], tmp_path / "ray", backend=ray_backend, emit=seen.append).run()
    assert on_ray["status"] == local["status"] == "finished"
    assert _cells(on_ray) == _cells(local)                       # accuracies and the very test images right
    assert on_ray["grid"]["comparisons"] == local["grid"]["comparisons"]
    assert on_ray["phases"]["aux"]["test_acc"] == local["phases"]["aux"]["test_acc"]
    # the same folders: every cell's results and checkpoint, the shared networks trained once (cell 0)
    for i in range(4):
        cell = json.loads((tmp_path / "ray" / f"cell-{i}" / "results.json").read_text())
        assert cell["run_dir"] == f"cell-{i}"
        assert (tmp_path / "ray" / f"cell-{i}" / "checkpoints" / "indistill-s0.pt").is_file()
        if i:
            assert cell["phases"]["teacher"]["train_seconds"] == 0 and cell["phases"]["aux"]["train_seconds"] == 0
            assert cell["config"]["indistill"]["aux_checkpoint"] == str(tmp_path / "ray" / "cell-0" / "checkpoints" / "aux.pt")
    assert any("ray:" in getattr(e, "message", "") for e in seen)


def test_a_study_split_into_ray_tasks_equals_the_local_study(ray_backend, tmp_path, monkeypatch):
    from app.report import arm_table, difference_table, run_study, study
    monkeypatch.setenv("INDISTILL_TRAIN_THREADS", "1")
    s = study("smoke")
    local = run_study(s, tmp_path / "local")
    on_ray = run_study(s, tmp_path / "ray", backend=ray_backend)
    a = json.loads((local / "cnn" / "results.json").read_text())
    b = json.loads((on_ray / "cnn" / "results.json").read_text())
    assert b["status"] == "finished" and b["run_dir"] == "cnn"
    for phase in ("baseline", "kd", "indistill"):
        assert b["phases"][phase]["test_acc_seeds"] == a["phases"][phase]["test_acc_seeds"]
        assert [u["correct"] for u in b["phases"][phase]["units"].values()] == \
            [u["correct"] for u in a["phases"][phase]["units"].values()]
    assert [(c["metric"], c["diff"], c["ci"]) for c in b["comparisons"]] == \
        [(c["metric"], c["diff"], c["ci"]) for c in a["comparisons"]]
    grids = [json.loads((r / "cnn-grid" / "results.json").read_text()) for r in (local, on_ray)]
    assert _cells(grids[1]) == _cells(grids[0])                  # the pair's Fig. 5 grid, on Ray too
    # one latency figure for the student architecture, though two workers trained its units
    costs = {u["latency_ms_cpu_b1"] for p in ("baseline", "kd", "indistill") for u in b["phases"][p]["units"].values()}
    assert len(costs) == 1
    assert arm_table(b) == arm_table(a) and difference_table(b) == difference_table(a)   # the report's tables
    assert "| kd (Hinton KD + CE alone) − baseline | test_acc |" in (on_ray / "report.md").read_text()
    # resumable: a second call finds every unit recorded and runs none again
    before = (on_ray / "cnn" / "checkpoints" / "kd-s1.pt").stat().st_mtime_ns
    run_study(s, tmp_path / "ray", backend=ray_backend)
    assert (on_ray / "cnn" / "checkpoints" / "kd-s1.pt").stat().st_mtime_ns == before


def test_without_ray_the_backend_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match="requirements-ray.txt"):
        make_backend("ray")
    assert make_backend("local") is None
    with pytest.raises(ConfigError, match="--backend ray"):
        make_backend("local", "ray://head:10001")
    with pytest.raises(ConfigError, match="local, ray"):
        make_backend("dask")


def test_a_failed_task_keeps_the_others_work(ray_backend, cifar_jpeg, cache_dir, tmp_path):
    from app.runfolder import RunFolder
    from app.sweep import SweepError, make_job
    good = tiny(cifar_jpeg, cache_dir, **{"phases.baseline": False, "phases.indistill": False, "name": "good"})
    bad = good.with_overrides({"data.data_dir": str(tmp_path / "nowhere"), "name": "bad"})
    kept = []
    jobs = [make_job(cfg, RunFolder(tmp_path / cfg.name), None, cfg.name, units=()) for cfg in (bad, good)]
    with pytest.raises(SweepError, match=r"1 of 2 Ray tasks failed .* bad: DataError"):
        ray_backend.map(jobs, on_done=lambda i, out: kept.append((i, out.results["status"])))
    assert kept == [(1, "finished")]


def test_a_grid_resumes_only_cells_with_the_same_settings(cifar_jpeg, cache_dir, tmp_path):
    cfg = tiny(cifar_jpeg, cache_dir, **{"student.epochs": 2})
    CurriculumGrid(cfg, [0.25], [0.0], tmp_path / "g", include_joint=False, include_off=False).run()
    assert CurriculumGrid(cfg, [0.25], [0.0], tmp_path / "g").finished_cell(0) is not None
    assert CurriculumGrid(cfg, [0.3], [0.0], tmp_path / "g").finished_cell(0) is None   # other a: run again
