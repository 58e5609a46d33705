"""What a report holds besides a verdict: a gate that could not be judged, the baseline comparison of a
gate, and the record of one gate in a run (its node id and either outcome)."""

from __future__ import annotations

from dataclasses import dataclass

from ..results import Finding, GateVerdict

#: Changes smaller than this are float noise, neither better nor worse.
NOISE = 1e-9


@dataclass(frozen=True)
class GateError:
    """A gate that could not be judged (bad model, data that does not fit, missing backend, ...)."""

    name: str
    model: str
    message: str  # the one-sentence reason
    backend: str = ""  # the requested backend (nothing may have been built)
    calibrator: str = ""
    diagnostics: tuple[Finding, ...] = ()  # what was found about the error (the first NaN tensor)
    duration_s: float = 0.0


@dataclass(frozen=True)
class MetricChange:
    """One metric of one gate: baseline and current value (drops as drops), and whether it got worse."""

    metric: str
    baseline: float
    current: float
    lower_is_better: bool
    tolerance: float | None = None

    @property
    def change(self) -> float:
        if self.current == self.baseline:  # also inf == inf
            return 0.0
        return self.current - self.baseline

    @property
    def worsening(self) -> float:
        """How much worse (> 0) or better (< 0) the metric got."""
        return self.change if self.lower_is_better else -self.change

    @property
    def worse(self) -> bool:
        return self.worsening > NOISE

    @property
    def better(self) -> bool:
        return self.worsening < -NOISE

    @property
    def regressed(self) -> bool:
        return self.tolerance is not None and self.worsening > self.tolerance + NOISE


@dataclass(frozen=True)
class GateBaseline:
    """One gate against the baseline: ``new`` (the baseline has no gate of that name) or ``compared``."""

    status: str
    verdict: str | None = None  # the baseline gate's verdict
    changes: tuple[MetricChange, ...] = ()

    @property
    def regressed(self) -> bool:
        return any(c.regressed for c in self.changes)


@dataclass(frozen=True)
class GateRecord:
    """One gate of a run as the reports see it: a verdict or an error, with where it ran.

    ``declared`` is the verdict word the record was written with; a record read back is a failure when
    either its word or its metrics say so (a report never shows a pass the record does not support).
    """

    nodeid: str
    outcome: GateVerdict | GateError
    duration_s: float
    declared: str = ""
    baseline: GateBaseline | None = None

    @property
    def name(self) -> str:
        return self.outcome.name

    @property
    def status(self) -> str:
        """``pass``, ``fail`` or ``error``."""
        if isinstance(self.outcome, GateError):
            return "error"
        return "fail" if not self.outcome.passed or self.declared == "fail" else "pass"
