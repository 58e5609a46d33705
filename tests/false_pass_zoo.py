"""Small models whose INT8 version is broken in a way an output-blind default cannot see, each with a benign
twin that must still pass. Shared by tests/test_no_false_pass.py and the reliability docs' figures.

Every broken model computes the same FP32 function as its twin where it can (a planted channel, see
tests/planted.py), so what fails is INT8, not the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import planted
from onnx import TensorProto, helper, numpy_helper
from planted import Dense

OPSET = 17
CHANNELS = 16
SAMPLES = 400


@dataclass
class Graph:
    """A graph under construction: nodes, initializers, and a counter for unique names."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def dense(self, x: str, layer: Dense, name: str, *, relu: bool) -> str:
        w = self.const(f"{name}.weight", layer.weight)
        b = self.const(f"{name}.bias", layer.bias)
        out = f"{name}_out"
        self.nodes.append(helper.make_node("Gemm", [x, w, b], [out], name=name, transB=1))
        if not relu:
            return out
        self.nodes.append(helper.make_node("Relu", [out], [f"{name}_relu"], name=f"{name}_act"))
        return f"{name}_relu"

    def chain(self, x: str, weights: Sequence[Dense], prefix: str) -> str:
        """Every layer but the last of ``weights`` (the chain's hidden layers, each with its ReLU)."""
        for index, layer in enumerate(weights[:-1]):
            x = self.dense(x, layer, f"{prefix}{index}", relu=True)
        return x

    def op(self, op_type: str, inputs: Sequence[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [f"{name}_out"], name=name, **attrs))
        return f"{name}_out"

    def model(
        self, outputs: Sequence[tuple[str, str, Sequence[object]]], *, elem: int = TensorProto.FLOAT
    ) -> onnx.ModelProto:
        """``outputs``: (tensor produced, output name, shape); each is renamed through an Identity."""
        for tensor, name, _ in outputs:
            self.nodes.append(helper.make_node("Identity", [tensor], [name], name=f"{name}_identity"))
        graph = helper.make_graph(
            self.nodes,
            "zoo",
            [helper.make_tensor_value_info("x", elem, ["batch", CHANNELS])],
            [helper.make_tensor_value_info(name, elem, list(shape)) for _, name, shape in outputs],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        onnx.checker.check_model(model)
        return model


def body(broken: bool, *, seed: int = 0, layers: int = 4, factor: float = 1e4) -> list[Dense]:
    """Hidden layers of a looks-linear chain (tests/planted.py); ``broken``: its last layer planted."""
    weights = planted.chain_weights(layers, CHANNELS, seed=seed)
    return planted.plant(weights, layers - 1, factor=factor) if broken else weights


def head(rows: int, *, seed: int, scale: float = 1.0, bias: float = 0.0) -> Dense:
    rng = np.random.default_rng(seed + 100)
    weight = rng.standard_normal((rows, CHANNELS)) * scale / np.sqrt(CHANNELS)
    return Dense(weight.astype(np.float32), np.full(rows, bias, np.float32))


def regression(broken: bool) -> onnx.ModelProto:
    """``[N, 1]`` regression in physical units (a large positive offset): per-sample cosine is 1 for any
    INT8 output with the right sign."""
    g = Graph()
    weights = body(broken)
    h = g.chain("x", weights, "fc")
    h = g.dense(h, weights[-1], "fc_last", relu=True)
    y = g.dense(h, head(1, seed=1, bias=50.0), "reg", relu=False)
    return g.model([(y, "value", ["batch", 1])])


def offset_logits(broken: bool) -> onnx.ModelProto:
    """10 class logits plus a large constant: cosine stays near 1 while the decisions change."""
    g = Graph()
    weights = body(broken)
    h = g.chain("x", weights, "fc")
    h = g.dense(h, weights[-1], "fc_last", relu=True)
    y = g.dense(h, head(10, seed=2, bias=100.0), "cls", relu=False)
    return g.model([(y, "logits", ["batch", 10])])


def softmax_head(broken: bool) -> onnx.ModelProto:
    """10 class probabilities: mild INT8 damage keeps cosine >= 0.98 while predictions change."""
    g = Graph()
    weights = body(broken, factor=20.0)
    h = g.chain("x", weights, "fc")
    h = g.dense(h, weights[-1], "fc_last", relu=True)
    logits = g.dense(h, head(10, seed=3, scale=3.0), "cls", relu=False)
    y = g.op("Softmax", [logits], "softmax", axis=1)
    return g.model([(y, "probabilities", ["batch", 10])])


def sigmoid_head(broken: bool) -> onnx.ModelProto:
    """12 independent label scores (multi-label): decisions at 0.5 change while cosine stays high."""
    g = Graph()
    weights = body(broken, factor=60.0)
    h = g.chain("x", weights, "fc")
    h = g.dense(h, weights[-1], "fc_last", relu=True)
    logits = g.dense(h, head(12, seed=4, scale=3.0, bias=1.0), "tags", relu=False)
    y = g.op("Sigmoid", [logits], "sigmoid")
    return g.model([(y, "label_scores", ["batch", 12])])


def embedding(broken: bool) -> onnx.ModelProto:
    """A 32-wide L2-normalised embedding (retrieval, sentence and face heads): a judge by class scores would
    ask its largest coordinate to agree, which decides nothing and flips on the benign twin's noise."""
    g = Graph()
    weights = body(broken, factor=300.0)
    h = g.chain("x", weights, "fc")
    h = g.dense(h, weights[-1], "fc_last", relu=True)
    y = g.dense(h, head(32, seed=9), "embed", relu=False)
    y = g.op("LpNormalization", [y], "l2_normalize", axis=1, p=2)
    return g.model([(y, "embedding", ["batch", 32])])


def two_outputs(broken: bool) -> onnx.ModelProto:
    """Two heads on two branches; only the second branch's INT8 is broken."""
    g = Graph()
    good = body(False, seed=5)
    h1 = g.chain("x", good, "a")
    y1 = g.dense(h1, good[-1], "a_last", relu=False)
    second = body(broken, seed=6)
    h2 = g.chain("x", second, "b")
    y2 = g.dense(h2, second[-1], "b_last", relu=False)
    return g.model([(y1, "first", ["batch", CHANNELS]), (y2, "second", ["batch", CHANNELS])])


def nan_second_output(broken: bool, feeds: np.ndarray) -> onnx.ModelProto:
    """A second output ``log(z + c)``: ``z`` sums the branch's ReLU outputs with positive weights and ``c``
    puts FP32's smallest ``z + c`` at 0.05, finite in FP32; when the branch's INT8 is broken, its hidden
    channels round to zero, ``z + c`` falls below zero and the log is NaN."""
    g = Graph()
    good = body(False, seed=7)
    y1 = g.dense(g.chain("x", good, "a"), good[-1], "a_last", relu=False)
    second = body(broken, seed=8)
    h = g.dense(g.chain("x", second, "b"), second[-1], "b_last", relu=True)
    z_head = Dense(np.full((1, CHANNELS), 1.0 / CHANNELS, np.float32), np.zeros(1, np.float32))
    z = g.dense(h, z_head, "z", relu=False)
    hidden = planted.forward(body(False, seed=8), feeds)[-1]
    z_fp32 = np.maximum(hidden, 0.0) @ z_head.weight.T + z_head.bias
    shift = np.float32(-float(z_fp32.min()) + 0.05)
    y2 = g.op("Log", [g.op("Add", [z, g.const("shift", np.array([shift], np.float32))], "shift_add")], "log")
    return g.model([(y1, "first", ["batch", CHANNELS]), (y2, "log_score", ["batch", 1])])


def saturated(broken: bool) -> onnx.ModelProto:
    """A sigmoid head pushed so far negative that it is 0.0 for every sample (a saturated or mis-fed export):
    INT8 matches it exactly whatever its layers do. ``broken``: that is the only output (and the chain's INT8
    is planted); the twin also gates a head that varies, which carries the verdict."""
    g = Graph()
    weights = body(broken, factor=60.0)
    h = g.chain("x", weights, "fc")
    h = g.dense(h, weights[-1], "fc_last", relu=True)
    dead = g.op("Sigmoid", [g.dense(h, head(4, seed=11, bias=-1000.0), "dead", relu=False)], "dead_sigmoid")
    outputs = [(dead, "dead_scores", ["batch", 4])]
    if not broken:
        live_logits = g.dense(h, head(12, seed=4, scale=3.0, bias=1.0), "live", relu=False)
        live = g.op("Sigmoid", [live_logits], "live_sigmoid")
        outputs.append((live, "live_scores", ["batch", 12]))
    return g.model(outputs)


def no_quantizable_layer(broken: bool) -> onnx.ModelProto:
    """Only element-wise ops: nothing for INT8 to run. ``broken=False`` is the same plus one Gemm."""
    g = Graph()
    h = g.op("Relu", ["x"], "relu")
    h = g.op("Mul", [h, g.const("two", np.array([2.0], np.float32))], "mul")
    if not broken:
        h = g.dense(h, head(CHANNELS, seed=10, scale=2.0), "fc", relu=False)
    return g.model([(h, "y", ["batch", CHANNELS])])


def inside_if(broken: bool) -> onnx.ModelProto:
    """The whole network in the branches of an ``If`` (exports of data-dependent control flow)."""
    weights = body(False, seed=11, layers=2)

    def branch(name: str) -> onnx.GraphProto:
        sub = Graph()
        h = sub.dense("x", weights[0], f"{name}_fc0", relu=True)
        y = sub.dense(h, weights[1], f"{name}_fc1", relu=False)
        sub.nodes.append(helper.make_node("Identity", [y], [f"{name}_y"], name=f"{name}_identity"))
        return helper.make_graph(
            sub.nodes,
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["batch", CHANNELS])],
            sub.initializers,
        )

    g = Graph()
    if not broken:  # the twin: the same network, outside the If
        h = g.dense("x", weights[0], "fc0", relu=True)
        y = g.dense(h, weights[1], "fc1", relu=False)
        return g.model([(y, "y", ["batch", CHANNELS])])
    total = g.op("ReduceSum", ["x"], "sum", keepdims=0)
    cond = g.op("Greater", [total, g.const("big", np.array(1e30, np.float32))], "cond")
    g.nodes.append(
        helper.make_node(
            "If", [cond], ["y_if"], name="branch", then_branch=branch("then"), else_branch=branch("else")
        )
    )
    return g.model([("y_if", "y", ["batch", CHANNELS])])


def float16(broken: bool) -> onnx.ModelProto:
    """The chain in float16 at opset 17, where float16 Q/DQ does not exist (it needs opset 19)."""
    weights = body(False, seed=12)
    g = Graph()
    half = [Dense(w.weight.astype(np.float16), w.bias.astype(np.float16)) for w in weights]
    h = g.chain("x", half, "fc")
    y = g.dense(h, half[-1], "fc_last", relu=False)
    model = g.model([(y, "y", ["batch", CHANNELS])], elem=TensorProto.FLOAT16)
    if not broken:  # the twin: the same network in float32
        return float32_twin(weights)
    return model


def float32_twin(weights: list[Dense]) -> onnx.ModelProto:
    g = Graph()
    h = g.chain("x", weights, "fc")
    y = g.dense(h, weights[-1], "fc_last", relu=False)
    return g.model([(y, "y", ["batch", CHANNELS])])


CLASSES = 4


def _centres() -> np.ndarray:
    rng = np.random.default_rng(13)
    q, _ = np.linalg.qr(rng.standard_normal((CHANNELS, CLASSES)))
    return q.T.astype(np.float32)  # [classes, channels], orthonormal rows


def classifier() -> onnx.ModelProto:
    """A benign 4-class linear classifier of well-separated clusters (see :func:`clustered`), as two
    quantized layers: ``relu([x; -x])`` then ``[M, -M]``, which computes ``M x`` exactly."""
    g = Graph()
    eye = np.eye(CHANNELS, dtype=np.float32)
    h = g.dense("x", Dense(np.concatenate([eye, -eye]), np.zeros(2 * CHANNELS, np.float32)), "fc0", relu=True)
    centres = _centres()
    head_layer = Dense(np.concatenate([centres, -centres], axis=1), np.zeros(CLASSES, np.float32))
    y = g.dense(h, head_layer, "cls", relu=False)
    return g.model([(y, "logits", ["batch", CLASSES])])


def clustered(samples: int = SAMPLES, *, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Inputs drawn around the classifier's class centres, and their classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, samples)
    x = 3.0 * _centres()[labels] + 0.3 * rng.standard_normal((samples, CHANNELS))
    return x.astype(np.float32), labels.astype(np.int64)


def inputs(
    samples: int = SAMPLES, *, seed: int = 1, low: float | None = None, high: float = 1.0
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if low is not None:
        return rng.uniform(low, high, (samples, CHANNELS)).astype(np.float32)
    return rng.standard_normal((samples, CHANNELS)).astype(np.float32)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path
