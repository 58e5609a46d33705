"""The TensorRT backend (TensorRT 10.x / 11.x, CUDA 12 or 13, through cuda-python): builds FP32 and
explicit-Q/DQ INT8 engines from ONNX and runs them. Unverified on TensorRT: it cannot be installed on this
project's CI.

``build`` owns building, caching and availability; ``run`` the runner; ``shapes`` the pure shape, dtype and
batch logic; ``api`` and ``cuda`` the TensorRT and cuda-python calls, the seams a fake stands in for in tests.
"""

from __future__ import annotations

from .api import TensorRTLog, TensorRTModule, load_tensorrt
from .build import (
    DEFAULT_BATCH_SIZES,
    ENGINE_CACHE_FORMAT,
    MAX_PARSER_ERRORS_SHOWN,
    MIN_TENSORRT_MAJOR,
    PRECISIONS,
    SUPPORTED_TENSORRT_MAJORS,
    TensorRTBackend,
    count_qdq_nodes,
    cuda_pairing_reason,
    engine_cache_key,
    format_parser_errors,
    tensorrt_wheel_cuda_major,
    timing_cache_filename,
    unavailable_reason,
)
from .cuda import (
    INSTALL_HINT,
    SUPPORTED_CUDA_MAJORS,
    CudaCalls,
    CudaRuntime,
    GpuInfo,
    cuda_check,
    cuda_unavailable_reason,
    current_gpu,
    load_cuda,
)
from .run import TensorRTRunner
from .shapes import (
    Dim,
    ProfileShapes,
    build_profile_shapes,
    check_batch_sizes,
    join_outputs,
    network_profile_shapes,
    onnx_input_dims,
    prepare_feed,
    split_feeds,
)

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "ENGINE_CACHE_FORMAT",
    "INSTALL_HINT",
    "MAX_PARSER_ERRORS_SHOWN",
    "MIN_TENSORRT_MAJOR",
    "PRECISIONS",
    "SUPPORTED_CUDA_MAJORS",
    "SUPPORTED_TENSORRT_MAJORS",
    "CudaCalls",
    "CudaRuntime",
    "Dim",
    "GpuInfo",
    "ProfileShapes",
    "TensorRTBackend",
    "TensorRTLog",
    "TensorRTModule",
    "TensorRTRunner",
    "build_profile_shapes",
    "check_batch_sizes",
    "count_qdq_nodes",
    "cuda_check",
    "cuda_pairing_reason",
    "cuda_unavailable_reason",
    "current_gpu",
    "engine_cache_key",
    "format_parser_errors",
    "join_outputs",
    "load_cuda",
    "load_tensorrt",
    "network_profile_shapes",
    "onnx_input_dims",
    "prepare_feed",
    "split_feeds",
    "tensorrt_wheel_cuda_major",
    "timing_cache_filename",
    "unavailable_reason",
]
