"""All the diagnostics for one gate, from its read-only context: the model-running ones on bounded subsets."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..backends.onnxruntime import OrtBackend, OrtRunner, device_text
from ..data import Dataset, Feeds, ModelFeeds, sample_count
from ..evaluate import select_output
from ..outputs import Source, StoredOutputs
from ..results import Comparison, Finding, MetricResult, sort_findings
from .datasets import (
    check_calibration_size,
    check_eval_set_size,
    check_preprocessing,
    check_shapes,
    input_channel_stats,
)
from .engines import check_cpu_fidelity, check_determinism, fidelity_of
from .limits import DIAGNOSTIC_SAMPLES, REPEAT_SAMPLES, SMALL_MODEL_BYTES
from .parity import check_fp32_parity, load_fp32_reference, reference_parity, run_outputs
from .ranges import ActivationProbe, check_clipping, check_distribution_shape

if TYPE_CHECKING:
    from ..context import GateContext


def session_threads(requested: int, model: onnx.ModelProto) -> int:
    """Threads of a diagnostic session: the gate's setting, else one for a small model (0: ORT's default)."""
    if requested:
        return requested
    weights = sum(len(init.raw_data) or 4 * len(init.float_data) for init in model.graph.initializer)
    return 1 if weights < SMALL_MODEL_BYTES else 0


def run_diagnostics(
    context: GateContext, comparison: Comparison, results: Sequence[MetricResult]
) -> tuple[Finding, ...]:
    """Every check that applies to the gate of ``context``; the model-running ones on at most
    :data:`DIAGNOSTIC_SAMPLES` samples of each data set."""
    return sort_findings([*result_diagnostics(context, comparison, results), *model_diagnostics(context)])


def result_diagnostics(
    context: GateContext, comparison: Comparison, results: Sequence[MetricResult]
) -> tuple[Finding, ...]:
    """The checks that read the results and the gate's settings only (they run no model)."""
    findings = [
        check_calibration_size(context.calibration_data.num_samples, context.min_calib_samples),
        check_eval_set_size(results, comparison),
    ]
    return tuple(f for f in findings if f is not None)


def model_diagnostics(context: GateContext) -> tuple[Finding, ...]:
    """The checks that depend on the model, the data, the plan and the backend but not on the budget: the
    ones that run models (a rerun that changes only the budget may reuse their findings)."""
    info = context.model.info
    batch_size = context.batch_size
    threads = session_threads(context.threads, context.model.proto)
    findings: list[Finding | None] = []
    held_out = context.held_out
    calib_subset = context.calibration_data.head(DIAGNOSTIC_SAMPLES)
    eval_subset = context.eval_data.head(DIAGNOSTIC_SAMPLES) if held_out else calib_subset
    if held_out:
        findings.append(check_shapes(info, context.calibration_data, context.eval_data))
        names = [tensor.name for tensor in info.inputs]
        calib_stats = input_channel_stats(calib_subset, names, batch_size)
        eval_stats = input_channel_stats(eval_subset, names, batch_size)
        for name in names:
            if name in calib_stats and name in eval_stats:
                findings.append(check_preprocessing(name, calib_stats[name], eval_stats[name]))

    quantized = context.default_quantized
    amax = {tensor: scale * 127.0 for tensor, scale in quantized.activation_scales.items()}
    if amax:
        # the FP32 model the Q/DQ model was made from (equalized when the plan says so) carries the amax
        source = context.fp32_model(context.plan.equalize)
        with ActivationProbe(source.proto, list(amax), threads=threads) as probe:
            calib_ranges = probe.measure(calib_subset.batches(batch_size), amax)
            findings.append(check_distribution_shape(calib_ranges, amax, samples=calib_subset.num_samples))
            if held_out:
                eval_ranges = probe.measure(eval_subset.batches(batch_size), amax)
                findings.append(
                    check_clipping(calib_ranges, eval_ranges, amax, samples=eval_subset.num_samples)
                )

    if context.fp32_reference is not None:
        fp32_runner = context.fp32_runner()
        reference = load_fp32_reference(
            context.fp32_reference, fp32_runner.output_names, context.eval_data.num_samples
        )
        findings.append(
            reference_parity(
                fp32_runner,
                context.eval_data,
                reference,
                batch_size=batch_size,
                source=str(context.fp32_reference),
            )
        )
    if context.backend.name != "onnxruntime":
        fp32_runner = context.fp32_runner()
        ort_fp32 = OrtRunner(context.model.proto, precision="fp32", optimize=True, threads=threads)
        names = list(ort_fp32.output_names)
        findings.append(
            check_fp32_parity(
                run_outputs(fp32_runner, eval_subset, batch_size, names),
                run_outputs(ort_fp32, eval_subset, batch_size, names),
                reference_name="ONNX Runtime's FP32 result",
            )
        )
    else:
        findings.append(_cpu_fidelity(context, eval_subset.head(REPEAT_SAMPLES), threads))
    if context.check_determinism:
        repeated_batches = list(eval_subset.head(REPEAT_SAMPLES).batches(batch_size))
        findings.append(check_determinism(context.int8_runner(), repeated_batches))
    return sort_findings(f for f in findings if f is not None)


def _cpu_fidelity(context: GateContext, repeated: Dataset, threads: int) -> Finding | None:
    """The other ONNX Runtime mode than the gate's own, built from the same Q/DQ model, against the gate's
    INT8 engine and the FP32 engine on ``repeated``: the evaluation's outputs of those two are reused when
    it kept them (the first samples of the evaluation set are ``repeated``'s)."""
    gate_is_fused = context.ort_mode == "fused"
    stored_fp32, stored_int8 = context.evaluation_outputs()
    own: Source = stored_int8 if stored_int8 is not None else context.int8_runner()
    fp32: Source = stored_fp32 if stored_fp32 is not None else context.fp32_runner()
    backend = OrtBackend(mode="simulated" if gate_is_fused else "fused", threads=threads)
    with backend.int8_runner(context.default_quantized.proto) as other:
        output = select_output(other, context.output)

        def values() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            start = 0
            for feeds in repeated.batches(context.batch_size):
                count = sample_count(feeds)
                mine, theirs, reference = (
                    _output_values(source, feeds, start, count, output, precision)
                    for source, precision in ((own, "INT8"), (other, "INT8"), (fp32, "FP32"))
                )
                yield (theirs, mine, reference) if gate_is_fused else (mine, theirs, reference)
                start += count

        fidelity = fidelity_of(values())
    return check_cpu_fidelity(fidelity, device=device_text())


def _output_values(
    source: Source, feeds: Feeds, start: int, count: int, output: str, precision: str
) -> np.ndarray:
    """``output`` over the evaluation samples ``start`` to ``start + count`` (``feeds``), samples on axis 0:
    read from stored outputs, or computed."""
    if isinstance(source, StoredOutputs):
        return source.batch(start, count, precision=precision)[output]
    value = source.run(feeds)[output]
    if isinstance(feeds, ModelFeeds) and feeds.layout is not None:
        return feeds.layout.output(output, value, feeds.samples, precision)
    return value
