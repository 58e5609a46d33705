"""Run a model with chosen intermediate tensors exposed, batch by batch, into an accumulator: the loop
behind the diagnostics' activation ranges and NaN/Inf search, equalization's channel ranges and FP32
comparison, bias correction's channel means and the search's layer sensitivity. (Calibration's pass,
``calibrate.collect_statistics``, spreads its steps over inferences side by side instead, each with
statistics of its own, because its histograms merge exactly.)

Intermediate tensors become extra graph outputs of one ONNX Runtime session; tensors that are graph
inputs are read from the feeds. The session is released when the probe closes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TypeVar

import numpy as np
import onnx

from .backends.onnxruntime import OrtRunner
from .graph import add_graph_outputs

_Exposed = TypeVar("_Exposed", bound="ExposedModel")
#: One batch of named feeds.
Batch = Mapping[str, np.ndarray]
#: Receives each batch's feeds and the exposed tensors' values for that batch.
Accumulator = Callable[[Batch, Mapping[str, np.ndarray]], None]


class ExposedModel:
    """One session of ``model`` that returns ``tensors`` (graph inputs among them come from the feeds).

    ``precision`` names the model in errors; ``optimize`` False runs a Q/DQ model unfused (simulated
    quantization, what TensorRT computes). Tensors the graph neither produces nor takes as input are
    dropped when ``known_only`` is set, otherwise exposing them is ONNX Runtime's error to report.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        tensors: Sequence[str],
        *,
        precision: str = "fp32",
        optimize: bool = True,
        threads: int = 0,
        known_only: bool = False,
    ) -> None:
        graph_inputs = {vi.name for vi in model.graph.input}
        wanted = list(dict.fromkeys(tensors))
        if known_only:
            produced = {out for node in model.graph.node for out in node.output}
            wanted = [t for t in wanted if t in produced or t in graph_inputs]
        self.tensors: tuple[str, ...] = tuple(wanted)
        self._from_feeds = frozenset(t for t in wanted if t in graph_inputs)
        exposed = [t for t in wanted if t not in graph_inputs]
        self._runner: OrtRunner = OrtRunner(
            add_graph_outputs(model, exposed), precision=precision, optimize=optimize, threads=threads
        )

    def run(self, feeds: Batch) -> dict[str, np.ndarray]:
        """The exposed tensors' values for one batch."""
        outputs = self._runner.run(feeds)
        return {
            name: np.asarray(feeds[name]) if name in self._from_feeds else outputs[name]
            for name in self.tensors
        }

    def over(self, batches: Iterable[Batch], accumulate: Accumulator) -> int:
        """Run every batch into ``accumulate``; the number of samples seen (axis 0 of the first feed)."""
        samples = 0
        for feeds in batches:
            accumulate(feeds, self.run(feeds))
            samples += batch_samples(feeds)
        return samples

    def close(self) -> None:
        self._runner.close()

    def __enter__(self: _Exposed) -> _Exposed:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def probe(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    batches: Iterable[Batch],
    accumulate: Accumulator,
    *,
    precision: str = "fp32",
    optimize: bool = True,
    threads: int = 0,
) -> int:
    """One pass of ``model`` over ``batches`` with ``tensors`` exposed into ``accumulate``; returns the
    number of samples. The session lives for this pass only."""
    with ExposedModel(model, tensors, precision=precision, optimize=optimize, threads=threads) as exposed:
        return exposed.over(batches, accumulate)


def batch_samples(feeds: Batch) -> int:
    """Samples in one batch: axis 0 of its first feed (1 for a scalar feed)."""
    first = np.asarray(next(iter(feeds.values())))
    return int(first.shape[0]) if first.ndim else 1
