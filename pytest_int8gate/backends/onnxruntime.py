"""ONNX Runtime on the CPU: the embedded default backend.

INT8 runs in one of two modes. ``simulated`` (default) computes each Q/DQ pair in float: the arithmetic
TensorRT's int8 kernels reproduce (weights folded, the FP32 engine's optimisations with every Q/DQ pair
kept; equal to the Q/DQ model run unoptimised within a stated tolerance: see ``simulated.py``). ``fused``
lets ONNX Runtime fuse Q/DQ into its int8 kernels, which are exact on CPUs with VNNI but can saturate on AVX2
CPUs without it; the CPU's features are therefore part of every description.
"""

from __future__ import annotations

import functools
import platform
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..choices import ORT_MODES
from ..errors import BackendError, bounded_text
from .base import BackendInfo, ClosingRunner
from .simulated import SIMULATED_OPTIMIZATION, SIMULATED_SESSION_CONFIG, fold_weight_dequantize

#: ONNX Runtime's graph optimisation levels by the name shown in reports.
OPTIMIZATION_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_NO_QDQ = "session.disable_quant_qdq"

#: CPU flags that decide how ONNX Runtime's int8 kernels behave.
INT8_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


#: Flags of int8 dot-product instructions, with which fused int8 kernels are exact.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")


def int8_flags(cpuinfo: str) -> tuple[str, ...]:
    """The :data:`INT8_CPU_FLAGS` listed in a /proc/cpuinfo text (x86 ``flags``, Arm ``Features`` lines)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return tuple(f for f in INT8_CPU_FLAGS if f in flags)


@functools.cache
def cpu_features() -> tuple[str, ...]:
    """The int8-relevant instruction-set flags of this CPU (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        return int8_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return ()


def has_vnni(features: tuple[str, ...] | None = None) -> bool:
    """Whether ``features`` (default: this CPU's) include an int8 dot-product instruction."""
    return any(f in (cpu_features() if features is None else features) for f in VNNI_FLAGS)


def device_text(features: tuple[str, ...] | None = None) -> str:
    """``cpu <machine> (VNNI: <flags>)`` or ``(no VNNI: ...)`` for ``features`` (default: this CPU's)."""
    features = cpu_features() if features is None else features
    vnni = "VNNI" if has_vnni(features) else "no VNNI"
    return f"cpu {platform.machine()} ({vnni}: {' '.join(features) or 'no int8 flags known'})"


_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\)")


def build_failure(precision: str, model: onnx.ModelProto, exc: Exception) -> str:
    """One sentence for a session that would not build; an op at an opset newer than this ONNX Runtime
    implements is named as the model's opset (the Q/DQ nodes the gate inserts take the model's opset)."""
    missing = _NO_KERNEL.search(str(exc))
    if missing is not None:
        op, version = missing.group(1), int(missing.group(2))
        newest = newest_cpu_kernel(op)
        opset = next((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), version)
        if newest is not None and version > newest:
            return (
                f"the model's opset {opset} is newer than ONNX Runtime {ort.__version__} supports for {op} "
                f"(its newest {op} is from opset {newest}); re-export the model at opset {newest} or lower, "
                "or upgrade onnxruntime."
            )
    return f"ONNX Runtime could not build the {precision} model: {bounded_text(str(exc))}"


@functools.cache
def newest_cpu_kernel(op: str) -> int | None:
    """The newest opset of ``op`` (default domain) that ONNX Runtime's CPU provider implements."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        versions = [
            int(kernel.version_range[0])
            for kernel in state.get_all_opkernel_def()
            if kernel.op_name == op and kernel.domain in ("", "ai.onnx") and "CPU" in kernel.provider
        ]
    except Exception:  # not a public API: without it the raw message stands
        return None
    return max(versions, default=None)


def optimization_text(level: str, session_config: Mapping[str, str] | None = None) -> str:
    """How a session is optimised, as reports show it: the level, and whether Q/DQ transformers are off."""
    return level + (", Q/DQ transformers off" if dict(session_config or {}).get(_NO_QDQ) == "1" else "")


class OrtRunner(ClosingRunner):
    """One ONNX Runtime CPU session; ``close()`` releases it."""

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        precision: str,
        optimize: bool,
        threads: int = 0,
        mode: str = "",
        session_config: Mapping[str, str] | None = None,
        optimization: str | None = None,
    ) -> None:
        """``optimize`` chooses ONNX Runtime's "all" or "disabled" graph optimisation; ``optimization``
        names another level (one of :data:`OPTIMIZATION_LEVELS`) instead; ``session_config`` entries are
        passed to ``SessionOptions.add_session_config_entry``."""
        level = optimization or ("all" if optimize else "disabled")
        if level not in OPTIMIZATION_LEVELS:
            raise BackendError(f"unknown ONNX Runtime optimisation level {level!r}.")
        options = ort.SessionOptions()
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(key, value)
        options.graph_optimization_level = OPTIMIZATION_LEVELS[level]
        # 4 (fatal only): a failure reaches the user once, as the one sentence BackendError makes of it, not
        # also as ONNX Runtime's own coloured log line
        options.log_severity_level = 4
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise BackendError(build_failure(precision, model, exc)) from exc
        self._output_names = tuple(o.name for o in self._session.get_outputs())
        self._info = BackendInfo(
            backend="onnxruntime",
            version=ort.__version__,
            device=device_text(),
            precision=precision,
            mode=mode,
            options={
                "graph_optimization": optimization_text(level, session_config),
                "threads": str(threads or "auto"),
            },
        )

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._output_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise BackendError(f"the ONNX Runtime {self._info.precision} runner was closed.")
        try:
            values = self._session.run(None, dict(feeds))
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed to run the {self._info.precision} model: {exc}") from exc
        return {name: np.asarray(value) for name, value in zip(self._output_names, values, strict=True)}

    def describe(self) -> BackendInfo:
        return self._info

    def close(self) -> None:
        """Drop the session (ONNX Runtime frees its memory and thread pool with it); idempotent."""
        self._session = None


class OrtBackend:
    """FP32 and INT8 sessions on the CPU execution provider."""

    name = "onnxruntime"

    def __init__(self, mode: str = "simulated", threads: int = 0) -> None:
        if mode not in ORT_MODES:
            raise BackendError(
                f"unknown ONNX Runtime INT8 mode {mode!r}; choose one of {', '.join(ORT_MODES)}."
            )
        self.mode = mode
        self.threads = threads

    def fp32_runner(self, model: onnx.ModelProto) -> OrtRunner:
        return OrtRunner(model, precision="fp32", optimize=True, threads=self.threads)

    def int8_runner(self, model: onnx.ModelProto) -> OrtRunner:
        if self.mode == "fused":
            return OrtRunner(model, precision="int8", optimize=True, threads=self.threads, mode=self.mode)
        # Simulated: every Q/DQ pair computed in float, on the FP32 engine's kernels (simulated.py).
        folded, _ = fold_weight_dequantize(model)
        return OrtRunner(
            folded,
            precision="int8",
            optimize=False,
            optimization=SIMULATED_OPTIMIZATION,
            session_config=SIMULATED_SESSION_CONFIG,
            threads=self.threads,
            mode=self.mode,
        )

    def describe(self) -> BackendInfo:
        return BackendInfo(
            backend="onnxruntime",
            version=ort.__version__,
            device=device_text(),
            precision="int8",
            mode=self.mode,
            # the INT8 engine's optimisation decides its outputs (a key of the outputs kept in the cache)
            options={
                "int8_graph_optimization": "all"
                if self.mode == "fused"
                else optimization_text(SIMULATED_OPTIMIZATION, SIMULATED_SESSION_CONFIG),
                "threads": str(self.threads or "auto"),
            },
        )
