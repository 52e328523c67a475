"""The study's words hold its numbers: figures recomputed from the committed `reference` study's
results files must stand, formatted the same way, in README.md, docs/RESULTS.md and the Learn tab,
and the overstatements once made there (a gain "in every seed", a cause read from the features
without its hedge) must not come back."""
import json
import math
import re
import statistics
from pathlib import Path

import pytest

from app.stats import t_quantile
from app.ui.learn import LEARN_MD

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "reference"


def results(pair: str) -> dict:
    return json.loads((STUDY / pair / "results.json").read_text())


def comparison(pair: str, metric: str, a: str = "kd", b: str = "indistill") -> dict:
    return next(c for c in results(pair)["comparisons"] if (c["a"], c["b"], c["metric"]) == (a, b, metric))


def text(path: str) -> str:
    """A document with its line breaks and unicode minus signs flattened, so figures match as printed."""
    return re.sub(r"\s+", " ", (ROOT / path).read_text()).replace("−", "-")


DOCS = {"README": text("README.md"), "RESULTS": text("docs/RESULTS.md"),
        "Learn tab": re.sub(r"\s+", " ", LEARN_MD).replace("−", "-")}


def points(x: float) -> str:
    return f"{x * 100:+.2f}"


def interval(c: dict) -> str:
    return f"{points(c['diff'])} [{points(c['ci'][0])}, {points(c['ci'][1])}]"


def states(doc: str, c: dict) -> bool:
    """Whether ``doc`` gives the difference with its interval: "+0.66 … [+0.07, +1.26]" or "… +0.07 to +1.26"."""
    d, lo, hi = (re.escape(points(x)) for x in (c["diff"], *c["ci"]))
    return re.search(rf"{d}.{{0,60}}?{lo}(, | to ){hi}", doc) is not None


def t_test_p(values: list[float]) -> float:
    """Two-sided p of a one-sample t-test of mean 0: 1 − 2·∫₀^|t| of Student's t density (Simpson's rule)."""
    n = len(values)
    t = abs(statistics.fmean(values)) / (statistics.stdev(values) / math.sqrt(n))
    df = n - 1
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    density = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    steps = 2000
    h = t / steps
    area = density(0) + density(t) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    return 1 - 2 * area * h / 3


def test_the_t_test_p_reads_the_t_table():
    """The p-value helper agrees with the t quantiles the intervals use: at t = t_{0.975, df}, p = 0.05."""
    for df in (2, 4):
        sample = [float(i) for i in range(df + 1)]
        m, sd = statistics.fmean(sample), statistics.stdev(sample)
        at_quantile = [x - m + t_quantile(df) * sd / math.sqrt(len(sample)) for x in sample]
        assert t_test_p(at_quantile) == pytest.approx(0.05, abs=1e-6)


def test_the_reference_pairs_gain_is_stated_as_marginal_everywhere():
    cos, eucl = comparison("pkt", "map_cosine"), comparison("pkt", "map_euclidean")
    assert interval(cos) == "+0.66 [+0.07, +1.26]" and cos["verdict"] == "better" and cos["seeds"] == 5
    assert interval(eucl) == "+0.54 [-0.07, +1.15]" and eucl["verdict"] == "within noise"
    assert eucl["ci"][0] < 0 < eucl["ci"][1]
    p = t_test_p(cos["per_seed"])
    assert 0.03 < p < 0.04 and f"{p:.3f}" == "0.036"
    assert 0.05 < t_test_p(eucl["per_seed"]) < 0.1
    # all five seeds ahead is the best a sign test can see with 5 seeds: two-sided p = 2 / 2⁵
    assert all(d > 0 for d in cos["per_seed"]) and 2 / 2 ** cos["seeds"] == 0.0625
    assert (points(cos["per_seed"][4]), points(eucl["per_seed"][4])) == ("+0.05", "-0.08")   # seed 4: a tie
    for name, doc in DOCS.items():
        assert states(doc, cos), name
        assert "marginal" in doc, name
        assert "every seed" not in doc.replace("every seed's", ""), name
    for name in ("README", "RESULTS"):
        assert states(DOCS[name], eucl) and f"p = {p:.3f}" in DOCS[name] and "0.0625" in DOCS[name], name
    assert ", ".join(points(d) for d in cos["per_seed"]) in DOCS["RESULTS"]
    assert f"p ≈ {p:.2f}" in DOCS["Learn tab"]


def test_the_studio_interval_holds_the_reference_gain_and_the_words_say_so():
    cos, acc = comparison("studio", "map_cosine"), comparison("studio", "test_acc")
    gain = comparison("pkt", "map_cosine")["diff"]
    assert interval(cos) == "-0.89 [-2.54, +0.76]" and interval(acc) == "-0.43 [-1.51, +0.65]"
    assert cos["ci"][0] < gain < cos["ci"][1]
    pkt, studio = results("pkt")["procedure"]["recipe"], results("studio")["procedure"]["recipe"]
    differ = [k for k in ("optimizer", "schedule", "fresh_optimizer", "embed", "targets") if pkt[k] != studio[k]]
    assert len(differ) == 5 and pkt["targets"] != studio["targets"]   # + the stage-2 loss and cross-entropy: 7
    assert results("pkt")["procedure"]["stage2_loss"] != results("studio")["procedure"]["stage2_loss"]
    for name, doc in DOCS.items():
        assert "seven" in doc and "hypothesis" in doc, name
        assert "own targets" in doc or "different targets" in doc, name
        for overstatement in ("says why", "likely reason", "the feature match survives stage 2 only"):
            assert overstatement not in doc, (name, overstatement)
    assert states(DOCS["README"], cos) and states(DOCS["RESULTS"], cos) and states(DOCS["README"], acc)


def feature_mse_at(pair: str, phase: str, epoch: int) -> list[float]:
    rows = [e["feature_mse"] for u in results(pair)["phases"][phase]["units"].values()
            for e in u["history"] if e["epoch"] == epoch and e.get("feature_mse")]
    return [statistics.fmean(block) for block in zip(*rows)]


def test_stage_two_moves_the_studio_warm_ups_blocks_to_the_stated_errors():
    blocks = feature_mse_at("studio", "indistill", 30)
    assert [f"{b:.1f}" for b in blocks[:2]] == ["3.6", "1.7"]
    assert [f"{b:.1f}" for b in feature_mse_at("studio", "kd", 30)[:2]] == ["3.1", "1.3"]
    assert "≈ 3.6 and ≈ 1.7" in DOCS["README"] and "≈ 3.6 and ≈ 1.7" in DOCS["RESULTS"]
    assert "level (≈ 3)" not in DOCS["README"]


def test_the_released_student_is_quoted_in_the_form_of_its_published_figure():
    student = json.loads((STUDY / "released.json").read_text())["models"]["student_cifar10_indistill_pkt_cls"]
    reference_form, proper = f"{student['cosine']['map_reference'] * 100:.2f}", f"{student['cosine']['map'] * 100:.2f}"
    assert (reference_form, proper, student["published"]["map_cosine"]) == ("49.98", "50.78", 54.61)
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `reference` study"))
    assert f"{reference_form} in the reference form, the form of the published 54.61" in row
    assert "measured the same way 50.78" not in row


def test_the_unit_durations_are_the_recorded_ones():
    minutes = {(phase, seed): u["train_seconds"] / 60 for phase, e in results("pkt")["phases"].items()
               for seed, u in e["units"].items()}
    assert all(22.5 <= minutes["kd", s] < 24.5 for s in "01") and all(8.5 < minutes["kd", s] < 12 for s in "234")
    assert 24 <= minutes["indistill", "0"] < 24.5 and all(8.5 < minutes["indistill", s] < 10.5 for s in "1234")
    assert all(6.5 < minutes["baseline", s] < 11.5 for s in "01234")
    studio = [u["train_seconds"] / 60 for e in results("studio")["phases"].values() for u in e["units"].values()
              if u["train_seconds"]]
    assert all(8.5 < m < 10 for m in studio)
    assert "23–24 min in seeds 0–1" in (ROOT / "README.md").read_text()
    assert "quiet cores" not in DOCS["README"] and "quiet cores" not in DOCS["RESULTS"]
