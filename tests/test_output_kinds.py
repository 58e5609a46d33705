"""Output kinds and the metrics that judge them: each kind is recognised from FP32 values, and each
default metric sees the damage cosine cannot (an offset, one value per sample, flipped decisions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_int8gate.evaluate import MetricAccumulator, relative_rmse
from pytest_int8gate.output_kinds import (
    OutputKind,
    OutputProfile,
    classify_output,
    default_limits,
    position_classes,
)

RNG = np.random.default_rng(0)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (RNG.standard_normal((8, 10)).astype(np.float32), OutputKind.CLASS_SCORES),  # logits
        (_softmax(RNG.standard_normal((8, 10))), OutputKind.CLASS_SCORES),  # probabilities
        (_softmax(RNG.standard_normal((8, 5, 7))), OutputKind.CLASS_SCORES),  # per position
        (RNG.uniform(0, 1, (8, 12)).astype(np.float32), OutputKind.SCORES),  # sigmoid, multi-label
        (RNG.uniform(0, 1, (8, 1)).astype(np.float32), OutputKind.SCORES),  # binary probability
        (RNG.standard_normal((8, 1)).astype(np.float32), OutputKind.DENSE),  # regression
        (RNG.standard_normal((8, 3, 4, 4)).astype(np.float32), OutputKind.DENSE),  # feature map
        (RNG.standard_normal((8, 1, 1, 1)).astype(np.float32), OutputKind.DENSE),
        (_unit_rows(RNG.standard_normal((8, 32))), OutputKind.EMBEDDING),  # L2-normalised embedding
        (_unit_rows(RNG.uniform(0, 1, (8, 32))), OutputKind.EMBEDDING),  # non-negative, still not scores
        (_unit_rows(RNG.standard_normal((8, 2))), OutputKind.CLASS_SCORES),  # two coordinates: too few
        (np.eye(8, 10, dtype=np.float32), OutputKind.CLASS_SCORES),  # one-hot softmax rows have length 1
        (RNG.integers(0, 9, (8, 4)), OutputKind.INTEGER),
        (RNG.integers(0, 2, (8,)).astype(bool), OutputKind.INTEGER),
    ],
)
def test_each_kind_is_recognised_from_fp32_values(values: np.ndarray, kind: OutputKind) -> None:
    assert classify_output(values) is kind


def test_rows_that_do_not_sum_to_one_are_independent_scores_not_a_softmax() -> None:
    rows = np.full((4, 3), 0.2, np.float32)
    assert classify_output(rows) is OutputKind.SCORES
    rows[:, 0] = 0.6
    assert classify_output(rows) is OutputKind.CLASS_SCORES
    assert position_classes(rows) is None  # 2-D: not per position


def test_default_limits_add_top1_drop_only_for_labelled_class_scores() -> None:
    assert "top1_drop" in default_limits(OutputKind.CLASS_SCORES, has_labels=True)
    assert "top1_drop" not in default_limits(OutputKind.CLASS_SCORES, has_labels=False)
    assert "top1_drop" not in default_limits(OutputKind.DENSE, has_labels=True)
    for kind in OutputKind:
        assert default_limits(kind, has_labels=False), kind


def _compare(fp32: np.ndarray, int8: np.ndarray, batch: int = 7) -> dict[str, float]:
    acc = MetricAccumulator(labels=False)
    for start in range(0, fp32.shape[0], batch):
        acc.add(fp32[start : start + batch], int8[start : start + batch])
    return dict(acc.result("y").int8)


def test_relative_rmse_sees_a_destroyed_regression_that_cosine_calls_perfect() -> None:
    target = 50.0 + RNG.standard_normal((200, 1)).astype(np.float32)  # physical units: always positive
    destroyed = np.full_like(target, 50.0) + 0.01 * RNG.standard_normal(target.shape).astype(np.float32)
    kept = target + 0.05 * RNG.standard_normal(target.shape).astype(np.float32)
    bad, good = _compare(target, destroyed), _compare(target, kept)
    assert bad["cosine"] > 0.9999  # blind: the sign of one value per sample
    assert bad["rel_rmse"] > 0.9 and good["rel_rmse"] < 0.1


def test_relative_rmse_is_batch_independent_and_matches_its_definition() -> None:
    fp32 = (3.0 + RNG.standard_normal((57, 6))).astype(np.float32)
    int8 = (fp32 + 0.1 * RNG.standard_normal(fp32.shape)).astype(np.float32)
    expected = np.sqrt(np.mean((fp32.astype(np.float64) - int8) ** 2)) / np.sqrt(
        np.mean(fp32.astype(np.float64).var(axis=0))
    )
    for batch in (1, 7, 57):
        assert _compare(fp32, int8, batch)["rel_rmse"] == pytest.approx(expected, rel=1e-9)


def test_relative_rmse_of_an_output_that_never_varies() -> None:
    assert relative_rmse(0.0, 10, 0.0) == 0.0
    assert math.isinf(relative_rmse(1.0, 10, 0.0))


def test_offset_logits_keep_cosine_but_lose_agreement() -> None:
    logits = RNG.standard_normal((300, 10)).astype(np.float32)
    noisy = logits + RNG.standard_normal(logits.shape).astype(np.float32)
    got = _compare(logits + 100.0, noisy + 100.0)
    assert got["cosine"] > 0.999 and got["top1_agreement"] < 0.8 and got["rel_rmse"] > 0.5


def test_sigmoid_decisions_are_counted_per_value() -> None:
    fp32 = np.array([[0.1, 0.6, 0.9], [0.4, 0.7, 0.2]], np.float32)
    int8 = np.array([[0.1, 0.4, 0.9], [0.6, 0.7, 0.2]], np.float32)  # 2 of 6 decisions flip at 0.5
    assert _compare(fp32, int8)["decision_agreement"] == pytest.approx(4 / 6)


def test_integer_outputs_are_compared_exactly_per_sample() -> None:
    fp32 = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], np.int64)
    int8 = fp32.copy()
    int8[2, 1] = 0
    assert _compare(fp32, int8)["exact_match"] == pytest.approx(0.75)


def test_per_position_class_decisions() -> None:
    fp32 = _softmax(4.0 * RNG.standard_normal((20, 6, 5)))
    int8 = fp32.copy()
    moved = (fp32[:, 0, :].argmax(axis=1) + 1) % 5
    int8[:, 0, :] = np.eye(5, dtype=np.float32)[moved]  # the first position's decision moved on every sample
    agreement = _compare(fp32, int8)["top1_agreement"]
    assert agreement == pytest.approx(5 / 6)


def test_uninformative_metrics_are_named_with_the_reason() -> None:
    one_value = OutputProfile("value", OutputKind.DENSE, elements=1, spread=1.0, offset=50.0)
    offset = OutputProfile("logits", OutputKind.CLASS_SCORES, elements=10, spread=1.0, offset=100.0)
    plain = OutputProfile("logits", OutputKind.CLASS_SCORES, elements=10, spread=1.0, offset=0.5)
    assert "one value per sample" in (one_value.uninformative("cosine") or "")
    assert "common offset" in (offset.uninformative("cosine") or "")
    assert plain.uninformative("cosine") is None
    assert one_value.uninformative("rel_rmse") is None
