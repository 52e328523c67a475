"""Intervals, paired differences and verdicts on cases worked out by hand."""
import math

import pytest

from app import stats


def test_wilson_interval_of_8_out_of_10():
    # p = .8, z² = 3.8415: centre (.8 + .19207)/1.38415 = .71673,
    # half 1.95996/1.38415 · sqrt(.016 + .0096037) = .22658
    lo, hi = stats.wilson(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94331, abs=1e-4)
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(10, 10)[1] == pytest.approx(1.0)


def test_binomial_error_of_the_default_run_is_about_1_6_points():
    lo, hi = stats.wilson(576, 1000)
    assert (hi - lo) / 2 == pytest.approx(1.96 * math.sqrt(0.576 * 0.424 / 1000), abs=2e-3)


def test_t_quantiles_and_interval():
    assert stats.t_quantile(1) == pytest.approx(12.706, abs=1e-3)
    assert stats.t_quantile(2) == pytest.approx(4.303, abs=1e-3)
    assert stats.t_quantile(40) == pytest.approx(2.0211, abs=1e-3)
    assert stats.t_quantile(120) == pytest.approx(1.9799, abs=1e-3)
    lo, hi = stats.t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1: ± 4.3027/√3
    assert lo == pytest.approx(2 - 2.48414, abs=1e-4) and hi == pytest.approx(2 + 2.48414, abs=1e-4)


def test_verdicts():
    assert stats.verdict(0.001, 0.02) == "better"
    assert stats.verdict(-0.03, -0.01) == "worse"
    assert stats.verdict(-0.01, 0.02) == "within noise"


def test_paired_correctness_interval_by_hand():
    # per-image B − A: 0, −1, 1, 1, 0 → mean .2, variance of the mean .56/5
    a, b = [1, 1, 0, 0, 1], [1, 0, 1, 1, 1]
    d, lo, hi = stats.paired_correct(a, b)
    half = 1.959964 * math.sqrt(0.56 / 5)
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.2 - half) and hi == pytest.approx(0.2 + half)


def test_paired_difference_over_seeds_and_for_one_seed():
    out = stats.paired_difference([0.50, 0.52, 0.51], [0.53, 0.54, 0.55])  # diffs .03 .02 .04
    assert out["per_seed"] == pytest.approx([0.03, 0.02, 0.04])
    assert out["diff"] == pytest.approx(0.03)
    assert out["ci"] == pytest.approx([0.03 - 4.302653 * 0.01 / math.sqrt(3), 0.03 + 4.302653 * 0.01 / math.sqrt(3)])
    assert out["verdict"] == "better"
    # one seed: the default run's KD − baseline, 1.7 points on 1,000 images, is within noise
    a = [1] * 576 + [0] * 424
    b = [1] * 510 + [0] * 66 + [1] * 83 + [0] * 341   # 593 right: 83 gained, 66 lost
    # se = sqrt(149 − 17²/1000)/1000 = .0122 → ± 2.4 points
    one = stats.paired_difference([0.576], [0.593], a_items=a, b_items=b)
    assert one["diff"] == pytest.approx(0.017) and one["verdict"] == "within noise"
    assert "McNemar" in one["method"] and one["ci"][0] == pytest.approx(0.017 - 1.959964 * 0.012195, abs=1e-5)
    fewer = [1] * 550 + [0] * 26 + [1] * 43 + [0] * 381  # 69 discordant: the pairing makes it established
    assert stats.paired_difference([0.576], [0.593], a_items=a, b_items=fewer)["verdict"] == "better"
    assert stats.paired_difference([0.5], [0.6])["verdict"] == "unknown"


def test_seeds_summary_uses_wilson_for_one_seed_and_t_for_several():
    one = stats.seeds_summary([0.8], 10)
    assert one["ci"] == pytest.approx(list(stats.wilson(8, 10)))
    many = stats.seeds_summary([1.0, 2.0, 3.0])
    assert many["sd"] == pytest.approx(1.0) and many["ci"] == pytest.approx(list(stats.t_interval([1, 2, 3])))


def test_bootstrap_is_reproducible_and_brackets_the_mean():
    values = [0.1, 0.4, 0.9, 0.3, 0.7, 0.2, 0.5, 0.6]
    lo, hi = stats.bootstrap_mean(values, rounds=500)
    assert (lo, hi) == stats.bootstrap_mean(values, rounds=500)
    assert lo < sum(values) / len(values) < hi
    d, lo, hi = stats.paired_bootstrap(values, [v + 0.1 for v in values], rounds=200)
    assert d == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)


def test_packing_round_trips():
    bits = [1, 0, 1, 1, 0, 0, 0, 1, 1, 1]
    assert stats.unpack_bits(stats.pack_bits(bits), len(bits)) == bits
    vals = [0.0, 0.5, 1.0, 0.123456]
    assert stats.unpack_unit(stats.pack_unit(vals)) == pytest.approx(vals, abs=1e-4)
