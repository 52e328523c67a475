import pytest

from app.config import ExperimentConfig, preset
from app.plan import make_plan
from app.schedule import check_curriculum, curriculum_epochs, student_schedules, warmup_phases


def test_reference_curriculum_is_3_4_5_epochs():
    assert curriculum_epochs(2, 1, 3) == [3, 4, 5]
    phases = warmup_phases(3, 2, 1, "curriculum", embed=False, embed_loss="pkt_indistill")
    assert [(p.name, p.layers, p.loss, p.epochs) for p in phases] == [
        ("layer 1", (1,), "mse", 3), ("layer 2", (2,), "mse", 4), ("layer 3", (3,), "mse", 5)]


def test_embedding_phase_follows_the_layers():
    phases = warmup_phases(3, 2, 1, "curriculum", embed=True, embed_loss="pkt_indistill")
    assert phases[-1].kind == "embed" and phases[-1].loss == "pkt_indistill" and phases[-1].epochs == 6


def test_joint_mode_has_the_same_total_epochs():
    cur = warmup_phases(4, 1, 2, "curriculum", True, "pkt")
    joint = warmup_phases(4, 1, 2, "joint", True, "pkt")
    assert len(joint) == 1 and joint[0].layers == (1, 2, 3, 4)
    assert joint[0].epochs == sum(p.epochs for p in cur)
    assert warmup_phases(4, 1, 2, "off", True, "pkt") == []


def test_equal_epoch_control():
    s = student_schedules(3, 10, "kd", a=2, b=1, mode="curriculum", embed=False, embed_loss="pkt", equal_epochs=True)
    warm = 3 + 4 + 5
    assert s["baseline"][0].epochs == s["kd"][0].epochs == 10 + warm
    assert sum(p.epochs for p in s["indistill"]) == 10 + warm
    s = student_schedules(3, 10, "kd", a=2, b=1, mode="curriculum", embed=False, embed_loss="pkt", equal_epochs=False)
    assert s["baseline"][0].epochs == 10


def test_zero_epoch_layers_are_skipped_and_negative_rejected():
    phases = warmup_phases(3, 0, 1, "curriculum", False, "pkt")
    assert [p.epochs for p in phases] == [1, 2, 3]
    assert [p.name for p in warmup_phases(3, 2, -1, "curriculum", False, "pkt")] == ["layer 1"]
    assert "negative" in check_curriculum(1, -1, 3, False)[0]
    assert "no epochs" in check_curriculum(0, 0, 3, False)[0]


def test_plan_collects_every_problem_with_the_setting_named():
    cfg = preset("quick-cpu").with_overrides({"indistill.a": 0, "indistill.b": -1, "optim.lr": 0, "seeds": 0,
                                              "kd.params.T": 50})
    problems = make_plan(cfg).problems
    text = "\n".join(problems)
    assert "optim.lr" in text and "seeds" in text and "kd.params" in text and "negative" in text


def test_plan_for_an_impossible_pair_suggests_one_that_works():
    cfg = preset("paper-cnn").with_overrides({"indistill.aux": "off"})
    plan = make_plan(cfg)
    assert not plan.ok and "cnn4" in plan.problems[0]
    plan = make_plan(cfg.with_overrides({"phases.indistill": False}))
    assert plan.ok and set(plan.schedules) == {"baseline", "kd"}


def test_config_round_trip_and_override_errors():
    cfg = preset("seed-pair").with_overrides(["indistill.a=3", "kd.loss=dkd", "kd.params.beta=4"])
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="indistill accepts"):
        cfg.with_overrides(["indistill.c=1"])
    with pytest.raises(ValueError, match="must be int"):
        cfg.with_overrides(["seeds=two"])
