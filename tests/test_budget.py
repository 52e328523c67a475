"""Budgets that hold: the estimate counts what the engine runs, a refusal's suggestions are admitted,
and a cancel lands within one evaluation batch or one layer, wherever the run is."""
from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
import torch.nn.functional as F

from app import public
from app.augment import EVAL_BATCH, EVAL_BATCH_FLOPS, BatchStream, eval_batch_for
from app.config import preset
from app.data import Dataset, Split
from app.device import Runtime
from app.plan import make_plan
from app.evaluate import batch_size_for, eval_accuracy, predict
from app.train import CancelledError, LoopContext, Segment, run_segments, trainable
from models import MODELS, build_model

BUDGET = public.Budget()
CPU = Runtime(torch.device("cpu"))


# ---------------------------------------------------------------- the estimate

def test_every_offered_architecture_is_in_the_measured_table():
    table = public.speed_table()
    assert set(MODELS) <= set(table), set(MODELS) - set(table)
    assert all(s.train_image_s > 0 and s.fwd_image_s > 0 for s in table.values())


def test_a_run_of_tiny_epochs_still_pays_one_whole_step_at_its_batch():
    """The issue's hole: resnet32x4 at batch 124 and 0.001 epochs was priced at 0.1 min, as a thousandth
    of an epoch; the engine trains at least one step of 124 images. By hand: one step of 0.5 s + 124 ×
    0.25 s, everything else free."""
    cfg = preset("workshop").with_overrides({
        "teacher.arch": "resnet32x4", "teacher.checkpoint": None, "teacher.epochs": 0.001, "student.epochs": 0.001,
        "optim.batch_size": 124, "data.train_per_class": 13, "eval.retrieval": False, "eval.info_flow": False})
    flops = public._net_cost("resnet32x4", 10, 1.0, 32)[0]
    free = public.NetSpeed(1.0, 0.0, 0.0, 0.0, 0.0)
    nets = {arch: free for arch in MODELS} | {"resnet32x4": public.NetSpeed(flops, 0.5, 0.25, 0.0, 0.0)}
    model = public.CostModel(engine_step_s=0, engine_image_s=0, unit_s=0, run_s=0, decode_s=0, margin=1.0, nets=nets)
    est = public.estimate(cfg, make_plan(cfg), *public.dataset_size(cfg), model=model)
    assert est.parts["teacher"] == pytest.approx(0.5 + 124 * 0.25, abs=0.05)


OVER_BUDGET = [
    ({"student.epochs": 1000}, {"student.epochs", "data.train_per_class"}),
    ({"optim.batch_size": 2, "student.epochs": 200}, {"student.epochs", "data.train_per_class"}),  # the issue's
    ({"seeds": 5, "student.epochs": 250}, {"student.epochs", "seeds", "data.train_per_class"}),
    # the teacher trained here takes most of it: fewer student epochs alone would not do
    ({"teacher.arch": "resnet20", "teacher.checkpoint": None, "teacher.epochs": 40, "student.arch": "resnet8",
      "seeds": 4, "data.val_per_class": 10}, {"data.train_per_class"}),
]


@pytest.mark.parametrize("overrides, offered", OVER_BUDGET)
def test_each_suggestion_of_a_refusal_is_admitted_and_is_the_most_that_fits(overrides, offered):
    cfg = preset("workshop").with_overrides(overrides)
    est = public.estimate_config(cfg)
    message = " ".join(public.check_budget(cfg, est, BUDGET))
    assert "over the public limit of 10 min" in message and "what would fit" in message, message
    fits = public.suggestions(cfg, est, BUDGET)
    assert offered <= set(fits), fits
    for key, value in fits.items():
        assert public.SUGGESTION_WORDS[key].format(f"{value:g}" if isinstance(value, float) else value) in message
        fitted = cfg.with_overrides({key: value})
        assert public.check_budget(fitted, public.estimate_config(fitted), BUDGET) == [], (key, value)
        more = cfg.with_overrides({key: value + 1 if isinstance(value, int) else value * 1.05})
        assert public.check_budget(more, public.estimate_config(more), BUDGET), (key, "a little more is refused")


def test_the_memory_refusal_names_a_batch_that_fits_the_memory():
    cfg = preset("workshop").with_overrides({"teacher.arch": "resnet32x4", "teacher.checkpoint": None,
                                            "teacher.epochs": 0.01, "student.epochs": 0.01, "optim.batch_size": 512,
                                            "data.input_size": 64})
    est = public.estimate_config(cfg)
    assert est.step_mb > BUDGET.max_step_mb
    fit = int(next(p for p in public.check_budget(cfg, est, BUDGET) if "MB of activations" in p)
              .split("a batch size of ")[1].split()[0])
    assert public.estimate_config(cfg.with_overrides({"optim.batch_size": fit})).step_mb <= BUDGET.max_step_mb
    assert public.estimate_config(cfg.with_overrides({"optim.batch_size": fit + 1})).step_mb > BUDGET.max_step_mb


# ---------------------------------------------------------------- cancel: evaluation batches

def test_evaluation_batches_of_a_large_network_are_small_and_of_a_small_one_large():
    big = build_model("resnet32x4", 10).eval()
    images = Split(torch.zeros(4, 3, 64, 64, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    size = batch_size_for(big, images)
    flops = public._net_cost("resnet32x4", 10, 1.0, 64)[0]
    assert 1 <= size and size * flops <= EVAL_BATCH_FLOPS < (size + 1) * flops
    assert eval_batch_for(1e6) == EVAL_BATCH


def _data(n: int = 64, size: int = 32) -> Dataset:
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), torch.arange(n) % 10)
    return Dataset("t", "random", [str(i) for i in range(10)], split, split)


class Calls:
    """Counts a network's forward passes; sets ``cancel`` at the start of pass ``at``; sleeps in each
    (a slow network), so a cancel that is not honoured would show as further passes."""

    def __init__(self, model, cancel: threading.Event, at: int, when=lambda m: True, sleep: float = 0.0):
        self.n, self.after, self.cancel, self.at, self.when, self.sleep = 0, 0, cancel, at, when, sleep
        model.register_forward_pre_hook(self)

    def __call__(self, module, _inputs):
        if not self.when(module):
            return
        if self.cancel.is_set():
            self.after += 1
        self.n += 1
        if self.n == self.at:
            self.cancel.set()
        if self.sleep:
            threading.Event().wait(self.sleep)


def test_a_cancel_during_evaluation_lands_before_the_next_batch(monkeypatch):
    monkeypatch.setattr("app.augment.EVAL_BATCH_FLOPS", 4 * public._net_cost("cnn_8_16_32", 10, 1.0, 32)[0])
    model, data, cancel = build_model("cnn_8_16_32", 10), _data(), threading.Event()
    calls = Calls(model, cancel, at=3, sleep=0.01)
    outcome = {}

    def check():
        if cancel.is_set():
            raise CancelledError

    def evaluate():
        try:
            predict(model, data.test, data, CPU, check)
            outcome["ended"] = "finished"
        except CancelledError:
            outcome["ended"] = "cancelled"
    worker = threading.Thread(target=evaluate)
    worker.start()
    worker.join(timeout=60)
    assert outcome == {"ended": "cancelled"} and calls.n == 3 and calls.after == 0   # 16 batches of 4 images


# ---------------------------------------------------------------- cancel: inside the training loop

def _loop(cancel: threading.Event) -> LoopContext:
    return LoopContext(CPU, lambda e: None, cancel, "baseline", 0)


def test_a_cancel_during_the_per_epoch_evaluation_lands_within_a_layer(monkeypatch):
    """The epoch-end callback evaluates with no check of its own (as the experiment's does): the loop's
    cancel points stop it inside the pass that saw the cancel, before another batch starts."""
    monkeypatch.setattr("app.augment.EVAL_BATCH_FLOPS", 4 * public._net_cost("cnn_8_16_32", 10, 1.0, 32)[0])
    model, data, cancel = build_model("cnn_8_16_32", 10), _data(), threading.Event()
    calls = Calls(model, cancel, at=1, when=lambda m: not m.training)   # the first evaluation pass
    stream = BatchStream(data.train, 16, CPU.device, data.mean, data.std)
    seg = Segment("CE", 3 * stream.steps_per_epoch, lambda x, y, e: {"ce": F.cross_entropy(model(x), y)},
                  trainable(model))
    evaluated = []

    def on_epoch(epoch, losses, name):
        evaluated.append(eval_accuracy(model, data.eval_split, data, CPU))   # 16 batches of 4 images
        return {"acc": evaluated[-1]}
    with pytest.raises(CancelledError):
        run_segments(model, stream, [seg], _loop(cancel), on_epoch=on_epoch)
    assert calls.n == 1 and calls.after == 0 and evaluated == []


def test_a_cancel_inside_a_step_stops_it_before_the_student_runs_or_learns():
    """Set while the frozen teacher runs forward: the student's forward never starts, no weight moves."""
    student, teacher, data, cancel = build_model("cnn_8_16_32", 10), build_model("cnn4", 10).eval(), _data(), \
        threading.Event()
    Calls(teacher, cancel, at=2)                 # the second step's teacher pass
    students = Calls(student, cancel, at=0)
    before = [p.detach().clone() for p in student.parameters()]

    def objective(x, y, epoch):
        with torch.no_grad():
            t = teacher(x)
        return {"kd": F.kl_div(F.log_softmax(student(x), 1), F.softmax(t, 1), reduction="batchmean")}
    stream = BatchStream(data.train, 16, CPU.device, data.mean, data.std)
    seg = Segment("KD", 4, objective, trainable(student), frozen=(teacher,))
    ctx = _loop(cancel)
    steps = []
    ctx = dataclasses.replace(ctx, on_step=lambda: steps.append(1))
    with pytest.raises(CancelledError):
        run_segments(student, stream, [seg], ctx)
    assert len(steps) == 1 and students.n == 1 and students.after == 0
    moved = [not torch.equal(a, p) for a, p in zip(before, student.parameters())]
    assert any(moved)   # the first step did learn; the second raised before its optimizer step


def test_a_cancel_after_the_forward_pass_stops_the_backward_pass():
    student, data, cancel = build_model("cnn_8_16_32", 10), _data(), threading.Event()
    student.classifier_module.register_forward_hook(lambda *_: cancel.set())   # forward done: cancel
    stream = BatchStream(data.train, 16, CPU.device, data.mean, data.std)
    seg = Segment("CE", 2, lambda x, y, e: {"ce": F.cross_entropy(student(x), y)}, trainable(student))
    with pytest.raises(CancelledError):
        run_segments(student, stream, [seg], _loop(cancel))
    assert all(p.grad is None for p in student.parameters())   # no backward operation finished


def test_a_cancel_during_a_units_evaluation_stops_before_the_next_layer(tmp_path, monkeypatch):
    """The unit's final evaluation runs inside the cancel points: once cancel is set, no further
    layer of the evaluated network runs (a large teacher's evaluation batch is not waited for)."""
    import torch

    from app import experiment as exp_mod
    from app.config import SAMPLE_DATA, preset
    ran_after_cancel = []

    def evaluation(model, data, rt, **_):
        run.cancel.set()
        hooks = [m.register_forward_hook(lambda *_: ran_after_cancel.append(1))
                 for m in model.modules() if not list(m.children())]
        try:
            model(torch.zeros(2, 3, 32, 32))
        finally:
            for h in hooks:
                h.remove()
        return {"test_acc": 0.0}
    monkeypatch.setattr(exp_mod, "evaluate_model", evaluation)
    cfg = preset("workshop").with_overrides({
        "data.data_dir": str(SAMPLE_DATA), "data.train_per_class": 4, "data.test_per_class": 2, "device": "cpu",
        "phases.kd": False, "phases.indistill": False, "eval.retrieval": False, "data.val_per_class": 1})
    run = exp_mod.Experiment(cfg, runs_root=tmp_path)
    assert run.run()["status"] == "cancelled"
    assert ran_after_cancel == []
