"""NaN and Inf: the first tensor, in graph order, where either appears, for the FP32 or the INT8 model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..data import Feeds
from ..errors import NonFiniteOutputError
from ..probe import ExposedModel, batch_samples
from ..results import Finding, NonFiniteTensorError

if TYPE_CHECKING:
    from ..context import GateContext


_FLOAT_TYPES = (
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
)


def float_node_outputs(model: onnx.ModelProto) -> tuple[str, ...]:
    """Every float tensor a node of ``model`` produces, in node order (``model`` with inferred types)."""
    graph = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.value_info, *graph.output]}
    return tuple(out for node in graph.node for out in node.output if out and types.get(out) in _FLOAT_TYPES)


def exposed_runner(
    model: onnx.ModelProto, *, precision: str, optimize: bool, threads: int = 0
) -> ExposedModel:
    """A session of ``model`` that returns every float tensor a node produces (not the int8 ones)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model shape inference cannot handle: the declared types are all there is
        inferred = model
    return ExposedModel(
        inferred, float_node_outputs(inferred), precision=precision, optimize=optimize, threads=threads
    )


def first_nonfinite(
    model: onnx.ModelProto, outputs: Mapping[str, np.ndarray]
) -> tuple[onnx.NodeProto, str] | None:
    """The first node (in graph order) that writes NaN/Inf, and that tensor, from a run's ``outputs``."""
    for node in model.graph.node:
        for name in node.output:
            value = outputs.get(name)
            if value is not None and value.dtype.kind == "f" and not np.isfinite(value).all():
                return node, name
    return None


def locate_nonfinite(
    models: Sequence[tuple[str, onnx.ModelProto, bool]],
    batches: Iterable[Feeds],
    *,
    threads: int = 0,
) -> Finding | None:
    """Failure naming the first tensor where NaN/Inf appears: ``models`` are (precision, model, optimize),
    tried on each batch in order (as evaluation runs them) with every intermediate tensor exposed."""
    with contextlib.ExitStack() as sessions:
        exposed = [
            (
                p,
                m,
                sessions.enter_context(exposed_runner(m, precision=p.lower(), optimize=o, threads=threads)),
            )
            for p, m, o in models
        ]
        start = 0
        for feeds in batches:
            for precision, model, session in exposed:
                outputs = session.run(feeds)
                found = first_nonfinite(model, outputs)
                if found is not None:
                    return _nonfinite_finding(precision, found[0], found[1], outputs[found[1]], start)
            start += batch_samples(feeds)
    return None


def _nonfinite_finding(
    precision: str, node: onnx.NodeProto, tensor: str, value: np.ndarray, start: int
) -> Finding:
    bad = ~np.isfinite(value)
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    kind = "NaN" if np.isnan(value[index]) else "Inf"
    sample = start + index[0] if value.ndim else start
    if precision == "FP32":
        fix = (
            "The FP32 model itself is not finite on this input, so INT8 cannot be judged: check the input's "
            f"preprocessing and what {node.op_type} receives (log/sqrt of values <= 0, division by zero, exp "
            "overflow)."
        )
    else:
        fix = (
            f"Only the INT8 model produces it: quantization sends {node.op_type} an input where it is "
            "undefined (e.g. a small value rounded to 0 before a division or log); keep the quantized layer "
            f"that feeds {node.name!r} in float (`exclude:`) or give it a calibrator with a finer range."
        )
    return Finding(
        "non-finite",
        "failure",
        f"the {precision} model produces {kind} first in tensor {tensor!r} (output of node {node.name!r}, "
        f"{node.op_type}) at evaluation sample {sample}, the first node in graph order to produce it.",
        fix,
        {
            "precision": precision,
            "tensor": tensor,
            "node": node.name,
            "op": node.op_type,
            "kind": kind,
            "sample": sample,
        },
    )


def diagnose_nonfinite(context: GateContext, error: NonFiniteOutputError) -> NonFiniteOutputError:
    """``error`` with the finding that names the first NaN/Inf tensor (``error`` itself if none is found)."""
    models = [
        ("FP32", context.model.proto, True),
        ("INT8", context.default_quantized.proto, False),
    ]
    finding = locate_nonfinite(models, context.eval_data.batches(context.batch_size), threads=context.threads)
    if finding is None:
        return error
    return NonFiniteTensorError(f"{error} {finding.message[0].upper()}{finding.message[1:]}", finding)
