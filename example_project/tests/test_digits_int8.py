"""The example repository's own INT8 tests, written with the pytest-int8gate fixtures and marker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def int8_model() -> Path:
    # overrides the plugin's fixture: this repository gates one model by default
    return HERE / "models" / "digits_cnn.onnx"


@pytest.mark.int8_budget(top1_drop=0.01, cosine=0.99)
def test_digits_cnn_int8_accuracy(int8_gate):
    verdict = int8_gate.check()
    assert verdict.int8["top1"] >= 0.95


@pytest.mark.int8_budget(top1_agreement=0.98)
def test_digits_cnn_percentile_calibration(int8_gate):
    int8_gate.check(calibrator="percentile")


def test_engines_agree_on_a_batch(fp32_engine, int8_engine):
    batch = np.load(HERE / "data" / "eval.npz")["input"][:64]
    fp32 = fp32_engine.run({"input": batch})["logits"]
    int8 = int8_engine.run({"input": batch})["logits"]
    assert (fp32.argmax(axis=1) == int8.argmax(axis=1)).mean() >= 0.95
