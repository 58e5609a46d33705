"""Confidence intervals of the gate's accuracy metrics: checked against a brute-force bootstrap, for coverage
by simulation, and wired into judge() (the interval in every result, strict budgets)."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_int8gate.gate import Budget, judge
from pytest_int8gate.results import Comparison, OutputComparison
from pytest_int8gate.stats import (
    Z95,
    discordant_pairs,
    drop_interval,
    drop_samples_needed,
    paired_drop_interval,
    proportion_interval,
    proportion_samples_needed,
)


def paired_hits(b: int, c: int, n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample hits with ``b`` samples only FP32 gets right, ``c`` only INT8, half right for both."""
    fp32, int8 = np.zeros(n, bool), np.zeros(n, bool)
    fp32[:b] = True
    int8[b : b + c] = True
    both = slice(b + c, b + c + n // 2)
    fp32[both] = int8[both] = True
    order = np.random.default_rng(seed).permutation(n)
    return fp32[order], int8[order]


def brute_force_bootstrap(
    fp32: np.ndarray, int8: np.ndarray, *, resamples: int = 20000
) -> tuple[float, float]:
    """Percentile bootstrap of mean(fp32) - mean(int8): resample whole samples (pairs kept together)."""
    n = fp32.shape[0]
    index = np.random.default_rng(1).integers(0, n, size=(resamples, n))
    drops = fp32[index].mean(axis=1) - int8[index].mean(axis=1)
    low, high = np.percentile(drops, [2.5, 97.5])
    return float(low), float(high)


@pytest.mark.parametrize(("b", "c", "n"), [(9, 3, 120), (3, 9, 120), (20, 5, 300)])
def test_drop_interval_matches_a_brute_force_bootstrap(b: int, c: int, n: int) -> None:
    fp32, int8 = paired_hits(b, c, n)
    interval = paired_drop_interval(fp32, int8)
    boot_low, boot_high = brute_force_bootstrap(fp32, int8)

    print(f"b={b} c={c} n={n}: Bonett-Price [{interval.low:.4f}, {interval.high:.4f}], "
          f"bootstrap [{boot_low:.4f}, {boot_high:.4f}]")  # fmt: skip
    # the bootstrap moves in steps of 1/n; the pseudo-samples shift the ends by about 1/n at most
    assert interval.low == pytest.approx(boot_low, abs=1.5 / n)
    assert interval.high == pytest.approx(boot_high, abs=1.5 / n)
    assert interval.low < (b - c) / n < interval.high
    assert interval.method == "bonett-price" and interval.samples == n


def test_with_no_disagreement_the_bootstrap_collapses_but_the_interval_stays_honest() -> None:
    fp32, int8 = paired_hits(0, 0, 200)
    assert brute_force_bootstrap(fp32, int8) == (0.0, 0.0)  # claims certainty it does not have

    interval = paired_drop_interval(fp32, int8)
    # p_b = p_c = 1/202: half width z * sqrt(2/202 / 202)
    assert interval.high == pytest.approx(Z95 * np.sqrt(2 / 202 / 202), rel=1e-12)
    assert interval.low == pytest.approx(-interval.high)
    assert interval.half_width == pytest.approx(0.01372, abs=1e-5)  # wider than a 1-point budget
    assert drop_interval(0, 0, 500).half_width == pytest.approx(0.00552, abs=1e-5)  # narrower


def test_coverage_of_the_drop_interval_is_about_95_percent() -> None:
    rng = np.random.default_rng(7)
    n, p_b, p_c = 200, 0.04, 0.01
    counts = rng.multinomial(n, [p_b, p_c, 1 - p_b - p_c], size=4000)
    covered = [drop_interval(int(b), int(c), n).low <= p_b - p_c <= drop_interval(int(b), int(c), n).high
               for b, c, _ in counts]  # fmt: skip
    coverage = float(np.mean(covered))
    print(f"coverage {coverage:.3f}")
    assert 0.93 <= coverage <= 0.975


def test_discordant_pairs_count_each_direction() -> None:
    fp32 = np.array([1, 1, 0, 0, 1, 1], bool)
    int8 = np.array([1, 0, 1, 0, 0, 1], bool)
    assert discordant_pairs(fp32, int8) == (2, 1)
    with pytest.raises(ValueError, match="1-D arrays of one length"):
        discordant_pairs(fp32, int8[:5])


def test_wilson_interval_reference_values() -> None:
    # Wilson (1927) / Newcombe (1998) table: 0/10 -> [0, 0.2775], 81/263 -> [0.2553, 0.3662]
    assert proportion_interval(0, 10).high == pytest.approx(0.2775, abs=1e-4)
    assert proportion_interval(0, 10).low == 0.0
    interval = proportion_interval(81, 263)
    assert interval.low == pytest.approx(0.2553, abs=1e-4)
    assert interval.high == pytest.approx(0.3662, abs=1e-4)
    assert proportion_interval(10, 10).low == pytest.approx(1 - 0.2775, abs=1e-4)


def test_samples_needed_reach_the_wanted_width_and_no_fewer_do() -> None:
    needed = drop_samples_needed(4, 1, 200, 0.01)
    assert needed is not None and needed > 200
    assert drop_interval(round(4 * needed / 200), round(1 * needed / 200), needed).half_width <= 0.01
    fewer = int(needed * 0.97)
    assert drop_interval(round(4 * fewer / 200), round(1 * fewer / 200), fewer).half_width > 0.01
    assert drop_samples_needed(0, 0, 200, 0.01) == pytest.approx(276, abs=3)  # 2.77 / (n + 2) <= 0.01
    assert drop_samples_needed(0, 0, 500, 0.01) == 500  # already enough
    assert drop_samples_needed(0, 0, 200, 0.0) is None  # a zero budget can never be shown
    assert proportion_samples_needed(200, 200, 0.005) == pytest.approx(381, rel=0.02)


def comparison(b: int, c: int, n: int) -> Comparison:
    fp32, int8 = paired_hits(b, c, n)
    output = OutputComparison(
        "y",
        n,
        {"top1": float(fp32.mean())},
        {"top1": float(int8.mean()), "top1_agreement": 1 - (b + c) / n, "cosine": 0.99},
        np.ones(n),
        {"fp32_top1": fp32, "int8_top1": int8, "top1_agreement": fp32 == int8},
        labelled=True,
    )
    return Comparison((output,))


def test_judge_puts_the_interval_in_every_accuracy_result() -> None:
    budget = Budget({"top1_drop": 0.01, "top1_agreement": 0.9, "cosine": 0.98})
    drop, agreement, cosine = judge(budget, comparison(4, 2, 400))

    assert drop.ci95 == drop_interval(4, 2, 400).as_tuple()
    assert drop.observed == pytest.approx(0.005)
    assert drop.ci95[0] < drop.observed < drop.ci95[1]
    assert agreement.ci95 == proportion_interval(394, 400).as_tuple()
    assert cosine.ci95 is None  # not an accuracy-type metric
    assert not drop.strict_ci


def test_strict_ci_passes_only_when_the_whole_interval_is_within_the_limit() -> None:
    budget = Budget({"top1_drop": 0.01, "top1_agreement": 0.98})
    small = comparison(2, 1, 200)  # drop 0.005, agreement 0.985 on 200 samples: intervals straddle the limits

    lenient = judge(budget, small)
    strict = judge(budget, small, strict_ci=True)

    assert [r.passed for r in lenient] == [True, True]
    assert [r.passed for r in strict] == [False, False]
    assert all(r.strict_ci for r in strict)
    assert strict[0].ci95 is not None and strict[0].ci95[1] > 0.01
    assert strict[1].ci95 is not None and strict[1].ci95[0] < 0.98
    # enough samples and no disagreement: the strict budget passes
    assert [r.passed for r in judge(budget, comparison(0, 0, 2000), strict_ci=True)] == [True, True]
