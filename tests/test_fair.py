"""Fair controls: segment-local epochs for epoch-dependent losses, equal totals across grid
cells and controls, and a validation split that never overlaps train or test."""
import hashlib
import threading

import pytest
import torch

from app import losses
from app.config import PRESETS, preset
from app.data import load_dataset
from app.device import resolve
from app.features import FeatureTap
from app.losses import build_loss
from app.pairing import spec_of
from app.plan import make_plan
from app.pruning import plan_pruning
from app.train import LoopContext, Taps, run_segments, segment_for, steps_for
from models import build_model


class _Stream:
    """Random CIFAR-sized batches, ``steps_per_epoch`` of them per epoch."""
    steps_per_epoch = 2

    def __init__(self):
        self.g = torch.Generator().manual_seed(0)

    def epoch(self):
        for _ in range(self.steps_per_epoch):
            yield torch.randn(8, 3, 32, 32, generator=self.g), torch.randint(0, 10, (8,), generator=self.g)


def test_dkd_ramp_starts_at_zero_in_the_indistill_arms_kd_segment(monkeypatch):
    cfg = preset("quick-cpu").with_overrides({"kd.loss": "dkd", "kd.params.warmup": 2, "student.epochs": 1,
                                              "indistill.a": 1, "indistill.b": 0, "indistill.embed": False})
    plan = make_plan(cfg)
    schedule = plan.schedules["indistill"]
    assert [p.kind for p in schedule] == ["layer", "layer", "layer", "kd"]   # 3 warm-up epochs before KD
    seen = []
    original = losses.DKD.components

    def spy(self, s, t, target, epoch):
        out = original(self, s, t, target, epoch)
        seen.append((epoch, float((out["tckd"] + out["nckd"]).detach())))
        return out
    monkeypatch.setattr(losses.DKD, "components", spy)
    rt = resolve("cpu", "fp32")
    student, teacher = build_model("cnn_8_16_32"), build_model("cnn_16_32_64")
    s_spec, t_spec = spec_of("cnn_8_16_32", 10), spec_of("cnn_16_32_64", 10)
    maps = plan_pruning(teacher, t_spec, s_spec)
    from app.pruning import PrunedFeatures
    stream = _Stream()
    kd = build_loss("dkd", s_spec, t_spec, {"warmup": 2})
    with FeatureTap(student) as s, FeatureTap(teacher) as t:
        taps = Taps(s, t, t, PrunedFeatures(maps, rt.device))
        segs = [segment_for(p, steps_for(p.epochs, 2), student, taps, lr=0.01, warmup_lr=1e-3, kd_loss=kd)
                for p in schedule]
        run_segments(student, stream, segs, LoopContext(rt, lambda e: None, threading.Event(), "indistill", 0))
    # the KD segment starts after 3 warm-up epochs, yet its ramp counts from 0: 0, ½ epoch
    assert [e for e, _ in seen] == [0.0, 0.5]
    assert seen[0][1] == 0.0 and seen[1][1] > 0.0


def test_every_preset_holds_out_a_validation_split():
    for name in PRESETS:
        if name == "reference-cifar10":  # the reference trains on all 50,000: curves on a train probe (test_reference)
            continue
        assert preset(name).data.val_per_class > 0, name


def _hashes(split):
    return {hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in split.images}


def test_validation_split_never_overlaps_train_or_test(cifar_jpeg, cache_dir):
    cfg = preset("quick-cpu").data
    cfg.data_dir, cfg.cache_dir, cfg.train_per_class, cfg.test_per_class, cfg.val_per_class = (
        str(cifar_jpeg), str(cache_dir), 20, 5, 6)
    d = load_dataset(cfg)
    assert len(d.val) == 60 and len(d.train) == 200 and d.eval_split is d.val
    val, train, test = _hashes(d.val), _hashes(d.train), _hashes(d.test)
    assert len(val) == 60 and not (val & train) and not (val & test)
