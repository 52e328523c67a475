"""Latency that holds under load (issue 20, item 6): a run's architectures are timed together,
alternating, and each is reported as a per-round ratio to the teacher with its spread."""
import json

import pytest
import torch
from torch import nn

from app import profile
from app.config import ASSETS
from app.ui import views


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Fake(nn.Module):
    """A model whose forward pass records its name and takes the next of its durations (seconds)
    on a fake clock; copies are itself, so the order of calls is seen whatever is copied."""

    def __init__(self, name, durations, clock, calls):
        super().__init__()
        self.name, self.durations, self.clock, self.calls = name, list(durations), clock, calls

    def forward(self, x):
        self.calls.append(self.name)
        self.clock.now += self.durations.pop(0)
        return x

    def __deepcopy__(self, memo):
        return self


def fakes(durations: dict[str, list[float]]):
    clock, calls = Clock(), []
    return {n: Fake(n, d, clock, calls) for n, d in durations.items()}, clock, calls


def test_the_models_are_timed_alternately_after_an_alternating_warmup():
    models, clock, calls = fakes({"teacher": [1e-3] * 5, "student": [1e-3] * 5, "aux": [1e-3] * 5})
    out = profile.interleaved_latency(models, torch.device("cpu"), rounds=3, warmup=2, clock=clock)
    assert calls == ["teacher", "student", "aux"] * 5
    assert out["order"] == ["teacher", "student", "aux"] and out["reference"] == "teacher" and out["rounds"] == 3
    assert out["models"]["aux"]["runs"] == 3


def test_the_ratio_is_the_median_of_paired_rounds_not_a_ratio_of_medians():
    # rounds (ms): teacher 1 5 5 1 1 (median 1), student 6 6 6 2 2 (median 6); per-round ratios 6 1.2 1.2 2 2
    models, clock, _ = fakes({"teacher": [0.001, 0.005, 0.005, 0.001, 0.001],
                              "student": [0.006, 0.006, 0.006, 0.002, 0.002]})
    out = profile.interleaved_latency(models, torch.device("cpu"), rounds=5, warmup=0, clock=clock)
    student = out["models"]["student"]
    assert student["median"] == pytest.approx(6.0) and out["models"]["teacher"]["median"] == pytest.approx(1.0)
    assert student["ratio"]["median"] == pytest.approx(2.0)                 # not 6 / 1
    assert (student["ratio"]["q1"], student["ratio"]["q3"]) == (pytest.approx(1.2), pytest.approx(2.0))
    assert out["models"]["teacher"]["ratio"] == {"median": 1.0, "q1": 1.0, "q3": 1.0, "runs": 5}


def test_load_that_hits_every_model_of_a_round_leaves_the_ratio_alone_and_is_called_busy():
    # rounds 4-5 under load: every model four times slower in those rounds
    models, clock, _ = fakes({"teacher": [0.001] * 3 + [0.004] * 2, "student": [0.0005] * 3 + [0.002] * 2})
    out = profile.interleaved_latency(models, torch.device("cpu"), rounds=5, warmup=0, clock=clock)
    assert out["models"]["student"]["ratio"] == {"median": 0.5, "q1": 0.5, "q3": 0.5, "runs": 5}
    assert out["busy"] and "varied by 300 %" in out["busy_reason"]          # IQR (4 − 1) / median 1


def test_busy_verdict_names_its_reason():
    assert profile.busy_verdict(1.0, 2, 0.05) == (True, "other work used 1.0 of 2 cores")
    assert profile.busy_verdict(None, 2, 0.05) == (False, "")             # no /proc/stat: the spread alone decides
    assert profile.busy_verdict(0.1, 2, 0.05) == (False, "")
    assert profile.busy_verdict(0.1, 16, 0.4)[0]


def test_a_run_is_timed_together_with_ratios_to_the_teacher():
    from models import build_model
    nets = {"cnn_16_32_64@1": build_model("cnn_16_32_64", 10), "cnn_8_16_32@1": build_model("cnn_8_16_32", 10)}
    known = {"cnn_16_32_64@1": {"params": 1, "size_mb": 0.1, "flops": 2, "latency_ms_cpu_b1": 9.0,
                                "throughput_b256": 5.0, "throughput_device": "cpu"}}
    costs, record = profile.time_together(nets, known, rounds=4, reference="cnn_16_32_64@1")
    assert record["order"] == list(nets) and record["reference"] == "cnn_16_32_64@1" and record["rounds"] == 4
    assert set(record["cpu"]) == {"busy", "busy_reason", "other_cores", "cores"} and "gpu" not in record
    student = costs["cnn_8_16_32@1"]
    assert student["params"] == sum(p.numel() for p in nets["cnn_8_16_32@1"].parameters())   # measured: it was missing
    assert student["latency_ms_cpu_b1_spread"]["runs"] == 4 and student["latency_ratio_cpu_b1"]["runs"] == 4
    assert costs["cnn_16_32_64@1"]["params"] == 1 and costs["cnn_16_32_64@1"]["latency_ms_cpu_b1"] != 9.0
    assert known["cnn_16_32_64@1"]["latency_ms_cpu_b1"] == 9.0               # the caller's record is not changed


def phase(key, ms, ratio=None):
    r = {"arch": key.split("@")[0], "cost_key": key, "test_acc": 0.5, "test_acc_ci": [0.4, 0.6], "params": 10,
         "size_mb": 0.1, "flops": 100, "latency_ms_cpu_b1": ms,
         "latency_ms_cpu_b1_spread": {"median": ms, "q1": ms - 0.1, "q3": ms + 0.1, "runs": 20},
         "throughput_b256": 1000.0, "train_seconds": 60.0}
    return r | ({"latency_ratio_cpu_b1": {"median": ratio, "q1": ratio - 0.05, "q3": ratio + 0.05, "runs": 20}}
                if ratio is not None else {})


def test_the_compare_table_shows_the_ratio_with_its_spread_and_a_busy_machine():
    results = {"data": {"test_data": "test split, 40 images", "train": 100},
               "phases": {"teacher": phase("t@1", 1.3, 1.0), "kd": phase("s@1", 0.52, 0.4)},
               "latency": {"timed": "together", "order": ["t@1", "s@1"], "reference": "t@1", "rounds": 20,
                           "cpu": {"busy": True, "busy_reason": "other work used 1.4 of 2 cores", "other_cores": 1.4,
                                   "cores": 2}, "busy": True}}
    rows = views.compare_rows(results)
    col = views.COMPARE_HEADERS.index("CPU × teacher (median [IQR])")
    assert [r[col] for r in rows] == ["1 (reference)", "×0.40 [0.35, 0.45]"]
    assert rows[1][col - 1] == "0.520 [0.420–0.620] (busy)"
    note = views.compare_note(results)
    assert "busy while timing" in note and "1.4 of 2 cores" in note and "alternating over 20 rounds" in note
    quiet = {**results, "latency": {**results["latency"], "cpu": {"busy": False, "busy_reason": ""}}}
    assert "(busy)" not in views.compare_rows(quiet)[1][col - 1] and "quiet" in views.compare_note(quiet)


@pytest.mark.parametrize("run_id", ["cpu-cnn", "reference-studio"])
def test_runs_recorded_before_ratios_still_render(run_id):
    """A shipped run timed the old way (each architecture alone, no ratios) opens in the table,
    the note and the report's cost table, saying how it was timed."""
    from app.report import cost_table
    results = json.loads((ASSETS / "library" / run_id / "results.json").read_text())
    assert "latency" not in results and not any("latency_ratio_cpu_b1" in c for c in results["costs"].values())
    rows = views.compare_rows(results)
    col = views.COMPARE_HEADERS.index("CPU × teacher (median [IQR])")
    assert rows and {r[col] for r in rows} == {"–"} and all(len(r) == len(views.COMPARE_HEADERS) for r in rows)
    assert "alone, when its first model finished" in views.compare_note(results)
    head, table = cost_table(results)
    assert {r[head.index("× teacher (per round, median [IQR])")] for r in table} == {"–"}
