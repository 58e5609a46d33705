"""Load and validate an ONNX model, prepare it for quantization, and list its quantizable layers.

Preparation makes real exports safe to quantize: nodes get stable unique names (ONNX node names are
what TensorRT calls its layers), models below opset 13 are converted (per-channel Q/DQ needs 13),
and weights that arrive as ``Constant`` nodes are folded into initializers so that per-channel weight
quantization sees them as weights.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .batchnorm import fold_batchnorms
from .errors import ModelError, bounded_repr, bounded_text

#: Ops whose inputs get Q/DQ; residual ``Add`` nodes are added by :func:`quantizable_layers`.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Ops that TensorRT fuses with a following residual Add ("Conv + Add" fusion).
RESIDUAL_PRODUCERS = ("Conv", "ConvTranspose")
MIN_OPSET = 13
#: A model is held as one protobuf message, which cannot exceed 2 GiB.
PROTOBUF_LIMIT = 2**31 - 1

Dim = int | str | None


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, numpy dtype and shape (int, symbolic name or None per axis)."""

    name: str
    dtype: np.dtype[np.generic]
    shape: tuple[Dim, ...] | None

    def shape_text(self) -> str:
        if self.shape is None:
            return "unknown"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class Layer:
    """A quantizable node, in topological order; ``name`` is the ONNX node name (= TensorRT layer)."""

    index: int
    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class ModelInfo:
    """What the other stages need to know about a prepared model."""

    source: str
    model_hash: str
    opset: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    layers: tuple[Layer, ...]
    notes: tuple[str, ...]

    def input(self, name: str) -> TensorInfo:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise KeyError(name)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


@dataclass(frozen=True)
class LoadedModel:
    """A prepared model proto and its description."""

    proto: onnx.ModelProto
    info: ModelInfo


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Read, validate and prepare the ONNX model at ``path``; raise :class:`ModelError` if unusable.

    The file is validated by path (onnx's checker reads external data itself, so a model over protobuf's
    2 GiB is checked, not called invalid); external data is checked to be inside the model's folder, and
    its size against :data:`PROTOBUF_LIMIT`, before any of it is read.
    """
    model_path = Path(path)
    if not model_path.is_file():
        raise ModelError(f"{model_path}: ONNX model file not found.")
    data = model_path.read_bytes()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise ModelError(
            f"{model_path}: not a readable ONNX model ({type(exc).__name__}: {bounded_text(str(exc))})."
        ) from exc
    if not proto.graph.node:
        raise ModelError(f"{model_path}: the ONNX graph has no nodes (empty or corrupt file).")
    digest = hashlib.sha256(data)
    base_dir = model_path.resolve().parent
    locations = _external_locations(proto)
    targets = [_external_file(model_path, base_dir, location) for location in locations]
    _check_model(proto, model_path, str(model_path))
    total = len(data) + _external_bytes(proto, dict(zip(locations, targets, strict=True)))
    if total > PROTOBUF_LIMIT:
        raise ModelError(
            f"{model_path}: a valid model, but {_size_text(total)} with its external data, and this "
            f"version holds each model as one protobuf, which cannot exceed {_size_text(PROTOBUF_LIMIT)}; "
            "models this large are not supported yet."
        )
    for location, target in zip(locations, targets, strict=True):
        digest.update(location.encode())
        digest.update(target.read_bytes())
    if locations:
        try:
            onnx.load_external_data_for_model(proto, str(base_dir))
        except Exception as exc:  # offsets/lengths past the file's end and the like
            raise ModelError(
                f"{model_path}: cannot read its external data ({bounded_text(str(exc))})."
            ) from exc
    return prepare_model(proto, source=str(model_path), content_hash=digest.hexdigest(), checked=True)


def _size_text(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**28 else f"{count} bytes"


def _external_file(model_path: Path, base_dir: Path, location: str) -> Path:
    """The file an external-data ``location`` names, refused unless it is a file in the model's folder."""
    shown = bounded_repr(location)
    if "\0" in location:
        raise ModelError(f"{model_path}: external data location {shown} holds a NUL byte; refused.")
    try:
        target = (base_dir / location).resolve()
        if not target.is_relative_to(base_dir):
            raise ModelError(
                f"{model_path}: external data file {shown} lies outside the model's folder; refused."
            )
        if not target.is_file():
            raise ModelError(f"{model_path}: external data file {shown} is missing.")
    except OSError as exc:  # a name longer than the file system allows, a loop of links...
        raise ModelError(
            f"{model_path}: external data location {shown} ({len(location)} characters) cannot be used "
            f"({bounded_text(exc.strerror or str(exc))})."
        ) from exc
    return target


def _external_bytes(proto: onnx.ModelProto, files: dict[str, Path]) -> int:
    """Bytes the model's external tensors will occupy once read (``length``, else the rest of the file)."""
    total = 0
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        target = files.get(entries.get("location", ""))
        size = target.stat().st_size if target is not None else 0
        try:
            offset = int(entries.get("offset", "0"))
            length = int(entries["length"]) if "length" in entries else size - offset
        except ValueError:
            length = size  # onnx refuses it when it reads the data, with its own message
        total += max(min(length, size), 0)
    return total


def _external_locations(proto: onnx.ModelProto) -> list[str]:
    """Every external-data file the model names: initializers and tensor attributes (``Constant``), in
    the main graph and in every subgraph; all of them are checked before anything is read."""
    locations = []
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in locations:
                    locations.append(entry.value)
    return locations


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)
            for sparse in attr.sparse_tensors:
                yield from (sparse.values, sparse.indices)
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for subgraph in attr.graphs:
                yield from _all_tensors(subgraph)


def model_hash(proto: onnx.ModelProto) -> str:
    """Content hash of an in-memory model (files are hashed from their bytes by :func:`load_model`)."""
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def prepare_model(
    proto: onnx.ModelProto,
    *,
    source: str = "<in-memory model>",
    content_hash: str | None = None,
    checked: bool = False,
    fold_batchnorm: bool = True,
) -> LoadedModel:
    """Validate ``proto`` (unless ``checked``: :func:`load_model` checks files by path) and return a
    prepared copy with its :class:`ModelInfo` (``fold_batchnorm=False`` keeps BatchNormalization nodes: a
    model derived from a Q/DQ model keeps that model's node and tensor names)."""
    digest = content_hash or model_hash(proto)
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    notes: list[str] = []
    if not checked:
        _check_model(model, source, model)

    opset = _default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ModelError(
            f"{source}: opset {opset} is newer than the newest this onnx {onnx.__version__} knows "
            f"({newest}); re-export the model at a released opset."
        )
    if opset < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:
            raise ModelError(
                f"{source}: opset {opset} is below {MIN_OPSET} (needed for per-channel Q/DQ) and the "
                f"automatic conversion failed ({_first_line(exc)}); re-export the model at opset >= "
                f"{MIN_OPSET}."
            ) from exc
        notes.append(f"converted from opset {opset} to {MIN_OPSET}")
        opset = MIN_OPSET

    folded = fold_constant_nodes(model.graph)
    if folded:
        notes.append(f"folded {folded} Constant node(s) into initializers")
    folded_bn = fold_batchnorms(model.graph) if fold_batchnorm else []
    if folded_bn:
        notes.append(f"folded {len(folded_bn)} BatchNormalization node(s) into the preceding layer")
    renamed = name_nodes(model.graph)
    if renamed:
        notes.append(f"named {renamed} unnamed or duplicate node(s)")
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # custom ops: shapes stay unknown, quantization does not need them
        notes.append(f"shape inference incomplete: {_first_line(exc)}")

    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(_tensor_info(vi) for vi in model.graph.input if vi.name not in initializers)
    if not inputs:
        raise ModelError(f"{source}: the model has no inputs to feed.")
    outputs = tuple(_tensor_info(vi) for vi in model.graph.output)
    info = ModelInfo(
        source=source,
        model_hash=digest,
        opset=opset,
        inputs=inputs,
        outputs=outputs,
        layers=quantizable_layers(model.graph),
        notes=tuple(notes),
    )
    return LoadedModel(proto=model, info=info)


def _first_line(exc: BaseException) -> str:
    """Another library's message on one line, whole but bounded (onnx's checker names the node on its
    second line)."""
    return bounded_text(str(exc)) or type(exc).__name__


def _check_model(proto: onnx.ModelProto, source: str | Path, checked: onnx.ModelProto | str) -> None:
    """onnx's checker on ``checked`` (a proto, or a file path that lets it read external data)."""
    try:
        onnx.checker.check_model(checked)
    except Exception as exc:
        cycle = graph_cycle(proto.graph)
        found = f"the graph has a cycle ({' -> '.join(cycle)}); " if cycle else ""
        raise ModelError(f"{source}: invalid ONNX model: {found}{_first_line(exc)}") from exc


def graph_cycle(graph: onnx.GraphProto) -> list[str] | None:
    """Node names along a cycle of the top-level graph in data-flow order (the first node repeated at
    the end), or None; iterative, so a long chain cannot exhaust the recursion limit."""
    producers = {out: index for index, node in enumerate(graph.node) for out in node.output if out}
    feeding = [[producers[i] for i in node.input if i in producers] for node in graph.node]
    state = [0] * len(graph.node)  # 0 new, 1 on the current path, 2 done
    for root in range(len(graph.node)):
        if state[root]:
            continue
        state[root] = 1
        path = [root]
        stack = [iter(feeding[root])]
        while stack:
            following = next(stack[-1], None)
            if following is None:
                stack.pop()
                state[path.pop()] = 2
            elif state[following] == 1:
                loop = [*path[path.index(following) :], following]
                return [graph.node[i].name or f"#{i} {graph.node[i].op_type}" for i in reversed(loop)]
            elif state[following] == 0:
                state[following] = 1
                path.append(following)
                stack.append(iter(feeding[following]))
    return None


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def fold_constant_nodes(graph: onnx.GraphProto) -> int:
    """Turn top-level ``Constant`` nodes into initializers; return how many were folded."""
    kept = []
    folded = 0
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            array = _constant_value(node)
            if array is not None:
                graph.initializer.append(numpy_helper.from_array(array, name=node.output[0]))
                folded += 1
                continue
        kept.append(node)
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
    return folded


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return np.asarray(numpy_helper.to_array(attr.t))
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None  # sparse or string constants stay nodes


def name_nodes(graph: onnx.GraphProto) -> int:
    """Give unnamed or duplicate-named nodes deterministic unique names; return how many changed.

    A name the exporter gave is the user's handle on a layer (``exclude:``), so the first node with each
    explicit name keeps it and generated names avoid every explicit one.
    """
    taken = {node.name for node in graph.node if node.name}
    kept: set[str] = set()
    changed = 0
    for index, node in enumerate(graph.node):
        if node.name and node.name not in kept:
            kept.add(node.name)
            continue
        base = node.name or f"{node.op_type}_{index}"
        candidate, suffix = base, 1
        while candidate in taken:
            candidate = f"{base}__{suffix}"
            suffix += 1
        node.name = candidate
        taken.add(candidate)
        kept.add(candidate)
        changed += 1
    return changed


def _tensor_info(value_info: onnx.ValueInfoProto) -> TensorInfo:
    tensor_type = value_info.type.tensor_type
    dtype = (
        np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if tensor_type.elem_type
        else np.dtype(np.float32)
    )
    shape: tuple[Dim, ...] | None = None
    if tensor_type.HasField("shape"):
        dims: list[Dim] = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return TensorInfo(name=value_info.name, dtype=dtype, shape=shape)


def quantizable_layers(graph: onnx.GraphProto) -> tuple[Layer, ...]:
    """Compute ops with at least one float activation input, plus residual Adds after a Conv."""
    initializers = {init.name for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    layers: list[Layer] = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in COMPUTE_OPS:
            data_inputs = [i for i in node.input[:2] if i]
            if not any(i not in initializers for i in data_inputs):
                continue  # constant-only op: nothing to calibrate
        elif node.op_type == "Add" and is_residual_add(node, producers, initializers):
            pass
        else:
            continue
        layers.append(
            Layer(
                index=len(layers),
                name=node.name,
                op_type=node.op_type,
                inputs=tuple(node.input),
                outputs=tuple(node.output),
            )
        )
    return tuple(layers)


def is_residual_add(
    node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], initializers: set[str]
) -> bool:
    """An Add of two activations where one comes from a Conv: TensorRT fuses it into that Conv."""
    if len(node.input) != 2 or any(i in initializers or not i for i in node.input):
        return False
    return any(i in producers and producers[i].op_type in RESIDUAL_PRODUCERS for i in node.input)


def graph_consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it (top-level graph only)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(node)
    return consumers


def add_graph_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the tensors ``names`` (to read intermediate activations)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    known = {vi.name: vi for vi in exposed.graph.value_info}
    if any(name not in present and name not in known for name in names):
        # tensors of nodes added after the model was prepared (the search's probe twins): their types,
        # which are float16 in a float16 model, come from inference
        try:
            inferred = onnx.shape_inference.infer_shapes(exposed).graph.value_info
            known.update({vi.name: vi for vi in inferred if vi.name not in known})
        except Exception:  # custom ops: the float default below
            pass
    for name in names:
        if name in present:
            continue
        if name in known and known[name].type.tensor_type.elem_type:
            exposed.graph.output.append(known[name])
        else:
            exposed.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
        present.add(name)
    return exposed


#: Initializers up to this size keep their values in the copy shape inference reads (shape operands of
#: Reshape, Resize scales); larger ones are given by type and shape only (their values are never needed).
_SHAPE_VALUE_BYTES = 4096


def activation_bytes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> int | None:
    """Bytes of every tensor a node of ``model`` produces when its inputs have ``shapes`` (by name), by ONNX
    shape inference: an upper bound of what an engine holds at once (engines reuse buffers). Tensors
    whose shape stays unknown are not counted; None when shape inference fails or knows none."""
    graph = onnx.GraphProto()
    graph.node.extend(model.graph.node)
    graph.output.extend(model.graph.output)
    fed = {vi.name for vi in model.graph.input}
    for value in model.graph.input:
        typed = onnx.ValueInfoProto()
        typed.CopyFrom(value)
        if value.name in shapes and typed.type.HasField("tensor_type"):
            dims = typed.type.tensor_type.shape.dim
            del dims[:]
            for size in shapes[value.name]:
                dims.add().dim_value = int(size)
        graph.input.append(typed)
    for init in model.graph.initializer:
        if init.name in fed:
            continue
        if init.data_location != onnx.TensorProto.EXTERNAL and init.ByteSize() <= _SHAPE_VALUE_BYTES:
            graph.initializer.append(init)
        else:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    light = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception:  # a graph shape inference cannot handle: no estimate
        return None
    produced = {out for node in model.graph.node for out in node.output}
    total = known = 0
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if value.name not in produced or not tensor.HasField("shape") or not tensor.elem_type:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if any(d < 0 for d in dims):
            continue
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
        except (KeyError, TypeError, ValueError):
            continue
        total += int(np.prod(dims, dtype=np.int64)) * itemsize
        known += 1
    return total if known else None
