"""The names users choose among (calibrators, bisection strategies, repair rungs, backends, ONNX Runtime
modes) and the defaults several surfaces share, in a module that imports nothing heavy: option parsing,
manifest validation and reports name them without loading an algorithm (the pytest plugin imports this
module in every pytest run).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from .errors import Int8GateError


class RepairAction(str, enum.Enum):
    """The rung of the repair ladder that settled an offending layer; all but FLOAT keep it in INT8."""

    CALIBRATOR = "calibrator"  # another calibrator's amax for its activation inputs
    EQUALIZE = "equalize"  # cross-layer equalization with the layer producing its input
    BIAS_CORRECTION = "bias_correction"  # its bias absorbs the mean output error INT8 adds
    SMOOTHQUANT = "smoothquant"  # its input's outlier channels migrate into its weight (SmoothQuant)
    FLOAT = "float"  # kept in float

    def __str__(self) -> str:
        return self.value


#: Calibrators whose amax a plan may ask for (the names a calibration table stores amax under).
CALIBRATORS: tuple[str, ...] = ("entropy", "max", "mse", "percentile")
#: How the search walks the quantized layers (see bisect.py): adaptive (sensitivity-ordered binary search
#: for a few strong culprits, the shortest passing prefix of ranked entries when error is spread thin),
#: binary (topological prefix bisection), linear (the seed method).
STRATEGIES: tuple[str, ...] = ("adaptive", "binary", "linear")
DEFAULT_STRATEGY = "adaptive"
#: Rungs of the repair ladder a user may enable, in the order they are tried; float always comes last.
REPAIRS: tuple[str, ...] = tuple(action.value for action in RepairAction if action is not RepairAction.FLOAT)
#: Backends that build engines; ``auto`` picks TensorRT when it and a GPU are present.
BACKEND_NAMES: tuple[str, ...] = ("onnxruntime", "tensorrt", "auto")
#: How ONNX Runtime runs a Q/DQ model: simulated (Q/DQ in float, what TensorRT computes) or fused kernels.
ORT_MODES: tuple[str, ...] = ("simulated", "fused")
#: How cross-layer equalization picks each channel's scale (equalize.py).
EQUALIZATION_RULES: tuple[str, ...] = ("weights", "activations")
#: SmoothQuant migration strengths tried by the repair ladder, the paper's default first (smoothquant.py).
SMOOTHQUANT_ALPHAS: tuple[float, ...] = (0.5, 0.75, 0.25)
#: A rewritten FP32 model (equalized, smoothed) whose outputs move by more than this relative to the largest
#: output is not function-preserving: measured float32 rounding is ~1e-7 relative (7.6e-6 on outputs of 45).
FP32_TOLERANCE = 1e-4
#: Where Q/DQ pairs go (see placement.py): weighted layers' inputs, or TensorRT's fusion-aware rules.
PLACEMENTS: tuple[str, ...] = ("minimal", "tensorrt")
DEFAULT_PLACEMENT = "minimal"
#: Fewer calibration samples than this is a warning (500, as NVIDIA's INT8 guides suggest; 0: no check).
DEFAULT_MIN_CALIB_SAMPLES = 500


def check_repairs(repairs: Iterable[str], source: str) -> tuple[str, ...]:
    """The rungs in ladder order; an unknown rung is an error naming the valid ones."""
    given = list(repairs)
    unknown = [r for r in given if r not in REPAIRS]
    if unknown:
        raise Int8GateError(f"{source}: unknown repair {unknown[0]!r}; choose from {', '.join(REPAIRS)}.")
    return tuple(r for r in REPAIRS if r in given)
