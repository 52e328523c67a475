"""Issue 9: loaded models see the data with their own statistics; the bf16 autocast path
runs on the CPU (the same code the GPU uses) and agrees with fp32.

Tolerances (measured on this tiny run, 2 CPU cores: the first logged losses of each phase
differed by at most 0.3 % between bf16 and fp32, the loaded teacher's accuracy not at all,
the students' by at most 2 points on 200 test images):
- the first four logged losses of every phase: within LOSS_RTOL (2 %) relative;
- the loaded teacher's test accuracy: within TEACHER_ATOL (1 point);
- each student's final test accuracy: within STUDENT_ATOL (5 points, 10 of 200 images).
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from app import events as ev
from app.augment import Normalizer
from app.checkpoint import load_checkpoint, load_into, save_model
from app.cli import _config, results_table
from app.config import ASSETS, SAMPLE_DATA, preset
from app.data import load_dataset
from app.device import Runtime, in_fp32, resolve
from app.evaluate import predict
from app.experiment import Experiment
from app.features import FeatureTap
from app.losses import LOSSES, build_loss, pkt_indistill_loss, pkt_loss
from app.metrics import information_with_labels
from app.pairing import spec_of
from app.plan import make_plan
from app.pruning import PrunedFeatures, plan_pruning
from app.train import ce_objective, kd_objective, warmup_objective
from app.ui import views
from conftest import make_image_folder
from models import build_model

TEACHER = ASSETS / "teachers" / "cnn_16_32_64.pt"
LOSS_RTOL, TEACHER_ATOL, STUDENT_ATOL = 0.02, 0.01, 0.05


def loaded_teacher_run(cache_dir, tmp_path, train_per_class: int, checkpoint=TEACHER, **extra):
    """Only the teacher phase: load the checkpoint, evaluate it on 20 sample test images per class."""
    items = {"data.data_dir": str(SAMPLE_DATA), "data.cache_dir": str(cache_dir), "device": "cpu",
             "data.train_per_class": train_per_class, "data.test_per_class": 20, "teacher.checkpoint": str(checkpoint),
             "phases.baseline": False, "phases.kd": False, "phases.indistill": False, "eval.retrieval": False,
             "eval.info_flow": False, "eval.latency_runs": 1, **extra}
    logs = []
    exp = Experiment(preset("workshop").with_overrides(items), runs_root=tmp_path,
                     emit=lambda e: logs.append(e.message) if e.kind == "log" else None)
    return exp, exp.run(), logs


def accuracy_with(model, images, labels, mean, std) -> float:
    """Top-1 accuracy computed here, independently of the engine's evaluation."""
    with torch.no_grad():
        logits = model(Normalizer(mean, std, torch.device("cpu"))(images))
    return float((logits.argmax(1) == labels).float().mean())


# ---------------------------------------------------------------- normalisation

def test_loaded_teacher_is_evaluated_with_its_own_statistics(cache_dir, tmp_path):
    exp, results, logs = loaded_teacher_run(cache_dir, tmp_path, 10)
    blob = load_checkpoint(TEACHER)
    meta = blob["meta"]
    teacher = build_model("cnn_16_32_64", 10)
    load_into(teacher, blob, "teacher")
    test = exp.data.test
    own = accuracy_with(teacher.eval(), test.images, test.labels, meta["mean"], meta["std"])
    assert results["phases"]["teacher"]["test_acc"] == pytest.approx(own, abs=1e-6)  # own: a float32 mean
    # the run's statistics come from the checkpoint, say so, and are what its own checkpoints store
    norm = results["normalisation"]
    assert norm["mean"] == meta["mean"] and norm["std"] == meta["std"] and "cnn_16_32_64.pt" in norm["source"]
    assert any(line.startswith("normalisation:") and "teacher checkpoint" in line for line in logs)
    assert load_checkpoint(exp.ckpt("teacher"))["meta"]["mean"] == meta["mean"]
    where = "test split, 200 images (folder from cifar10-sample.tar.gz)"
    assert results["phases"]["teacher"]["test_data"] == where
    assert f"test acc on the {where}" in results_table(results).splitlines()[-1] and where in views.compare_note(results)
    # the log lines of the CLI and the app (both format events with these)
    t = results["phases"]["teacher"]
    assert ev.test_text(t) == f"test acc {t['test_acc']:.4f} [{t['test_acc_ci'][0]:.4f}, {t['test_acc_ci'][1]:.4f}] on the {where}"
    assert ev.eval_text({"eval_split": "test", "eval_acc": 0.5, "eval_images": 1000}) == "test acc 0.5000 (1,000 images)"


def test_shipped_teacher_figures_name_their_test_set():
    label = views.shipped_label(views.shipped_by_arch()["cnn_16_32_64"][0])
    assert label == "shipped cnn_16_32_64 (78.5% on the CIFAR-10 (JPEG copy) test split, 10,000 images)"
    card = views.model_card("cnn_16_32_64")
    assert "78.55% on the CIFAR-10 (JPEG copy) test split, 10,000 images" in card and "1,000 test images" in card


def test_training_subset_does_not_change_a_loaded_teachers_accuracy(cache_dir, tmp_path):
    small = loaded_teacher_run(cache_dir, tmp_path / "a", 5)
    large = loaded_teacher_run(cache_dir, tmp_path / "b", 60)
    assert small[0].data.train.images.shape[0] != large[0].data.train.images.shape[0]
    assert small[1]["phases"]["teacher"]["test_acc"] == large[1]["phases"]["teacher"]["test_acc"]


def test_checkpoint_without_statistics_falls_back_to_the_training_selection(cache_dir, tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(build_model("cnn_16_32_64", 10).state_dict(), bare)
    exp, results, logs = loaded_teacher_run(cache_dir, tmp_path / "runs", 5, checkpoint=bare)
    data = load_dataset(exp.cfg.data)
    assert tuple(results["normalisation"]["mean"]) == data.mean and "stores no statistics" in results["normalisation"]["source"]
    assert any("stores no statistics" in line for line in logs)


def test_retrieval_database_uses_each_models_own_statistics(tmp_path):
    from app.ui.inspect import LoadedModel, ModelSet
    folder = make_image_folder(tmp_path / "f", per_class=4)
    cfg = {"dataset": "folder", "data_dir": str(folder), "cache_dir": str(tmp_path / "cache")}
    model = build_model("cnn_8_16_32", 3).eval()
    meta = {"arch": "cnn_8_16_32", "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.4, 0.3]}
    ms = ModelSet([LoadedModel("teacher", "T", model, meta)], cfg)
    rt = Runtime(torch.device("cpu"))
    own = dataclasses.replace(ms.data, mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    assert torch.equal(ms.database(ms.models[0]), predict(model, own.train, own, rt)[1])
    assert not torch.allclose(ms.database(ms.models[0]), predict(model, ms.data.train, ms.data, rt)[1])


# ---------------------------------------------------------------- precision setting

def test_runtime_precision_setting_and_validation():
    assert resolve("cpu").precision == "fp32" and "fp32" in resolve("cpu").describe()
    rt = resolve("cpu", "bf16")
    assert rt.bf16 and "bf16 autocast" in rt.describe()
    with rt.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with resolve("cpu", "fp32").autocast():
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="precision must be auto, fp32, bf16"):
        resolve("cpu", "fp16")
    problems = make_plan(preset("quick-cpu").with_overrides({"precision": "fp16"})).problems
    assert any("precision must be auto, fp32, bf16" in p and "'fp16'" in p for p in problems)
    args = argparse.Namespace(config=None, preset="quick-cpu", data_dir="x", precision="bf16", set=None)
    assert _config(args).precision == "bf16"


def test_in_fp32_turns_autocast_off_and_lifts_half_tensors():
    a = torch.randn(6, 5)

    @in_fp32
    def product(x, pair):
        assert not torch.is_autocast_enabled("cpu")
        return x @ pair[0].t()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = product(a.bfloat16(), [a])
        plain = a.bfloat16() @ a.t()
    assert out.dtype == torch.float32 and plain.dtype == torch.bfloat16
    assert torch.allclose(out, a.bfloat16().float() @ a.t())


# ---------------------------------------------------------------- every loss under bf16 autocast

@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    s, t = build_model("cnn_8_16_32", 10), build_model("cnn_16_32_64", 10)
    return s, t, spec_of("cnn_8_16_32", 10), spec_of("cnn_16_32_64", 10)


def _finite_step(objective, model, x, y):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = objective(x, y, 3.0)
    assert parts and all(v.dtype == torch.float32 and torch.isfinite(v) for v in parts.values()), parts
    sum(parts.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_is_finite_and_fp32_under_bf16_autocast(pair, name):
    s, t, s_spec, t_spec = pair
    loss = build_loss(name, s_spec, t_spec)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with FeatureTap(s) as s_tap, FeatureTap(t) as t_tap:
        _finite_step(kd_objective(s_tap, t_tap, loss), s, x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            so, to = s_tap(x), t_tap(x)
            inside = loss(so, to, y, 3.0)
    assert so.logits.dtype == torch.bfloat16   # the networks did run in bf16
    outside = loss(so, to, y, 3.0)              # the same features, no autocast at all
    for k in inside:
        assert inside[k].item() == pytest.approx(outside[k].item(), rel=1e-5)


def test_warmup_objectives_and_ce_are_finite_under_bf16_autocast(pair):
    s, t, s_spec, t_spec = pair
    select = PrunedFeatures(plan_pruning(t, t_spec, s_spec), torch.device("cpu"))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with FeatureTap(s) as s_tap, FeatureTap(t) as p_tap:
        for layers, embed in (((1,), None), ((1, 2, 3), None), ((), pkt_loss), ((), pkt_indistill_loss),
                              ((1, 2, 3), pkt_indistill_loss)):
            _finite_step(warmup_objective(s_tap, p_tap, select, layers, embed), s, x, y)
    _finite_step(ce_objective(s), s, x, y)


def test_information_estimate_is_computed_in_fp32_under_autocast():
    torch.manual_seed(1)
    feats, labels = torch.randn(64, 32).bfloat16(), torch.randint(0, 4, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = information_with_labels(feats, labels)
    assert inside == pytest.approx(information_with_labels(feats.float(), labels), rel=1e-6)


# ---------------------------------------------------------------- a whole tiny run, bf16 vs fp32

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_tiny_run_in_bf16_agrees_with_fp32(cache_dir, tmp_path, device):
    def run(precision):
        losses: dict[str, list[float]] = {}

        def emit(e):
            if e.kind == "step":
                losses.setdefault(e.phase, []).append(e.losses["total"])
        cfg = preset("workshop").with_overrides({
            "data.cache_dir": str(cache_dir), "data.train_per_class": 8, "data.test_per_class": 20, "device": device,
            "precision": precision, "budget": "added", "student.epochs": 1, "optim.batch_size": 20, "eval.retrieval": False,
            "eval.latency_runs": 1, "eval.info_batch": 32})
        results = Experiment(cfg, runs_root=tmp_path / precision, emit=emit).run()
        return results, losses

    fp32, fp32_losses = run("fp32")
    bf16, bf16_losses = run("bf16")
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bf16" and "bf16 autocast" in bf16["device"]
    assert set(bf16_losses) == {"baseline", "kd", "indistill"}
    for phase, values in fp32_losses.items():
        assert bf16_losses[phase][:4] == pytest.approx(values[:4], rel=LOSS_RTOL), phase
    acc = {p: (fp32["phases"][p]["test_acc"], bf16["phases"][p]["test_acc"]) for p in fp32["phases"]}
    assert acc["teacher"][1] == pytest.approx(acc["teacher"][0], abs=TEACHER_ATOL)
    for phase in ("baseline", "kd", "indistill"):
        assert acc[phase][1] == pytest.approx(acc[phase][0], abs=STUDENT_ATOL), (phase, acc[phase])
    assert json.loads((tmp_path / "bf16" / bf16["run_dir"].split("/")[-1] / "config.json").read_text())["precision"] == "bf16"
