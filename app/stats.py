"""Intervals and verdicts for what the app shows (pure functions on plain lists; numpy for the bootstrap).

- one accuracy on n images: the Wilson score interval;
- several seeds: mean ± sd and a Student-t interval on the mean;
- a paired difference between two arms that share seeds (and test images): per seed,
  then a t-interval over seeds, or — with one seed — a McNemar-style normal interval on
  the per-image correctness of both arms;
- retrieval mAP of one run: a bootstrap over queries (fixed seed), paired for differences;
- ``verdict(low, high)``: "better" / "worse" / "within noise".

Every interval is 95 % two-sided. Per-image correctness and per-query AP travel in
``results.json`` as compact base64 strings (:func:`pack_bits`, :func:`pack_unit`).
"""
from __future__ import annotations

import base64
import math
import statistics
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054
# two-sided 95 % Student-t quantiles t_{0.975, df} for df = 1…30
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
BOOTSTRAP = 2000


def t_quantile(df: int) -> float:
    """t_{0.975, df}: a table up to 30, then the Cornish–Fisher expansion (error < 1e-4)."""
    if df < 1:
        raise ValueError("a t-interval needs at least one degree of freedom")
    if df <= 30:
        return _T975[df - 1]
    z = Z95
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``successes / n``."""
    if n <= 0:
        return 0.0, 1.0
    p, z2 = successes / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """95 % t-interval of the mean of ``values`` (at least two)."""
    m, sd = mean_sd(values)
    half = t_quantile(len(values) - 1) * sd / math.sqrt(len(values))
    return m - half, m + half


def verdict(low: float, high: float) -> str:
    """'better' when the interval of B − A lies above 0, 'worse' below, else 'within noise'."""
    return "better" if low > 0 else "worse" if high < 0 else "within noise"


def paired_correct(a: Sequence[int], b: Sequence[int]) -> tuple[float, float, float]:
    """Difference of accuracies B − A on the same images, with a McNemar-style 95 % interval.

    With b10 images only B gets right and b01 only A: diff = (b10 − b01)/n and
    var = (b10 + b01 − (b10 − b01)²/n) / n² (the variance of the mean per-image difference).
    """
    if len(a) != len(b) or not a:
        raise ValueError("paired correctness needs two equally long, non-empty vectors")
    n = len(a)
    b10 = sum(1 for x, y in zip(a, b) if y and not x)
    b01 = sum(1 for x, y in zip(a, b) if x and not y)
    diff = (b10 - b01) / n
    se = math.sqrt(max(b10 + b01 - (b10 - b01) ** 2 / n, 0.0)) / n
    return diff, diff - Z95 * se, diff + Z95 * se


def bootstrap_mean(values: Sequence[float], rounds: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean (resampling ``values``, fixed seed)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    arr, rng = np.asarray(values, dtype=np.float64), np.random.default_rng(seed)
    step = max(1, 2_000_000 // n)                       # resamples per chunk (bounded memory)
    means = np.concatenate([arr[rng.integers(0, n, (min(step, rounds - i), n))].mean(1)
                            for i in range(0, rounds, step)])
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], rounds: int = BOOTSTRAP,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean of B − A over paired items (e.g. per-query AP) and its bootstrap interval."""
    if len(a) != len(b):
        raise ValueError("paired values must have the same length")
    d = [y - x for x, y in zip(a, b)]
    lo, hi = bootstrap_mean(d, rounds, seed)
    return (statistics.fmean(d) if d else 0.0), lo, hi


def paired_difference(a_seeds: Sequence[float], b_seeds: Sequence[float], *, a_items: list | None = None,
                      b_items: list | None = None, kind: str = "correct") -> dict:
    """B − A for two arms that share seeds: per seed, then its interval and a verdict.

    Two or more seeds: a t-interval over the per-seed differences. One seed: from the
    per-item vectors of that seed (``kind`` "correct": McNemar-style; "ap": paired
    bootstrap over queries). Without them the interval is unknown (None).
    """
    per_seed = [y - x for x, y in zip(a_seeds, b_seeds)]
    out = {"per_seed": per_seed, "seeds": len(per_seed)}
    if len(per_seed) >= 2:
        lo, hi = t_interval(per_seed)
        out.update(diff=statistics.fmean(per_seed), ci=[lo, hi], method=f"t-interval over {len(per_seed)} seeds")
    elif per_seed and a_items is not None and b_items is not None and len(a_items) == len(b_items) and a_items:
        if kind == "correct":
            d, lo, hi = paired_correct(a_items, b_items)
            method = f"paired per-image (McNemar-style), {len(a_items):,} images, 1 seed"
        else:
            d, lo, hi = paired_bootstrap(a_items, b_items)
            method = f"paired bootstrap over {len(a_items):,} queries, 1 seed"
        out.update(diff=per_seed[0], ci=[lo, hi], method=method)
    else:
        out.update(diff=per_seed[0] if per_seed else None, ci=None, method="no interval (1 seed, no per-item data)")
    out["verdict"] = verdict(*out["ci"]) if out["ci"] else "unknown"
    return out


def seeds_summary(values: Sequence[float], n_items: int | None = None) -> dict:
    """Mean, sd and 95 % interval of a figure over seeds (Wilson for one seed of an accuracy on n items)."""
    m, sd = mean_sd(values)
    if len(values) >= 2:
        return {"mean": m, "sd": sd, "ci": list(t_interval(values)), "method": f"t-interval over {len(values)} seeds"}
    if n_items:
        lo, hi = wilson(round(m * n_items), n_items)
        return {"mean": m, "sd": 0.0, "ci": [lo, hi], "method": f"Wilson, {n_items:,} images, 1 seed"}
    return {"mean": m, "sd": 0.0, "ci": None, "method": "1 seed"}


# ---------------------------------------------------------------- compact per-item vectors

def pack_bits(bits: Sequence[int]) -> str:
    """0/1 values as base64 of packed bytes (MSB first); the length travels separately."""
    out = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            out[i >> 3] |= 0x80 >> (i & 7)
    return base64.b64encode(bytes(out)).decode()


def unpack_bits(text: str, n: int) -> list[int]:
    raw = base64.b64decode(text)
    return [(raw[i >> 3] >> (7 - (i & 7))) & 1 for i in range(n)]


def pack_unit(values: Sequence[float]) -> str:
    """Values in [0, 1] as base64 of big-endian uint16 (resolution 1/65535)."""
    out = bytearray()
    for v in values:
        q = round(min(max(v, 0.0), 1.0) * 65535)
        out += bytes((q >> 8, q & 0xFF))
    return base64.b64encode(bytes(out)).decode()


def unpack_unit(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return [((raw[i] << 8) | raw[i + 1]) / 65535 for i in range(0, len(raw), 2)]
