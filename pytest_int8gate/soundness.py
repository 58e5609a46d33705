"""Whether a gate measured something meaningful: data with more than one distinct sample, labels that belong
to the model, an INT8 model that quantized something, metrics that can see the error of their output.

Each check fails closed (an error) where a verdict would mean nothing, and is a warning finding where the
verdict stands but deserves a second look. Plain functions over the gate's data, comparison and Q/DQ model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from .budget import Budget
from .data import Dataset
from .errors import CoverageError, DataError
from .gate import uninformative_metrics
from .graph import COMPUTE_OPS, LoadedModel
from .output_kinds import OutputKind
from .quantize import QuantizedModel
from .results import Comparison, Finding, MetricResult, OutputComparison

#: Fewer distinct samples than this share of all samples is a warning (data mostly made of copies).
DUPLICATE_SHARE = 0.5
#: Fewer quantized layers than this share of the quantizable ones is a warning shown on the terminal.
LOW_COVERAGE = 0.5
#: An output whose spread across samples is at most this share of its common offset does not vary with the
#: data: a comparison on it cannot tell a working INT8 model from a broken one.
CONSTANT_SHARE = 1e-6
#: Subgraph-holding ops whose bodies this tool does not quantize.
CONTROL_FLOW_OPS = ("If", "Loop", "Scan")


def check_samples(data: Dataset, role: str) -> None:
    """An evaluation set with one distinct sample (however many copies) measures nothing: an error."""
    if role == "evaluation" and data.distinct_samples == 1:
        copies = f" ({data.num_samples} copies of it)" if data.num_samples > 1 else ""
        raise DataError(
            f"{data.source}: the {role} data holds 1 distinct sample{copies}; a gate judged on one sample "
            "says nothing about the model. Give varied samples, held out from the calibration data."
        )


def check_coverage(model: LoadedModel, quantized: QuantizedModel) -> None:
    """A Q/DQ model with no quantized layer is an error that says why nothing was quantized."""
    if quantized.quantized_layers:
        return
    quantizable = len(model.info.layers)
    reasons = [f"{layer}: {why}" for layer, why in list(quantized.skipped.items())[:3]]
    if len(quantized.skipped) > 3:
        reasons.append(f"and {len(quantized.skipped) - 3} more")
    nested = nested_compute_layers(model.proto)
    if nested:
        places = ", ".join(sorted({where for _, where in nested}))
        reasons.append(
            f"{len(nested)} {'/'.join(sorted({op for op, _ in nested}))} layer(s) lie inside the "
            f"subgraphs of {places}, which this tool does not quantize"
        )
    if not quantizable and not nested:
        reasons.append(f"the model has no {', '.join(COMPUTE_OPS)} layer")
    raise CoverageError(
        f"{model.info.source}: nothing was quantized: 0 of {quantizable} quantizable layers run in INT8 "
        f"({'; '.join(reasons)}); a gate that quantized nothing has nothing to judge."
    )


def nested_compute_layers(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(op type, control-flow node) of every Conv/ConvTranspose/Gemm/MatMul inside If/Loop/Scan bodies."""
    found: list[tuple[str, str]] = []

    def walk(graph: onnx.GraphProto, owner: str | None) -> None:
        for node in graph.node:
            if owner is not None and node.op_type in COMPUTE_OPS:
                found.append((node.op_type, owner))
            for attribute in node.attribute:
                where = owner or f"{node.op_type} {node.name or '(unnamed)'}"
                if attribute.type == onnx.AttributeProto.GRAPH:
                    walk(attribute.g, where)
                for sub in attribute.graphs:
                    walk(sub, where)

    walk(model.graph, None)
    return found


def constant_outputs(comparison: Comparison) -> tuple[OutputComparison, ...]:
    """The gated outputs whose FP32 values are the same for every evaluation sample."""
    return tuple(
        output
        for output in comparison.outputs
        if output.profile is not None and output.profile.spread <= CONSTANT_SHARE * output.profile.offset
    )


def _constant_text(output: OutputComparison) -> str:
    assert output.profile is not None
    return f"{output.output_name!r} at RMS {output.profile.offset:.3g}"


def check_outputs_vary(comparison: Comparison) -> None:
    """When no gated output's FP32 values vary across the evaluation samples (a saturated or input-independent
    output, data the model does not respond to), INT8 agreeing with them proves nothing: an error."""
    constant = constant_outputs(comparison)
    if not constant or len(constant) < len(comparison.outputs):
        return
    which = ", ".join(_constant_text(output) for output in constant)
    raise DataError(
        f"the FP32 model gives the same values for all {comparison.num_samples} evaluation samples on every "
        f"gated output ({which}), so the comparison cannot tell a working INT8 model from a broken one; "
        "check that the evaluation data is what the model expects (preprocessing, scale, layout) and that"
        " the gated outputs depend on the input."
    )


def check_labels_fit(comparison: Comparison, labels: object) -> None:
    """Labels on which the FP32 model scores at or below chance are not this model's labels: an error."""
    if labels is None:
        return
    for output in comparison.outputs:
        if "top1" not in output.fp32 or output.profile is None:
            continue
        classes = output.profile.elements
        chance = 1.0 / classes
        if output.fp32["top1"] <= chance:
            raise DataError(
                f"these labels do not look like this model's: the FP32 model's top-1 on them is "
                f"{output.fp32['top1']:.3f} on output {output.output_name!r}, at or below chance "
                f"(1/{classes} = {chance:.3f}); check the label file, its order against the evaluation "
                "data, and the class index mapping."
            )


def soundness_findings(
    budget: Budget,
    comparison: Comparison,
    results: tuple[MetricResult, ...],
    calibration: Dataset,
    evaluation: Dataset,
    quantized: QuantizedModel,
) -> tuple[Finding, ...]:
    """Warnings on a verdict that stands: duplicated data, metrics blind to their output, a budget key
    loosened by a more specific source, few layers in INT8."""
    findings: list[Finding] = []
    for data, role in ((calibration, "calibration"), (evaluation, "evaluation")):
        if data.distinct_samples and data.distinct_samples < DUPLICATE_SHARE * data.num_samples:
            findings.append(
                Finding(
                    "duplicate-samples",
                    "warning",
                    f"{data.source}: the {role} data holds {data.distinct_samples} distinct samples among "
                    f"{data.num_samples}; copies add no evidence.",
                    f"Give distinct {role} samples.",
                    {"distinct": data.distinct_samples, "samples": data.num_samples, "role": role},
                )
            )
    for note in uninformative_metrics(results, comparison):
        findings.append(
            Finding(
                "uninformative-metric",
                "warning",
                note,
                "Judge this output on a metric that sees its error: rel_rmse (error relative to the output's "
                "spread across samples) for values, top1_agreement or decision_agreement for decisions; "
                "with no budget configured the gate picks these by output kind.",
            )
        )
    for note in budget.loosened:
        findings.append(
            Finding(
                "budget-loosened",
                "warning",
                f"budget {note}.",
                "Check that the looser limit is intended; the more specific source wins (ini < "
                "--int8-budget < manifest < marker < int8_gate.check).",
            )
        )
    constant = constant_outputs(comparison)
    if constant and len(constant) < len(comparison.outputs):
        findings.append(
            Finding(
                "constant-output",
                "warning",
                f"{'output' if len(constant) == 1 else 'outputs'} "
                f"{', '.join(_constant_text(output) for output in constant)} "
                f"{'is' if len(constant) == 1 else 'are'} the same for every evaluation sample in FP32, so "
                f"{'its' if len(constant) == 1 else 'their'} metrics measure nothing; the verdict rests on "
                "the other outputs.",
                "Leave input-independent outputs (anchors, constants) as they are; if the output should "
                "vary, check the evaluation data and its preprocessing.",
                {"outputs": [output.output_name for output in constant]},
            )
        )
    findings.extend(coverage_findings(quantized))
    return tuple(findings)


def coverage_findings(quantized: QuantizedModel) -> Iterable[Finding]:
    coverage = quantized.coverage
    done, total = len(quantized.quantized_layers), max(coverage.quantizable, len(quantized.quantized_layers))
    share = coverage.int8_mac_share
    if (total and done < LOW_COVERAGE * total) or (coverage.total_macs and share < LOW_COVERAGE):
        yield Finding(
            "low-coverage",
            "warning",
            f"only {coverage.summary()}; the verdict says little about the rest, which runs in float.",
            "See the notes for why each layer is not quantized.",
            coverage.as_dict(),
        )


def output_summary(output: OutputComparison) -> Mapping[str, object]:
    """One gated output as the verdict records it: name, kind, and what was measured on it."""
    kind = output.profile.kind if output.profile is not None else OutputKind.DENSE
    return {
        "name": output.output_name,
        "kind": kind.value,
        "labelled": output.labelled,
        "fp32": dict(output.fp32),
        "int8": {key: float(np.float64(value)) for key, value in output.int8.items()},
    }
