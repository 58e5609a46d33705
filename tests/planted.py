"""Graph builders with planted INT8 offenders, shared by the tests and the bisection benchmark.

A model is a chain of dense layers ``fc0 .. fc{N-1}`` (ONNX ``Gemm`` with ``transB=1``, so a weight is
``[out, in]``), each followed by ``relu{i}`` except the last. :func:`plant` makes one layer INT8-hostile
without changing the FP32 function: ReLU is positively homogeneous, so scaling output channel ``c`` of
layer ``i-1`` (weight row and bias) by ``F`` and dividing column ``c`` of layer ``i`` by ``F`` computes
the same thing, while layer ``i``'s per-tensor activation scale is now set by one channel ``F`` times
larger than the rest, which therefore quantize to zero.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT = "x"
OUTPUT = "y"
OPSET = 17


class Dense(NamedTuple):
    """One ``Gemm(transB=1)`` layer: ``y = x @ weight.T + bias``."""

    weight: np.ndarray  # [out, in]
    bias: np.ndarray  # [out]


def layer_name(index: int) -> str:
    """The ONNX node name (= TensorRT layer name) of dense layer ``index``."""
    return f"fc{index}"


def chain_weights(n_layers: int, channels: int = 16, *, seed: int = 0) -> list[Dense]:
    """Seeded, well-conditioned weights with the "looks-linear" structure ``[[A, -A], [-A, A]]``.

    With pre-activations ``[u; -u]``, ``relu(u) - relu(-u) = u``, so the chain computes ``u -> A u + b``
    with random orthogonal ``A``: activations neither explode, die nor collapse onto a constant over 48+
    layers, every channel is alive for about half the samples, and the output keeps depending on the
    input (plain random ReLU chains lose that, and their near-constant activations mislead calibrators).
    """
    if channels % 2:
        raise ValueError(f"channels must be even (pairs of +u and -u), got {channels}")
    half = channels // 2
    rng = np.random.default_rng(seed)
    layers = []
    for index in range(n_layers):
        if index == 0:
            q, _ = np.linalg.qr(rng.standard_normal((channels, half)))
            block = q.T  # [half, channels], orthonormal rows: u0 = block @ x
            weight = np.concatenate([block, -block])
        else:
            q, r = np.linalg.qr(rng.standard_normal((half, half)))
            a = q * np.sign(np.diag(r))
            weight = np.block([[a, -a], [-a, a]])
        shift = rng.uniform(-0.1, 0.1, half)
        bias = np.concatenate([shift, -shift])
        layers.append(Dense(weight.astype(np.float32), bias.astype(np.float32)))
    return layers


def plant(weights: Sequence[Dense], layer_index: int, factor: float = 1e4, channel: int = 0) -> list[Dense]:
    """A copy of ``weights`` whose layer ``layer_index`` is INT8-hostile, with the same FP32 function.

    Output channel ``channel`` of layer ``layer_index - 1`` is multiplied by ``factor`` (row and bias)
    and the matching input column of layer ``layer_index`` is divided by it, across the ReLU.
    """
    if not 1 <= layer_index < len(weights):
        raise ValueError(f"a planted layer needs a preceding layer: 1 <= index < {len(weights)}")
    planted = [Dense(w.weight.copy(), w.bias.copy()) for w in weights]
    before, hostile = planted[layer_index - 1], planted[layer_index]
    before.weight[channel, :] *= np.float32(factor)
    before.bias[channel] *= np.float32(factor)
    hostile.weight[:, channel] /= np.float32(factor)
    return planted


def mild_ranges(n_layers: int, seed: int = 0, skip: Collection[int] = ()) -> list[Dense]:
    """A chain whose every layer (from the second on, but ``skip``) has one input channel 4-12 times wider
    than the rest (seeded :func:`plant`): no layer breaks a budget alone, the INT8 error is spread thin."""
    rng = np.random.default_rng(seed)
    weights = chain_weights(n_layers, seed=seed)
    for index in range(1, n_layers):
        if index not in skip:
            weights = plant(weights, index, factor=float(rng.uniform(4, 12)), channel=int(rng.integers(1, 8)))
    return weights


def route_spike(
    weights: Sequence[Dense], layer_index: int, channel: int = 0, gain: float = 1e3
) -> list[Dense]:
    """A copy of ``weights`` that carries input feature ``channel`` unchanged to layer ``layer_index - 1``,
    which amplifies it by ``gain`` into the input of layer ``layer_index``; that layer ignores it.

    The feature is read by nothing else, so the FP32 output does not depend on it. Calibration data
    whose feature ``channel`` is zero except for a few spiking samples then gives layer ``layer_index``
    an input with rare, huge outliers: ``max`` calibration ruins that layer, ``percentile`` does not.
    """
    if not 1 <= layer_index < len(weights):
        raise ValueError(f"a spiking layer needs a preceding layer: 1 <= index < {len(weights)}")
    routed = [Dense(w.weight.copy(), w.bias.copy()) for w in weights]
    for index in range(layer_index):
        dense = routed[index]
        dense.weight[:, channel] = 0.0  # nobody else reads the carrier
        dense.weight[channel, :] = 0.0
        dense.weight[channel, channel] = 1.0 if index < layer_index - 1 else np.float32(gain)
        dense.bias[channel] = 0.0
    routed[layer_index].weight[:, channel] = 0.0
    return routed


def rounded_away(rows: int = 16, columns: int = 64, *, seed: int = 0) -> Dense:
    """A layer whose INT8 error is a mean shift, the case bias correction is for.

    Each row holds one weight of magnitude 1 and ``columns - 1`` small positive weights below half a
    quantization step (0.1-0.45 of 1/127): per-channel int8 rounds them all to 0, so with inputs of
    positive mean every output loses ``sum(small weights) * E[x]``, the same on every sample.
    """
    rng = np.random.default_rng(seed)
    weight = rng.uniform(0.1, 0.45, (rows, columns)) / 127
    weight[np.arange(rows), rng.integers(0, columns, rows)] = rng.choice([-1.0, 1.0], rows)
    bias = 0.1 * rng.standard_normal(rows)
    return Dense(weight.astype(np.float32), bias.astype(np.float32))


def chain_model(weights: Sequence[Dense]) -> onnx.ModelProto:
    """The ONNX model of the chain, input ``x`` [batch, C], output ``y`` [batch, C]."""
    channels = weights[0].weight.shape[1]
    nodes = []
    initializers = []
    current = INPUT
    for index, dense in enumerate(weights):
        last = index == len(weights) - 1
        w_name, b_name = f"fc{index}.weight", f"fc{index}.bias"
        initializers += [
            numpy_helper.from_array(dense.weight, w_name),
            numpy_helper.from_array(dense.bias, b_name),
        ]
        gemm_out = OUTPUT if last else f"fc{index}_out"
        nodes.append(
            helper.make_node("Gemm", [current, w_name, b_name], [gemm_out], name=layer_name(index), transB=1)
        )
        if not last:
            current = f"relu{index}_out"
            nodes.append(helper.make_node("Relu", [gemm_out], [current], name=f"relu{index}"))
    graph = helper.make_graph(
        nodes,
        "planted_chain",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", channels])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", weights[-1].weight.shape[0]])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


def save_chain(weights: Sequence[Dense], path: Path) -> Path:
    onnx.save_model(chain_model(weights), str(path))
    return path


def forward(weights: Sequence[Dense], x: np.ndarray) -> list[np.ndarray]:
    """FP32 numpy reference: the input of every layer, then the output (``len(weights) + 1`` arrays)."""
    activations = [x.astype(np.float32)]
    for index, dense in enumerate(weights):
        out = activations[-1] @ dense.weight.T + dense.bias
        activations.append(out if index == len(weights) - 1 else np.maximum(out, 0.0))
    return activations


def inputs(n_samples: int, channels: int = 16, *, seed: int = 1) -> dict[str, np.ndarray]:
    """Standard-normal feeds for the chain's input."""
    rng = np.random.default_rng(seed)
    return {INPUT: rng.standard_normal((n_samples, channels)).astype(np.float32)}


def positive_inputs(n_samples: int, channels: int = 64, *, seed: int = 1) -> dict[str, np.ndarray]:
    """Feeds uniform in [0, 1): inputs with a positive mean, as after a ReLU (see :func:`rounded_away`)."""
    rng = np.random.default_rng(seed)
    return {INPUT: rng.uniform(0.0, 1.0, (n_samples, channels)).astype(np.float32)}


def spiky_inputs(
    n_samples: int, channels: int = 16, *, spikes: int = 2, channel: int = 0, seed: int = 1
) -> dict[str, np.ndarray]:
    """Feeds whose feature ``channel`` is zero except 1.0 in ``spikes`` evenly spread samples."""
    feeds = inputs(n_samples, channels, seed=seed)
    feeds[INPUT][:, channel] = 0.0
    if spikes:
        feeds[INPUT][np.linspace(0, n_samples - 1, spikes).astype(int), channel] = 1.0
    return feeds
