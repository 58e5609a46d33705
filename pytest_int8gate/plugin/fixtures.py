"""The fixtures a test uses: the model and data under test (override them in conftest.py), session-scoped
FP32 and INT8 engines, and ``int8_gate``, which runs gates with the test's ``int8_budget`` marker."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from ..budget import Budget
from ..errors import Int8GateError
from .items import MARKER, STATE, run_gate
from .session import Int8Session

if TYPE_CHECKING:
    import numpy as np

    from ..backends import Runner
    from ..evaluate import KpiFunction
    from ..pipeline import DataSource, GatePipeline
    from ..results import GateVerdict


def _session(config: pytest.Config) -> Int8Session:
    return config.stash[STATE]


def _fail_missing(what: str, flag: str, fixture: str) -> NoReturn:
    pytest.fail(
        f"int8gate: no {what}; pass {flag} or override the {fixture!r} fixture in conftest.py.", pytrace=False
    )


@pytest.fixture(scope="session")
def int8_model(pytestconfig: pytest.Config) -> Path:
    """The ONNX model under test: the single --int8-model, unless overridden in conftest.py."""
    models = _session(pytestconfig).options.models
    if len(models) != 1:
        _fail_missing("single model (give exactly one --int8-model)", "--int8-model", "int8_model")
    return models[0]


@pytest.fixture(scope="session")
def int8_calibration_data(pytestconfig: pytest.Config) -> DataSource:
    """Calibration data: --int8-calib-data, unless overridden in conftest.py."""
    data = _session(pytestconfig).options.calib_data
    if data is None:
        _fail_missing("calibration data", "--int8-calib-data", "int8_calibration_data")
    return data


@pytest.fixture(scope="session")
def int8_eval_data(pytestconfig: pytest.Config, int8_calibration_data: DataSource) -> DataSource:
    """Evaluation data: --int8-eval-data, else the calibration data."""
    return _session(pytestconfig).options.eval_data or int8_calibration_data


@pytest.fixture(scope="session")
def int8_labels(pytestconfig: pytest.Config) -> str | None:
    """Labels for accuracy budgets: --int8-labels, else None."""
    return _session(pytestconfig).options.labels


@pytest.fixture(scope="session")
def int8_constants(pytestconfig: pytest.Config) -> Mapping[str, Any]:
    """Inputs fed the same value with every batch (input name -> number, array or .npy path): --int8-const,
    unless overridden in conftest.py."""
    return dict(_session(pytestconfig).options.constants)


@pytest.fixture(scope="session")
def int8_sample_axes(pytestconfig: pytest.Config) -> Mapping[str, int]:
    """Input or output name -> the axis holding its samples, when not 0: --int8-sample-axis, unless
    overridden in conftest.py."""
    return dict(_session(pytestconfig).options.sample_axes)


def _session_pipeline(
    config: pytest.Config, model: Path, calib: DataSource, eval_data: DataSource, labels: str | None
) -> GatePipeline:
    from ..pipeline import GatePipeline
    from .terminal import terminal_progress

    session = _session(config)
    key = (str(model), _data_key(calib), _data_key(eval_data), str(labels))
    if key not in session.pipelines:
        spec = session.options.spec(Path(model), calib_data=calib, eval_data=eval_data, labels=labels)
        session.pipelines[key] = GatePipeline(spec, progress=terminal_progress(config))
    return session.pipelines[key]


def _data_key(data: DataSource) -> str:
    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    return f"<in-memory {id(data)}>"


def _session_runner(
    config: pytest.Config,
    model: Path,
    calib: DataSource,
    eval_data: DataSource,
    labels: str | None,
    build: Callable[[GatePipeline], Runner],
) -> Runner:
    pipeline = _session_pipeline(config, model, calib, eval_data, labels)
    try:
        return build(pipeline)
    except Int8GateError as exc:
        pytest.fail(f"INT8 gate error: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def fp32_engine(
    pytestconfig: pytest.Config,
    int8_model: Path,
    int8_calibration_data: DataSource,
    int8_eval_data: DataSource,
    int8_labels: str | None,
) -> Runner:
    """The FP32 runner of the configured model on the configured backend, built once per session."""
    inputs = (int8_model, int8_calibration_data, int8_eval_data, int8_labels)
    return _session_runner(pytestconfig, *inputs, lambda p: p.fp32_runner)


@pytest.fixture(scope="session")
def int8_engine(
    pytestconfig: pytest.Config,
    int8_model: Path,
    int8_calibration_data: DataSource,
    int8_eval_data: DataSource,
    int8_labels: str | None,
) -> Runner:
    """The INT8 runner (the project's Q/DQ model, default plan), built once per session."""
    return _session_runner(
        pytestconfig,
        int8_model,
        int8_calibration_data,
        int8_eval_data,
        int8_labels,
        lambda p: p.default_int8_runner,
    )


class Int8Gate:
    """What a test calls: ``int8_gate.check(...)`` runs a gate and fails the test with the report."""

    def __init__(
        self,
        item: pytest.Item,
        model: Path,
        calib: DataSource,
        eval_data: DataSource,
        labels: str | None,
        constants: Mapping[str, Any] | None = None,
        sample_axes: Mapping[str, int] | None = None,
    ) -> None:
        self.constants = dict(constants or {})
        self.sample_axes = dict(sample_axes or {})
        self.item = item
        self.model = model
        self.calib = calib
        self.eval_data = eval_data
        self.labels = labels
        self.verdicts: list[GateVerdict] = []

    @property
    def budget(self) -> Budget:
        """CLI/ini default budget with the test's ``int8_budget`` marker on top."""
        budget = _session(self.item.config).options.budget
        for marker in reversed(list(self.item.iter_markers(MARKER))):
            budget = budget.merged(Budget.from_mapping(marker.kwargs, source=f"@{MARKER}", origin="marker"))
        return budget

    def check(
        self,
        model: str | os.PathLike[str] | None = None,
        calib_data: DataSource | None = None,
        eval_data: DataSource | None = None,
        labels: str | os.PathLike[str] | np.ndarray | None = None,
        *,
        budget: Mapping[str, float] | None = None,
        output: str | None = None,
        calibrator: str | None = None,
        exclude: str | Sequence[str] = (),
        overrides: Mapping[str, str] | None = None,
        equalize: bool | str | Sequence[str] = (),
        bias_correction: str | Sequence[str] = (),
        kpi: KpiFunction | None = None,
        name: str | None = None,
        qdq_model: str | os.PathLike[str] | None = None,
        raise_on_failure: bool = True,
        constants: Mapping[str, Any] | None = None,
        sample_axes: Mapping[str, int] | None = None,
    ) -> GateVerdict:
        """Gate ``model`` (default: the ``int8_model`` fixture); fail the test when the budget is not met.

        ``qdq_model``: a Q/DQ model made elsewhere, gated against ``model`` as given (nothing is calibrated);
        a Q/DQ model given as ``model`` alone is gated against the FP32 model derived from it."""
        import numpy as np

        from ..report import failure_text

        options = _session(self.item.config).options
        gate_budget = self.budget
        if budget is not None:
            try:
                gate_budget = gate_budget.merged(
                    Budget.from_mapping(
                        budget, source="int8_gate.check(budget=...)", origin="int8_gate.check"
                    )
                )
            except Int8GateError as exc:
                pytest.fail(f"INT8 gate error: {exc}", pytrace=False)
        if kpi is None and "kpi_drop" in gate_budget.limits:
            pytest.fail(
                "INT8 gate error: budget kpi_drop needs int8_gate.check(..., kpi=callable).", pytrace=False
            )
        # a str or PathLike model (the README's fixture returns a str), and one layer name given as a str
        path = Path(os.fspath(model if model is not None else self.model))
        label_source = self.labels if labels is None else labels
        fields: dict[str, Any] = {
            "calib_data": self.calib if calib_data is None else calib_data,
            "eval_data": self.eval_data if eval_data is None else eval_data,
            "labels": label_source
            if isinstance(label_source, (np.ndarray, type(None)))
            else os.fspath(label_source),
            "budget": gate_budget,
            "exclude": _layer_names(exclude),
            "overrides": dict(overrides or {}),
            "equalize": equalize if isinstance(equalize, bool) else _layer_names(equalize),
            "bias_correction": _layer_names(bias_correction),
            "name": name or f"{self.item.name}[{path.name}]",
            "constants": {**self.constants, **(constants or {})},
            "sample_axes": {**self.sample_axes, **(sample_axes or {})},
        }
        if output is not None:
            fields["output"] = output
        if calibrator is not None:
            fields["calibrator"] = calibrator
        if qdq_model is not None:
            fields["qdq_model"] = Path(os.fspath(qdq_model))
        try:
            verdict = run_gate(self.item, options.spec(path, **fields), kpi=kpi, raise_failure=False)
        except Int8GateError as exc:
            pytest.fail(f"INT8 gate error: {exc}", pytrace=False)
        self.verdicts.append(verdict)
        if raise_on_failure and not verdict.passed:
            pytest.fail(failure_text(verdict), pytrace=False)
        return verdict

    def evaluate(
        self, eval_data: DataSource, labels: str | os.PathLike[str] | np.ndarray | None = None, **kwargs: Any
    ) -> GateVerdict:
        """Gate the fixture's model on ``eval_data`` (e.g. ``int8_gate.evaluate(batches, labels=y)``)."""
        return self.check(eval_data=eval_data, labels=labels, **kwargs)


def _layer_names(names: str | Sequence[str]) -> frozenset[str]:
    """Layer names; a single str is one name (``exclude="fc1"``), not its characters."""
    return frozenset([names] if isinstance(names, str) else names)


@pytest.fixture
def int8_gate(
    request: pytest.FixtureRequest,
    int8_model: Path,
    int8_calibration_data: DataSource,
    int8_eval_data: DataSource,
    int8_labels: str | None,
    int8_constants: Mapping[str, Any],
    int8_sample_axes: Mapping[str, int],
) -> Int8Gate:
    """Runs INT8 gates in a test, with the test's ``int8_budget`` marker as its budget."""
    return Int8Gate(
        request.node,
        int8_model,
        int8_calibration_data,
        int8_eval_data,
        int8_labels,
        int8_constants,
        int8_sample_axes,
    )
