"""Small MatMul models with a planted activation outlier (one input channel of a MatMul far larger than the
rest, as in transformer LayerNorm outputs) and their benign twins, built with onnx.helper; the producer of
the outlier activation is a LayerNormalization, a MatMul or a graph input (nothing to fold into)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 64
HIDDEN = 48
CLASSES = 10
OUTLIER_CHANNELS = (3, 17)


def outlier_model(path: Path, *, producer: str = "layernorm", outlier: float = 80.0, seed: int = 0) -> Path:
    """``x [N, 64]`` -> producer -> ``/fc1/MatMul`` -> Relu -> ``/fc2/MatMul`` -> ``logits [N, 10]``; the
    producer's output channels 3 and 17 are ``outlier`` times the rest (1: the benign twin)."""
    rng = np.random.default_rng(seed)
    boost = np.ones(WIDTH, np.float32)
    boost[list(OUTLIER_CHANNELS)] = outlier
    w1 = (rng.standard_normal((WIDTH, HIDDEN)) / np.sqrt(WIDTH)).astype(np.float32)
    w1[list(OUTLIER_CHANNELS)] /= outlier  # the layer's function barely depends on the outlier's size
    w2 = (rng.standard_normal((HIDDEN, CLASSES)) / np.sqrt(HIDDEN)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    nodes = []
    if producer == "layernorm":
        inits += [
            numpy_helper.from_array(boost, "ln.gamma"),
            numpy_helper.from_array((0.1 * rng.standard_normal(WIDTH)).astype(np.float32), "ln.beta"),
        ]
        nodes.append(
            helper.make_node("LayerNormalization", ["x", "ln.gamma", "ln.beta"], ["h"], name="/ln/LayerNorm")
        )
    elif producer == "matmul":
        w0 = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32) * boost
        inits += [numpy_helper.from_array(w0, "w0")]
        nodes.append(helper.make_node("MatMul", ["x", "w0"], ["h"], name="/fc0/MatMul"))
    else:  # the graph input itself: nothing to fold into
        inits += [numpy_helper.from_array(boost, "boost")]
        nodes.append(helper.make_node("Mul", ["x", "boost"], ["h"], name="/boost/Mul"))
    nodes += [
        helper.make_node("MatMul", ["h", "w1"], ["a1"], name="/fc1/MatMul"),
        helper.make_node("Relu", ["a1"], ["r1"], name="/fc1/Relu"),
        helper.make_node("MatMul", ["r1", "w2"], ["logits"], name="/fc2/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "outlier_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def outlier_data(path: Path, samples: int = 256, *, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.standard_normal((samples, WIDTH)).astype(np.float32))
    return path
