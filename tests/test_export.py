"""ONNX export: the round trip matches PyTorch on real images; a missing extra says what to install."""
import builtins
import json
import re
from pathlib import Path

import pytest
import torch

from app.checkpoint import save_model
from app.cli import main as cli
from app.config import SAMPLE_DATA
from app.export import ExportError, export_for_download, export_onnx
from models import build_model


@pytest.fixture
def student_ckpt(tmp_path):
    """A randomly initialised CNN 8/16/32 with non-trivial batch-norm statistics, saved as the engine saves."""
    torch.manual_seed(0)
    model = build_model("cnn_8_16_32")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.running_mean, -0.3, 0.3)
            torch.nn.init.uniform_(m.running_var, 0.5, 2.0)
    path = tmp_path / "student.pt"
    save_model(model, path, {"arch": "cnn_8_16_32", "width": 1.0, "num_classes": 10, "classes": [str(i) for i in range(10)],
                             "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26], "input_size": 32,
                             "phase": "kd", "seed": 0, "test_acc": None, "data": "folder from elsewhere.tar.gz"})
    return path


def test_round_trip_matches_pytorch_on_real_images(student_ckpt, tmp_path, cache_dir, monkeypatch):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    monkeypatch.setenv("INDISTILL_CACHE", str(cache_dir))
    report = export_onnx(student_ckpt, tmp_path / "out" / "student.onnx", runs=3, runs_b256=1, check_batch=64)
    assert report["ok"] and report["max_abs_diff"] <= 1e-4 and report["top1_agreement"] == 1.0
    assert "cifar10-sample" in report["images"] and report["images"].startswith("64 ")  # real test images
    for key in ("onnx_ms_b1", "onnx_ms_b256", "torch_ms_b1", "torch_ms_b256"):
        assert report[key] > 0
    proto = onnx.load(report["onnx_path"])
    assert [o.name for o in proto.graph.output] == ["logits", "embedding"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    assert {p.key: p.value for p in proto.metadata_props}["arch"] == "cnn_8_16_32"

    path, summary = export_for_download(student_ckpt, tmp_path / "dl", images=torch.randint(0, 256, (8, 3, 32, 32),
                                                                                         dtype=torch.uint8), runs=2, runs_b256=1)
    assert path.name == "student.onnx" and path.is_file()
    assert "max |ONNX − PyTorch|" in summary and "onnxruntime" in summary and "batch 256" in summary


def test_cli_export_prints_the_check_and_latencies(student_ckpt, tmp_path, cache_dir, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("INDISTILL_CACHE", str(cache_dir))
    out = tmp_path / "cli.onnx"
    assert cli(["export", str(student_ckpt), "--out", str(out), "--data-dir", str(SAMPLE_DATA), "--runs", "3",
                "--runs-b256", "1"]) == 0
    text = capsys.readouterr().out
    assert "max abs diff" in text and "(ok: tolerance 0.0001)" in text
    assert "batch 1: onnxruntime" in text and "batch 256: onnxruntime" in text and "PyTorch" in text
    assert cli(["export", str(student_ckpt), "--out", str(out), "--runs", "2", "--runs-b256", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_abs_diff"] <= 1e-4 and out.is_file()


def test_missing_extra_is_one_clear_line(student_ckpt, tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(ExportError, match=r"onnxruntime is not installed\): pip install -r requirements-extra.txt"):
        export_onnx(student_ckpt, tmp_path / "x.onnx")
    assert cli(["export", str(student_ckpt), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -r requirements-extra.txt" in err and "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists()


def test_a_checkpoint_without_metadata_is_refused(tmp_path, capsys):
    path = tmp_path / "bare.pt"
    torch.save(build_model("cnn_8_16_32").state_dict(), path)
    assert cli(["export", str(path), "--out", str(tmp_path / "bare.onnx")]) == 2
    assert "no architecture in its metadata" in capsys.readouterr().err


def test_compare_exports_a_student_of_the_run_on_show(cifar_jpeg, cache_dir, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from app.experiment import Experiment
    from app.runfolder import new_run_id
    from app.ui import handlers as ui
    from test_experiment import tiny
    monkeypatch.delenv("INDISTILL_DATA_DIR", raising=False)   # check images: the embedded sample
    monkeypatch.setenv("INDISTILL_CACHE", str(cache_dir))
    studio = ui.configure(runs_root=tmp_path / "runs")
    assert "no student checkpoints" in ui.export_onnx(None, "kd-s0")[1]
    run_id = new_run_id("onnx")
    cfg = tiny(cifar_jpeg, cache_dir, **{"phases.baseline": False, "phases.indistill": False})
    Experiment(cfg, tmp_path / "runs" / run_id).run()
    session, _, msg = ui.open_run(None, run_id)
    picker = ui.onnx_choices(session)
    assert picker["choices"] == ["kd-s0"] and picker["value"] == "kd-s0"
    path, md = ui.export_onnx(session, "kd-s0")
    assert path.endswith("kd-s0.onnx") and Path(path).stat().st_size > 1000
    diff = float(re.search(r"max \|ONNX − PyTorch\| = ([0-9.e+-]+)", md).group(1))
    assert diff <= 1e-4 and "| onnxruntime" in md and "| PyTorch" in md and str(tmp_path) not in md
    assert ui.export_onnx(session, "kd-s0") == (path, md)          # served again, not re-exported
    studio.limits = studio.limits.changed(export={"onnx_scratch_bytes": 1000})  # the space for exported files is bounded
    Path(path).touch()                                             # (the finished export is still served)
    assert ui.export_onnx(session, "kd-s0")[0] == path
    (tmp_path / "runs" / run_id / "checkpoints" / "kd-s0.pt").touch()   # a new version: would export again
    refused = ui.export_onnx(session, "kd-s0")
    assert refused[0] is None and "fill this server's 1e-06 GB" in refused[1]
    for forged in ("../../../etc/passwd", "teacher", 7):
        none, message = ui.export_onnx(session, forged)
        assert none is None and "is not one of this run's student checkpoints (kd-s0)" in message
