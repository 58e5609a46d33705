"""Where one gate's time goes: seconds per stage (load, calibrate, quantize, FP32 and INT8 evaluation, the
comparison itself, diagnostics, search), measured with one stopwatch whose stages nest.

A stage entered inside another pauses the outer one, so the seconds add up to the wall time without double
counting (calibration that happens lazily inside quantization is calibration, not quantization). Runners
wrapped in :class:`TimedRunner` charge their runs during the ``compare`` stage (the evaluation of the gate's
plan) to their own stage, so ``compare`` keeps only the metrics' own time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import numpy as np

from .backends.base import BackendInfo, Runner

#: The stages of a gate, in the order they happen (the keys of :attr:`StageTimer.seconds`, with ``_s``).
STAGES = ("load", "calibrate", "quantize", "fp32_eval", "int8_eval", "compare", "diagnostics", "search")


class StageTimer:
    """Seconds per stage; ``with timer.stage("calibrate"):`` charges the block to that stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._open: list[list[object]] = []  # [name, since] of each entered stage, innermost last

    @property
    def current(self) -> str | None:
        return str(self._open[-1][0]) if self._open else None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        now = time.perf_counter()
        if self._open:
            self._charge(self._open[-1], now)
        self._open.append([name, now])
        try:
            yield
        finally:
            now = time.perf_counter()
            self._charge(self._open.pop(), now)
            if self._open:
                self._open[-1][1] = now

    def _charge(self, entry: list[object], now: float) -> None:
        name, since = str(entry[0]), float(entry[1])  # type: ignore[arg-type]
        self.seconds[name] = self.seconds.get(name, 0.0) + now - since
        entry[1] = now

    def as_dict(self) -> dict[str, float]:
        """``{"<stage>_s": seconds}`` for every stage that took time, in :data:`STAGES` order."""
        ordered = [name for name in STAGES if name in self.seconds]
        ordered += sorted(name for name in self.seconds if name not in STAGES)
        return {f"{name}_s": self.seconds[name] for name in ordered}


class TimedRunner:
    """A runner whose runs during the ``compare`` stage are charged to ``stage`` (e.g. ``fp32_eval``)."""

    def __init__(self, runner: Runner, timer: StageTimer, stage: str) -> None:
        self.inner = runner
        self._timer = timer
        self._stage = stage

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.inner.output_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._timer.current != "compare":
            return self.inner.run(feeds)
        with self._timer.stage(self._stage):
            return self.inner.run(feeds)

    def describe(self) -> BackendInfo:
        return self.inner.describe()

    def __getattr__(self, name: str) -> Any:
        # anything else a backend's runner offers (e.g. TensorRT's max_batch) reads through unchanged
        return getattr(self.inner, name)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> TimedRunner:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
