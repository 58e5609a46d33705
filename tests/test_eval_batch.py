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
from pytest_int8gate.gate import Budget, judge
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


def _close_calls(samples: int = 64) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Logits of 4 classes whose first sample happens to lie in [0, 1] (not a softmax), and INT8 logits
    that swap the two leading classes of every other sample (both stay above 0.5: values barely move)."""
    rng = np.random.default_rng(7)
    fp32 = rng.uniform(-3.0, 0.0, (samples, 4)).astype(np.float32)
    fp32[:, 0], fp32[:, 1] = 2.0, 1.99
    fp32[0] = [0.1, 0.2, 0.3, 0.45]
    int8 = fp32.copy()
    int8[1::2, 0], int8[1::2, 1] = 1.99, 2.0
    return {"logits": fp32}, {"logits": int8}


@pytest.mark.parametrize("batch", [1, 3, 32, 64])
def test_an_output_is_judged_as_the_same_kind_whatever_the_evaluation_batch(batch: int) -> None:
    """A batch sized down by memory must not change what an output is taken for: the kind is read from
    the same first samples, so class scores keep their top-1 agreement (half the decisions flip here)."""
    fp32, int8 = _close_calls()
    accumulator = evaluate.GateAccumulator(("logits",), labels=False, kpi=False)
    for start in range(0, 64, batch):
        accumulator.add(
            {k: v[start : start + batch] for k, v in fp32.items()},
            {k: v[start : start + batch] for k, v in int8.items()},
            None,
        )
    comparison = accumulator.result(None)
    (output,) = comparison.outputs
    assert output.profile is not None and output.profile.kind.name == "CLASS_SCORES"
    assert output.int8["top1_agreement"] == 0.5 and output.num_samples == 64
    assert not all(result.passed for result in judge(Budget(), comparison))


def test_outputs_too_large_to_hold_are_classified_from_fewer_first_samples_whatever_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Holding KIND_SAMPLES samples of huge outputs (segmentation maps) would undo a batch sized by memory:
    the kind is then read from as many first samples as fit, a count set by the output's size alone."""
    fp32, int8 = _close_calls()
    fp32["logits"][:5] = [0.1, 0.2, 0.3, 0.45]  # the first five samples look like scores in [0, 1]
    per_sample = fp32["logits"][0].nbytes + int8["logits"][0].nbytes
    monkeypatch.setattr(evaluate, "KIND_HOLD_BYTES", 5 * per_sample)
    assert evaluate.kind_samples(per_sample) == 5 and evaluate.kind_samples(0) == evaluate.KIND_SAMPLES
    kinds = set()
    for batch in (1, 2, 64):
        accumulator = evaluate.GateAccumulator(("logits",), labels=False, kpi=False)
        for start in range(0, 64, batch):
            accumulator.add(
                {k: v[start : start + batch] for k, v in fp32.items()},
                {k: v[start : start + batch] for k, v in int8.items()},
                None,
            )
            if start + batch >= 5:  # nothing is held beyond the samples the kind is read from
                assert accumulator.accumulators is not None
        (output,) = accumulator.result(None).outputs
        assert output.num_samples == 64 and output.profile is not None
        kinds.add(output.profile.kind.name)
    assert kinds == {"SCORES"}
