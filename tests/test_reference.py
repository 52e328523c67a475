"""The InDistill reference code, reproduced: the authors' released models load exactly, the
project's L1 pruning keeps the filters their pruned network holds, the ``batch-gamma`` targets
are computed as theirs are, and a ``reference``-procedure run follows their schedule step by
step (numbers written by hand from kd_from_aux_to_student.py and train_baselines.py).

The released models are read from $INDISTILL_REFERENCE_MODELS, else ../shared/reference/models
beside the checkout (where CI has them)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from torch import nn

from app.checkpoint import CheckpointError, load_checkpoint, load_model
from app.config import ASSETS, ConfigError, preset
from app.experiment import Experiment
from app.features import FeatureTap
from app.fold import fold_batchnorm
from app.plan import make_plan
from app.pruning import BatchGammaTargets, make_targets, plan_pruning
from app.recipe import resolve_recipe
from app.reference_models import convert_state, default_models_dir, import_reference
from models import describe

MODELS = default_models_dir()


@pytest.fixture(scope="module")
def released() -> Path:
    if not (MODELS / "auxiliary_cifar10.pt").is_file():
        pytest.fail(f"the InDistill authors' released models are not at {MODELS}; set INDISTILL_REFERENCE_MODELS")
    return MODELS


def raw(path: Path) -> dict:
    return load_checkpoint(path)["state_dict"]


def reference_forward(state: dict, x: torch.Tensor, *, train_bn: bool = False) -> list[torch.Tensor]:
    """Their Cnn32 forward written from models/cnn32.py: conv (with bias) → BN → ReLU → max-pool,
    three times, then relu(fc1) and fc2. Returns the three block outputs, relu(fc1), fc2."""
    outs, h = [], x
    for i in (1, 2, 3):
        h = F.conv2d(h, state[f"conv{i}.weight"], state[f"conv{i}.bias"])
        h = F.batch_norm(h, state[f"conv{i}_bn.running_mean"], state[f"conv{i}_bn.running_var"],
                         state[f"conv{i}_bn.weight"], state[f"conv{i}_bn.bias"], training=train_bn)
        h = F.max_pool2d(F.relu(h), 2)
        outs.append(h)
    e = F.relu(F.linear(h.flatten(1), state["fc1.weight"], state["fc1.bias"]))
    return outs + [e, F.linear(e, state["fc2.weight"], state["fc2.bias"])]


@pytest.mark.parametrize("name,arch", [("auxiliary_cifar10", "cnn_16_32_64"), ("auxiliary_baseline_cifar10", "cnn_16_32_64"),
                                       ("student_baseline_cifar10", "cnn_8_16_32"),
                                       ("student_cifar10_indistill_pkt_cls", "cnn_8_16_32")])
def test_released_models_import_exactly(released, tmp_path, name, arch):
    """The bias folded into the running mean: the imported network's stages, embedding and logits
    equal their network's in eval mode."""
    state = raw(released / f"{name}.pt")
    meta = import_reference(released / f"{name}.pt", arch, tmp_path / "m.pt", "test")
    model, saved = load_model(tmp_path / "m.pt")
    assert saved["arch"] == arch and saved["provenance"]["file"] == f"{name}.pt" and meta["mean"][0] == pytest.approx(125.3 / 255)
    torch.manual_seed(0)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad(), FeatureTap(model) as tap:
        out = tap(x)
    theirs = reference_forward(state, x)
    for mine, ref in zip(out.features + [out.embedding, out.logits], theirs):
        assert torch.allclose(mine, ref, atol=1e-4), (name, (mine - ref).abs().max())


def test_a_wrong_layout_names_the_first_mismatching_key(released, tmp_path):
    state = raw(released / "auxiliary_cifar10.pt")
    broken = {k.replace("conv2_bn", "bn2"): v for k, v in state.items()}
    with pytest.raises(CheckpointError, match="key 'conv2_bn.weight' is missing"):
        convert_state(broken, "cnn_16_32_64")
    with pytest.raises(CheckpointError, match=r"blocks.0.0.weight has shape \(16, 3, 3, 3\), cnn_8_16_32 needs"):
        convert_state(state, "cnn_8_16_32")
    with pytest.raises(CheckpointError, match="must be cnn_16_32_64 or cnn_8_16_32"):
        convert_state(state, "resnet20")
    pruned = raw(released / "pruned_auxiliary_cifar10.pt")  # their pruned network is not a standalone CNN
    with pytest.raises(CheckpointError, match="does not fit cnn_16_32_64"):
        convert_state(pruned, "cnn_16_32_64")


def test_project_pruning_keeps_the_filters_their_pruned_network_holds(released, tmp_path):
    """Their pruned_auxiliary_cifar10.pt is the top-k L1 norm of each conv's filters
    (prune.ln_structured + removing the zeroed filters): match them filter by filter, and agree
    with torch.nn.utils.prune on the same convolutions."""
    import_reference(released / "auxiliary_cifar10.pt", "cnn_16_32_64", tmp_path / "aux.pt")
    aux, _ = load_model(tmp_path / "aux.pt")
    student_spec = describe(__import__("models").build_model("cnn_8_16_32"))
    plans = plan_pruning(aux, describe(aux), student_spec)
    theirs, full = raw(released / "pruned_auxiliary_cifar10.pt"), raw(released / "auxiliary_cifar10.pt")
    for i, p in enumerate(plans, start=1):
        conv = aux.get_submodule(p.conv)
        kept_filters = conv.weight.detach()[p.kept]
        assert torch.equal(kept_filters, theirs[f"conv{i}.weight"]), f"conv{i}: a different filter set"
        assert torch.equal(theirs[f"conv{i}_bn.weight"], full[f"conv{i}_bn.weight"][p.kept])   # γ of the kept ones
        assert torch.count_nonzero(theirs[f"conv{i}_bn.bias"]) == 0                          # β = 0
        by_torch = copy.deepcopy(conv)
        prune.ln_structured(by_torch, "weight", amount=0.5, n=1, dim=0)
        assert p.kept == [c for c in range(conv.out_channels) if by_torch.weight_mask[c].any()]


def test_batch_gamma_targets_are_computed_as_theirs(released, tmp_path):
    """Their get_features(pruned_model=…): the *full* auxiliary teacher (eval mode) gives each
    stage's input; their pruned conv + BN in training mode (batch statistics) + ReLU + max-pool
    gives the target. Ours, from the imported aux (folded for the forward pass), is the same."""
    import_reference(released / "auxiliary_cifar10.pt", "cnn_16_32_64", tmp_path / "aux.pt")
    aux, _ = load_model(tmp_path / "aux.pt")
    plans = plan_pruning(aux, describe(aux), describe(__import__("models").build_model("cnn_8_16_32")))
    targets = make_targets("batch-gamma", aux, plans, torch.device("cpu"))
    assert isinstance(targets, BatchGammaTargets) and targets.needs_inputs
    full, pruned = raw(released / "auxiliary_cifar10.pt"), raw(released / "pruned_auxiliary_cifar10.pt")
    torch.manual_seed(1)
    x = torch.randn(16, 3, 32, 32)
    stage_inputs = [x] + reference_forward(full, x)[:2]
    expected = []
    for i, inp in enumerate(stage_inputs, start=1):
        h = F.conv2d(inp, pruned[f"conv{i}.weight"], pruned[f"conv{i}.bias"])
        h = F.batch_norm(h, None, None, pruned[f"conv{i}_bn.weight"], pruned[f"conv{i}_bn.bias"], training=True)
        expected.append(F.max_pool2d(F.relu(h), 2))
    with torch.no_grad(), FeatureTap(fold_batchnorm(aux)) as tap:
        out = tap(x, inputs=True)
    for mine, ref in zip(targets.of(out), expected):
        assert torch.allclose(mine, ref, atol=1e-4), (mine - ref).abs().max()
    # …and not the teacher-bn targets (running statistics, β kept): the two choices differ
    teacher_bn = make_targets("teacher-bn", aux, plans, torch.device("cpu")).of(out)
    assert not torch.allclose(teacher_bn[0], expected[0], atol=1e-2)


def test_batch_gamma_needs_conv_bn_stages():
    from models import build_model
    t = build_model("resnet20")
    plans = plan_pruning(t, describe(t), describe(build_model("resnet20", width=0.5)))
    with pytest.raises(ValueError, match="recipe.targets=teacher-bn"):
        make_targets("batch-gamma", t, plans, torch.device("cpu"))


def test_recipe_settings_default_to_the_procedure_and_explicit_ones_win():
    ref = resolve_recipe(preset("reference-cifar10"))
    assert (ref.optimizer, ref.lr, ref.schedule, ref.step_epoch, ref.fresh_optimizer, ref.embed, ref.targets,
            ref.baseline) == ("adam", 1e-3, "step", 60.0, "epoch", False, "batch-gamma", "reference")
    studio = resolve_recipe(preset("workshop"))
    assert (studio.optimizer, studio.lr, studio.schedule, studio.embed, studio.targets) == \
        ("sgd", 0.05, "segment-cosine", True, "teacher-bn")
    mixed = resolve_recipe(preset("reference-cifar10").with_overrides(["recipe.schedule=cosine", "indistill.embed=true"]))
    assert mixed.schedule == "cosine" and mixed.embed and mixed.optimizer == "adam"
    # the reference has one learning rate for the whole unit: its warm-up follows recipe.lr
    assert resolve_recipe(preset("reference-cifar10").with_overrides(["recipe.lr=0.002"])).warmup_lr == 0.002
    assert resolve_recipe(preset("workshop").with_overrides(["recipe.lr=0.002"])).warmup_lr == 1e-3
    bad = make_plan(preset("workshop").with_overrides(["recipe.optimizer=rmsprop", "recipe.step_factor=3"]))
    assert any("recipe.optimizer must be sgd, adam" in p for p in bad.problems)
    assert any("recipe.step_factor must be in [0.0001, 1]" in p for p in bad.problems)
    with pytest.raises(ConfigError, match="recipe accepts"):
        preset("workshop").with_overrides(["recipe.momentum=1"])


def test_reference_schedules_as_the_reference_code(tmp_path):
    """kd_from_aux_to_student.py with a = 2: block 1 for 3 epochs, block 2 for 4, block 3 for 5
    (MSE), then PKT on relu(fc1) for 58 — 70 epochs; Adam re-created every epoch; lr 1e-3 for 60
    epochs, 1e-4 for 10. The PKT control: 70 PKT epochs on the same schedule. train_baselines.py:
    CE with one Adam per lr stage, 1e-3 × 50 then 1e-4 × 30."""
    cfg = preset("reference-cifar10").with_overrides({
        "data.dataset": "folder", "data.data_dir": str(ASSETS / "sample" / "cifar10-sample.tar.gz"),
        "data.train_per_class": 2, "data.test_per_class": 1, "optim.batch_size": 10,  # 20 images: 2 steps an epoch
        "eval.info_flow": False, "eval.latency_runs": 1})
    plan = make_plan(cfg)
    assert [(p.name, p.kind, p.layers, p.loss, p.epochs) for p in plan.schedules["indistill"]] == [
        ("layer 1", "layer", (1,), "mse", 3.0), ("layer 2", "layer", (2,), "mse", 4.0),
        ("layer 3", "layer", (3,), "mse", 5.0), ("KD", "kd", (), "pkt_indistill", 58.0)]
    exp = Experiment(cfg, run_dir=tmp_path / "run")
    seen: list[dict] = []
    exp.trace = seen.append
    exp.run()
    baseline, kd, indistill = seen[:160], seen[160:300], seen[300:]
    assert len(indistill) == 140
    spe = 2

    def at(unit, epoch):  # the first step of a unit epoch
        return unit[epoch * spe]

    # baseline: CE only; 1e-3 for epochs 0-49, 1e-4 for 50-79; one optimizer per stage (never reset per epoch)
    assert all(s["losses"] == ["ce"] and s["optimizer"] == "Adam" for s in baseline)
    assert [at(baseline, e)["lr"] for e in (0, 49, 50, 79)] == [1e-3, 1e-3, pytest.approx(1e-4), pytest.approx(1e-4)]
    assert [at(baseline, e)["optimizer_steps"] for e in (0, 1, 49, 50, 51)] == [0, 2, 98, 0, 2]
    # PKT control: PKT (no CE) throughout, on the same schedule as the InDistill arm
    assert all(s["losses"] == ["pkt"] for s in kd)
    for unit in (kd, indistill):
        assert [at(unit, e)["lr"] for e in (0, 11, 12, 59)] == [1e-3] * 4
        assert [at(unit, e)["lr"] for e in (60, 69)] == [pytest.approx(1e-4)] * 2
        assert all(s["optimizer"] == "Adam" for s in unit)
        # re-created at every epoch start: its step count is the step within the epoch
        assert [s["optimizer_steps"] for s in unit] == [i % spe for i in range(140)]
    # InDistill: one layer's MSE at a time, shallow to deep, then PKT alone
    active = [at(indistill, e)["losses"] for e in range(70)]
    assert active == [["mse_l1"]] * 3 + [["mse_l2"]] * 4 + [["mse_l3"]] * 5 + [["pkt"]] * 58
    results = exp.results
    assert results["procedure"]["recipe"]["targets"] == "batch-gamma"
    assert results["procedure"]["stage2_loss"] == "pkt_indistill" and results["procedure"]["stage2_params"]["ce"] == 0
    units = results["phases"]
    assert units["baseline"]["units"]["0"]["classifier_trained"]
    assert not units["kd"]["units"]["0"]["classifier_trained"] and not units["indistill"]["units"]["0"]["classifier_trained"]
    assert units["baseline"]["units"]["0"]["epochs"] == 80 and units["kd"]["units"]["0"]["epochs"] == 70
    # retrieval is compared for both pairs of arms; accuracy not, as the PKT arms train no classifier
    assert {(c["a"], c["b"], c["metric"]) for c in results["comparisons"]} == {
        (a, b, m) for a, b in (("baseline", "kd"), ("kd", "indistill")) for m in ("map_cosine", "map_euclidean")}
    # per-epoch curves on a probe of training images (no validation split): never the test split
    assert results["data"]["eval_split"] == "train-probe"
    assert "eval_map" in units["kd"]["units"]["0"]["history"][0] and "eval_acc" not in units["kd"]["units"]["0"]["history"][0]
