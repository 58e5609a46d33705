"""The plain result types of a gate: findings, the comparison of INT8 with FP32, judged metrics, the search's
offenders and verified fix, and the verdict that carries them all.

Nothing here runs a model or imports an algorithm (numpy and the standard library, plus the declared
budget): reports, the JSON codec and the plugin read these types without loading ONNX or ONNX Runtime.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .budget import Budget
from .choices import RepairAction as RepairAction  # the names live with the other choices
from .errors import NonFiniteOutputError
from .output_kinds import OutputProfile

# ---- diagnostics' findings ------------------------------------------------------------------------

Severity = Literal["info", "warning", "failure"]
#: Display order: what fails the gate first.
SEVERITIES: tuple[Severity, ...] = ("failure", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One diagnostic result: what was found, how bad it is, and what to do about it."""

    code: str
    severity: Severity
    message: str
    fix: str
    details: Mapping[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "fix": self.fix,
            "details": _plain(self.details),
        }


def _plain(value: object) -> object:
    """JSON-safe copy: numpy scalars to Python numbers, non-finite floats to strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def sort_findings(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """Failures first, then warnings, then info; the checks' order within a severity."""
    return tuple(sorted(findings, key=lambda f: SEVERITIES.index(f.severity)))


def severity_counts(findings: Iterable[Finding]) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(SEVERITIES, 0)
    for finding in findings:
        counts[finding.severity] += 1
    return counts


class NonFiniteTensorError(NonFiniteOutputError):
    """NaN/Inf in a model output, with the finding that names the first tensor where it appears."""

    def __init__(self, message: str, finding: Finding) -> None:
        super().__init__(message)
        self.findings = (finding,)


# ---- INT8 against FP32, and the judged budget ------------------------------------------------------


@dataclass(frozen=True)
class OutputComparison:
    """INT8 against FP32 on one output: every measured number, by metric name."""

    output_name: str
    num_samples: int
    fp32: Mapping[str, float]
    int8: Mapping[str, float]
    per_sample_cosine: np.ndarray = field(repr=False, compare=False)
    #: Per-sample booleans for confidence intervals: ``fp32_top1``/``int8_top1`` (and top5) say whether each
    #: precision got the label right, ``top1_agreement`` whether both picked the same class.
    hits: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    #: The output's kind and how its FP32 values vary across samples (None only for an empty comparison).
    profile: OutputProfile | None = field(default=None, compare=False)
    #: True for the output the labels (and a user KPI) belong to.
    labelled: bool = False

    def metric(self, name: str) -> float:
        return self.int8[name]


@dataclass(frozen=True)
class Comparison:
    """INT8 against FP32 on every gated output. The primary output (the labelled one, else the first) also
    answers for the comparison as a whole: ``comparison.int8`` is the primary output's numbers."""

    outputs: tuple[OutputComparison, ...]

    @property
    def primary(self) -> OutputComparison:
        return next((o for o in self.outputs if o.labelled), self.outputs[0])

    def output(self, name: str) -> OutputComparison:
        return next(o for o in self.outputs if o.output_name == name)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.output_name for o in self.outputs)

    @property
    def output_name(self) -> str:
        return self.primary.output_name

    @property
    def num_samples(self) -> int:
        return self.primary.num_samples

    @property
    def fp32(self) -> Mapping[str, float]:
        return self.primary.fp32

    @property
    def int8(self) -> Mapping[str, float]:
        return self.primary.int8

    @property
    def per_sample_cosine(self) -> np.ndarray:
        return self.primary.per_sample_cosine

    @property
    def hits(self) -> Mapping[str, np.ndarray]:
        return self.primary.hits

    def metric(self, name: str) -> float:
        return self.int8[name]


@dataclass(frozen=True)
class MetricResult:
    """One budget line: the FP32 and INT8 values, the delta, the limit and the outcome."""

    name: str
    fp32: float | None
    int8: float
    delta: float | None
    limit: float
    upper: bool
    passed: bool
    #: 95 % confidence interval of the observed number (accuracy-type metrics only; see stats.py).
    ci95: tuple[float, float] | None = None
    #: True when the pass also required the interval's bound to be within the limit (--int8-strict-ci).
    strict_ci: bool = False
    #: The model output this line judges.
    output: str = ""
    #: True for the gate's primary output (the labelled one, else the first): its lines go by the bare name.
    primary: bool = True

    @property
    def key(self) -> str:
        """The line's name in tables and reports: ``cosine``, or ``cosine@second`` on another output."""
        return self.name if self.primary or not self.output else f"{self.name}@{self.output}"

    @property
    def observed(self) -> float:
        """The number compared with the limit (the drop for ``*_drop`` metrics)."""
        return -self.delta if self.delta is not None else self.int8

    def as_dict(self) -> dict[str, object]:
        return {
            "fp32": self.fp32,
            "int8": self.int8,
            "delta": self.delta,
            "limit": self.limit,
            "op": "<=" if self.upper else ">=",
            "passed": self.passed,
            "output": self.output,
        }


# ---- the search: offenders, their repairs, the verified fix ----------------------------------------


@dataclass(frozen=True)
class OffendingLayer:
    """A layer whose quantization breaks the budget, and what the search did about it."""

    index: int
    name: str
    op_type: str
    metrics: dict[str, float]  # the budget's metrics on the subset when this layer was added
    #: The rung that settled it: another calibrator, equalization, bias correction (all stay INT8) or float.
    action: RepairAction
    calibrator: str | None = None
    producer: str | None = None  # the layer it was equalized with
    attempts: tuple[str, ...] = ()  # the rungs tried before, and why a rung could not be tried
    alpha: float | None = None  # the SmoothQuant migration strength that settled it

    def as_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "name": self.name,
            "op": self.op_type,
            "metrics": self.metrics,
            "action": self.action.value,
            "calibrator": self.calibrator,
            "producer": self.producer,
            "attempts": list(self.attempts),
            "alpha": self.alpha,
        }


@dataclass(frozen=True)
class LayerSensitivity:
    """SQNR (dB) of a layer's own output when only that layer is quantized, FP32 inputs."""

    name: str
    op_type: str
    sqnr_db: float
    index: int = -1  # the layer's position in the model's topological layer list (-1: unknown)


@dataclass(frozen=True)
class VerifiedFix:
    """The repaired plan, re-evaluated on the full evaluation set and on the samples the search never saw.

    ``passed`` needs both: a plan that meets the budget where it was searched but not on the unseen
    samples did not generalise and is no fix.
    """

    exclude: tuple[str, ...]
    overrides: dict[str, str]
    results: tuple[MetricResult, ...]
    passed: bool
    equalize: tuple[str, ...] = ()  # every layer the fix's plan equalizes (the spec's and the repairs')
    bias_correction: tuple[str, ...] = ()  # the same for bias correction
    fp32_model: str | None = None  # the rewritten FP32 model to deploy (when equalize is used)
    fp32_sha256: str | None = None
    fp32_max_abs_difference: float | None = None  # rewritten vs original FP32, full evaluation set
    fp32_reference_max_abs: float | None = None  # the largest |output| there, the difference's scale
    calibrator: str | None = None  # the calibrator the fix sets for the whole model (None: the spec's)
    #: The budget judged on the evaluation samples the search never used (empty: none were held out).
    unseen_results: tuple[MetricResult, ...] = ()
    unseen_samples: int = 0
    #: The fix's cost: layers it runs in INT8 (of the spec plan's quantized layers) and share of MACs.
    int8_layers: int = 0
    quantized_layers: int = 0  # what the spec's plan quantizes
    int8_mac_share: float | None = None

    @property
    def entries(self) -> int:
        """How many entries the fix adds to the spec (a calibrator, a layer in float, an override...)."""
        return (
            (1 if self.calibrator else 0)
            + len(self.exclude)
            + len(self.overrides)
            + len(self.equalize)
            + len(self.bias_correction)
            + len(self.smoothquant)
        )

    def cost(self) -> str:
        """One line, e.g. ``2 entries: 0 layers in float, 1 override; 51 of 51 layers and 100.0 % of MACs
        in INT8``."""
        share = "" if self.int8_mac_share is None else f" and {100 * self.int8_mac_share:.1f} % of MACs"
        return (
            f"{self.entries} {'entry' if self.entries == 1 else 'entries'}: {len(self.exclude)} "
            f"{'layer' if len(self.exclude) == 1 else 'layers'} in float, {len(self.overrides)} "
            f"{'override' if len(self.overrides) == 1 else 'overrides'}; {self.int8_layers} of "
            f"{self.quantized_layers} layers{share} in INT8"
        )
    #: every layer the fix's plan smooths (SmoothQuant), with its alpha
    smoothquant: Mapping[str, float] = field(default_factory=dict)

    @property
    def generalised(self) -> bool | None:
        """Whether the fix meets the budget on the unseen samples (None: nothing was held out)."""
        if not self.unseen_results:
            return None
        return all(r.passed for r in self.unseen_results)

    def manifest_snippet(self) -> str:
        lines = []
        if self.calibrator:
            lines.append(f"calibrator: {self.calibrator}")
        if self.exclude:
            lines.append("exclude:")
            lines.extend(f"  - {_yaml_str(name)}" for name in self.exclude)
        if self.overrides:
            lines.append("calibrator_overrides:")
            lines.extend(f"  {_yaml_str(name)}: {calib}" for name, calib in self.overrides.items())
        for key, names in (("equalize", self.equalize), ("bias_correction", self.bias_correction)):
            if names:
                lines.append(f"{key}:")
                lines.extend(f"  - {_yaml_str(name)}" for name in names)
        if self.smoothquant:
            lines.append("smoothquant:")
            lines.extend(f"  {_yaml_str(name)}: {alpha:g}" for name, alpha in self.smoothquant.items())
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "exclude": list(self.exclude),
            "calibrator_overrides": self.overrides,
            "equalize": list(self.equalize),
            "bias_correction": list(self.bias_correction),
            "smoothquant": dict(self.smoothquant),
            "fp32_model": self.fp32_model,
            "fp32_sha256": self.fp32_sha256,
            "fp32_max_abs_difference": self.fp32_max_abs_difference,
            "fp32_reference_max_abs": self.fp32_reference_max_abs,
            "calibrator": self.calibrator,
            "passed": self.passed,
            "metrics": {r.name: r.as_dict() for r in self.results},
            "unseen_samples": self.unseen_samples,
            "unseen_metrics": {r.name: r.as_dict() for r in self.unseen_results},
            "entries": self.entries,
            "float_layers": len(self.exclude),
            "int8_layers": self.int8_layers,
            "quantized_layers": self.quantized_layers,
            "int8_mac_share": self.int8_mac_share,
            "manifest": self.manifest_snippet(),
        }


def _yaml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class BisectionReport:
    """What the bisection found; ``evaluations`` counts every INT8 evaluation it made."""

    strategy: str
    total_layers: int
    subset_size: int
    search_evaluations: int
    repair_evaluations: int
    baseline_evaluations: int  # the whole plan on the search subset, when the search did not reuse it
    verification_evaluations: int  # full-set and unseen-sample evaluations of candidate fixes
    offenders: tuple[OffendingLayer, ...]
    sensitivity: tuple[LayerSensitivity, ...]
    fix: VerifiedFix | None
    notes: tuple[str, ...]
    duration_s: float
    #: The spec's plan under each other calibrator for the whole model, before the per-layer search.
    global_evaluations: int = 0
    #: Dropping each entry of a passing fix it may not need, on the search samples.
    pruning_evaluations: int = 0
    #: The entries pruning dropped from the fix (e.g. "fc3 in float"), each measured, the result verified.
    pruned: tuple[str, ...] = ()
    #: The adaptive strategy's walk: "culprits" (sensitivity-ordered binary search) or "spread" (the
    #: shortest passing prefix of ranked entries, INT8 ones first); "" for the binary and linear strategies.
    walk: str = ""
    #: The option that raises the limit that stopped the search ("" when none did).
    stopped_by: str = ""
    #: Samples each phase used: the search samples (``subset_size``), those it never saw, all of them.
    unseen_samples: int = 0
    eval_samples: int = 0

    @property
    def evaluations(self) -> int:
        return (
            self.baseline_evaluations
            + self.global_evaluations
            + self.search_evaluations
            + self.repair_evaluations
            + self.pruning_evaluations
            + self.verification_evaluations
        )

    def phases(self) -> dict[str, dict[str, int]]:
        """Evaluations and samples per phase (baseline, global rungs, search, repair, pruning on the
        search samples; verification on all samples and on those the search never used)."""
        search = {"samples": self.subset_size}
        return {
            "baseline": {"evaluations": self.baseline_evaluations, **search},
            "global_rungs": {"evaluations": self.global_evaluations, **search},
            "search": {"evaluations": self.search_evaluations, **search},
            "repair": {"evaluations": self.repair_evaluations, **search},
            "pruning": {"evaluations": self.pruning_evaluations, **search},
            "verification": {
                "evaluations": self.verification_evaluations,
                "samples": self.eval_samples,
                "unseen_samples": self.unseen_samples,
            },
        }

    def as_dict(self) -> dict[str, object]:
        return {
            "strategy": self.strategy,
            "total_layers": self.total_layers,
            "subset_size": self.subset_size,
            "baseline_evaluations": self.baseline_evaluations,
            "global_evaluations": self.global_evaluations,
            "verification_evaluations": self.verification_evaluations,
            "search_evaluations": self.search_evaluations,
            "repair_evaluations": self.repair_evaluations,
            "pruning_evaluations": self.pruning_evaluations,
            "evaluations": self.evaluations,
            "phases": self.phases(),
            "walk": self.walk,
            "pruned": list(self.pruned),
            "stopped_by": self.stopped_by,
            "unseen_samples": self.unseen_samples,
            "eval_samples": self.eval_samples,
            "offending_layers": [o.as_dict() for o in self.offenders],
            "sensitivity": [
                {"index": s.index, "name": s.name, "op": s.op_type, "sqnr_db": _finite_or_none(s.sqnr_db)}
                for s in self.sensitivity
            ],
            "fix": None if self.fix is None else self.fix.as_dict(),
            "notes": list(self.notes),
            "duration_s": round(self.duration_s, 3),
        }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ---- the verdict -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateVerdict:
    """The judgement of one gated model, with everything needed to explain it."""

    name: str
    model: str
    backend: Mapping[str, object]
    backend_text: str
    calibrator: str
    calibration_samples: int
    eval_samples: int
    output_name: str
    budget: Budget
    results: tuple[MetricResult, ...]
    fp32: Mapping[str, float]
    int8: Mapping[str, float]
    plan: Mapping[str, object]
    quantized_layers: int
    total_layers: int
    evaluations: int
    duration_s: float
    notes: tuple[str, ...] = ()
    cache_hits: tuple[str, ...] = ()
    bisection: BisectionReport | None = None
    #: Findings of the INT8 debugging checks (diagnostics/); one of severity "failure" fails the gate.
    diagnostics: tuple[Finding, ...] = ()
    #: With no budget configured: which default limits judged each output, and why.
    default_budget: str = ""
    #: Every gated output: name, kind, labelled, and the numbers measured on it (fp32, int8).
    outputs: tuple[Mapping[str, object], ...] = ()
    #: What runs in INT8 (coverage.Coverage.as_dict): layers, share of MACs, what stays float and why.
    coverage: Mapping[str, object] = field(default_factory=dict)
    #: Seconds per stage, ``"<stage>_s"`` in the order of timings.STAGES (load, calibrate, quantize,
    #: fp32_eval, int8_eval, compare, diagnostics, search): those that took time in this run.
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results) and not self.failed_diagnostics

    @property
    def effective_limits(self) -> dict[str, float]:
        """The configured limits, or with none configured the defaults that judged the primary output."""
        if self.budget.limits:
            return dict(self.budget.limits)
        return {r.name: r.limit for r in self.results if r.output in ("", self.output_name)}

    @property
    def failed_diagnostics(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.diagnostics if f.severity == "failure")

    @property
    def failed_metrics(self) -> tuple[MetricResult, ...]:
        return tuple(r for r in self.results if not r.passed)
