"""The example project's real model and data files, as the tests use them, and the data options of an inner
pytest run (``pytester``) whose root holds copies of them (the ``project`` fixture of ``conftest.py``)."""

from __future__ import annotations

from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"
DIGITS = EXAMPLE / "models" / "digits_cnn.onnx"
OUTLIER = EXAMPLE / "models" / "digits_cnn_outlier.onnx"  # planted outlier channel: fails with ``max``
CALIB = EXAMPLE / "data" / "calib.npz"
EVAL = EXAMPLE / "data" / "eval.npz"
LABELS = EXAMPLE / "data" / "eval_labels.npy"
EXAMPLE_FILES = (DIGITS, OUTLIER, CALIB, EVAL, LABELS)

DATA_ARGS = (
    "--int8-calib-data",
    "calib.npz",
    "--int8-eval-data",
    "eval.npz",
    "--int8-labels",
    "eval_labels.npy",
)
