"""The unit store: a unit whose key is stored is taken instead of trained, and only then.

Runs share one store (module fixture): the base run trains every arm; changing InDistill's
a and b (freely: the workshop's budget is ``within``) reuses the baseline and KD arms;
changing the KD temperature reuses the baseline. Variants that must never hit are stopped at their first training step.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from app import events as ev
from app import unitstore
from app.checkpoint import load_checkpoint, save_model
from app.config import preset
from app.experiment import Experiment
from app.runfolder import RunFolder
from app.train import steps_for
from app.augment import steps_per_epoch
from app.unitstore import UnitStore, unit_key
from models import build_model

TINY = {"device": "cpu", "data.train_per_class": 24, "data.test_per_class": 12, "data.val_per_class": 4,
        "optim.batch_size": 32, "student.epochs": 11, "epochs_scale": 0.1, "eval.retrieval": False,
        "eval.info_flow": False, "eval.latency_runs": 1, "eval.info_batch": 16}
KD_ONLY = {"phases.baseline": False, "phases.indistill": False}
NEW_AB = {"indistill.a": 2.0, "indistill.b": 0.0}   # Σ S_l = 4 × 2 = 8 (the workshop's a=1, b=0.5: 9)


def tiny(cache: Path, **overrides):
    return preset("workshop").with_overrides(TINY | {"data.cache_dir": str(cache)} | overrides)


def run(cfg, root: Path, store=None, scope=None) -> Experiment:
    exp = Experiment(cfg, runs_root=root, store=store, scope=scope)
    exp.run()
    return exp


def stopped_at_first_training(cfg, root: Path, store, scope=None) -> dict:
    """Run until a unit starts training (then cancel): the units reused before it, and which one trained."""
    started = []

    def emit(e):
        if isinstance(e, ev.PhaseStarted) and e.steps > 0:
            started.append(f"{e.phase}-s{e.seed}")
            exp.cancel.set()
    exp = Experiment(cfg, runs_root=root, store=store, scope=scope, emit=emit)
    results = exp.run()
    return {"reused": results["reuse"]["reused"], "trained_first": started[0] if started else None,
            "status": results["status"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store")
    cache, root = tmp / "cache", tmp / "runs"
    store = UnitStore(tmp / "units")
    base = tiny(cache)
    a = run(base, root, store)
    ab = run(base.with_overrides(NEW_AB), root, store)  # Σ S_l 9 → 8: the warm-up total moves too
    temp = run(base.with_overrides({"kd.params.T": 2.0}), root, store)
    plain = run(base, root)  # no store: every arm trained again
    return {"tmp": tmp, "cache": cache, "root": root, "store": store, "a": a, "ab": ab, "temp": temp, "plain": plain}


def test_changing_a_and_b_retrains_only_the_indistill_arm(runs):
    """The workshop's budget is ``within`` (every arm 11 epochs here, the warm-up Σ S_l = 9 out of
    the InDistill arm's): a and b chosen freely leave the baseline's and KD's segments as they were."""
    a, ab = runs["a"], runs["ab"]
    assert a.cfg.budget == "within" and [p.epochs for p in ab.plan.schedules["indistill"]][-1] == pytest.approx(0.3)
    assert a.results["reuse"] == {"reused": [], "trained": ["baseline-s0", "kd-s0", "indistill-s0"],
                                  "loaded": ["teacher"]}
    assert ab.results["reuse"] == {"reused": ["teacher", "baseline-s0", "kd-s0"], "trained": ["indistill-s0"],
                                   "loaded": []}
    for phase in ("baseline", "kd"):
        unit = ab.results["phases"][phase]["units"]["0"]
        assert unit["reused_from"] == {"run": a.run_dir.name, "unit": f"{phase}-s0"}
        assert unit["history"] == a.results["phases"][phase]["units"]["0"]["history"]  # the curves come along
        assert load_checkpoint(RunFolder(ab.run_dir).checkpoint(f"{phase}-s0"))["meta"]["phase"] == phase
        assert unit["cost_key"] in ab.results["costs"]
    assert "reused_from" not in ab.results["phases"]["indistill"]["units"]["0"]
    # a reused unit counts no steps: the run's steps are the InDistill arm's alone
    spe = steps_per_epoch(len(ab.data.train), ab.cfg.optim.batch_size)
    assert ab.total_steps == ab.done_steps == sum(steps_for(p.epochs, spe) for p in ab.plan.schedules["indistill"])
    assert ab.total_steps < a.total_steps
    # paired comparisons still pair the arms by seed
    assert {(c["a"], c["b"]) for c in ab.results["comparisons"]} == {("baseline", "kd"), ("kd", "indistill")}
    on_disk = json.loads((ab.run_dir / "results.json").read_text())
    assert on_disk["reuse"]["reused"] == ["teacher", "baseline-s0", "kd-s0"]


def test_under_the_added_budget_a_and_b_retrain_every_arm(runs):
    """The old rule (``added``: 2 KD epochs, the warm-up on top): the same segments as the base run, so every
    unit is the stored one; but the baseline and KD arms train KD + Σ S_l, so new a and b retrain them."""
    base, root, store = tiny(runs["cache"]), runs["root"], runs["store"]
    old = base.with_overrides({"budget": "added", "student.epochs": 2})
    assert stopped_at_first_training(old, root, store) == {
        "reused": ["teacher", "baseline-s0", "kd-s0", "indistill-s0"], "trained_first": None, "status": "finished"}
    assert stopped_at_first_training(old.with_overrides(NEW_AB), root, store) == {
        "reused": ["teacher"], "trained_first": "baseline-s0", "status": "cancelled"}


def test_changing_the_kd_temperature_retrains_kd_and_indistill_and_reuses_the_baseline(runs):
    temp = runs["temp"]
    assert temp.results["reuse"]["reused"] == ["teacher", "baseline-s0"]
    assert temp.results["reuse"]["trained"] == ["kd-s0", "indistill-s0"]
    assert temp.results["phases"]["baseline"]["units"]["0"]["reused_from"]["run"] == runs["a"].run_dir.name


def test_a_reused_unit_equals_the_unit_trained_again(runs):
    plain, ab = runs["plain"], runs["ab"]
    assert plain.results["reuse"]["reused"] == [] and plain.store is None
    for phase in ("baseline", "kd"):
        trained, reused = plain.results["phases"][phase]["units"]["0"], ab.results["phases"][phase]["units"]["0"]
        assert reused["test_acc"] == trained["test_acc"]
        assert reused["correct"] == trained["correct"]  # per test image
        w_reused = load_checkpoint(RunFolder(ab.run_dir).checkpoint(f"{phase}-s0"))["state_dict"]
        w_trained = load_checkpoint(RunFolder(plain.run_dir).checkpoint(f"{phase}-s0"))["state_dict"]
        assert all(torch.equal(w_reused[k], w_trained[k]) for k in w_trained)


def test_keys_hold_what_the_unit_reads_and_nothing_else(runs):
    a = runs["a"]
    spec = {u: json.dumps(a.unit_spec(a.plan_unit(u.split("-")[0], 0 if "-" in u else None)))
            for u in ("teacher", "baseline-s0", "kd-s0", "indistill-s0")}
    assert '"T": 4.0' in spec["kd-s0"] and '"T"' not in spec["baseline-s0"]
    for unit in ("baseline-s0", "kd-s0"):  # no a, b or curriculum: only the segments they train
        assert "layer 1" not in spec[unit] and '"a"' not in spec[unit] and '"b"' not in spec[unit]
    assert "layer 1" in spec["indistill-s0"]
    assert a.unit_keys["kd-s0"] == unit_key(a.unit_spec(a.plan_unit("kd", 0)))
    assert a.unit_keys["teacher"] in spec["kd-s0"]  # the key of the unit it learns from


def test_a_different_teacher_file_data_selection_or_engine_never_hits(runs, monkeypatch):
    tmp, store, cache, root = runs["tmp"], runs["store"], runs["cache"], runs["root"]
    base = tiny(cache)
    # the control: the same settings take every unit from the store, nothing trains
    same = stopped_at_first_training(base, root, store)
    assert same == {"reused": ["teacher", "baseline-s0", "kd-s0", "indistill-s0"], "trained_first": None,
                    "status": "finished"}
    # the same architecture, other bytes
    blob = load_checkpoint(base.teacher.checkpoint)
    weight = next(iter(blob["state_dict"].values()))
    weight[(0,) * weight.dim()] += 1e-3
    other = tmp / "other_teacher.pt"
    torch.save(blob, other)
    variants = [base.with_overrides({"teacher.checkpoint": str(other)}),
                base.with_overrides({"data.train_per_class": 20})]
    for cfg in variants:
        assert stopped_at_first_training(cfg, root, store) == {"reused": [], "trained_first": "baseline-s0",
                                                               "status": "cancelled"}
    monkeypatch.setattr(unitstore, "ENGINE_VERSION", unitstore.ENGINE_VERSION + 1)
    assert stopped_at_first_training(base, root, store)["reused"] == []


def test_a_scoped_unit_is_never_offered_outside_its_scope_and_a_damaged_entry_is_a_miss(runs, tmp_path):
    store = UnitStore(tmp_path / "units")
    kd = tiny(runs["cache"], **KD_ONLY)
    alice = run(kd, runs["root"], store, scope="alice-digest")
    key = alice.unit_keys["kd-s0"]
    assert store.get(key, "alice-digest").run_id == alice.run_dir.name
    assert store.get(key, "bob-digest") is None and store.get(key) is None
    out = stopped_at_first_training(kd, runs["root"], store, scope="bob-digest")
    assert out["reused"] == [] and out["trained_first"] == "kd-s0"
    # a damaged checkpoint (same size, other bytes) or an unreadable record: a miss, and the unit trains
    ckpt = store.get(key, "alice-digest").checkpoint
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    assert store.get(key, "alice-digest") is None
    out = stopped_at_first_training(kd, runs["root"], store, scope="alice-digest")
    assert out["reused"] == ["teacher"] and out["trained_first"] == "kd-s0"
    record = tmp_path / "units" / unitstore.scope_slug("alice-digest") / f"{alice.unit_keys['teacher']}.json"
    record.write_text("{not json")
    assert store.get(alice.unit_keys["teacher"], "alice-digest") is None


def small_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_model(build_model("cnn_8_16_32", 10, 1.0), path, {"arch": "cnn_8_16_32"})
    return path


def test_store_keys_are_hex_only_puts_keep_the_first_and_the_oldest_go_past_the_cap(tmp_path):
    store = UnitStore(tmp_path / "units", max_entries=2)
    ckpt = small_checkpoint(tmp_path / "m.pt")
    for bad in ("../../etc/passwd", "A" * 64, "ab", "0" * 63 + "/"):
        with pytest.raises(ValueError, match="64 lowercase hex"):
            store.get(bad)
        with pytest.raises(ValueError, match="64 lowercase hex"):
            store.put(bad, {}, ckpt, "run", "kd-s0")
    keys = [f"{i:064x}" for i in range(3)]
    assert store.put(keys[0], {"test_acc": 0.5}, ckpt, "run-1", "kd-s0")
    assert not store.put(keys[0], {"test_acc": 0.9}, ckpt, "run-2", "kd-s0")  # the first stays
    assert store.get(keys[0]).result == {"test_acc": 0.5} and store.get(keys[0]).run_id == "run-1"
    store.put(keys[1], {}, ckpt, "run-1", "baseline-s0")
    store.get(keys[0])  # used last: keys[1] is now the least recently used
    os.utime(tmp_path / "units" / "shared" / f"{keys[1]}.json", (time.time() - 60, time.time() - 60))
    store.put(keys[2], {}, ckpt, "run-1", "indistill-s0")
    assert store.get(keys[1]) is None and store.get(keys[0]) is not None and store.get(keys[2]) is not None
    assert len(list((tmp_path / "units" / "shared").glob("*.json"))) == 2
    # a record pointing outside its folder is a miss
    record = tmp_path / "units" / "shared" / f"{keys[2]}.json"
    doc = json.loads(record.read_text())
    doc["files"]["model"]["path"] = "../../m.pt"
    record.write_text(json.dumps(doc))
    assert store.get(keys[2]) is None


def test_byte_caps_evict_and_the_unit_key_ignores_last_bit_float_noise(tmp_path):
    ckpt = small_checkpoint(tmp_path / "m.pt")
    store = UnitStore(tmp_path / "units", max_bytes=int(ckpt.stat().st_size * 1.5))
    store.put("a" * 64, {}, ckpt, "run-1", "kd-s0")
    store.put("b" * 64, {}, ckpt, "run-1", "kd-s1", scope="someone")
    assert (store.get("a" * 64) is None) != (store.get("b" * 64, "someone") is None)  # one of the two went
    assert unit_key({"epochs": 0.1 * 3}) == unit_key({"epochs": 0.3})
    assert unit_key({"epochs": 0.3}) != unit_key({"epochs": 0.31})


def test_the_page_says_which_units_were_reused_and_from_which_run():
    """The Compare note names each reused unit and its run; the status line counts them."""
    from app.render import compare_note, reuse_note
    from app.ui.views import status_markdown
    unit = {"test_acc": 0.5, "test_images": 10, "reused_from": {"run": "workshop-20261205-1200-abcd", "unit": "kd-s0"}}
    results = {"phases": {"kd": {"units": {"0": unit}, "test_acc": 0.5, "test_data": "test split, 10 images"},
                          "baseline": {"units": {"0": {"test_acc": 0.4}}}},
               "data": {"test_data": "test split, 10 images", "train": 20}}
    note = reuse_note(results)
    assert "kd-s0 (from run `workshop-20261205-1200-abcd`)" in note and "baseline" not in note
    assert compare_note(results).endswith(note)
    snap = {"id": "r", "state": "finished", "results": results["phases"]}
    assert "1 unit reused" in status_markdown(snap)
    assert reuse_note({"phases": {"kd": {"units": {"0": {"test_acc": 0.5}}}}}) == ""


def test_an_evicted_private_namespace_leaves_no_folder_behind(tmp_path):
    """Each visitor's upload scope is its own folder: once its entries are evicted, the folder goes too,
    so the store's listing does not grow with every visitor a server has seen."""
    store = UnitStore(tmp_path / "units", max_entries=1)
    ckpt = small_checkpoint(tmp_path / "m.pt")
    store.put(f"{1:064x}", {}, ckpt, "run-1", "kd-s0", scope="visitor-a")
    assert len(list((tmp_path / "units" / "scopes").iterdir())) == 1
    os.utime(next((tmp_path / "units" / "scopes").glob("*/*.json")), (time.time() - 60, time.time() - 60))
    store.put(f"{2:064x}", {}, ckpt, "run-2", "kd-s0")
    assert list((tmp_path / "units" / "scopes").iterdir()) == []
    assert store.get(f"{2:064x}") is not None and store.get(f"{1:064x}", scope="visitor-a") is None
    assert [p.name for p in (tmp_path / "units" / "shared").iterdir() if p.is_dir()] \
        and len([p for p in (tmp_path / "units" / "shared").iterdir() if p.is_dir()]) == 1
