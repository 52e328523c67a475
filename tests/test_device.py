"""The engine on a device: $INDISTILL_TEST_DEVICE (default cpu; ``cuda`` skips without a GPU).

Marked ``device``: ``bench/gpu_check.sh`` runs ``pytest -m device tests/test_device.py`` with
INDISTILL_TEST_DEVICE=cuda on a lent GPU; CI runs them on the CPU with everything else. These
tests import no Gradio (the device machine has none)."""
from __future__ import annotations

import os

import pytest
import torch

from app.config import SAMPLE_DATA, DataConfig, preset
from app.data import load_dataset
from app.device import resolve
from app.evaluate import evaluate_model
from app.experiment import Experiment
from app.features import Outputs
from app.fold import fold_batchnorm
from app.losses import LOSSES, build_loss
from app.pairing import spec_of
from models import build_model

DEVICE = os.environ.get("INDISTILL_TEST_DEVICE", "cpu")
pytestmark = [pytest.mark.device,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA GPU")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_dataset(DataConfig(dataset="folder", data_dir=str(SAMPLE_DATA), train_per_class=8, test_per_class=4,
                                   cache_dir=str(tmp_path_factory.mktemp("cache"))))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_tiny_whole_experiment_runs_on_the_device(tmp_path, precision):
    cfg = preset("workshop").with_overrides({
        "device": DEVICE, "precision": precision, "data.train_per_class": 8, "data.test_per_class": 4,
        "data.val_per_class": 2, "budget": "added", "student.epochs": 1, "optim.batch_size": 16, "eval.latency_runs": 1,
        "eval.info_batch": 16, "data.cache_dir": str(tmp_path / "cache")})
    res = Experiment(cfg, runs_root=tmp_path).run()
    assert res["status"] == "finished" and res["precision"] == precision
    assert res["device"].startswith(DEVICE)
    for phase in ("baseline", "kd", "indistill"):
        u = res["phases"][phase]
        assert 0.0 <= u["test_acc"] <= 1.0 and 0.0 <= u["retrieval"]["cosine"]["map"] <= 1.0
        assert all(torch.isfinite(torch.tensor(h["feature_mse"])).all() for h in u["units"]["0"]["history"])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_computes_the_same_under_bf16_autocast(name):
    """Losses run in fp32 with autocast off: inside a bf16 autocast region on the device they give
    the value they give outside it, for the same inputs."""
    rt = resolve(DEVICE, "bf16")
    s_spec, t_spec = spec_of("cnn_8_16_32", 10), spec_of("cnn_16_32_64", 10)
    torch.manual_seed(0)
    loss = build_loss(name, s_spec, t_spec, {}).to(rt.device)

    def outs(spec):
        return Outputs([torch.randn(8, st.channels, *st.size, device=rt.device) for st in spec.stages],
                       [], torch.randn(8, spec.embed_dim, device=rt.device).relu(),
                       torch.randn(8, 10, device=rt.device))
    s, t, y = outs(s_spec), outs(t_spec), torch.randint(0, 10, (8,), device=rt.device)
    outside = loss(s, t, y, 3.0)
    with torch.autocast(rt.device.type, dtype=torch.bfloat16):
        inside = loss(s, t, y, 3.0)
    for k in outside:
        assert inside[k].dtype == torch.float32 and torch.isfinite(inside[k])
        assert inside[k].item() == pytest.approx(outside[k].item(), rel=1e-5, abs=1e-7), k


@pytest.mark.parametrize("arch", ["cnn_16_32_64", "resnet20"])
def test_folded_teacher_matches_on_the_device(arch):
    rt = resolve(DEVICE, "fp32")
    torch.manual_seed(0)
    model = build_model(arch).to(rt.device)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(4, 3, 32, 32, device=rt.device)
    folded = fold_batchnorm(model)
    assert folded.folded_pairs > 0
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4)


def test_retrieval_on_the_device_matches_the_cpu(tiny):
    torch.manual_seed(0)
    model = build_model("cnn_8_16_32")
    here = evaluate_model(model, tiny, resolve("cpu", "fp32"))
    there = evaluate_model(model.to(resolve(DEVICE, "fp32").device), tiny, resolve(DEVICE, "fp32"))
    assert there["test_acc"] == here["test_acc"]
    for m in ("cosine", "euclidean"):
        assert there["retrieval"][m]["map"] == pytest.approx(here["retrieval"][m]["map"], abs=1e-3)
        assert there["retrieval"][m]["map_reference"] == pytest.approx(here["retrieval"][m]["map_reference"], abs=1e-3)


def test_a_device_trained_student_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from app.export import export_onnx
    cfg = preset("workshop").with_overrides({
        "device": DEVICE, "data.train_per_class": 8, "data.test_per_class": 4, "data.val_per_class": 2,
        "budget": "added", "student.epochs": 1, "optim.batch_size": 16, "eval.latency_runs": 1, "eval.retrieval": False,
        "eval.info_flow": False, "phases.kd": False, "phases.indistill": False, "data.cache_dir": str(tmp_path / "c")})
    res = Experiment(cfg, runs_root=tmp_path).run()
    ckpt = tmp_path / res["run_dir"].split("/")[-1] / "checkpoints" / "baseline-s0.pt"
    report = export_onnx(ckpt, tmp_path / "s.onnx", torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8),
                         runs=2, runs_b256=1)
    assert report["ok"] and report["top1_agreement"] == 1.0
