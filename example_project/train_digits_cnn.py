#!/usr/bin/env python
"""Train a small CNN on scikit-learn's ``load_digits`` and export it to ONNX.

Regenerate every asset of ``example_project/`` with::

    pip install torch==2.13.0 scikit-learn onnx onnxruntime
    python example_project/train_digits_cnn.py

Outputs (paths relative to this file's folder):

* ``models/digits_cnn.onnx``          FP32 CNN, input ``input`` [N,1,8,8], output ``logits`` [N,10]
* ``models/digits_cnn_outlier.onnx``  same function, with one planted outlier activation channel
* ``data/calib.npz``                  key ``input``: float32 [600,1,8,8] (drawn from the training split)
* ``data/eval.npz``                   key ``input``: float32 [500,1,8,8] (held out)
* ``data/eval_labels.npy``            int64 [500]

Everything is seeded; the split and the data files are exactly reproducible,
the trained weights are reproducible up to CPU floating-point differences.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from onnx import numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
N_EVAL = 500
N_CALIB = 600
EPOCHS = 40
BATCH_SIZE = 64
LR = 1e-3
OPSET = 17
# Outlier model: factor applied to one conv1 output channel (undone in conv2).
OUTLIER_FACTOR = 400.0

HERE = Path(__file__).resolve().parent
MODELS_DIR = HERE / "models"
DATA_DIR = HERE / "data"
MODEL_PATH = MODELS_DIR / "digits_cnn.onnx"
OUTLIER_MODEL_PATH = MODELS_DIR / "digits_cnn_outlier.onnx"


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # small model; one thread keeps reductions in a fixed order


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.pool(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        x = self.relu4(self.fc1(self.flatten(x)))
        return self.fc2(x)


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_eval, y_eval, x_calib)."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(
        x, y, test_size=N_EVAL, stratify=y, random_state=SEED, shuffle=True
    )
    # Calibration data comes from the training split (standard PTQ practice).
    x_calib, _, _, _ = train_test_split(
        x_train, y_train, train_size=N_CALIB, stratify=y_train, random_state=SEED, shuffle=True
    )
    return (
        np.ascontiguousarray(x_train, dtype=np.float32),
        np.ascontiguousarray(y_train, dtype=np.int64),
        np.ascontiguousarray(x_eval, dtype=np.float32),
        np.ascontiguousarray(y_eval, dtype=np.int64),
        np.ascontiguousarray(x_calib, dtype=np.float32),
    )


def accuracy_torch(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def train(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray) -> DigitsCNN:
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(1, EPOCHS + 1):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if epoch % 5 == 0 or epoch == EPOCHS:
            acc = accuracy_torch(model, x_eval, y_eval)
            print(f"epoch {epoch:3d}  train loss {total / len(xt):.4f}  eval acc {acc:.4f}")
    model.eval()
    return model


def export_onnx(model: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 1, 8, 8, dtype=torch.float32)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,  # legacy TorchScript exporter: stable node names, all weights as initializers
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=OPSET,
        export_params=True,
        do_constant_folding=True,
        keep_initializers_as_inputs=False,
    )


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def conv_relu_conv_pair(model: onnx.ModelProto) -> tuple[onnx.NodeProto, onnx.NodeProto]:
    """Return the first Conv whose output goes through a Relu straight into another Conv."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        relus = consumers.get(node.output[0], [])
        if len(relus) != 1 or relus[0].op_type != "Relu":
            continue
        nxt = consumers.get(relus[0].output[0], [])
        if len(nxt) == 1 and nxt[0].op_type == "Conv":
            return node, nxt[0]
    raise RuntimeError("no Conv -> Relu -> Conv chain found in the exported graph")


def make_outlier_model(
    src: Path, dst: Path, x_calib: np.ndarray, factor: float = OUTLIER_FACTOR
) -> tuple[str, str, int]:
    """Plant a function-preserving outlier activation channel.

    For conv_a -> Relu -> conv_b, scale conv_a's output channel c (weights and
    bias) by ``factor`` and divide conv_b's input channel c weights by
    ``factor``. Relu(F*z) = F*Relu(z) for F > 0, so FP32 logits are unchanged,
    but the activation feeding conv_b now has one channel ~F times larger than
    the others: with a per-tensor int8 scale (absmax/127) every other channel
    rounds to (nearly) zero.
    """
    model = onnx.load(str(src))
    conv_a, conv_b = conv_relu_conv_pair(model)
    inits = {init.name: init for init in model.graph.initializer}
    wa_name, ba_name = conv_a.input[1], conv_a.input[2]
    wb_name = conv_b.input[1]
    wa = numpy_helper.to_array(inits[wa_name]).copy()
    ba = numpy_helper.to_array(inits[ba_name]).copy()
    wb = numpy_helper.to_array(inits[wb_name]).copy()

    # Pick the channel with the largest mean post-ReLU activation on calibration
    # data, so the outlier is active on essentially every input.
    z = _conv2d_nchw(x_calib, wa, ba)
    act_mean = np.maximum(z, 0.0).mean(axis=(0, 2, 3))
    c = int(np.argmax(act_mean))

    wa[c] *= factor
    ba[c] *= factor
    wb[:, c] /= factor
    for name, arr in ((wa_name, wa), (ba_name, ba), (wb_name, wb)):
        inits[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))
    model.doc_string = (
        f"digits_cnn with planted outlier channel {c} between {conv_a.name} and "
        f"{conv_b.name} (factor {factor:g}); FP32 function unchanged"
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return conv_a.name, conv_b.name, c


def _conv2d_nchw(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 stride-1 pad-1 conv in numpy (only used to pick the outlier channel)."""
    n, _cin, h, wd = x.shape
    cout, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
    out = np.zeros((n, cout, h, wd), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i : i + h, j : j + wd], w[:, :, i, j])
    return out + b[None, :, None, None]


def main() -> None:
    seed_everything()
    x_train, y_train, x_eval, y_eval, x_calib = load_split()
    print(f"train {x_train.shape}  calib {x_calib.shape} (from train)  eval {x_eval.shape}")

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(DATA_DIR / "calib.npz", input=x_calib)
    np.savez(DATA_DIR / "eval.npz", input=x_eval)
    np.save(DATA_DIR / "eval_labels.npy", y_eval)

    model = train(x_train, y_train, x_eval, y_eval)
    export_onnx(model, MODEL_PATH)

    onnx_model = onnx.load(str(MODEL_PATH))
    onnx.checker.check_model(onnx_model, full_check=True)
    print("opset:", [(o.domain or "ai.onnx", o.version) for o in onnx_model.opset_import])
    print("nodes:", [(n.name, n.op_type) for n in onnx_model.graph.node])
    print("initializers:", [i.name for i in onnx_model.graph.initializer])

    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_eval)).numpy()
    logits = ort_logits(MODEL_PATH, x_eval)
    print(f"onnxruntime vs torch: max abs diff {np.abs(logits - torch_logits).max():.3e}")
    acc = float((logits.argmax(1) == y_eval).mean())
    print(f"FP32 eval accuracy (onnxruntime) digits_cnn.onnx:         {acc:.4f}")

    conv_a, conv_b, c = make_outlier_model(MODEL_PATH, OUTLIER_MODEL_PATH, x_calib)
    print(f"outlier model: channel {c} of {conv_a} scaled by {OUTLIER_FACTOR:g}, undone in {conv_b}")
    out_logits = ort_logits(OUTLIER_MODEL_PATH, x_eval)
    diff = float(np.abs(out_logits - logits).max())
    print(f"outlier vs plain (onnxruntime, eval): max abs logit diff {diff:.3e}")
    if diff > 1e-3:
        raise SystemExit(f"outlier model changed the FP32 function (max abs diff {diff})")
    out_acc = float((out_logits.argmax(1) == y_eval).mean())
    print(f"FP32 eval accuracy (onnxruntime) digits_cnn_outlier.onnx: {out_acc:.4f}")

    for p in (
        MODEL_PATH,
        OUTLIER_MODEL_PATH,
        DATA_DIR / "calib.npz",
        DATA_DIR / "eval.npz",
        DATA_DIR / "eval_labels.npy",
    ):
        print(f"{os.path.relpath(p, HERE.parent)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
