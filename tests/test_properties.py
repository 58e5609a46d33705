"""Property-based tests (hypothesis) on random small graphs and random data.

Graphs are chains of Conv / Relu / residual Add / Gemm / MatMul / bias Add with random shapes, weights and
data scales. For every one: the Q/DQ model loads and runs in ONNX Runtime (simulated and fused), excluding
every layer reproduces the FP32 outputs exactly, every calibrator's threshold lies in [0, abs-max] of its
tensor, and TensorRT's text cache round-trips. The calibrators themselves are invariant to batch order
and split (the histogram's invariance is tested in test_calibrate.py; this extends it to every calibrator).

Bounded: few examples, no deadline (ONNX Runtime sessions dominate), the whole file runs in seconds.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate.backends.onnxruntime import OrtBackend, OrtRunner
from pytest_int8gate.calibrate import (
    CALIBRATORS,
    CalibrationTable,
    TensorStatistics,
    calibrate,
    compute_amax,
    read_trt_cache,
)
from pytest_int8gate.graph import LoadedModel, prepare_model
from pytest_int8gate.quantize import QuantPlan, activation_tensors, quantize_model

GRAPH_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class RandomChain:
    """A generated model, its data and a description for hypothesis' failure report."""

    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    description: str


class _Builder:
    """Appends nodes to a chain, tracking the current tensor and its shape (batch axis excluded)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.steps: list[str] = []

    def weight(self, name: str, shape: tuple[int, ...], fan_in: int, zero: bool = False) -> str:
        value = np.zeros(shape, np.float32) if zero else self.rng.normal(0, 1 / np.sqrt(fan_in), shape)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        index = len(self.nodes)
        output = f"t{index}"
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{op.lower()}{index}", **attrs))
        return output


@st.composite
def random_chains(draw: st.DrawFn) -> RandomChain:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    spatial = draw(st.booleans())
    scale = 10.0 ** draw(st.integers(-3, 3))
    samples = draw(st.integers(1, 12))
    if spatial:
        channels, height, width = draw(st.integers(1, 4)), draw(st.integers(3, 6)), draw(st.integers(3, 6))
        input_shape: list[int | str] = ["N", channels, height, width]
        current = "x"
        for kind in draw(st.lists(st.sampled_from(["conv", "relu", "residual", "bias"]), max_size=4)):
            index = len(b.nodes)
            if kind == "conv":
                out, kernel = draw(st.integers(1, 5)), draw(st.sampled_from([1, 3]))
                w = b.weight(f"w{index}", (out, channels, kernel, kernel), channels * kernel * kernel)
                inputs = [current, w]
                if draw(st.booleans()):
                    inputs.append(b.weight(f"b{index}", (out,), 1))
                current = b.node("Conv", inputs, pads=[kernel // 2] * 4)
                channels = out
            elif kind == "relu":
                current = b.node("Relu", [current])
            elif kind == "residual":
                w = b.weight(f"w{index}", (channels, channels, 3, 3), channels * 9)
                conv = b.node("Conv", [current, w], pads=[1, 1, 1, 1])
                current = b.node("Add", [conv, current])
            else:
                current = b.node("Add", [current, b.weight(f"c{index}", (1, channels, 1, 1), 1)])
            b.steps.append(kind)
        current = b.node("Flatten", [current], axis=1)
        features = channels * height * width
    else:
        features = draw(st.integers(1, 8))
        input_shape = ["N", features]
        current = "x"
    dense = draw(st.lists(st.sampled_from(["gemm", "matmul", "relu", "bias", "skip"]), max_size=4))
    for kind in [*dense, "gemm"]:  # a final Gemm: at least one quantizable layer in every graph
        index = len(b.nodes)
        if kind in ("gemm", "matmul"):
            out = draw(st.integers(1, 8))
            zero = draw(st.integers(0, 9)) == 0  # now and then a dead layer: its output is all zeros
            if kind == "gemm":
                trans_b = draw(st.integers(0, 1))
                shape = (out, features) if trans_b else (features, out)
                inputs = [current, b.weight(f"w{index}", shape, features, zero)]
                if draw(st.booleans()):
                    inputs.append(b.weight(f"b{index}", (out,), 1))
                current = b.node("Gemm", inputs, transB=trans_b)
            else:
                current = b.node("MatMul", [current, b.weight(f"w{index}", (features, out), features, zero)])
            features = out
        elif kind == "relu":
            current = b.node("Relu", [current])
        elif kind == "bias":
            current = b.node("Add", [current, b.weight(f"c{index}", (features,), 1)])
        else:  # a skip connection around a square Gemm (an Add that is not after a Conv)
            w = b.weight(f"w{index}", (features, features), features)
            current = b.node("Add", [b.node("Gemm", [current, w]), current])
        b.steps.append(kind)
    b.nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        b.nodes,
        "random_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", features])],
        b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    data_shape = (samples, *(d for d in input_shape[1:] if isinstance(d, int)))
    feeds = {"x": (rng.standard_normal(data_shape) * scale).astype(np.float32)}
    description = f"input {input_shape}, scale {scale:g}, {samples} samples, steps {b.steps}"
    return RandomChain(model=model, feeds=feeds, description=description)


def calibrated(chain: RandomChain) -> tuple[LoadedModel, CalibrationTable, dict[str, TensorStatistics]]:
    loaded = prepare_model(chain.model)
    table, stats = calibrate(
        loaded.proto,
        activation_tensors(loaded),
        [chain.feeds],
        model_hash=loaded.info.model_hash,
        data_fingerprint="random",
    )
    return loaded, table, dict(stats.tensors)


@GRAPH_SETTINGS
@given(chain=random_chains(), calibrator=st.sampled_from(sorted(CALIBRATORS)))
def test_the_qdq_model_loads_and_runs_in_onnx_runtime(chain: RandomChain, calibrator: str) -> None:
    loaded, table, _ = calibrated(chain)
    quantized = quantize_model(loaded, table, QuantPlan(calibrator=calibrator))

    onnx.checker.check_model(quantized.proto, full_check=True)
    reference = OrtRunner(loaded.proto, precision="fp32", optimize=True).run(chain.feeds)["y"]
    for mode in ("simulated", "fused"):
        outputs = OrtBackend(mode).int8_runner(quantized.proto).run(chain.feeds)
        assert outputs["y"].shape == reference.shape, (mode, chain.description)
        assert np.isfinite(outputs["y"]).all(), (mode, chain.description)
    # every layer is either quantized or has a recorded reason
    assert {*quantized.quantized_layers, *quantized.skipped} == {layer.name for layer in loaded.info.layers}
    if quantized.quantized_layers:
        assert {node.op_type for node in quantized.proto.graph.node} >= QDQ_OPS


@GRAPH_SETTINGS
@given(chain=random_chains())
def test_excluding_every_layer_reproduces_the_fp32_outputs_exactly(chain: RandomChain) -> None:
    loaded, table, _ = calibrated(chain)
    everything = frozenset(layer.name for layer in loaded.info.layers)

    quantized = quantize_model(loaded, table, QuantPlan(exclude=everything))

    assert quantized.quantized_layers == ()
    assert not QDQ_OPS & {node.op_type for node in quantized.proto.graph.node}
    for optimize in (False, True):
        fp32 = OrtRunner(loaded.proto, precision="fp32", optimize=optimize).run(chain.feeds)["y"]
        int8 = OrtRunner(quantized.proto, precision="int8", optimize=optimize).run(chain.feeds)["y"]
        np.testing.assert_array_equal(int8, fp32, err_msg=chain.description)
    # As the gate runs them (FP32 optimised, simulated INT8 not), only float rounding may differ:
    # docs/reliability.md, "Known limits".
    backend = OrtBackend("simulated")
    fp32 = backend.fp32_runner(loaded.proto).run(chain.feeds)["y"]
    int8 = backend.int8_runner(quantized.proto).run(chain.feeds)["y"]
    scale = float(np.abs(fp32).max()) if fp32.size else 0.0
    np.testing.assert_allclose(int8, fp32, rtol=1e-5, atol=1e-5 * scale + 1e-30, err_msg=chain.description)


@GRAPH_SETTINGS
@given(chain=random_chains())
def test_every_calibrator_threshold_lies_within_zero_and_the_tensors_abs_max(chain: RandomChain) -> None:
    _, table, stats = calibrated(chain)

    assert set(table.amax) | set(table.skipped) == set(stats)
    for tensor, by_method in table.amax.items():
        absmax = stats[tensor].absmax
        assert by_method["max"] == absmax
        for method, amax in by_method.items():
            assert 0.0 < amax <= absmax, (tensor, method, amax, absmax, chain.description)
    for tensor, reason in table.skipped.items():
        assert stats[tensor].absmax == 0.0 or stats[tensor].nonfinite, (tensor, reason)


@GRAPH_SETTINGS
@given(chain=random_chains(), method=st.sampled_from(sorted(CALIBRATORS)))
def test_the_tensorrt_cache_of_a_real_table_round_trips(chain: RandomChain, method: str) -> None:
    _, table, _ = calibrated(chain)

    text = table.to_trt_cache(method, "10.13")
    parsed = read_trt_cache(text, source="generated")

    assert parsed.header == "TRT-101300-EntropyCalibration2"
    assert list(parsed.scales) == list(table.amax)
    for tensor, scale in parsed.scales.items():
        assert scale == np.float32(table.amax[tensor][method] / 127), tensor
    assert parsed.to_text() == text


# ---- TensorRT's cache format and the calibrators, without a model ---------------------------------------

#: Any tensor name a line can hold (colons and spaces included: the scale follows the last colon).
cache_names = st.text(
    st.characters(codec="utf-8", exclude_characters="\n\r", exclude_categories=("Cs",)), min_size=1
)
float32_scales = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=100, deadline=None)
@given(scales=st.dictionaries(cache_names, float32_scales, max_size=12))
def test_any_tensorrt_cache_round_trips_byte_for_byte(scales: dict[str, float]) -> None:
    from pytest_int8gate.calibrate import TrtCalibrationCache

    text = TrtCalibrationCache(header="TRT-8601-EntropyCalibration2", scales=scales).to_text()

    parsed = read_trt_cache(text)

    assert parsed.to_text() == text
    assert list(parsed.scales) == list(scales)
    for name, scale in scales.items():  # the float32 bits survive exactly
        assert struct.pack(">f", parsed.scales[name]) == struct.pack(">f", scale)


magnitudes = st.floats(-20, 20)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(1, 3000),
    log2_scale=magnitudes,
    zeros=st.floats(0, 0.9),
    outliers=st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), max_size=3),
    pieces=st.integers(1, 9),
)
def test_every_calibrator_is_invariant_to_batch_order_and_split_and_stays_within_abs_max(
    seed: int, size: int, log2_scale: float, zeros: float, outliers: list[float], pieces: int
) -> None:
    rng = np.random.default_rng(seed)
    values = rng.laplace(0, 2.0**log2_scale, size).astype(np.float32)
    values[rng.random(size) < zeros] = 0.0  # the ReLU zero spike
    values = np.concatenate([values, np.array(outliers, np.float32)])
    one = TensorStatistics()
    one.update(values)
    shuffled = rng.permutation(values)
    cuts = sorted(random.Random(seed).sample(range(1, len(values)), min(pieces, len(values) - 1)))
    split = TensorStatistics()
    for part in np.split(shuffled, cuts):
        split.update(part)

    for method in CALIBRATORS:
        amax = compute_amax(one, method)
        assert compute_amax(split, method) == amax, method
        assert 0.0 <= amax <= one.absmax, (method, amax, one.absmax)
        assert (amax == 0.0) == (one.absmax == 0.0), method


@pytest.mark.parametrize("method", CALIBRATORS)
def test_a_single_value_calibrates_to_itself(method: str) -> None:
    stats = TensorStatistics()
    stats.update(np.array([-3.5], np.float32))
    assert (
        compute_amax(stats, method) == pytest.approx(3.5, rel=1 / 127) and compute_amax(stats, method) <= 3.5
    )
