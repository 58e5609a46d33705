"""How sure a verdict is: 95 % confidence intervals of accuracy-type metrics, measured paired (FP32 and INT8
on the same evaluation samples).

The drop of an accuracy (``top1_drop``, ``top5_drop``) depends only on the *discordant pairs*: ``b`` samples
that FP32 gets right and INT8 wrong, ``c`` the other way round; drop = (b - c) / n. Its interval is the
Bonett-Price adjusted Wald interval for a paired difference of proportions (Bonett & Price 2012; one of
the three intervals Fagerland, Lydersen & Laake, Stat. Med. 2014, recommend): one pseudo-sample is added to
each discordant cell, p_b = (b + 1) / (n + 2), p_c = (c + 1) / (n + 2), and

    drop in (p_b - p_c) +- z * sqrt((p_b + p_c - (p_b - p_c)^2) / (n + 2)).

Chosen over the bootstrap because it is deterministic (no seed), costs O(1), and stays honest when FP32 and
INT8 never disagree: there a bootstrap over samples collapses to [0, 0] on any set size, while this interval
still says how much a set of n samples cannot see (about +-1.4 points on 200 samples, +-0.55 on 500). Where
the bootstrap is well behaved it agrees with it (tests/test_stats.py checks both). An agreement rate
(``top1_agreement``) is a single proportion: Wilson's score interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Two-sided 95 % normal quantile.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval of one metric and the counts it was computed from."""

    low: float
    high: float
    method: str
    samples: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def as_tuple(self) -> tuple[float, float]:
        return (self.low, self.high)


def discordant_pairs(fp32_hits: np.ndarray, int8_hits: np.ndarray) -> tuple[int, int]:
    """(b, c): samples FP32 gets right and INT8 wrong, and samples INT8 gets right and FP32 wrong."""
    fp32 = np.asarray(fp32_hits, dtype=bool)
    int8 = np.asarray(int8_hits, dtype=bool)
    if fp32.shape != int8.shape or fp32.ndim != 1:
        raise ValueError(
            f"per-sample hits must be two 1-D arrays of one length, got {fp32.shape} and {int8.shape}"
        )
    return int(np.count_nonzero(fp32 & ~int8)), int(np.count_nonzero(~fp32 & int8))


def drop_interval(b: int, c: int, n: int, *, z: float = Z95) -> Interval:
    """Bonett-Price interval of the paired accuracy drop (b - c) / n (see the module docstring)."""
    if n < 1 or b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need 0 <= b, c and b + c <= n >= 1, got b={b}, c={c}, n={n}")
    p_b = (b + 1) / (n + 2)
    p_c = (c + 1) / (n + 2)
    centre = p_b - p_c
    half = z * math.sqrt(max(p_b + p_c - centre * centre, 0.0) / (n + 2))
    return Interval(max(-1.0, centre - half), min(1.0, centre + half), "bonett-price", n)


def paired_drop_interval(fp32_hits: np.ndarray, int8_hits: np.ndarray, *, z: float = Z95) -> Interval:
    """The interval of mean(fp32_hits) - mean(int8_hits) over the same samples."""
    b, c = discordant_pairs(fp32_hits, int8_hits)
    return drop_interval(b, c, int(np.asarray(fp32_hits).shape[0]), z=z)


def proportion_interval(successes: int, n: int, *, z: float = Z95) -> Interval:
    """Wilson's score interval of a proportion successes / n."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n >= 1, got {successes} of {n}")
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return Interval(max(0.0, centre - half), min(1.0, centre + half), "wilson", n)


def drop_samples_needed(b: int, c: int, n: int, wanted_half_width: float) -> int | None:
    """About how many samples, at the same discordance rates, give a drop interval no wider than
    ``wanted_half_width`` each side; None when no number of samples can (a wanted width of 0)."""
    return _samples_needed(
        lambda size: drop_interval(round(b * size / n), round(c * size / n), size).half_width,
        n,
        wanted_half_width,
    )


def proportion_samples_needed(successes: int, n: int, wanted_half_width: float) -> int | None:
    """About how many samples, at the same rate, give a Wilson interval no wider than
    ``wanted_half_width`` each side; None when no number of samples can."""
    return _samples_needed(
        lambda size: proportion_interval(round(successes * size / n), size).half_width, n, wanted_half_width
    )


#: Beyond this, "more samples" is not advice any more.
_MAX_SAMPLES = 10**9


def _samples_needed(half_width_at: Callable[[int], float], start: int, wanted: float) -> int | None:
    if wanted <= 0:
        return None
    if half_width_at(start) <= wanted:
        return start
    low, high = start, start * 2
    while half_width_at(high) > wanted:  # the half width falls as 1/sqrt(n) (as 1/n with no disagreement)
        low, high = high, high * 2
        if high > _MAX_SAMPLES:
            return None
    while high - low > max(1, low // 100):  # 1 % resolution is plenty for advice
        middle = (low + high) // 2
        if half_width_at(middle) > wanted:
            low = middle
        else:
            high = middle
    return high
