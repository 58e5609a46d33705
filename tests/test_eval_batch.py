"""The evaluation batch is sized by the model's activation memory (evaluate.evaluation_batch_size, from
graph.activation_bytes), never beyond the batch asked for, and the gate's numbers do not depend on it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from example_files import CALIB, DIGITS, EVAL, LABELS
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate import evaluate
from pytest_int8gate.evaluate import EVALUATION_ACTIVATION_BUDGET, evaluation_batch_size
from pytest_int8gate.gate import Budget
from pytest_int8gate.graph import activation_bytes
from pytest_int8gate.pipeline import GatePipeline, GateSpec


def test_activation_bytes_count_every_tensor_a_node_produces_at_the_given_shapes() -> None:
    weight = np.ones((4, 3, 3, 3), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("Shape", ["relu"], ["shape"]),  # 4 int64 values
            helper.make_node("Reshape", ["relu", "flat"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([0, -1], np.int64), "flat")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    per_image = 4 * 10 * 12 * 4  # one float [4, 10, 12] map
    assert activation_bytes(model, {"x": (1, 3, 10, 12)}) == 3 * per_image + 4 * 8
    assert activation_bytes(model, {"x": (2, 3, 10, 12)}) == 2 * 3 * per_image + 4 * 8


def test_the_evaluation_batch_is_the_one_asked_for_unless_its_activations_exceed_the_budget() -> None:
    assert evaluation_batch_size(32, None) == 32  # unknown: as asked
    assert evaluation_batch_size(32, 1 << 20) == 32
    assert evaluation_batch_size(32, EVALUATION_ACTIVATION_BUDGET // 5) == 5
    assert evaluation_batch_size(32, EVALUATION_ACTIVATION_BUDGET * 3) == 1  # never fewer than one


def _spec(cache: Path, **changes: object) -> GateSpec:
    base = GateSpec(
        model=DIGITS,
        calib_data=CALIB,
        eval_data=EVAL,
        labels=str(LABELS),
        budget=Budget.from_mapping({"top1_drop": 0.01}),
        cache_dir=cache,
        bisect=False,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_model_whose_batch_would_exceed_the_budget_is_evaluated_in_smaller_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    per_sample = activation_bytes(onnx.load(DIGITS), {"input": (1, 1, 8, 8)})
    assert per_sample is not None
    # a budget this small model exceeds at 32 samples, as a 320 px detector exceeds the real one
    monkeypatch.setattr(evaluate, "EVALUATION_ACTIVATION_BUDGET", 5 * per_sample + 1)
    pipeline = GatePipeline(_spec(tmp_path / "a"))
    verdict = pipeline.run()
    assert (pipeline.batch_size, pipeline.eval_batch_size) == (32, 5)
    assert pipeline.context.batch_size == 5
    assert any(note.startswith("evaluated in batches of 5 samples, not 32") for note in verdict.notes)
    monkeypatch.undo()
    # the same numbers as the gate asked to run in batches of 5, which says nothing about it
    asked = GatePipeline(_spec(tmp_path / "b", batch_size=5))
    same = asked.run()
    assert asked.eval_batch_size == 5
    assert (verdict.fp32, verdict.int8) == (same.fp32, same.int8)
    assert not any(note.startswith("evaluated in batches") for note in same.notes)
