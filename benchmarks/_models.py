"""Models of realistic size for the speed benchmarks, built at benchmark time with ``onnx.helper`` (seeded
random weights; nothing large is committed).

``resnet_style``: a ResNet-18-shaped network (7x7 stride-2 stem, max pooling, four stages of basic blocks
with strided 1x1 projection shortcuts, global pooling, a Gemm to ``classes`` logits) at ``size`` px;
``widths`` scales it. He-initialised weights, so activations keep their scale through the depth.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def resnet_style(
    path: Path,
    *,
    size: int = 224,
    widths: tuple[int, ...] = (32, 64, 128, 256),
    blocks: int = 2,
    classes: int = 100,
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []

    def conv(x: str, cin: int, cout: int, k: int, stride: int, name: str, scale: float = 1.0) -> str:
        w = rng.standard_normal((cout, cin, k, k)).astype(np.float32) * scale * math.sqrt(2.0 / (cin * k * k))
        b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        weights.extend([numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")])
        pad = k // 2
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.w", f"{name}.b"],
                [f"{name}.out"],
                name=name,
                pads=[pad] * 4,
                strides=[stride, stride],
            )
        )
        return f"{name}.out"

    def relu(x: str, name: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [f"{name}.out"], name=name))
        return f"{name}.out"

    x = relu(conv("input", 3, widths[0], 7, 2, "stem"), "stem_relu")
    nodes.append(
        helper.make_node(
            "MaxPool", [x], ["pool0.out"], name="pool0", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4
        )
    )
    x, channels = "pool0.out", widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks):
            stride = 2 if stage and not block else 1
            name = f"s{stage}b{block}"
            y = relu(conv(x, channels, width, 3, stride, f"{name}_conv1"), f"{name}_relu1")
            y = conv(y, width, width, 3, 1, f"{name}_conv2", scale=0.5)
            shortcut = (
                x
                if stride == 1 and channels == width
                else conv(x, channels, width, 1, stride, f"{name}_proj")
            )
            nodes.append(helper.make_node("Add", [shortcut, y], [f"{name}_add.out"], name=f"{name}_add"))
            x, channels = relu(f"{name}_add.out", f"{name}_relu2"), width
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap.out"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap.out"], ["flat.out"], name="flatten"))
    fc_w = (rng.standard_normal((classes, channels)) * math.sqrt(1.0 / channels)).astype(np.float32)
    weights.extend(
        [
            numpy_helper.from_array(fc_w, "fc.w"),
            numpy_helper.from_array(np.zeros(classes, np.float32), "fc.b"),
        ]
    )
    nodes.append(helper.make_node("Gemm", ["flat.out", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes,
        "resnet_style",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def image_inputs(samples: int, size: int = 224, seed: int = 1) -> np.ndarray:
    """Smooth image-like inputs: a random low-resolution pattern upsampled, plus a little noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((samples, 3, size // 8, size // 8)).astype(np.float32)
    images = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
    return images + 0.1 * rng.standard_normal(images.shape).astype(np.float32)
