"""The thresholds and sample counts of the diagnostics, in one place: each says what it bounds and why."""

from __future__ import annotations

#: Samples of calibration and evaluation data the model-running checks use (bounds their cost).
DIAGNOSTIC_SAMPLES = 128
#: Samples the fused-vs-simulated and determinism checks run twice: saturation shows on most samples.
REPEAT_SAMPLES = 32
#: A tensor is reported as clipped when at least this fraction of its evaluation values exceed its amax...
CLIP_RATE_LIMIT = 0.01
#: ...and at least this many times the fraction of calibration values that do (calibrators clip on purpose).
CLIP_RATE_FACTOR = 4.0
#: Median ratio of evaluation to calibration spread (std) beyond which inputs are differently scaled.
SCALE_RATIO_LIMIT = 4.0
#: Mean difference, in pooled standard deviations, beyond which inputs are differently shifted.
SHIFT_LIMIT = 1.0
#: |mean| below this many standard deviations counts as mean-subtracted.
CENTRED_LIMIT = 0.25
#: Largest relative L2 error (per sample) of the FP32 engine against its reference.
PARITY_TOLERANCE = 1e-3
#: Fused and simulated INT8 agree when the mean cosine of their outputs reaches this...
FIDELITY_COSINE = 0.999
#: ...and they pick the same class on at least this fraction of samples...
FIDELITY_AGREEMENT = 0.99
#: ...or fused strays from simulated by at most this fraction of simulated INT8's own error against FP32.
FIDELITY_ERROR_RATIO = 0.5
#: A tensor whose range leaves at least this many bits of the symmetric int8 range unused is one-sided.
ONE_SIDED_BITS = 0.5
#: Tensors named in one finding's message (all of them are in its details).
MAX_LISTED = 6
#: Below this many bytes of weights the diagnostics' own sessions run on one thread: creating ONNX
#: Runtime's thread pool costs more (measured 6-16 ms a session) than a small model's subset pass.
SMALL_MODEL_BYTES = 4 << 20
