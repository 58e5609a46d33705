"""Budgets as declared: the metric keys a budget may limit, their ranges and meanings, and the validated
:class:`Budget` itself (parsing and merging). Judging a measurement against a budget is gate.py's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .errors import BudgetError, bounded_repr


@dataclass(frozen=True)
class MetricSpec:
    """One budget key: what it limits and how."""

    name: str
    measure: str  # key in Comparison.int8 (and .fp32 for drops)
    drop: bool  # limit applies to fp32 - int8
    upper: bool  # True: value <= limit passes; False: value >= limit passes
    low: float
    high: float
    requires: str  # "", "labels", "classes" or "kpi"
    meaning: str


BUDGET_METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec(
            "top1_drop",
            "top1",
            True,
            True,
            0.0,
            1.0,
            "labels",
            "top-1 accuracy lost (fraction, 0.01 = 1 point)",
        ),
        MetricSpec("top5_drop", "top5", True, True, 0.0, 1.0, "labels", "top-5 accuracy lost (fraction)"),
        MetricSpec(
            "top1_agreement",
            "top1_agreement",
            False,
            False,
            0.0,
            1.0,
            "classes",
            "fraction of samples where INT8 and FP32 pick the same class",
        ),
        MetricSpec(
            "cosine", "cosine", False, False, -1.0, 1.0, "", "mean per-sample cosine of INT8 vs FP32 output"
        ),
        MetricSpec("cosine_min", "cosine_min", False, False, -1.0, 1.0, "", "worst per-sample cosine"),
        MetricSpec("sqnr_db", "sqnr_db", False, False, -math.inf, math.inf, "", "output SQNR in dB"),
        MetricSpec(
            "max_abs_error",
            "max_abs_error",
            False,
            True,
            0.0,
            math.inf,
            "",
            "largest absolute output difference",
        ),
        MetricSpec("kpi_drop", "kpi", True, True, -math.inf, math.inf, "kpi", "user KPI lost (fp32 - int8)"),
        MetricSpec(
            "rel_rmse",
            "rel_rmse",
            False,
            True,
            0.0,
            math.inf,
            "",
            "RMS of INT8 - FP32 relative to the FP32 output's spread across samples",
        ),
        MetricSpec(
            "decision_agreement",
            "decision_agreement",
            False,
            False,
            0.0,
            1.0,
            "scores",
            "fraction of score decisions (at 0.5) where INT8 and FP32 agree, for outputs in [0, 1]",
        ),
        MetricSpec(
            "exact_match",
            "exact_match",
            False,
            False,
            0.0,
            1.0,
            "integers",
            "fraction of samples whose integer output INT8 reproduces exactly",
        ),
    )
}

#: Where a budget key can be set, from the least to the most specific: a later source's value wins.
BUDGET_SOURCES = ("ini", "--int8-budget", "manifest", "marker", "int8_gate.check")


def metric_spec(key: str) -> MetricSpec:
    """The budget metric of a report key: ``cosine``, or ``cosine@output`` for a non-primary output."""
    return BUDGET_METRICS[key.partition("@")[0]]


def valid_keys_text() -> str:
    return ", ".join(BUDGET_METRICS)


def _shown(value: object) -> str:
    """A user's value in a message: as written when it is a short text or a float, else a bounded repr
    (never an unbounded one: a 400-digit integer or a YAML alias bomb is not rendered in full)."""
    text = str(value) if isinstance(value, (float, str)) else ""
    return text if text and len(text) <= 40 else bounded_repr(value)


def looser(key: str, value: float, than: float) -> bool:
    """True when limit ``value`` lets more through than ``than`` for metric ``key``."""
    upper = BUDGET_METRICS[key].upper
    return value > than if upper else value < than


@dataclass(frozen=True)
class Budget:
    """Validated metric limits, e.g. ``{"top1_drop": 0.01, "cosine": 0.98}``; empty: the defaults by
    output kind apply (output_kinds.py). ``sources`` says where each key was set; ``loosened`` holds a
    sentence for every key a more specific source set looser than a less specific one."""

    limits: Mapping[str, float] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    loosened: tuple[str, ...] = ()

    @staticmethod
    def from_mapping(
        values: Mapping[str, object], *, source: str = "budget", origin: str | None = None
    ) -> Budget:
        """Validated limits; ``source`` names them in error messages, ``origin`` (default ``source``) is
        the short name of where they were set, kept per key (``ini``, ``manifest``, ``marker``, ...)."""
        limits: dict[str, float] = {}
        for key, raw in values.items():
            spec = BUDGET_METRICS.get(str(key))
            if spec is None:
                raise BudgetError(
                    f"{source}: unknown budget key {key!r}; valid keys are {valid_keys_text()}."
                )
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                raise BudgetError(f"{source}: budget {key} must be a number, not {_shown(raw)}.")
            try:
                value = float(raw)
            except (ValueError, OverflowError):
                raise BudgetError(f"{source}: budget {key} must be a number, not {_shown(raw)}.") from None
            if not math.isfinite(value):
                # a limit of inf/-inf (or 1e400, which reads as inf) lets every value pass: no limit at all
                raise BudgetError(
                    f"{source}: budget {key}={_shown(raw)} is not a finite number; a limit that "
                    "nothing can exceed gates nothing."
                )
            if not spec.low <= value <= spec.high:
                raise BudgetError(
                    f"{source}: budget {key}={_shown(raw)} is out of range [{spec.low}, {spec.high}] "
                    f"({spec.meaning})."
                )
            limits[str(key)] = value
        return Budget(limits, dict.fromkeys(limits, origin or source))

    @staticmethod
    def parse(items: Iterable[str], *, source: str = "--int8-budget", origin: str | None = None) -> Budget:
        """``["top1_drop=0.01", "cosine=0.98"]`` (also accepts comma-separated items)."""
        values: dict[str, object] = {}
        for item in items:
            for part in re.sub(r"\s*=\s*", "=", item).replace(",", " ").split():
                key, sep, value = part.partition("=")
                if not sep or not key or not value:
                    raise BudgetError(f"{source}: {part!r} is not KEY=VALUE (e.g. cosine=0.98).")
                values[key.strip()] = value.strip()
        return Budget.from_mapping(values, source=source, origin=origin)

    def merged(self, override: Budget) -> Budget:
        """This budget with ``override``'s keys replacing or adding to it, key by key; a key ``override``
        sets looser than this budget did is recorded in ``loosened``."""
        loosened = list(self.loosened)
        for key, value in override.limits.items():
            if key in self.limits and looser(key, value, self.limits[key]):
                op = "<=" if BUDGET_METRICS[key].upper else ">="
                loosened.append(
                    f"{key} {op} {value:g} from {override.sources.get(key, 'a later source')} loosens "
                    f"{key} {op} {self.limits[key]:g} from {self.sources.get(key, 'an earlier source')}"
                )
        return Budget(
            {**self.limits, **override.limits},
            {**self.sources, **override.sources},
            (*loosened, *override.loosened),
        )

    def __bool__(self) -> bool:
        return bool(self.limits)

    def text(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.limits.items())

    def sources_text(self) -> str:
        """``cosine=0.99 (manifest), top1_drop=0.01 (ini)``."""
        return ", ".join(f"{k}={v:g} ({self.sources.get(k, 'given')})" for k, v in self.limits.items())
