"""Every kind of bad input a stranger (or a typo) can send, and the message it gets:
handlers, configs, run ids, the CLI and checkpoints. None may raise or show a traceback."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.cli import main as cli
from app.config import ASSETS, preset
from app.ui import form
from app.ui import handlers as ui

TINY = {"budget": "added", "student.epochs": 0.5, "data.train_per_class": 8, "data.test_per_class": 2, "indistill.a": 0.25,
        "indistill.b": 0.0, "eval.latency_runs": 2, "eval.info_batch": 16, "eval.retrieval": False}


@pytest.fixture(autouse=True)
def studio(tmp_path, monkeypatch):
    monkeypatch.setenv("INDISTILL_CACHE", str(tmp_path / "cache"))
    yield ui.configure(runs_root=tmp_path / "runs", public=True)


def controls(**changes):
    v = form.values_from(preset("workshop").with_overrides(TINY), ui.studio().context(None))
    v.update(changes)
    return [v[k] for k in form.CONTROL_KEYS]


def message_of_start(**changes) -> str:
    return ui.start(None, *controls(**changes))[2]


@pytest.mark.parametrize("changes, words", [
    ({"dataset": "/etc/passwd"}, "is not one of the choices"),
    ({"dataset": "Folder or .tar.gz"}, "is not one of the choices"),           # no free-text path in public mode
    ({"dataset": "Your uploaded dataset"}, "upload a dataset first"),
    ({"teacher": "resnet9000"}, "Teacher: 'resnet9000' is not one of the choices"),
    ({"student": None}, "is not one of the choices"),
    ({"kd_loss": "mse"}, "is not one of the choices"),
    ({"teacher_weights": "../../secret.pt"}, "is not one of the choices"),
    ({"student_epochs": 10000}, "public limit of 10 min"),
    ({"seeds": 6}, "public limit of 5"),
    ({"seeds": 0}, "seeds must be in [1, 20]"),
    ({"batch_size": 1024}, "public limit of 512"),
    ({"batch_size": "lots"}, "optim.batch_size must be int"),
    ({"a": -4, "b": 0}, "negative"),
    ({"lr": 50}, "optim.lr must be in"),
    ({"aux_width": 100}, "use 1 to 4 in steps of 0.5"),
    ({"train_per_class": -3}, "data.train_per_class must be in"),
    ({"p0": 1e9}, "kd.params"),
    ({"mode": "sideways"}, "indistill.mode must be one of"),
])
def test_start_refuses_bad_controls_naming_the_setting(changes, words):
    msg = message_of_start(**changes)
    assert msg.startswith("Not started") and words in msg, msg


@pytest.mark.parametrize("changes", [
    {"student_epochs": 10000},
    {"batch_size": 2, "student_epochs": 300, "train_per_class": 0},
    {"seeds": 5, "student_epochs": 3000},
])
def test_what_a_refusal_says_would_fit_is_admitted_on_the_page(changes):
    """Each setting a budget refusal offers, applied alone to the same controls, passes the page's check."""
    msg = message_of_start(**changes)
    offered = dict(re.findall(r"(student epochs|train images per class|seeds) ([0-9.]+)", msg.split("what would fit")[-1]))
    assert "what would fit" in msg and offered, msg
    control = {"student epochs": "student_epochs", "train images per class": "train_per_class", "seeds": "seeds"}
    for words, value in offered.items():
        fitted = controls(**{**changes, control[words]: float(value) if "." in value else int(value)})
        problems, button, *_ = ui.check(None, *fitted)
        assert problems == "" and button["interactive"], (words, value, problems)


def test_wrong_number_of_control_values():
    session, _, msg = ui.start(None, "a", "b")
    assert "expected" in msg and "control values" in msg


@pytest.mark.parametrize("run_id, words", [
    ("x" * 5000, "at most 80 characters"), ("..", "is not a run id"), ("../../etc", "is not a run id"),
    (None, "must be text"), (12, "must be text"), ("", "no run id"),
    ("studio-20260101-000000-0123456789abcdef", "No run"),
])
def test_open_refuses_bad_or_unknown_run_ids(run_id, words):
    session, _, msg = ui.open_run(None, run_id)
    assert session["run"] is None and words in msg, msg


def test_import_refuses_huge_deep_unknown_and_non_json_files(tmp_path):
    cases = {
        "deep.json": ("[" * 50000 + "]" * 50000, "the limit is 65,536"),  # nested thousands deep, over 64 KB
        "deep-small.json": ('{"a":' * 3000 + "1" + "}" * 3000, "nested too deeply"),
        "dataset.json": (json.dumps({"data": {"dataset": "imagenet-21k"}}), "data.dataset must be"),
        "unknown.json": (json.dumps({"bogus": 1}), "unknown setting"),
        "text.json": ("hello", "Expecting value"),
        "list.json": ("[1, 2]", "config must be an object"),
    }
    for name, (text, words) in cases.items():
        (tmp_path / name).write_text(text)
        out = ui.import_config(None, str(tmp_path / name))
        assert out[-1].startswith("Import failed") and words in out[-1], (name, out[-1])
    assert ui.import_config(None, None)[-1].startswith("Import failed: no file")


def test_export_leaves_no_temp_folder_behind(studio):
    import os
    import time
    path, _ = ui.export_config(None, *controls())
    assert Path(path).is_file() and Path(path).parent.parent == studio.scratch
    old = time.time() - studio.limits.export.kept_s - 5
    os.utime(Path(path).parent, (old, old))
    fresh, _ = ui.export_config(None, *controls())
    assert not Path(path).parent.exists() and Path(fresh).is_file()  # the stale one was reaped


@pytest.mark.parametrize("k, words", [(1000, "1 to 16"), (0, "1 to 16"), (float("inf"), "whole number from 1 to 16"),
                                      ("many", "whole number from 1 to 16")])
def test_retrieval_refuses_out_of_range_neighbours(k, words):
    _, text, gallery = ui.retrieve(str(ASSETS / "examples" / "cat.jpg"), None, "cosine", k)
    assert words in text and gallery == []


@pytest.mark.parametrize("call, words", [
    (lambda: ui.api_status("0" * 32, ""), "a start call on this server returned"),        # a key nobody issued
    (lambda: ui.api_cancel(["not", "a", "key"], ""), "a start call on this server returned"),
    (lambda: ui.api_status("", "../../etc"), "run_id"),
    (lambda: ui.api_start(None, ""), "preset_name must be one of"),
    (lambda: ui.api_start("workshop", "[1, 2]"), "must be a JSON object"),
    (lambda: ui.api_start("workshop", "x" * 2_000_000), "at most"),
    (lambda: ui.api_retrieve(str(ASSETS / "examples" / "cat.jpg"), 3, "cosine", "nope-1", ""), "No run `nope-1`"),
])
def test_the_api_answers_bad_arguments_with_a_message(call, words):
    out = call()
    assert words in out["message"] and out.get("run") is None, out


def test_feature_maps_and_views_without_a_visible_run_say_so():
    items, note = ui.feature_maps("../../etc/passwd", {"secret": "a" * 32, "run": "nope-1"})
    assert items == "" and "need a run" in note
    assert ui.compare(None)[3].startswith("No results yet")
    assert ui.status_dict("garbage")["state"] is None


def test_grid_refuses_bad_values():
    session, _, msg = ui.run_grid(None, "1, x", "0", 2, *controls())
    assert "give numbers separated by commas" in msg
    session, _, msg = ui.run_grid(None, ",".join(["1"] * 7), "0", 2, *controls())
    assert "1 to 6 values" in msg


# ---------------------------------------------------------------- CLI: one line, exit code 2

@pytest.mark.parametrize("write, words", [
    (lambda p: p.write_text("{not json"), "not valid JSON"),
    (lambda p: p.write_text("[" * 100000 + "]" * 100000), "not valid JSON"),
    (lambda p: p.write_text("[1, 2]"), "expected a JSON object"),
    (lambda p: None, "cannot read it"),
])
def test_cli_corrupt_config_is_one_line(tmp_path, capsys, write, words):
    path = tmp_path / "cfg.json"
    write(path)
    assert cli(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err


def test_cli_corrupt_resume_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{truncated")
    assert cli(["run", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no readable config.json" in err and "\n" not in err


def test_cli_run_name_cannot_leave_out(cifar_jpeg, cache_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli(["run", "--preset", "quick-cpu", "--data-dir", str(cifar_jpeg), "--cache-dir", str(cache_dir),
                "--out", str(out), "--train-per-class", "4", "--test-per-class", "2", "--epochs-scale", "0.02",
                "--quiet", "--set", "name=../../escaped", "--set", "phases.indistill=false", "--set", "phases.kd=false",
                "--set", "eval.latency_runs=1", "--set", "eval.retrieval=false"])
    assert code == 0
    assert [p.name.startswith("escaped-") for p in out.iterdir()] == [True]
    assert not (tmp_path / "escaped").exists()


def finished_tiny_run(cifar_jpeg, cache_dir, tmp_path):
    """A finished teacher + baseline run on a few images (what the resume tests break)."""
    from app.experiment import Experiment
    cfg = preset("quick-cpu").with_overrides({
        "data.data_dir": str(cifar_jpeg), "data.cache_dir": str(cache_dir), "data.train_per_class": 4,
        "data.test_per_class": 2, "teacher.epochs": 0.5, "student.epochs": 0.5, "phases.kd": False,
        "phases.indistill": False, "eval.latency_runs": 1, "eval.retrieval": False, "eval.info_flow": False})
    exp = Experiment(cfg, runs_root=tmp_path)
    assert exp.run()["status"] == "finished"
    return exp


def test_resume_reruns_a_unit_whose_checkpoint_is_truncated(cifar_jpeg, cache_dir, tmp_path):
    from app.experiment import Experiment
    exp = finished_tiny_run(cifar_jpeg, cache_dir, tmp_path)
    ckpt = exp.ckpt("baseline-s0")
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    logs = []
    again = Experiment(run_dir=exp.run_dir, resume=True, emit=logs.append)
    assert again.run()["status"] == "finished"
    text = " ".join(getattr(e, "message", "") for e in logs)
    assert "baseline-s0 is recorded as done but its checkpoint does not load" in text
    assert any(e.kind == "phase_started" and e.phase == "baseline" for e in logs)
    assert not any(e.kind == "phase_started" and e.phase == "teacher" for e in logs)  # the good one is kept
    from app.checkpoint import load_checkpoint
    load_checkpoint(ckpt)


def test_resume_says_so_when_results_json_is_not_json(cifar_jpeg, cache_dir, tmp_path):
    from app.experiment import Experiment
    exp = finished_tiny_run(cifar_jpeg, cache_dir, tmp_path)
    exp.folder.results.write_text("{ not json")
    logs = []
    assert Experiment(run_dir=exp.run_dir, resume=True, emit=logs.append).run()["status"] == "finished"
    lines = [e.message for e in logs if getattr(e, "message", "").startswith("resume:")]
    assert lines == ["resume: results.json is not readable JSON; every unit is re-run "
                     "(checkpoints of finished units are overwritten)"]


def test_a_damaged_signing_key_is_replaced_never_used_weak(studio):
    """An emptied key file must not make the server sign with an empty key: it is replaced whole,
    and keys signed by the old one are refused like any other."""
    from app.ui import api, keys
    old = ui.api_start("nope", "")  # any call makes the key
    assert "preset_name must be one of" in old["message"]
    key = api.issue_key()
    path = studio.runs_root / ".api-signing-key"
    path.write_text("")
    keys.forget()
    assert len(api.signing_key()) == 32 and len(bytes.fromhex(path.read_text())) == 32
    assert "a start call on this server returned" in ui.api_status(key, "")["message"]
