"""Shapes, dtypes and batches for TensorRT engines, as plain data: optimisation-profile shapes, feeds made
ready for an engine, and feeds split along the batch axis when they exceed the profile. No TensorRT here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from ...errors import BackendError

Dim = int | str | None
ProfileShapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def check_batch_sizes(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise BackendError(
            "TensorRT profile batch sizes must satisfy 1 <= min <= opt <= max; got "
            f"min={min_batch}, opt={opt_batch}, max={max_batch}."
        )


def build_profile_shapes(
    input_shapes: Mapping[str, tuple[Dim, ...]], min_batch: int, opt_batch: int, max_batch: int
) -> dict[str, ProfileShapes]:
    """(min, opt, max) shapes per input: a dynamic axis 0 takes the batch sizes, static axes stay.

    A dynamic axis is a symbolic name, None or a negative size; only axis 0 may be dynamic, because an
    optimisation profile needs a range for every dynamic axis and only the batch range is known here.
    """
    check_batch_sizes(min_batch, opt_batch, max_batch)
    profiles: dict[str, ProfileShapes] = {}
    for name, shape in input_shapes.items():
        low: list[int] = []
        best: list[int] = []
        high: list[int] = []
        for axis, dim in enumerate(shape):
            if isinstance(dim, int) and dim >= 0:
                low.append(dim)
                best.append(dim)
                high.append(dim)
            elif axis == 0:
                low.append(min_batch)
                best.append(opt_batch)
                high.append(max_batch)
            else:
                raise BackendError(
                    f"input {name!r} has a dynamic axis {axis} ({_dim_text(dim)}); the TensorRT backend only "
                    f"varies the batch axis 0, so export the model with a fixed size for axis {axis}."
                )
        profiles[name] = (tuple(low), tuple(best), tuple(high))
    return profiles


def network_profile_shapes(
    network_shapes: Mapping[str, tuple[int, ...]],
    onnx_dims: Mapping[str, tuple[Dim, ...]],
    batch_sizes: tuple[int, int, int],
) -> dict[str, ProfileShapes]:
    """The optimisation profile of a parsed network: an entry for every input whose TensorRT shape has a -1.

    ``network_shapes`` are the network's input shapes as TensorRT reports them (-1 for a dynamic size), which
    decide what is dynamic; ``onnx_dims`` only name the dynamic sizes in messages. TensorRT refuses to build a
    network with a dynamic input and no profile, even when min = opt = max (``batch_size=1``).
    """
    shapes: dict[str, tuple[Dim, ...]] = {}
    for name, dims in network_shapes.items():
        if all(size >= 0 for size in dims):
            continue
        names = onnx_dims.get(name, ())
        shapes[name] = tuple(
            size if size >= 0 else (names[axis] if axis < len(names) else None)
            for axis, size in enumerate(dims)
        )
    return build_profile_shapes(shapes, *batch_sizes)


def prepare_feed(name: str, value: object, dtype: np.dtype[Any], *, what: str) -> np.ndarray:
    """``value`` as a C-contiguous array of the engine's ``dtype``, keeping its shape (a 0-d feed stays 0-d).

    Converting within a kind (float64 to float32, int64 to int32) or to a wider kind (int to float) is what a
    user means; float to int or bool, or anything to a narrower kind, would truncate silently and is refused.
    """
    array = np.asarray(value)
    if array.dtype != dtype and not np.can_cast(array.dtype, dtype, casting="same_kind"):
        raise BackendError(
            f"input {name!r} has dtype {array.dtype}, which the {what} cannot take as {dtype} without "
            f"changing its values' kind; pass {dtype} data."
        )
    return array.astype(dtype, order="C", copy=False)


def split_feeds(
    feeds: Mapping[str, np.ndarray], max_batch: Mapping[str, int], *, what: str
) -> list[dict[str, np.ndarray]]:
    """The feeds cut along axis 0 into batches the engine accepts; ``[feeds]`` when they already fit.

    ``max_batch`` holds, for each input with a dynamic batch axis, the largest axis-0 size its profile takes.
    Other inputs are passed whole to every piece.
    """
    batched = {name: feeds[name].shape[0] for name in max_batch if name in feeds and feeds[name].ndim >= 1}
    if not any(size > max_batch[name] for name, size in batched.items()):
        return [dict(feeds)]
    limit = min(max_batch[name] for name in batched)
    if len(set(batched.values())) != 1:
        listed = ", ".join(f"{name!r} has {size}" for name, size in sorted(batched.items()))
        raise BackendError(
            f"the {what} takes at most {limit} samples at a time and cannot split these feeds into batches, "
            f"because their batch sizes differ ({listed})."
        )
    total = next(iter(batched.values()))
    return [
        {name: value[start : start + limit] if name in batched else value for name, value in feeds.items()}
        for start in range(0, total, limit)
    ]


def join_outputs(
    pieces: Sequence[Mapping[str, np.ndarray]], batches: Sequence[int], names: Sequence[str], *, what: str
) -> dict[str, np.ndarray]:
    """The outputs of split batches joined along axis 0; refused when an output is not batched on axis 0."""
    if len(pieces) == 1:
        return {name: pieces[0][name] for name in names}
    joined: dict[str, np.ndarray] = {}
    for name in names:
        for piece, batch in zip(pieces, batches, strict=True):
            shape = piece[name].shape
            if not shape or shape[0] != batch:
                raise BackendError(
                    f"the {what} ran the feeds in batches of at most {max(batches)} samples, but output "
                    f"{name!r} has shape {list(shape)} for a batch of {batch}, so the pieces cannot be "
                    f"joined; pass at most {max(batches)} samples at a time."
                )
        joined[name] = np.concatenate([piece[name] for piece in pieces], axis=0)
    return joined


def onnx_input_dims(model: onnx.ModelProto) -> dict[str, tuple[Dim, ...]]:
    """Graph inputs (initializers excluded) with their dims: size, symbolic name or None."""
    initializers = {init.name for init in model.graph.initializer}
    dims: dict[str, tuple[Dim, ...]] = {}
    for value_info in model.graph.input:
        if value_info.name in initializers:
            continue
        shape: list[Dim] = []
        for dim in value_info.type.tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            else:
                shape.append(dim.dim_param or None)
        dims[value_info.name] = tuple(shape)
    return dims


def _dim_text(dim: Dim) -> str:
    if isinstance(dim, str):
        return f"symbolic size {dim!r}"
    return "unknown size" if dim is None else f"size {dim}"
