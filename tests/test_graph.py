"""Tests for pytest_int8gate.graph: loading, validation, preparation, layer listing, hashing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pytest_int8gate.errors import ModelError
from pytest_int8gate.graph import (
    Dim,
    TensorInfo,
    add_graph_outputs,
    graph_consumers,
    load_model,
    model_hash,
    prepare_model,
)

FLOAT = TensorProto.FLOAT
RNG = np.random.default_rng(7)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, Sequence[Dim]],
    outputs: Mapping[str, Sequence[Dim]],
    initializers: Mapping[str, np.ndarray] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info(name, FLOAT, list(shape)) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, FLOAT, list(shape)) for name, shape in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), name) for name, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if opset < 13:
        model.ir_version = 6  # what exporters of that era wrote; the checker ties IR version to opset
    return model


def conv_weights(out_ch: int = 4, in_ch: int = 3) -> np.ndarray:
    return RNG.standard_normal((out_ch, in_ch, 3, 3)).astype(np.float32)


def conv_relu_model(weights: np.ndarray | None = None) -> onnx.ModelProto:
    w = conv_weights() if weights is None else weights
    return make_model(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        {"x": ["N", 3, 8, 8]},
        {"y": ["N", 4, 8, 8]},
        {"W": w},
    )


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in session.run(None, dict(feeds))]


# ---- loading errors ---------------------------------------------------------------------------------


def test_missing_file_is_a_model_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.onnx"
    with pytest.raises(ModelError, match=r"nowhere\.onnx") as info:
        load_model(path)
    assert "not found" in str(info.value)


def test_corrupt_file_is_a_model_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(np.random.default_rng(1).bytes(512))
    with pytest.raises(ModelError, match=r"garbage\.onnx"):
        load_model(path)


def test_empty_file_is_a_model_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty\.onnx.*no nodes"):
        load_model(path)


def test_directory_instead_of_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path)


def test_checker_failure_is_a_model_error_naming_the_file(tmp_path: Path) -> None:
    broken = make_model(
        [helper.make_node("Relu", ["undefined_tensor"], ["y"], name="relu")],
        {"x": ["N", 3]},
        {"y": ["N", 3]},
    )
    path = save(broken, tmp_path / "broken.onnx")
    with pytest.raises(ModelError, match=r"broken\.onnx: invalid ONNX model") as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_model_without_feedable_inputs_is_refused() -> None:
    only_initializer_input = make_model(
        [helper.make_node("Relu", ["W"], ["y"], name="relu")],
        {"W": [2]},
        {"y": [2]},
        {"W": np.ones(2, np.float32)},
    )
    with pytest.raises(ModelError, match="no inputs"):
        prepare_model(only_initializer_input)


# ---- external data ----------------------------------------------------------------------------------


def test_external_data_inside_the_folder_loads(tmp_path: Path) -> None:
    weights = conv_weights()
    model = conv_relu_model(weights)
    reference = onnx.ModelProto()
    reference.CopyFrom(model)  # save_model(save_as_external_data=True) rewrites the proto it is given
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="ext.weights.bin", size_threshold=0
    )
    assert (tmp_path / "ext.weights.bin").is_file()

    loaded = load_model(path)

    (w_init,) = [i for i in loaded.proto.graph.initializer if i.name == "W"]
    assert w_init.data_location != TensorProto.EXTERNAL
    np.testing.assert_array_equal(numpy_helper.to_array(w_init), weights)
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(loaded.proto, {"x": x})[0], run(reference, {"x": x})[0], rtol=1e-6)


def test_external_data_content_is_part_of_the_hash(tmp_path: Path) -> None:
    hashes = []
    for index in range(2):
        folder = tmp_path / f"m{index}"
        folder.mkdir()
        onnx.save_model(
            conv_relu_model(np.full((4, 3, 3, 3), index + 1.0, np.float32)),
            str(folder / "m.onnx"),
            save_as_external_data=True,
            location="w.bin",
            size_threshold=0,
        )
        assert folder.joinpath("m.onnx").read_bytes() == tmp_path.joinpath("m0", "m.onnx").read_bytes()
        hashes.append(load_model(folder / "m.onnx").info.model_hash)
    assert hashes[0] != hashes[1]


def _point_weights_at(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    pointed = onnx.ModelProto()
    pointed.CopyFrom(model)
    for init in pointed.graph.initializer:
        size = len(init.raw_data) or numpy_helper.to_array(init).nbytes
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.data_location = TensorProto.EXTERNAL
        del init.external_data[:]
        for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
    return pointed


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "x.bin").write_bytes(conv_weights().tobytes())  # exists: refusal is not "missing"
    path = save(_point_weights_at(conv_relu_model(), "../x.bin"), model_dir / "escape.onnx")
    with pytest.raises(ModelError, match=r"escape\.onnx.*'\.\./x\.bin'.*outside"):
        load_model(path)


def test_external_data_with_absolute_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "abs.bin"
    target.write_bytes(conv_weights().tobytes())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = save(_point_weights_at(conv_relu_model(), str(target)), model_dir / "abs.onnx")
    with pytest.raises(ModelError, match="outside"):
        load_model(path)


def test_missing_external_data_file_is_named(tmp_path: Path) -> None:
    path = save(_point_weights_at(conv_relu_model(), "gone.bin"), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=r"'gone\.bin' is missing"):
        load_model(path)


# ---- preparation: opset conversion, Constant folding, naming -----------------------------------------


def opset11_constant_weight_model(weights: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    return make_model(
        [
            helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(weights)),
            helper.make_node("Constant", [], ["B"], value=numpy_helper.from_array(bias)),
            helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Flatten", ["r"], ["f"], axis=1),
            helper.make_node(
                "Constant", [], ["G"], value=numpy_helper.from_array(np.array([0.5], np.float32))
            ),
            helper.make_node("Mul", ["f", "G"], ["y"]),
        ],
        {"x": ["N", 3, 4, 4]},
        {"y": ["N", 64]},
        opset=11,
    )


def test_opset11_constant_weights_are_converted_and_folded() -> None:
    weights, bias = conv_weights(), RNG.standard_normal(4).astype(np.float32)
    original = opset11_constant_weight_model(weights, bias)

    loaded = prepare_model(original)
    info = loaded.info

    assert info.opset == 13
    assert {(o.domain, o.version) for o in loaded.proto.opset_import} == {("", 13)}
    assert "converted from opset 11 to 13" in info.notes
    assert "folded 3 Constant node(s) into initializers" in info.notes
    assert [n.op_type for n in loaded.proto.graph.node] == ["Conv", "Relu", "Flatten", "Mul"]
    inits = {i.name: numpy_helper.to_array(i) for i in loaded.proto.graph.initializer}
    np.testing.assert_array_equal(inits["W"], weights)
    np.testing.assert_array_equal(inits["B"], bias)
    np.testing.assert_array_equal(inits["G"], np.array([0.5], np.float32))
    assert [(layer.index, layer.op_type, layer.inputs) for layer in info.layers] == [
        (0, "Conv", ("x", "W", "B"))
    ]
    onnx.checker.check_model(loaded.proto)
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(run(loaded.proto, {"x": x})[0], run(original, {"x": x})[0], rtol=1e-5)


def test_prepare_does_not_modify_the_callers_proto() -> None:
    original = opset11_constant_weight_model(conv_weights(), np.zeros(4, np.float32))
    before = original.SerializeToString()
    prepare_model(original)
    assert original.SerializeToString() == before


def test_opset13_model_has_no_conversion_note() -> None:
    info = prepare_model(conv_relu_model()).info
    assert info.opset == 17
    assert not any("converted" in note for note in info.notes)
    assert not any("folded" in note for note in info.notes)


def unnamed_chain_model() -> onnx.ModelProto:
    return make_model(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Conv", ["r", "W2"], ["c2"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c2"], ["y"]),
        ],
        {"x": ["N", 3, 8, 8]},
        {"y": ["N", 4, 8, 8]},
        {"W": conv_weights(), "W2": conv_weights(4, 4)},
    )


def test_unnamed_nodes_get_deterministic_unique_names(tmp_path: Path) -> None:
    path = save(unnamed_chain_model(), tmp_path / "unnamed.onnx")
    first, second = load_model(path), load_model(path)

    names = [n.name for n in first.proto.graph.node]
    assert names == [n.name for n in second.proto.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert [layer.name for layer in first.info.layers] == [names[0], names[2]]
    assert "named 4 unnamed or duplicate node(s)" in first.info.notes


def test_duplicate_node_names_are_deduplicated() -> None:
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["a"], name="dup"),
            helper.make_node("Relu", ["a"], ["b"], name="dup"),
            helper.make_node("Relu", ["b"], ["y"], name="dup"),
        ],
        {"x": ["N", 3]},
        {"y": ["N", 3]},
    )
    names = [n.name for n in prepare_model(model).proto.graph.node]
    assert names[0] == "dup"  # the first keeps its name: that is the layer TensorRT reports
    assert len(set(names)) == 3


def test_explicit_unique_names_are_never_renamed() -> None:
    """An exported name is the user's handle on a layer (``exclude:``); generated names must avoid it."""
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["a"]),  # unnamed: would be generated as "Relu_0"
            helper.make_node("Relu", ["a"], ["y"], name="Relu_0"),
        ],
        {"x": ["N", 3]},
        {"y": ["N", 3]},
    )
    names = [n.name for n in prepare_model(model).proto.graph.node]
    assert names[1] == "Relu_0"
    assert len(set(names)) == 2


# ---- layers ------------------------------------------------------------------------------------------


def test_layers_are_compute_ops_in_topological_order() -> None:
    model = make_model(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu1"),
            helper.make_node("Flatten", ["r"], ["f"], name="flat", axis=1),
            helper.make_node("MatMul", ["f", "M"], ["m"], name="matmul"),
            helper.make_node("Gemm", ["m", "G", "GB"], ["g"], name="gemm", transB=1),
            helper.make_node("MatMul", ["M", "K"], ["mk"], name="const_matmul"),
            helper.make_node("MatMul", ["g", "mk"], ["y"], name="act_matmul"),
        ],
        {"x": ["N", 3, 4, 4]},
        {"y": ["N", 5]},
        {
            "W": conv_weights(),
            "M": RNG.standard_normal((64, 6)).astype(np.float32),
            "G": RNG.standard_normal((6, 6)).astype(np.float32),
            "GB": np.zeros(6, np.float32),
            "K": RNG.standard_normal((6, 5)).astype(np.float32),
        },
    )
    info = prepare_model(model).info
    assert [(layer.index, layer.name, layer.op_type) for layer in info.layers] == [
        (0, "conv1", "Conv"),
        (1, "matmul", "MatMul"),
        (2, "gemm", "Gemm"),
        (3, "act_matmul", "MatMul"),  # an initializer-only MatMul has nothing to calibrate
    ]
    assert info.layer("gemm").outputs == ("g",)
    with pytest.raises(KeyError):
        info.layer("relu1")


def residual_model() -> onnx.ModelProto:
    return make_model(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["c", "x"], ["res"], name="residual_add"),
            helper.make_node("Add", ["res", "bias"], ["biased"], name="bias_add"),
            helper.make_node("Relu", ["biased"], ["r1"], name="relu_a"),
            helper.make_node("Relu", ["biased"], ["r2"], name="relu_b"),
            helper.make_node("Add", ["r1", "r2"], ["y"], name="plain_add"),
        ],
        {"x": ["N", 3, 8, 8]},
        {"y": ["N", 3, 8, 8]},
        {"W": conv_weights(3, 3), "bias": np.ones((1, 3, 1, 1), np.float32)},
    )


def test_residual_add_after_conv_is_a_layer_but_bias_add_is_not() -> None:
    info = prepare_model(residual_model()).info
    assert [(layer.name, layer.op_type) for layer in info.layers] == [
        ("conv", "Conv"),
        ("residual_add", "Add"),
    ]


def test_graph_consumers_and_add_graph_outputs() -> None:
    loaded = prepare_model(residual_model())
    consumers = graph_consumers(loaded.proto.graph)
    assert [n.name for n in consumers["biased"]] == ["relu_a", "relu_b"]
    assert [n.name for n in consumers["x"]] == ["conv", "residual_add"]

    exposed = add_graph_outputs(loaded.proto, ["c", "y", "c"])
    assert [o.name for o in exposed.graph.output] == ["y", "c"]
    assert [o.name for o in loaded.proto.graph.output] == ["y"]
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    y, c = run(exposed, {"x": x})
    assert c.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(y, run(loaded.proto, {"x": x})[0], rtol=1e-6)


# ---- hashing and tensor info ---------------------------------------------------------------------------


def test_model_hash_is_stable_across_loads_and_differs_between_files(tmp_path: Path) -> None:
    a = save(conv_relu_model(np.ones((4, 3, 3, 3), np.float32)), tmp_path / "a.onnx")
    a_copy = tmp_path / "copy" / "a.onnx"
    a_copy.parent.mkdir()
    a_copy.write_bytes(a.read_bytes())
    b = save(conv_relu_model(np.full((4, 3, 3, 3), 2.0, np.float32)), tmp_path / "b.onnx")

    hash_a = load_model(a).info.model_hash
    assert load_model(a).info.model_hash == hash_a
    assert load_model(a_copy).info.model_hash == hash_a
    assert load_model(b).info.model_hash != hash_a
    assert len(hash_a) == 64


def test_in_memory_model_hash_is_deterministic() -> None:
    model = conv_relu_model(np.ones((4, 3, 3, 3), np.float32))
    assert prepare_model(model).info.model_hash == model_hash(model)
    other = conv_relu_model(np.zeros((4, 3, 3, 3), np.float32))
    assert model_hash(other) != model_hash(model)


def test_tensor_info_with_symbolic_batch_and_unknown_dim() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "test",
        [helper.make_tensor_value_info("x", FLOAT, ["batch", 3, None, 8])],
        [helper.make_tensor_value_info("y", FLOAT, ["batch", 3, None, 8])],
    )
    info = prepare_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).info
    x = info.input("x")
    assert x.shape == ("batch", 3, None, 8)
    assert x.dtype == np.dtype(np.float32)
    assert x.shape_text() == "[batch, 3, ?, 8]"
    assert info.output_names == ("y",)
    assert info.outputs[0].shape is not None and info.outputs[0].shape[:2] == ("batch", 3)
    with pytest.raises(KeyError):
        info.input("y")


def test_tensor_info_dtype_and_unknown_rank() -> None:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["y"], name="cast", to=FLOAT)],
        "test",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 4])],
    )
    ids = prepare_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).info.input(
        "ids"
    )
    assert ids.dtype == np.dtype(np.int64)
    assert ids.shape == ("N", 4)
    assert TensorInfo("t", np.dtype(np.float32), None).shape_text() == "unknown"
