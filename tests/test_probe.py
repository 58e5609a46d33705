"""Tests for pytest_int8gate.probe (a model run with tensors exposed, into an accumulator) and the
runners' lifetime (close(), ``with``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from planted import INPUT, OUTPUT, chain_model, chain_weights, forward, inputs

from pytest_int8gate.backends.onnxruntime import OrtBackend, OrtRunner
from pytest_int8gate.errors import BackendError
from pytest_int8gate.probe import ExposedModel, batch_samples, probe

WEIGHTS = chain_weights(3, channels=8)


def test_probe_streams_exposed_tensors_and_graph_inputs_into_the_accumulator() -> None:
    data = inputs(10, channels=8)[INPUT]
    batches = [{INPUT: data[:4]}, {INPUT: data[4:8]}, {INPUT: data[8:]}]  # uneven: 4 + 4 + 2
    seen: dict[str, list[np.ndarray]] = {}

    def accumulate(feeds: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray]) -> None:
        assert set(values) == {INPUT, "relu0_out", OUTPUT}
        for name, value in values.items():
            seen.setdefault(name, []).append(value)

    samples = probe(chain_model(WEIGHTS), [INPUT, "relu0_out", OUTPUT], batches, accumulate)
    assert samples == 10
    expected = forward(WEIGHTS, data)
    np.testing.assert_array_equal(np.concatenate(seen[INPUT]), data)  # a graph input comes from the feeds
    np.testing.assert_allclose(np.concatenate(seen["relu0_out"]), expected[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(seen[OUTPUT]), expected[-1], rtol=1e-5, atol=1e-5)


def test_unknown_tensors_are_dropped_only_when_asked() -> None:
    model = chain_model(WEIGHTS)
    with ExposedModel(model, ["relu1_out", "no_such_tensor"], known_only=True) as exposed:
        assert exposed.tensors == ("relu1_out",)
        values = exposed.run(inputs(2, channels=8))
        assert set(values) == {"relu1_out"}
    with pytest.raises(BackendError, match="could not build"):
        ExposedModel(model, ["no_such_tensor"])


def test_a_closed_probe_or_runner_refuses_to_run_and_closes_again_quietly() -> None:
    feeds = inputs(2, channels=8)
    exposed = ExposedModel(chain_model(WEIGHTS), ["relu0_out"])
    exposed.close()
    exposed.close()
    with pytest.raises(BackendError, match="closed"):
        exposed.run(feeds)
    with OrtBackend().int8_runner(chain_model(WEIGHTS)) as runner:
        assert set(runner.run(feeds)) == {OUTPUT}
    with pytest.raises(BackendError, match="runner was closed"):
        runner.run(feeds)
    runner.close()


def test_leaving_a_with_block_closes_the_runner_even_on_an_error() -> None:
    with (
        pytest.raises(RuntimeError),
        OrtRunner(chain_model(WEIGHTS), precision="fp32", optimize=True) as runner,
    ):
        raise RuntimeError("the caller's own failure")
    with pytest.raises(BackendError, match="fp32 runner was closed"):
        runner.run(inputs(1, channels=8))


def test_batch_samples_counts_axis_zero_of_the_first_feed() -> None:
    assert batch_samples({"a": np.zeros((5, 3)), "b": np.zeros((2,))}) == 5
    assert batch_samples({"a": np.float32(1.0)}) == 1
