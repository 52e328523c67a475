import json
from pathlib import Path

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


def test_the_three_budget_rules_by_hand():
    """warm-up 3 + 4 + 5 = 12 epochs, student.epochs = 10 (or 30 under within)."""
    def epochs(budget, total):
        s = student_schedules(3, total, "kd", a=2, b=1, mode="curriculum", embed=False, embed_loss="pkt", budget=budget)
        return {arm: [p.epochs for p in segs] for arm, segs in s.items()}
    # added: student.epochs are KD epochs, the warm-up on top, baseline and KD as long (10 + 12)
    assert epochs("added", 10) == {"baseline": [22], "kd": [22], "indistill": [3, 4, 5, 10]}
    # within: every arm 30 in all, the warm-up out of it, KD the rest (30 − 12)
    assert epochs("within", 30) == {"baseline": [30], "kd": [30], "indistill": [3, 4, 5, 18]}
    # unequal: 10 KD epochs everywhere, InDistill 12 longer
    assert epochs("unequal", 10) == {"baseline": [10], "kd": [10], "indistill": [3, 4, 5, 10]}
    scaled = student_schedules(3, 30, "kd", a=2, b=1, mode="curriculum", embed=False, embed_loss="pkt",
                               budget="within", scale=0.5)
    assert [p.epochs for p in scaled["indistill"]] == [1.5, 2, 2.5, 9] and scaled["kd"][0].epochs == 15
    with pytest.raises(ValueError, match="no KD epochs"):
        student_schedules(3, 12, "kd", a=2, b=1, mode="curriculum", embed=False, embed_loss="pkt", budget="within")


def test_within_a_warm_up_as_long_as_the_budget_is_refused_naming_both_numbers_and_what_fits():
    # workshop: cnn_8_16_32 (3 layers + embedding), a=1, b=0.5 -> Σ S_l = 1.5 + 2 + 2.5 + 3 = 9
    for epochs in (6, 9):
        problems = make_plan(preset("workshop").with_overrides({"student.epochs": epochs})).problems
        assert len(problems) == 1, problems
        msg = problems[0]
        assert f"student.epochs = {epochs}" in msg and "Σ S_l = 9 epochs" in msg and "above 9" in msg, msg
        assert f"e.g. {9 + epochs}: 9 warm-up + {epochs} KD" in msg and "budget=added" in msg
    # a below (6 − 0.5·10)/4 = 0.25 fits 6 epochs: 0.2 does, 0.25 does not
    assert "lower a below 0.25 (at b=0.5)" in make_plan(preset("workshop").with_overrides({"student.epochs": 6})).problems[0]
    assert make_plan(preset("workshop").with_overrides({"student.epochs": 6, "indistill.a": 0.2})).ok
    assert not make_plan(preset("workshop").with_overrides({"student.epochs": 6, "indistill.a": 0.25})).ok
    # the same epochs under added, or with no warm-up, are fine; an unknown rule is named
    assert make_plan(preset("workshop").with_overrides({"student.epochs": 6, "budget": "added"})).ok
    assert make_plan(preset("workshop").with_overrides({"student.epochs": 6, "indistill.mode": "off"})).ok
    assert make_plan(preset("workshop").with_overrides({"student.epochs": 6, "phases.indistill": False})).ok
    bad = make_plan(preset("workshop").with_overrides({"budget": "equal"})).problems
    assert bad == ["budget must be one of added, within, unequal (what student.epochs counts beside the warm-up), "
                   "got 'equal'"]


def old_workshop(**changes) -> ExperimentConfig:
    """The workshop preset as it was before ``budget``: 30 KD epochs, equal_epochs=true (the warm-up added)."""
    d = preset("workshop").to_dict()
    del d["budget"]
    d["student"]["epochs"], d["equal_epochs"] = 30.0, True
    return ExperimentConfig.from_dict(d).with_overrides(changes)


def schedules_of(cfg: ExperimentConfig) -> dict:
    plan = make_plan(cfg)
    assert plan.ok, plan.problems
    return plan.schedules


def test_the_workshop_trains_the_same_segments_as_before_and_a_b_leave_baseline_and_kd_alone():
    new, old = preset("workshop"), old_workshop()
    assert (new.budget, new.student.epochs, old.budget) == ("within", 39, "added")
    assert schedules_of(new) == schedules_of(old)        # segment by segment, every arm
    assert [p.epochs for p in schedules_of(new)["indistill"]] == [1.5, 2, 2.5, 3, 30]
    assert schedules_of(new)["baseline"][0].epochs == 39
    for a, b in ((2, 0.5), (0.5, 1), (3, -0.5)):
        ab = {"indistill.a": a, "indistill.b": b}
        moved, before = schedules_of(new.with_overrides(ab)), schedules_of(old.with_overrides(ab))
        assert moved["baseline"] == schedules_of(new)["baseline"] and moved["kd"] == schedules_of(new)["kd"]
        assert sum(p.epochs for p in moved["indistill"]) == 39
        # the old rule: the baseline and KD arms follow the warm-up total
        warm = sum(p.epochs for p in before["indistill"][:-1])
        assert before["baseline"][0].epochs == before["kd"][0].epochs == 30 + warm != 39


COMMITTED = sorted(Path(__file__).resolve().parents[1].glob("studies/reference/*/config.json")) + \
    sorted(Path(__file__).resolve().parents[1].glob("assets/library/*/config.json"))


@pytest.mark.parametrize("path", [p for p in COMMITTED if (p.parent / "results.json").is_file()
                                  and "schedule" in json.loads((p.parent / "results.json").read_text())],
                         ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_a_committed_config_reads_as_added_and_plans_the_schedules_it_trained(path):
    saved = json.loads(path.read_text())
    assert saved["equal_epochs"] is True and "budget" not in saved     # written before budget existed
    cfg = ExperimentConfig.from_dict(saved)
    assert cfg.budget == "added"
    recorded = json.loads((path.parent / "results.json").read_text())["schedule"]
    assert json.loads(json.dumps(make_plan(cfg).schedule_dicts())) == recorded


def test_the_old_equal_epochs_setting_is_read_as_a_budget():
    assert preset("quick-cpu").budget == "added"
    assert preset("quick-cpu").with_overrides(["equal_epochs=false"]).budget == "unequal"
    assert preset("workshop").with_overrides({"equal_epochs": True}).budget == "added"
    d = preset("quick-cpu").to_dict()
    assert "equal_epochs" not in d and ExperimentConfig.from_dict(d).to_dict() == d
    old = {k: v for k, v in d.items() if k != "budget"} | {"equal_epochs": False}
    assert ExperimentConfig.from_dict(old).budget == "unequal"
    with pytest.raises(ValueError, match="contradicts budget='within'"):
        ExperimentConfig.from_dict(old | {"budget": "within"})
    with pytest.raises(ValueError, match="equal_epochs must be bool"):
        preset("quick-cpu").with_overrides({"equal_epochs": "sometimes"})


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
