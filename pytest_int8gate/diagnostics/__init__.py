"""The checks of NVIDIA's INT8 debugging guides, run before any layer is blamed: each problem found is a
:class:`~pytest_int8gate.results.Finding` with a severity, a one-line explanation and the fix.

Most checks are pure functions of measured numbers. The few that must run a model (activation ranges,
CPU fidelity, FP32 parity, determinism, the first non-finite tensor) do so on a bounded subset of the data
(:data:`~pytest_int8gate.diagnostics.limits.DIAGNOSTIC_SAMPLES`). One module per concern:

- ``limits``: the thresholds and sample counts;
- ``parity``: FP32 engine against a reference;
- ``datasets``: calibration set size, preprocessing, shapes, evaluation set size, stale calibration table;
- ``ranges``: clipping and one-sided activations;
- ``nonfinite``: the first NaN/Inf tensor;
- ``engines``: determinism and CPU fidelity;
- ``run``: :func:`run_diagnostics`, all of them for one gate (:func:`model_diagnostics`, the model-running
  ones a rerun may reuse, and :func:`result_diagnostics`, the ones that read the results).

This package re-exports their public names (and, for the import paths callers already use, the finding
types of results.py); its modules import each other directly, never this package.
"""

from __future__ import annotations

# the finding types live in results.py, the default in choices.py; these paths stay importable
from ..choices import DEFAULT_MIN_CALIB_SAMPLES as DEFAULT_MIN_CALIB_SAMPLES
from ..results import SEVERITIES as SEVERITIES
from ..results import Finding as Finding
from ..results import NonFiniteTensorError as NonFiniteTensorError
from ..results import Severity as Severity
from ..results import severity_counts as severity_counts
from ..results import sort_findings as sort_findings
from .datasets import ChannelStats as ChannelStats
from .datasets import channel_axis as channel_axis
from .datasets import channel_stats as channel_stats
from .datasets import check_calibration_size as check_calibration_size
from .datasets import check_calibration_table as check_calibration_table
from .datasets import check_eval_set_size as check_eval_set_size
from .datasets import check_preprocessing as check_preprocessing
from .datasets import check_shapes as check_shapes
from .datasets import input_channel_stats as input_channel_stats
from .engines import Fidelity as Fidelity
from .engines import check_cpu_fidelity as check_cpu_fidelity
from .engines import check_determinism as check_determinism
from .engines import fidelity_of as fidelity_of
from .engines import measure_fidelity as measure_fidelity
from .limits import CENTRED_LIMIT as CENTRED_LIMIT
from .limits import CLIP_RATE_FACTOR as CLIP_RATE_FACTOR
from .limits import CLIP_RATE_LIMIT as CLIP_RATE_LIMIT
from .limits import DIAGNOSTIC_SAMPLES as DIAGNOSTIC_SAMPLES
from .limits import FIDELITY_AGREEMENT as FIDELITY_AGREEMENT
from .limits import FIDELITY_COSINE as FIDELITY_COSINE
from .limits import FIDELITY_ERROR_RATIO as FIDELITY_ERROR_RATIO
from .limits import MAX_LISTED as MAX_LISTED
from .limits import ONE_SIDED_BITS as ONE_SIDED_BITS
from .limits import PARITY_TOLERANCE as PARITY_TOLERANCE
from .limits import REPEAT_SAMPLES as REPEAT_SAMPLES
from .limits import SCALE_RATIO_LIMIT as SCALE_RATIO_LIMIT
from .limits import SHIFT_LIMIT as SHIFT_LIMIT
from .limits import SMALL_MODEL_BYTES as SMALL_MODEL_BYTES
from .nonfinite import diagnose_nonfinite as diagnose_nonfinite
from .nonfinite import exposed_runner as exposed_runner
from .nonfinite import first_nonfinite as first_nonfinite
from .nonfinite import float_node_outputs as float_node_outputs
from .nonfinite import locate_nonfinite as locate_nonfinite
from .parity import check_fp32_parity as check_fp32_parity
from .parity import load_fp32_reference as load_fp32_reference
from .parity import output_parity as output_parity
from .parity import reference_parity as reference_parity
from .parity import run_outputs as run_outputs
from .ranges import ActivationProbe as ActivationProbe
from .ranges import ActivationRange as ActivationRange
from .ranges import bits_lost as bits_lost
from .ranges import check_clipping as check_clipping
from .ranges import check_distribution_shape as check_distribution_shape
from .run import model_diagnostics as model_diagnostics
from .run import result_diagnostics as result_diagnostics
from .run import run_diagnostics as run_diagnostics
from .run import session_threads as session_threads
