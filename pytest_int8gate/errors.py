"""The exceptions every stage raises: one clear sentence naming the file, tensor or key at fault."""

from __future__ import annotations


class Int8GateError(Exception):
    """Base class: a problem the user can fix, stated in one sentence."""


class ModelError(Int8GateError):
    """The ONNX model cannot be loaded, validated or prepared for quantization."""


class DataError(Int8GateError):
    """Calibration or evaluation data is unreadable or does not match the model."""


class CalibrationError(Int8GateError):
    """Calibration statistics or a calibration table are unusable or stale."""


class BudgetError(Int8GateError):
    """A budget has an unknown key or a value out of range."""


class BackendError(Int8GateError):
    """A backend is unknown, unavailable, or failed to build or run a model."""


class NonFiniteOutputError(Int8GateError):
    """A runner produced NaN or Inf: a failure, never a number."""
