"""A voice-activity model shaped like silero VAD, built with onnx.helper: ``input [N, 576]`` float, a
recurrent ``state [2, N, 128]`` (samples on axis 1), the sample rate ``sr`` as a 0-d int64; outputs a
probability ``output [N, 1]`` and the new state ``stateN [2, N, 128]``. Its data, and a twin whose first
layer has one planted outlier input channel (INT8 fails on it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FRAME = 576
HIDDEN = 128


def vad_model(path: Path, *, outlier: bool = False, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((FRAME, HIDDEN)) / np.sqrt(FRAME)).astype(np.float32)
    if outlier:  # one input channel's weights 400x the rest: per-tensor activations swamp the others
        w1[:, 7] *= 400.0
    w2 = (rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
    u = (rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
    w3 = (rng.standard_normal((HIDDEN, 1)) / np.sqrt(HIDDEN)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(u, "u"),
        numpy_helper.from_array(w3, "w3"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array(16000.0, np.float32), "base_rate"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h1"], name="/enc/MatMul"),
        helper.make_node("Relu", ["h1"], ["r1"], name="/enc/Relu"),
        # the sample rate scales the features (as the real model picks its 8k or 16k branch by it)
        helper.make_node("Cast", ["sr"], ["sr_f"], name="/sr/Cast", to=TensorProto.FLOAT),
        helper.make_node("Div", ["sr_f", "base_rate"], ["rate"], name="/sr/Div"),
        helper.make_node("Mul", ["r1", "rate"], ["scaled"], name="/sr/Mul"),
        helper.make_node("Gather", ["state", "zero"], ["s0_3d"], name="/rnn/Gather", axis=0),
        helper.make_node("Squeeze", ["s0_3d", "zero"], ["s0"], name="/rnn/Squeeze"),
        helper.make_node("MatMul", ["scaled", "w2"], ["a"], name="/rnn/MatMul_x"),
        helper.make_node("MatMul", ["s0", "u"], ["b"], name="/rnn/MatMul_h"),
        helper.make_node("Add", ["a", "b"], ["pre"], name="/rnn/Add"),
        helper.make_node("Tanh", ["pre"], ["h2"], name="/rnn/Tanh"),
        helper.make_node("MatMul", ["h2", "w3"], ["logit"], name="/head/MatMul"),
        helper.make_node("Sigmoid", ["logit"], ["output"], name="/head/Sigmoid"),
        helper.make_node("Unsqueeze", ["h2", "zero"], ["n0"], name="/state/Unsqueeze"),
        helper.make_node("Concat", ["n0", "s0_3d"], ["stateN"], name="/state/Concat", axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "vad",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FRAME]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", HIDDEN]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", HIDDEN]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def vad_data(path: Path, samples: int = 96, *, seed: int = 1) -> Path:
    """Feeds as the model takes them: ``input [N, 576]`` and ``state [2, N, 128]`` (no ``sr``: a constant)."""
    rng = np.random.default_rng(seed)
    frames = rng.standard_normal((samples, FRAME)).astype(np.float32)
    state = (0.5 * rng.standard_normal((2, samples, HIDDEN))).astype(np.float32)
    np.savez(path, input=frames, state=state)
    return path
