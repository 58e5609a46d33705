#!/usr/bin/env python
"""Train two more example models on scikit-learn's ``load_digits`` and write them as small ONNX files.

* ``models/digits_vit.onnx``: a tiny vision transformer. The 8×8 image is cut into 16 patches of 2×2
  pixels, embedded to 32 features, then two pre-norm encoder blocks (LayerNormalization, two-head
  self-attention with Q·Kᵀ → Softmax → ·V, erf-GELU MLP, residual Adds), a final LayerNormalization,
  mean over tokens and a Gemm head. The attention MatMuls have K = N = 16 (head size and token count), so
  TensorRT-style placement quantizes them; the patch embedding has K = 4 and the head N = 10.
* ``models/digits_mobilenet.onnx``: a MobileNet-style network with BatchNormalization after every
  convolution (as exported, not folded): a stem conv, two depthwise-separable blocks (3×3 depthwise →
  ReLU6 → 1×1 pointwise → ReLU6), one inverted residual block (1×1 expand → ReLU6 → 3×3 depthwise → ReLU6 →
  1×1 project, plus the block input), GlobalAveragePool and a Gemm head.

Both take ``input`` [N,1,8,8] and return ``logits`` [N,10], like ``digits_cnn.onnx``, and are gated on
the same data files (``data/``, written by ``train_digits_cnn.py``). Regenerate with::

    pip install torch==2.13.0 scikit-learn onnx onnxruntime
    python example_project/train_small_models.py

The ONNX graphs are written node by node with ``onnx.helper`` from the trained weights (not by an
exporter), so that the BatchNormalization nodes stay in the file and the attention and GELU patterns are
the standard ones; the script checks ONNX Runtime's outputs against PyTorch's before saving.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from train_digits_cnn import load_split, seed_everything

HERE = Path(__file__).resolve().parent
VIT_PATH = HERE / "models" / "digits_vit.onnx"
MOBILENET_PATH = HERE / "models" / "digits_mobilenet.onnx"
OPSET = 17  # LayerNormalization
EPOCHS = 60
BATCH_SIZE = 64
LR = 2e-3

# ---- models ------------------------------------------------------------------------------------------

DIM, HEADS, MLP, BLOCKS, PATCH = 32, 2, 64, 2, 2
TOKENS = (8 // PATCH) ** 2
HEAD_DIM = DIM // HEADS


def patches(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    x = x.reshape(n, 1, 8 // PATCH, PATCH, 8 // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, TOKENS, PATCH * PATCH)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(DIM)
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM) for _ in range(4))
        self.ln2 = nn.LayerNorm(DIM)
        self.fc1 = nn.Linear(DIM, MLP)
        self.fc2 = nn.Linear(MLP, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = self.ln1(x)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, TOKENS, HEADS, HEAD_DIM).permute(0, 2, 1, 3)

        q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(HEAD_DIM))
        attended = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(n, TOKENS, DIM)
        x = x + self.o(attended)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class DigitsViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(PATCH * PATCH, DIM)
        self.position = nn.Parameter(torch.randn(TOKENS, DIM) * 0.02)
        self.blocks = nn.ModuleList(Block() for _ in range(BLOCKS))
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(patches(x)) + self.position
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class DigitsMobileNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(1, 16, 3)
        self.dw1, self.pw1 = conv_bn(16, 16, 3, groups=16), conv_bn(16, 32, 1)
        self.dw2, self.pw2 = conv_bn(32, 32, 3, stride=2, groups=32), conv_bn(32, 48, 1)
        self.expand, self.dw3, self.project = (
            conv_bn(48, 96, 1),
            conv_bn(96, 96, 3, groups=96),
            conv_bn(96, 48, 1),
        )
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu6
        x = act(self.stem(x))
        x = act(self.pw1(act(self.dw1(x))))
        x = act(self.pw2(act(self.dw2(x))))
        x = x + self.project(act(self.dw3(act(self.expand(x)))))
        return self.head(x.mean((2, 3)))


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(1, EPOCHS + 1):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
        sched.step()
        if epoch % 10 == 0:
            model.eval()
            with torch.no_grad():
                acc = float((model(torch.from_numpy(x_eval)).argmax(1).numpy() == y_eval).mean())
            print(f"{type(model).__name__} epoch {epoch}: eval accuracy {acc:.4f}")
    model.eval()


# ---- ONNX graphs -------------------------------------------------------------------------------------


class GraphWriter:
    """Nodes and initializers with readable, unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray | torch.Tensor) -> str:
        array = value.detach().numpy() if isinstance(value, torch.Tensor) else value
        self.initializers.append(numpy_helper.from_array(np.array(array, copy=True, order="C"), name))
        return name

    def node(self, op: str, name: str, inputs: list[str], **attrs: object) -> str:
        output = f"{name}_output"
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def model(self) -> onnx.ModelProto:
        self.nodes[-1].output[0] = "logits"
        graph = helper.make_graph(
            self.nodes,
            "digits",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def linear(w: GraphWriter, name: str, x: str, layer: nn.Linear) -> str:
    """MatMul with the (K, N) weight, then the bias Add: the pattern exporters write for nn.Linear."""
    y = w.node("MatMul", f"{name}/MatMul", [x, w.const(f"{name}.weight", layer.weight.T.contiguous())])
    return w.node("Add", f"{name}/Add", [y, w.const(f"{name}.bias", layer.bias)])


def layer_norm(w: GraphWriter, name: str, x: str, layer: nn.LayerNorm) -> str:
    scale, bias = w.const(f"{name}.weight", layer.weight), w.const(f"{name}.bias", layer.bias)
    return w.node("LayerNormalization", name, [x, scale, bias], axis=-1, epsilon=layer.eps)


def vit_onnx(model: DigitsViT) -> onnx.ModelProto:
    w = GraphWriter()
    shape = w.node(
        "Reshape", "patchify/Reshape", ["input", w.const("patch_grid", np.array([-1, 1, 4, 2, 4, 2]))]
    )
    shape = w.node("Transpose", "patchify/Transpose", [shape], perm=[0, 2, 4, 1, 3, 5])
    tokens = w.node("Reshape", "patchify/Flatten", [shape, w.const("patch_rows", np.array([-1, TOKENS, 4]))])
    x = linear(w, "embed", tokens, model.embed)
    x = w.node("Add", "position/Add", [x, w.const("position", model.position)])
    head_shape = w.const("head_shape", np.array([-1, TOKENS, HEADS, HEAD_DIM]))
    merged_shape = w.const("merged_shape", np.array([-1, TOKENS, DIM]))
    scale = w.const("attention_scale", np.array(1.0 / math.sqrt(HEAD_DIM), dtype=np.float32))
    sqrt2, one, half = (
        w.const(n, np.array(v, dtype=np.float32))
        for n, v in (("gelu_sqrt2", math.sqrt(2.0)), ("gelu_one", 1.0), ("gelu_half", 0.5))
    )
    for index, block in enumerate(model.blocks):
        p = f"block{index}"
        h = layer_norm(w, f"{p}/ln1", x, block.ln1)
        per_head = {}
        for which in ("q", "k", "v"):
            t = linear(w, f"{p}/attn/{which}", h, getattr(block, which))
            t = w.node("Reshape", f"{p}/attn/{which}/Reshape", [t, head_shape])
            perm = [0, 2, 3, 1] if which == "k" else [0, 2, 1, 3]  # K is transposed for Q·Kᵀ
            per_head[which] = w.node("Transpose", f"{p}/attn/{which}/Transpose", [t], perm=perm)
        scores = w.node("MatMul", f"{p}/attn/QK/MatMul", [per_head["q"], per_head["k"]])
        scores = w.node("Mul", f"{p}/attn/scale/Mul", [scores, scale])
        probs = w.node("Softmax", f"{p}/attn/Softmax", [scores], axis=-1)
        attended = w.node("MatMul", f"{p}/attn/AV/MatMul", [probs, per_head["v"]])
        attended = w.node("Transpose", f"{p}/attn/merge/Transpose", [attended], perm=[0, 2, 1, 3])
        attended = w.node("Reshape", f"{p}/attn/merge/Reshape", [attended, merged_shape])
        x = w.node("Add", f"{p}/attn/residual/Add", [x, linear(w, f"{p}/attn/o", attended, block.o)])
        h = linear(w, f"{p}/mlp/fc1", layer_norm(w, f"{p}/ln2", x, block.ln2), block.fc1)
        # erf-GELU as exporters write it: x * 0.5 * (1 + erf(x / sqrt 2))
        g = w.node("Div", f"{p}/mlp/gelu/Div", [h, sqrt2])
        g = w.node("Erf", f"{p}/mlp/gelu/Erf", [g])
        g = w.node("Add", f"{p}/mlp/gelu/Add", [g, one])
        g = w.node("Mul", f"{p}/mlp/gelu/Mul", [h, g])
        g = w.node("Mul", f"{p}/mlp/gelu/Mul_1", [g, half])
        x = w.node("Add", f"{p}/mlp/residual/Add", [x, linear(w, f"{p}/mlp/fc2", g, block.fc2)])
    x = layer_norm(w, "norm", x, model.norm)
    x = w.node("ReduceMean", "pool/ReduceMean", [x], axes=[1], keepdims=0)
    w.node(
        "Gemm",
        "head/Gemm",
        [x, w.const("head.weight", model.head.weight), w.const("head.bias", model.head.bias)],
        transB=1,
    )
    return w.model()


def conv_bn_onnx(w: GraphWriter, name: str, x: str, layers: nn.Sequential) -> str:
    conv, bn = layers[0], layers[1]
    y = w.node(
        "Conv",
        f"{name}/Conv",
        [x, w.const(f"{name}.weight", conv.weight)],
        kernel_shape=list(conv.kernel_size),
        strides=list(conv.stride),
        pads=[conv.padding[0]] * 4,
        group=conv.groups,
    )
    inputs = [
        w.const(f"{name}.bn.{k}", getattr(bn, a))
        for k, a in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var"))
    ]
    return w.node("BatchNormalization", f"{name}/BatchNormalization", [y, *inputs], epsilon=bn.eps)


def relu6(w: GraphWriter, name: str, x: str) -> str:
    bounds = [
        w.const(f"{name}.min", np.array(0.0, np.float32)),
        w.const(f"{name}.max", np.array(6.0, np.float32)),
    ]
    return w.node("Clip", f"{name}/Clip", [x, *bounds])


def mobilenet_onnx(model: DigitsMobileNet) -> onnx.ModelProto:
    w = GraphWriter()
    x = relu6(w, "stem", conv_bn_onnx(w, "stem", "input", model.stem))
    for name in ("dw1", "pw1", "dw2", "pw2"):
        x = relu6(w, name, conv_bn_onnx(w, name, x, getattr(model, name)))
    h = relu6(w, "expand", conv_bn_onnx(w, "expand", x, model.expand))
    h = relu6(w, "dw3", conv_bn_onnx(w, "dw3", h, model.dw3))
    h = conv_bn_onnx(w, "project", h, model.project)
    x = w.node("Add", "residual/Add", [x, h])
    x = w.node("GlobalAveragePool", "pool/GlobalAveragePool", [x])
    x = w.node("Flatten", "pool/Flatten", [x], axis=1)
    w.node(
        "Gemm",
        "head/Gemm",
        [x, w.const("head.weight", model.head.weight), w.const("head.bias", model.head.bias)],
        transB=1,
    )
    return w.model()


def check_and_save(
    model: nn.Module, proto: onnx.ModelProto, path: Path, x: np.ndarray, y: np.ndarray
) -> None:
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": x})[0]
    diff = float(np.abs(logits - expected).max())
    print(f"{path.name}: onnxruntime vs torch max abs diff {diff:.2e}")
    if diff > 1e-3:
        raise SystemExit(f"{path.name}: the ONNX graph does not compute the trained model (diff {diff})")
    print(f"{path.name}: FP32 eval accuracy (onnxruntime) {float((logits.argmax(1) == y).mean()):.4f}")
    onnx.save(proto, str(path))
    print(f"{path.name}: {path.stat().st_size} bytes")


def main() -> None:
    seed_everything()
    x_train, y_train, x_eval, y_eval, _ = load_split()
    vit = DigitsViT()
    train(vit, x_train, y_train, x_eval, y_eval)
    check_and_save(vit, vit_onnx(vit), VIT_PATH, x_eval, y_eval)
    seed_everything()
    mobilenet = DigitsMobileNet()
    train(mobilenet, x_train, y_train, x_eval, y_eval)
    check_and_save(mobilenet, mobilenet_onnx(mobilenet), MOBILENET_PATH, x_eval, y_eval)


if __name__ == "__main__":
    main()
