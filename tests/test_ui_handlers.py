"""Handler-level tests of the app: each tab's events called as plain functions."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.config import ASSETS, preset
from app.ui import form
from app.ui import handlers as ui
from app.ui import pictures, runs, views
from app.ui.uploads import UploadError, load_upload


@pytest.fixture(autouse=True)
def local_studio(tmp_path):
    """Handlers run against a fresh local server with its own runs folder."""
    ui.configure(runs_root=tmp_path / "runs")
    yield
    ui.configure(runs_root=tmp_path / "runs")


def values(**changes):
    v = form.values_from(preset("quick-cpu"))
    v.update(changes)
    return [v[k] for k in form.CONTROL_KEYS]


def bars(fig, row="InDistill + KD"):
    return [(t.base[0], t.x[0]) for t in fig.data if t.y[0] == row]


def test_changing_a_or_b_redraws_the_timeline():
    _, start, fig1, _ = ui.check(None, *values(a=2, b=1))
    _, _, fig2, _ = ui.check(None, *values(a=2, b=2))
    assert start["interactive"] is True
    # layers 1..3 + embedding: S_l = a + b·l
    assert [w for _, w in bars(fig1)][:4] == [3, 4, 5, 6]
    assert [w for _, w in bars(fig2)][:4] == [4, 6, 8, 10]
    assert bars(fig2)[-1][0] == 28  # KD starts after the warm-up


def test_invalid_settings_disable_start_with_a_message():
    message, start, _, _ = ui.check(None, *values(a=0, b=-1))
    assert start["interactive"] is False and "negative" in message
    message, start, _, _ = ui.check(None, *values(student="shufflenetv2", teacher="resnet18", aux="off"))
    assert start["interactive"] is False
    # the refusal names the mismatch (4 teacher stages vs 3) and the way out (the auxiliary teacher)
    assert "resnet18 has 4 stages and shufflenetv2 has 3" in message and "auxiliary teacher" in message


def test_folder_without_path_is_explained():
    message, start, _, _ = ui.check(None, *values(dataset="Folder or .tar.gz", data_path=""))
    assert start["interactive"] is False and "ImageFolder" in message


def test_controls_round_trip_through_config():
    for name in ("quick-cpu", "paper-cnn", "seed-pair"):
        cfg = preset(name).with_overrides({"name": "studio"})
        v = form.values_from(cfg)
        back = form.config_from(v)
        assert back.teacher.arch == cfg.teacher.arch and back.indistill == cfg.indistill
        assert back.kd.loss == cfg.kd.loss and back.student.epochs == cfg.student.epochs


def test_loss_change_relabels_the_parameter_inputs():
    ups = ui.param_updates("dkd")
    assert len(ups) == form.MAX_PARAMS
    assert [u.get("visible") for u in ups][:4] == [True, True, True, True]
    assert ups[1]["label"].startswith("beta") and ups[1]["value"] == 8.0
    ups = ui.param_updates("pkt")   # weight, and the CE weight beside it
    assert [u.get("visible") for u in ups] == [True, True] + [False] * (form.MAX_PARAMS - 2)


def test_export_then_import_restores_the_controls(tmp_path):
    vals = values(a=3.5, kd_loss="at", p0=500.0, p1=2.0)
    path, msg = ui.export_config(None, *vals)
    cfg = json.loads(Path(path).read_text())
    assert cfg["indistill"]["a"] == 3.5 and cfg["kd"]["params"]["weight"] == 500.0
    restored = ui.import_config(None, path)
    assert restored[:-1] == vals and "Imported" in restored[-1]


def test_import_of_a_bad_file_says_why(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"indistill": {"a": "many"}}')
    out = ui.import_config(None, str(bad))
    assert "Import failed" in out[-1] and "indistill.a" in out[-1]


def test_start_refuses_invalid_settings_and_cancel_without_a_run():
    session, _, msg = ui.start(None, *values(seeds=0))
    assert session["run"] is None and "Not started" in msg and "seeds" in msg
    assert ui.cancel(None).startswith("Nothing to cancel")


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("plain text"), "not a readable picture"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), "not a readable picture"),
    (lambda p: Image.new("RGB", (5000, 5000)).save(p, "PNG"), "megapixels"),
])
def test_bad_uploads_get_a_clear_message(tmp_path, make, message):
    path = tmp_path / "upload.png"
    make(path)
    with pytest.raises(UploadError, match=message):
        load_upload(path)
    picture, text, gallery = ui.retrieve(str(path), None, "cosine", 4)
    assert picture is None and message in text and gallery == []


def test_grayscale_rgba_and_animated_uploads_are_converted(tmp_path):
    Image.fromarray(np.full((40, 40), 90, np.uint8), "L").save(tmp_path / "g.png")
    Image.fromarray(np.zeros((40, 40, 4), np.uint8), "RGBA").save(tmp_path / "a.png")
    frames = [Image.new("RGB", (30, 30), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    for name, note in (("g.png", "grayscale"), ("a.png", "RGBA"), ("anim.gif", "first frame")):
        picture, notes = load_upload(tmp_path / name)
        assert picture.mode == "RGB" and any(note in n for n in notes)


def test_retrieval_with_shipped_teachers_marks_neighbours():
    if not form.shipped_teachers():
        pytest.skip("no teacher shipped in assets/")
    picture, text, gallery = ui.retrieve(str(ASSETS / "examples" / "cat.jpg"), None, "cosine", 3)
    assert picture is not None and "true class **cat**" in text
    items = gallery["value"]
    assert len(items) == 3 * len(form.shipped_teachers()) and gallery["columns"] == 3
    assert all(caption.split(" ")[1] in "✓✗" for _, caption in items)
    tags = {t["arch"] + ("·authors" if t.get("origin") else "") for t in form.shipped_teachers().values()}
    assert {caption.split(" ")[0] for _, caption in items} == tags   # the authors' teacher told apart by its tag


def test_views_render_results_of_a_run(cifar_jpeg, cache_dir, tmp_path):
    from app.experiment import Experiment
    from test_experiment import tiny
    results = Experiment(tiny(cifar_jpeg, cache_dir), runs_root=tmp_path).run()
    rows = views.compare_rows(results)
    assert [r[0] for r in rows] == ["Teacher", "Baseline (CE)", "KD", "InDistill + KD"]
    assert "test_acc" in views.results_csv(results).splitlines()[0]
    fig = views.channel_figure(results["channel_maps"])
    green = [sum(c == "#10b981" for c in t.marker.color) for t in fig.data]
    assert green == [8, 16, 32]
    assert len(views.pr_figure(results).data) == 4
    assert len(views.scatter_figure(results).data) == 4
    # intervals in the table, the scatter and the note; one latency figure for the three students
    acc = rows[3][2]
    assert "[" in acc and "]" in acc and len(rows[0]) == len(views.COMPARE_HEADERS)
    assert len({r[9] for r in rows[1:]}) == 1
    sc = views.scatter_figure(results)
    assert all(t.error_y.array is not None for t in sc.data) and len({t.x[0] for t in sc.data[1:]}) == 1
    note = views.compare_note(results)
    assert "KD − baseline, accuracy" in note and "InDistill+KD − KD, accuracy" in note
    assert any(v in note for v in ("within noise", "better", "worse"))
    assert "kd - baseline" in views.results_csv(results)


def test_results_csv_puts_each_figure_under_its_own_column():
    """A paired difference's verdict and interval land under comparison columns, not under a
    phase's map_cosine; an untrained classifier's accuracy is left blank."""
    import csv
    import io

    def phase(arch, acc, trained=True):
        return {"arch": arch, "test_acc": acc, "test_acc_std": 0.01, "test_acc_ci": [acc - 0.02, acc + 0.02],
                "test_acc_seeds": [acc - 0.01, acc + 0.01], "classifier_trained": trained,
                "retrieval": {"cosine": {"map": 0.5, "map_ci": [0.49, 0.51]}}, "params": 10, "size_mb": 0.1,
                "flops": 100, "latency_ms_cpu_b1": 0.3, "throughput_b256": 1000.0, "train_seconds": 60.0}
    results = {"phases": {"kd": phase("cnn_8_16_32", 0.1, trained=False), "indistill": phase("cnn_8_16_32", 0.7)},
               "comparisons": [{"a": "kd", "b": "indistill", "metric": "map_cosine", "per_seed": [0.007, 0.005],
                                "diff": 0.006, "ci": [0.001, 0.012], "method": "t-interval over 2 seeds",
                                "verdict": "better"}]}
    rows = list(csv.DictReader(io.StringIO(views.results_csv(results))))
    kd, indistill, diff = rows
    assert (kd["phase"], indistill["phase"], diff["comparison"]) == ("kd", "indistill", "indistill - kd")
    assert diff["metric"] == "map_cosine" and diff["verdict"] == "better"
    assert float(diff["diff"]) == 0.006 and float(diff["diff_ci_low"]) == 0.001 and float(diff["diff_ci_high"]) == 0.012
    assert diff["diff_per_seed"] == "0.0070 0.0050" and diff["method"] == "t-interval over 2 seeds"
    assert diff["map_cosine"] == "" and diff["test_acc"] == "" and diff["phase"] == ""
    assert float(indistill["map_cosine"]) == 0.5 and indistill["verdict"] == ""
    assert float(indistill["test_acc"]) == 0.7 and indistill["test_acc_seeds"] == "0.6900 0.7100"
    assert kd["test_acc"] == kd["test_acc_std"] == kd["test_acc_seeds"] == kd["test_acc_ci_low"] == ""
    assert float(kd["map_cosine"]) == 0.5


def test_a_live_runs_charts_are_redrawn_at_most_every_chart_seconds(monkeypatch):
    from types import SimpleNamespace
    version, clock, drawn = [("r1", 1)], [100.0], []
    monkeypatch.setattr(runs, "_version", lambda session: version[0])
    monkeypatch.setattr(runs, "time", SimpleNamespace(time=lambda: clock[0]))
    monkeypatch.setattr(views, "loss_figure", lambda snap: drawn.append(version[0]) or "figure")
    out = ui.tick_charts(None, None)
    assert out[0] == "figure" and drawn == [("r1", 1)]
    seen = out[-1]
    version[0], clock[0] = ("r1", 2), 100.5           # new points half a second later: not yet
    out = ui.tick_charts(None, seen)
    assert out[0] is not None and drawn == [("r1", 1)] and out[-1] == seen
    clock[0] = 100.0 + runs.CHART_SECONDS               # … drawn once the interval has passed
    out = ui.tick_charts(None, out[-1])
    assert drawn == [("r1", 1), ("r1", 2)]
    version[0], clock[0] = ("r2", 1), clock[0] + 0.1   # another run: at once
    ui.tick_charts(None, out[-1])
    assert drawn[-1] == ("r2", 1)


def test_retrieval_reports_a_model_failure_as_a_message(monkeypatch):
    def broken(session):
        raise RuntimeError("checkpoint unreadable")
    monkeypatch.setattr(pictures, "model_set", broken)
    picture, message, gallery = ui.retrieve(str(ASSETS / "examples" / "cat.jpg"), None, "cosine", 8)
    assert "Could not run the models" in message and "checkpoint unreadable" in message and gallery == []


def test_the_embedding_box_follows_the_procedure():
    """indistill.embed left unset means the procedure's choice (studio: on, reference: off): the box
    shows it resolved, and a box left at the procedure's value is sent as unset, so a workshop run
    started from the page keeps the studio's embedding segment and the reference preset has none."""
    from app.config import preset
    from app.ui.form import config_from, values_from
    shown = values_from(preset("workshop"))
    assert shown["embed"] is True and shown["procedure"] == "studio"
    assert config_from(shown).indistill.embed is None
    assert values_from(preset("reference-cifar10"))["embed"] is False
    assert config_from({**shown, "procedure": "reference", "embed": False}).indistill.embed is None
    assert config_from({**shown, "embed": False}).indistill.embed is False   # a real choice is kept


@pytest.mark.parametrize("run_id", __import__("app.library", fromlist=["ids"]).ids())
def test_every_shipped_library_run_opens_in_every_view(run_id):
    """Each run the app ships (assets/library) opens read-only and fills every tab without an error:
    status, the Compare table and its note, curves, information flow, precision-recall and the grid."""
    session, message = ui.open_run_in(ui.session_of(None), run_id)
    assert session["run"] == run_id and "read-only" in message
    status = ui.status_dict(session)
    assert status["state"] == "finished" and status["read_only"]
    table, scatter, _, note = ui.compare(session)
    rows = table["value"]
    assert rows and "No results yet" not in note
    assert len({len(r) for r in rows}) == 1 and len(rows[0]) == len(views.COMPARE_HEADERS)
    snap = ui.tick_status(session, None)
    assert run_id in snap[0] and "finished" in snap[0].lower()
    loss, acc, _, _ = runs.tick_charts(session, None)
    assert "recorded without its training losses" in loss.layout.annotations[0].text  # not "appear as soon as…"
    grid = ui.grid_views(session)
    if "grid" in ui.results_of(session):   # a curriculum grid: its curves are in the Information flow tab
        assert all(figure.data for figure in grid)
    else:
        assert acc.data and all(any(y is not None for y in trace.y) for trace in acc.data), "per-epoch curves"
        trains_no_classifier = [p for p, e in ui.results_of(session)["phases"].items()
                                if e.get("classifier_trained") is False]
        assert ("mAP (no classifier)" in " ".join(t.name for t in acc.data)) == bool(trains_no_classifier)
        assert ui.pr_view(session, "cosine").data and ui.info_views(session)[0] is not None


def test_feature_maps_of_an_earlier_run_are_cleared_when_another_run_is_on_show():
    session = {**ui.new_session(), "run": "cpu-cnn"}
    drawn_for = pictures.run_on_show(session)
    assert drawn_for == "cpu-cnn"
    same = pictures.clear_outdated_maps(session, drawn_for)
    assert all(isinstance(x, type(gr_skip())) for x in same)          # the same run: the maps stay
    maps, note, kept = pictures.clear_outdated_maps({**session, "run": "cpu-resnet"}, drawn_for)
    assert maps == "" and "Show feature maps" in note and kept is None   # another run: cleared, and said
    assert all(isinstance(x, type(gr_skip())) for x in pictures.clear_outdated_maps(session, None))


def gr_skip():
    import gradio as gr
    return gr.skip()


def test_compare_says_so_when_the_runs_files_vanish_while_read(monkeypatch):
    """Retention may delete a run folder between reading its results and copying its files:
    the Compare tab shows the table and a note, not an error."""
    from app import runfolder
    session, _ = ui.open_run_in(ui.session_of(None), "cpu-cnn")

    def gone(self):
        raise FileNotFoundError(self.path / "checkpoints")
    monkeypatch.setattr(runfolder.RunFolder, "student_checkpoints", gone)
    table, _, files, note = ui.compare(session)
    assert table["value"] and files == [] and "not on this server" in note
