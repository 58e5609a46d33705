"""Tests for pytest_int8gate.context: the read-only gate context and the plan evaluator that counts its
evaluations and closes the engines it builds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
import pytest
from planted import chain_weights, inputs, save_chain

from pytest_int8gate.backends.base import Runner
from pytest_int8gate.backends.onnxruntime import OrtBackend
from pytest_int8gate.context import PlanEvaluator
from pytest_int8gate.errors import BackendError
from pytest_int8gate.gate import Budget
from pytest_int8gate.pipeline import GatePipeline, GateSpec


class RecordingBackend(OrtBackend):
    """ONNX Runtime, remembering every INT8 runner it builds."""

    def __init__(self) -> None:
        super().__init__()
        self.built: list[Runner] = []

    def int8_runner(self, model: onnx.ModelProto) -> Runner:  # type: ignore[override]
        runner = super().int8_runner(model)
        self.built.append(runner)
        return runner


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> GatePipeline:
    path = save_chain(chain_weights(3, channels=8), tmp_path_factory.mktemp("chain") / "chain3.onnx")
    return GatePipeline(
        GateSpec(model=path, calib_data=inputs(48, channels=8), budget=Budget({"cosine": 0.9}))
    )


def test_the_evaluator_counts_every_evaluation_full_set_and_subset(pipeline: GatePipeline) -> None:
    evaluator = PlanEvaluator(pipeline.context)
    evaluator.compare()
    subset = evaluator.subset(16)
    assert subset.size == 16 and evaluator.evaluations == 1  # the FP32 reference is not an INT8 evaluation
    plan = dataclasses.replace(pipeline.plan, exclude=frozenset({"fc1"}))
    subset.judge(plan)
    evaluator.compare(plan)
    assert evaluator.evaluations == 3


def test_engines_built_for_a_plan_are_closed_after_its_evaluation(pipeline: GatePipeline) -> None:
    backend = RecordingBackend()
    context = dataclasses.replace(pipeline.context, backend=backend)
    evaluator = PlanEvaluator(context)
    plan = dataclasses.replace(pipeline.plan, exclude=frozenset({"fc0"}))
    evaluator.subset(8).compare(plan)
    evaluator.compare(plan)
    assert len(backend.built) == 2
    feeds = inputs(1, channels=8)
    for runner in backend.built:
        with pytest.raises(BackendError, match="closed"):
            runner.run(feeds)
    # the gate's own engine is kept: the verdict describes it and later evaluations reuse it
    evaluator.compare()
    assert len(backend.built) == 2
    assert context.int8_runner().run(feeds)


def test_the_context_cannot_be_changed(pipeline: GatePipeline) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        pipeline.context.batch_size = 1  # type: ignore[misc]


def test_the_verdict_counts_what_the_pipeline_evaluator_counted(tmp_path: Path) -> None:
    path = save_chain(chain_weights(2, channels=8), tmp_path / "chain2.onnx")
    gate = GatePipeline(
        GateSpec(model=path, calib_data=inputs(32, channels=8), budget=Budget({"cosine": 0.5}))
    )
    verdict = gate.run()
    assert verdict.passed and verdict.bisection is None
    assert verdict.evaluations == gate.evaluations == gate.evaluator.evaluations == 1


def test_closing_the_pipeline_releases_the_engines_it_built(tmp_path: Path) -> None:
    path = save_chain(chain_weights(2, channels=8), tmp_path / "chain2.onnx")
    spec = GateSpec(model=path, calib_data=inputs(32, channels=8), budget=Budget({"cosine": 0.5}))
    GatePipeline(spec).close()  # nothing built: nothing to release
    with GatePipeline(spec) as gate:
        gate.run()
        engines = [gate.fp32_runner, gate.default_int8_runner]
    gate.close()
    for engine in engines:
        with pytest.raises(BackendError, match="closed"):
            engine.run(inputs(1, channels=8))
