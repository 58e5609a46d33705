"""The exceptions every stage raises: one clear sentence naming the file, tensor or key at fault."""

from __future__ import annotations

import reprlib


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


class CacheError(Int8GateError):
    """The artefact cache directory cannot be created, locked, read or written."""


class NonFiniteOutputError(Int8GateError):
    """A runner produced NaN or Inf: a failure, never a number."""


#: Characters of a user-supplied value that a message shows at most (see :func:`bounded_repr`).
SHOWN_CHARS = 80


class _BoundedRepr(reprlib.Repr):
    """``reprlib`` limits per level; this also bounds integers without formatting them in full (a
    4,300-digit integer cannot even be formatted) and the text of any other object."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxtuple = self.maxlist = self.maxarray = self.maxdict = 4
        self.maxset = self.maxfrozenset = self.maxdeque = 4
        self.maxstring = self.maxother = max(limit, 12)
        self.maxlong = 40

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:
            try:
                digits = str(len(str(abs(x))))
            except ValueError:  # more digits than Python converts to text
                digits = f"about {int(x.bit_length() * 0.30103) + 1}"
            return f"<an integer of {digits} digits>"
        return super().repr_int(x, level)


def bounded_repr(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, at most about ``limit`` characters, in time bounded by the
    limit (never by the value: a YAML alias bomb nests 10**9 items behind a few hundred bytes)."""
    text = _BoundedRepr(limit).repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def bounded_text(text: str, limit: int = 400) -> str:
    """``text`` (another library's message) on one line, cut to ``limit`` characters with a marker."""
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if len(line) > limit:
        line = f"{line[: limit - 30]}... ({len(line)} characters)"
    return line


class CoverageError(Int8GateError):
    """The INT8 model quantized nothing: there is nothing for the gate to judge."""
