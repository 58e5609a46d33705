"""pytest-int8gate: gate INT8 post-training quantization of ONNX models in pytest."""

from __future__ import annotations

__version__ = "0.1.0"
