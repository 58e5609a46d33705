"""Tests for pytest_int8gate.evaluate: metric values, batch independence, non-finite outputs, KPIs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate.backends.onnxruntime import OrtRunner
from pytest_int8gate.data import Dataset
from pytest_int8gate.errors import DataError, NonFiniteOutputError
from pytest_int8gate.evaluate import (
    Comparison,
    MetricAccumulator,
    ReferenceOutputs,
    check_finite,
    classification_view,
    compare,
    sqnr_db,
)

FLOAT = TensorProto.FLOAT

# Four samples, six classes, no ties: every top-k membership below is unambiguous.
FP32 = np.array(
    [
        [5.0, 1.0, 0.5, 0.2, 0.1, -1.0],
        [0.0, 2.0, 3.0, 1.0, 0.5, -2.0],
        [1.0, 0.5, 0.2, 0.1, -3.0, 4.0],
        [0.3, 0.2, 0.1, -1.0, 6.0, 0.4],
    ]
)
INT8 = np.array(
    [
        [5.0, 1.0, 0.5, 0.2, 0.1, -1.0],  # identical
        [0.0, 3.0, 2.0, 1.0, 0.5, -2.0],  # argmax moves from 2 to 1
        [1.0, 0.5, 0.2, 0.1, -3.0, 4.0],  # identical
        [0.3, 0.2, 0.1, 0.5, 6.0, -1.0],  # class 3 climbs out of last place
    ]
)
LABELS = np.array([0, 5, 4, 3])


def runner(
    nodes: Sequence[onnx.NodeProto],
    outputs: Mapping[str, Sequence[int | str]],
    initializers: Mapping[str, np.ndarray] | None = None,
    input_shape: Sequence[int | str] = ("N", 8),
) -> OrtRunner:
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info("x", FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(name, FLOAT, list(shape)) for name, shape in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), name) for name, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return OrtRunner(model, precision="fp32", optimize=False)


def linear_runner(weights: np.ndarray, bias: np.ndarray) -> OrtRunner:
    return runner(
        [
            helper.make_node("Gemm", ["x", "W", "B"], ["logits"], name="fc"),
            helper.make_node("ReduceSum", ["x"], ["features"], name="sum", keepdims=1),
        ],
        {"logits": ["N", 10], "features": ["N", 1]},
        {"W": weights, "B": bias},
    )


@pytest.fixture(scope="module")
def linear_pair() -> tuple[OrtRunner, OrtRunner]:
    """An FP32 classifier and a coarsely rounded copy of it that behaves like an INT8 engine."""
    rng = np.random.default_rng(3)
    weights = rng.standard_normal((8, 10)).astype(np.float32)
    bias = rng.standard_normal(10).astype(np.float32) * 0.1
    step = np.float32(0.25)
    rounded = (np.round(weights / step) * step).astype(np.float32)
    return linear_runner(weights, bias), linear_runner(rounded, bias)


@pytest.fixture(scope="module")
def eval_set() -> tuple[Dataset, np.ndarray]:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((100, 8)).astype(np.float32)
    labels = rng.integers(0, 10, size=100)
    return Dataset.from_arrays({"x": x}), labels


# ---- metric values -------------------------------------------------------------------------------------


def test_metrics_match_hand_computed_values() -> None:
    acc = MetricAccumulator(labels=True)
    acc.add(FP32.astype(np.float32), INT8.astype(np.float32), LABELS)
    result = acc.result("logits")

    cosines = np.sum(FP32 * INT8, axis=1) / (np.linalg.norm(FP32, axis=1) * np.linalg.norm(INT8, axis=1))
    assert cosines[0] == pytest.approx(1.0) and cosines[1] == pytest.approx(17.25 / 18.25)
    signal = float(np.sum(FP32**2))
    noise = 1.0**2 + 1.0**2 + 1.5**2 + 1.4**2
    assert result.num_samples == 4
    assert result.output_name == "logits"
    assert result.int8["cosine"] == pytest.approx(cosines.mean(), rel=1e-6)
    assert result.int8["cosine_min"] == pytest.approx(cosines.min(), rel=1e-6)
    assert result.int8["sqnr_db"] == pytest.approx(10 * math.log10(signal / noise), rel=1e-6)
    assert result.int8["max_abs_error"] == pytest.approx(1.5, rel=1e-6)
    np.testing.assert_allclose(result.per_sample_cosine, cosines, rtol=1e-6)
    # top-1: argmax 0,2,5,4 (fp32) and 0,1,5,4 (int8) against labels 0,5,4,3
    assert result.fp32["top1"] == 0.25
    assert result.int8["top1"] == 0.25
    # top-5 of six classes = "label is not the lowest score": fp32 hits sample 0; int8 hits 0 and 3
    assert result.fp32["top5"] == 0.25
    assert result.int8["top5"] == 0.5
    assert result.int8["top1_agreement"] == 0.75
    assert result.metric("top1") == 0.25


def test_top5_counts_a_label_ranked_fifth_and_not_one_ranked_sixth() -> None:
    """Ten classes with scores 9, 8, ..., 0; sample i's label is the class ranked i+1: top-5 hits the first
    five samples exactly, top-1 only the first."""
    scores = np.tile(np.arange(9, -1, -1, dtype=np.float32), (10, 1))
    labels = np.arange(10)  # class i has score 9 - i: rank i + 1
    acc = MetricAccumulator(labels=True)
    acc.add(scores, scores, labels)
    result = acc.result("logits")
    assert result.hits["fp32_top5"].tolist() == [True] * 5 + [False] * 5
    assert result.hits["int8_top1"].tolist() == [True] + [False] * 9
    assert result.fp32["top5"] == result.int8["top5"] == 0.5


def test_identical_outputs_are_perfect() -> None:
    acc = MetricAccumulator(labels=False)
    acc.add(FP32, FP32.copy())
    result = acc.result("logits")
    assert result.int8["cosine"] == pytest.approx(1.0)
    assert result.int8["sqnr_db"] == math.inf
    assert result.int8["max_abs_error"] == 0.0
    assert result.int8["top1_agreement"] == 1.0
    assert "top1" not in result.int8 and result.fp32 == {}


def test_zero_vectors_have_defined_cosine() -> None:
    acc = MetricAccumulator(labels=False)
    acc.add(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 2.0]]))
    np.testing.assert_array_equal(acc.result("y").per_sample_cosine, [1.0, 0.0, 0.0])


def test_sqnr_db_edge_cases() -> None:
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert sqnr_db(1.0, 0.0) == math.inf
    assert sqnr_db(0.0, 1.0) == -math.inf


def test_shape_mismatch_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"\(4, 6\).*\(4, 5\)"):
        MetricAccumulator(labels=False).add(FP32, INT8[:, :5])


def assert_same_metrics(got: Comparison, expected: Comparison, rel: float) -> None:
    """The same FP32 metrics, and every INT8 metric of ``expected`` equal in ``got`` to ``rel``."""
    assert got.fp32 == expected.fp32
    for key, value in expected.int8.items():
        assert got.int8[key] == pytest.approx(value, rel=rel), key


@pytest.mark.parametrize("sizes", [(1, 1, 1, 1), (3, 1), (2, 2), (4,)])
def test_accumulator_is_independent_of_chunking(sizes: tuple[int, ...]) -> None:
    whole = MetricAccumulator(labels=True)
    whole.add(FP32, INT8, LABELS)
    chunked = MetricAccumulator(labels=True)
    start = 0
    for size in sizes:
        chunked.add(FP32[start : start + size], INT8[start : start + size], LABELS[start : start + size])
        start += size
    a, b = whole.result("y"), chunked.result("y")
    assert a.int8.keys() == b.int8.keys()
    assert_same_metrics(b, a, rel=1e-12)


# ---- compare with real runners ---------------------------------------------------------------------------


def test_compare_is_independent_of_batch_size(
    linear_pair: tuple[OrtRunner, OrtRunner], eval_set: tuple[Dataset, np.ndarray]
) -> None:
    fp32, int8 = linear_pair
    dataset, labels = eval_set
    results = {bs: compare(fp32, int8, dataset, batch_size=bs, labels=labels) for bs in (1, 7, 64)}

    reference = results[64]
    assert reference.num_samples == 100
    assert 0.9 < reference.int8["cosine"] < 1.0  # the rounded copy really differs
    assert 0.0 < reference.int8["top1_agreement"] <= 1.0
    for result in results.values():
        assert result.num_samples == 100
        assert_same_metrics(result, reference, rel=1e-9)

    # the numbers agree with a direct numpy evaluation of the whole set
    x = next(dataset.batches(100))["x"]
    ref_logits, got_logits = fp32.run({"x": x})["logits"], int8.run({"x": x})["logits"]
    assert reference.fp32["top1"] == pytest.approx(np.mean(ref_logits.argmax(1) == labels))
    assert reference.int8["top1"] == pytest.approx(np.mean(got_logits.argmax(1) == labels))
    assert reference.int8["max_abs_error"] == pytest.approx(
        float(np.abs(ref_logits.astype(np.float64) - got_logits).max())
    )


def test_reference_outputs_give_the_same_comparison(
    linear_pair: tuple[OrtRunner, OrtRunner], eval_set: tuple[Dataset, np.ndarray]
) -> None:
    fp32, int8 = linear_pair
    dataset, labels = eval_set
    direct = compare(fp32, int8, dataset, batch_size=16, labels=labels)
    reference = ReferenceOutputs.compute(fp32, dataset, batch_size=16, labels=labels)
    assert len(reference.batches) == 7
    assert_same_metrics(reference.compare(int8), direct, rel=1e-12)


def test_output_selection_by_name(
    linear_pair: tuple[OrtRunner, OrtRunner], eval_set: tuple[Dataset, np.ndarray]
) -> None:
    fp32, int8 = linear_pair
    dataset, labels = eval_set
    assert compare(fp32, int8, dataset, batch_size=32).output_name == "logits"
    features = compare(fp32, int8, dataset, batch_size=32, output_name="features", labels=labels)
    assert features.output_name == "features"
    assert features.int8["cosine"] == pytest.approx(1.0)  # the sum does not depend on the weights
    assert "top1" not in features.int8  # [N, 1] is not a class vector
    assert "top1_agreement" not in features.int8
    with pytest.raises(DataError, match=r"'probs' is not an output.*\['logits', 'features'\]"):
        compare(fp32, int8, dataset, batch_size=32, output_name="probs")


def test_kpi_sees_all_outputs_and_labels(
    linear_pair: tuple[OrtRunner, OrtRunner], eval_set: tuple[Dataset, np.ndarray]
) -> None:
    fp32, int8 = linear_pair
    dataset, labels = eval_set
    calls: list[tuple[tuple[int, ...], tuple[int, ...] | None]] = []

    def accuracy(outputs: np.ndarray, kpi_labels: np.ndarray | None) -> float:
        calls.append((outputs.shape, None if kpi_labels is None else kpi_labels.shape))
        assert kpi_labels is not None
        np.testing.assert_array_equal(kpi_labels, labels)
        return float(np.mean(outputs.argmax(axis=1) == kpi_labels))

    result = compare(fp32, int8, dataset, batch_size=7, labels=labels, kpi=accuracy)
    assert calls == [((100, 10), (100,)), ((100, 10), (100,))]
    assert result.fp32["kpi"] == pytest.approx(result.fp32["top1"])
    assert result.int8["kpi"] == pytest.approx(result.int8["top1"])


def test_kpi_without_labels_gets_none(
    linear_pair: tuple[OrtRunner, OrtRunner], eval_set: tuple[Dataset, np.ndarray]
) -> None:
    fp32, int8 = linear_pair
    dataset, _ = eval_set
    seen: list[object] = []

    def mean_logit(outputs: np.ndarray, kpi_labels: np.ndarray | None) -> float:
        seen.append(kpi_labels)
        return float(outputs.mean())

    result = compare(fp32, int8, dataset, batch_size=30, kpi=mean_logit)
    assert seen == [None, None]
    x = next(dataset.batches(100))["x"]
    assert result.fp32["kpi"] == pytest.approx(float(fp32.run({"x": x})["logits"].mean()), rel=1e-5)


# ---- non-finite outputs ------------------------------------------------------------------------------------


def sqrt_runner(abs_first: bool) -> OrtRunner:
    nodes = [helper.make_node("Sqrt", ["a" if abs_first else "x"], ["y"], name="sqrt")]
    if abs_first:
        nodes.insert(0, helper.make_node("Abs", ["x"], ["a"], name="abs"))
    return runner(nodes, {"y": ["N", 8]})


def test_nan_in_the_int8_output_names_the_sample() -> None:
    x = np.abs(np.random.default_rng(5).standard_normal((50, 8))).astype(np.float32)
    x[37, 3] = -1.0
    dataset = Dataset.from_arrays({"x": x})
    with pytest.raises(NonFiniteOutputError, match=r"INT8 model's output 'y' is NaN at sample 37"):
        compare(sqrt_runner(abs_first=True), sqrt_runner(abs_first=False), dataset, batch_size=16)


def test_nan_in_the_fp32_output_is_also_a_failure() -> None:
    x = np.ones((10, 8), np.float32)
    x[2, 0] = -4.0
    dataset = Dataset.from_arrays({"x": x})
    with pytest.raises(NonFiniteOutputError, match=r"FP32 model's output 'y' is NaN at sample 2"):
        compare(sqrt_runner(abs_first=False), sqrt_runner(abs_first=True), dataset, batch_size=4)


def test_inf_in_the_int8_output_names_the_sample() -> None:
    fp32 = runner(
        [
            helper.make_node("Abs", ["x"], ["a"], name="abs"),
            helper.make_node("Add", ["a", "one"], ["b"], name="add"),
            helper.make_node("Reciprocal", ["b"], ["y"], name="recip"),
        ],
        {"y": ["N", 8]},
        {"one": np.ones(1, np.float32)},
    )
    int8 = runner([helper.make_node("Reciprocal", ["x"], ["y"], name="recip")], {"y": ["N", 8]})
    x = np.ones((12, 8), np.float32)
    x[9, 7] = 0.0
    with pytest.raises(NonFiniteOutputError, match=r"INT8 model's output 'y' is Inf at sample 9"):
        compare(fp32, int8, Dataset.from_arrays({"x": x}), batch_size=5)


def test_the_kind_named_is_that_of_the_sample_named() -> None:
    int8 = np.ones((6, 3), np.float32)
    int8[2, 1] = np.inf
    int8[5, 0] = np.nan
    with pytest.raises(NonFiniteOutputError, match=r"is Inf at sample 12"):
        check_finite(int8, precision="INT8", output="y", first_sample=10)


def test_reference_outputs_compare_names_the_sample() -> None:
    x = np.abs(np.random.default_rng(6).standard_normal((20, 8))).astype(np.float32) + 0.1
    x[13, 0] = -1.0
    reference = ReferenceOutputs.compute(sqrt_runner(True), Dataset.from_arrays({"x": x}), batch_size=6)
    with pytest.raises(NonFiniteOutputError, match="sample 13"):
        reference.compare(sqrt_runner(False))


# ---- classification view ---------------------------------------------------------------------------


def test_classification_view() -> None:
    logits = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = classification_view(logits.reshape(3, 4, 1, 1))
    assert view is not None
    np.testing.assert_array_equal(view, logits)
    np.testing.assert_array_equal(classification_view(logits), logits)
    assert classification_view(np.zeros((3, 1))) is None
    assert classification_view(np.zeros((3, 1, 1, 1))) is None
    assert classification_view(np.zeros((3, 4, 2, 2))) is None
    assert classification_view(np.zeros(3)) is None


def test_nchw_class_scores_are_classified() -> None:
    acc = MetricAccumulator(labels=True)
    acc.add(FP32[:, :, None, None], INT8[:, :, None, None], LABELS)
    result = acc.result("scores")
    assert result.int8["top1_agreement"] == 0.75
    assert result.int8["top5"] == 0.5
