"""pytest glue: options and ini keys, the ``int8_budget`` marker, fixtures, zero-code items, output.

Everything here wires pytest to the stages (``pipeline`` and below), which know nothing of pytest.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NoReturn

import numpy as np
import pytest

from .backends import BACKEND_NAMES, ORT_MODES, Runner, get_backend
from .baseline import parse_tolerances
from .choices import CALIBRATORS, DEFAULT_MIN_CALIB_SAMPLES, REPAIRS, STRATEGIES, check_repairs
from .data import DEFAULT_BATCH_SIZE
from .errors import Int8GateError
from .evaluate import KpiFunction
from .gate import Budget, GateVerdict, valid_keys_text
from .manifest import ManifestEntry, load_manifest
from .pipeline import DataSource, GatePipeline, GateSpec
from .plugin_reports import register_report_plugins, terminal_progress
from .report import (
    error_record,
    failure_text,
    junit_properties,
    summary_lines,
    verdict_record,
    write_json_report,
)
from .results import NonFiniteTensorError

MARKER = "int8_budget"
MANIFEST_NAME = "int8gate.yaml"


# ---- configuration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Int8Options:
    """The run's resolved options (command line over ini), paths made absolute."""

    models: tuple[Path, ...] = ()
    calib_data: str | None = None
    eval_data: str | None = None
    labels: str | None = None
    budget: Budget = field(default_factory=Budget)
    calibrator: str = "entropy"
    backend: str = "onnxruntime"
    ort_mode: str = "simulated"
    bisect: bool = True
    bisect_strategy: str = "binary"
    bisect_subset: int = 200
    bisect_max_evaluations: int = 200
    cache_dir: Path | None = None
    report_json: Path | None = None
    report_md: Path | None = None
    report_html: Path | None = None
    baseline: Path | None = None
    baseline_tolerance: Mapping[str, float] = field(default_factory=dict)
    manifest: Path | None = None
    output: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    percentile: float = 99.99
    rootdir: Path = Path(".")
    fp32_reference: str | None = None
    min_calib_samples: int = DEFAULT_MIN_CALIB_SAMPLES
    strict_ci: bool = False
    check_determinism: bool = False
    repairs: tuple[str, ...] = REPAIRS

    def spec(self, model: Path, **overrides: Any) -> GateSpec:
        """A gate spec for ``model`` from these options; ``overrides`` replace fields."""
        if self.calib_data is None and "calib_data" not in overrides:
            raise Int8GateError(
                f"{model}: no calibration data; pass --int8-calib-data (or set int8_calib_data in the "
                "ini file)."
            )
        spec = GateSpec(
            model=model,
            calib_data=self.calib_data or "",
            eval_data=self.eval_data,
            labels=self.labels,
            budget=self.budget,
            calibrator=self.calibrator,
            percentile=self.percentile,
            backend=self.backend,
            ort_mode=self.ort_mode,
            output=self.output,
            batch_size=self.batch_size,
            cache_dir=self.cache_dir,
            data_search_path=self.rootdir,
            bisect=self.bisect,
            bisect_strategy=self.bisect_strategy,
            bisect_subset=self.bisect_subset,
            bisect_max_evaluations=self.bisect_max_evaluations,
            fp32_reference=self.fp32_reference,
            min_calib_samples=self.min_calib_samples,
            strict_ci=self.strict_ci,
            check_determinism=self.check_determinism,
            repairs=self.repairs,
        )
        return replace(spec, **overrides)


@dataclass
class Int8State:
    """Per-run state, kept in ``config.stash``."""

    options: Int8Options
    records: list[dict[str, Any]] = field(default_factory=list)
    pipelines: dict[tuple[str, ...], GatePipeline] = field(default_factory=dict)
    model_paths: set[Path] = field(default_factory=set)
    manifest_path: Path | None = None
    option_error: str | None = None
    report_meta: dict[str, Any] = field(default_factory=dict)  # the reports' top-level fields


STATE = pytest.StashKey[Int8State]()
ITEM_RECORDS = pytest.StashKey[list[dict[str, Any]]]()


@dataclass(frozen=True)
class OptionSpec:
    """One command-line option and its ini twin."""

    flag: str
    ini: str
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    repeatable: bool = False


_OPTIONS = (
    OptionSpec(
        "--int8-model", "int8_models", "ONNX model to gate; one test item each", "PATH", repeatable=True
    ),
    OptionSpec(
        "--int8-calib-data", "int8_calib_data", "calibration data: .npz/.npy/folder/module:function", "PATH"
    ),
    OptionSpec(
        "--int8-eval-data", "int8_eval_data", "evaluation data (default: the calibration data)", "PATH"
    ),
    OptionSpec(
        "--int8-labels", "int8_labels", "labels .npy, one integer class per evaluation sample", "PATH"
    ),
    OptionSpec(
        "--int8-budget", "int8_budget", f"budget; keys: {valid_keys_text()}", "KEY=VALUE", repeatable=True
    ),
    OptionSpec(
        "--int8-calibrator", "int8_calibrator", "activation calibrator (default: entropy)", None, CALIBRATORS
    ),
    OptionSpec("--int8-backend", "int8_backend", "backend (default: onnxruntime)", None, BACKEND_NAMES),
    OptionSpec(
        "--int8-ort-mode", "int8_ort_mode", "ONNX Runtime INT8: simulated (default) or fused", None, ORT_MODES
    ),
    OptionSpec(
        "--int8-bisect-strategy", "int8_bisect_strategy", "culprit search (default: binary)", None, STRATEGIES
    ),
    OptionSpec(
        "--int8-bisect-subset", "int8_bisect_subset", "samples the culprit search uses (default: 200)", "N"
    ),
    OptionSpec(
        "--int8-bisect-max-evals", "int8_bisect_max_evals", "cap on bisection evaluations (default: 200)", "N"
    ),
    OptionSpec(
        "--int8-cache-dir", "int8_cache_dir", "cache of calibration tables, Q/DQ models, engines", "PATH"
    ),
    OptionSpec(
        "--int8-report-json", "int8_report_json", "write a JSON report of every gate in the run", "PATH"
    ),
    OptionSpec(
        "--int8-report-md", "int8_report_md", "write a Markdown report (also to $GITHUB_STEP_SUMMARY)", "PATH"
    ),
    OptionSpec("--int8-report-html", "int8_report_html", "write a self-contained HTML report", "PATH"),
    OptionSpec(
        "--int8-baseline", "int8_baseline", "compare each gate's metrics with this stored JSON report", "PATH"
    ),
    OptionSpec(
        "--int8-baseline-tolerance",
        "int8_baseline_tolerance",
        "fail the run when a metric gets worse than the baseline by more, e.g. top1_drop=0.005",
        "KEY=VALUE",
        repeatable=True,
    ),
    OptionSpec(
        "--int8-manifest", "int8_manifest", f"YAML manifest (default: {MANIFEST_NAME} in rootdir)", "PATH"
    ),
    OptionSpec("--int8-output", "int8_output", "model output to compare (default: the first)", "NAME"),
    OptionSpec(
        "--int8-batch-size", "int8_batch_size", f"samples per run (default: {DEFAULT_BATCH_SIZE})", "N"
    ),
    OptionSpec(
        "--int8-percentile", "int8_percentile", "the percentile calibrator's percentile (default: 99.99)", "P"
    ),
    OptionSpec(
        "--int8-repair",
        "int8_repair",
        "a repair the bisection tries on an offender before keeping it in float (repeatable; default: "
        f"{', '.join(REPAIRS)}; none: straight to float)",
        "RUNG",
        (*REPAIRS, "none"),
        repeatable=True,
    ),
    OptionSpec(
        "--int8-fp32-reference",
        "int8_fp32_reference",
        "FP32 reference outputs the FP32 engine must match (.npz: output name -> [samples, ...])",
        "PATH",
    ),
    OptionSpec(
        "--int8-min-calib-samples",
        "int8_min_calib_samples",
        f"warn below this many calibration samples (default: {DEFAULT_MIN_CALIB_SAMPLES}; 0: no check)",
        "N",
    ),
)


#: On/off options (flag, ini key, help); off unless given.
_FLAGS = (
    (
        "--int8-strict-ci",
        "int8_strict_ci",
        "pass an accuracy budget only when its whole 95 percent confidence interval is within the limit",
    ),
    (
        "--int8-check-determinism",
        "int8_check_determinism",
        "run the INT8 engine twice on a subset and report whether it is bit-exact",
    ),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("int8gate", "INT8 quantization gate (pytest-int8gate)")
    for option in _OPTIONS:
        group.addoption(
            option.flag,
            dest=option.ini,
            default=None,
            action="append" if option.repeatable else "store",
            metavar=option.metavar,
            choices=option.choices,
            help=option.help,
        )
        ini_type: Literal["linelist", "string"] = "linelist" if option.repeatable else "string"
        parser.addini(option.ini, f"{option.help} (same as {option.flag})", type=ini_type)
    group.addoption(
        "--int8-bisect",
        dest="int8_bisect",
        action="store_true",
        default=None,
        help="find the offending layers when a gate fails (default)",
    )
    group.addoption(
        "--int8-no-bisect",
        dest="int8_bisect",
        action="store_false",
        help="do not search for offending layers on failure",
    )
    parser.addini("int8_bisect", "bisection on failure (default: true)", type="bool", default=True)
    for flag, ini, help_text in _FLAGS:
        group.addoption(flag, dest=ini, action="store_true", default=None, help=help_text)
        parser.addini(ini, f"{help_text} (same as {flag}; default: false)", type="bool")


def _resolve_options(config: pytest.Config) -> Int8Options:
    invocation = Path(config.invocation_params.dir)
    ini_base = config.inipath.parent if config.inipath else config.rootpath

    def raw(name: str) -> tuple[Any, Path]:
        value = config.getoption(name)
        if value is not None:
            return value, invocation
        ini_value = config.getini(name)
        return (ini_value if ini_value not in ("", []) else None), ini_base

    def path(name: str) -> Path | None:
        value, base = raw(name)
        return None if value is None else (base / str(value)).resolve()

    def data(name: str) -> str | None:
        from .data import is_loader_spec

        value, base = raw(name)
        if value is None:
            return None
        return str(value) if is_loader_spec(str(value)) else str((base / str(value)).resolve())

    def number(
        name: str, flag: str, cast: Callable[[str], float], default: float, low: float, high: float = math.inf
    ) -> float:
        value, _ = raw(name)
        if value is None:
            return default
        try:
            parsed = cast(str(value))
        except ValueError:
            raise pytest.UsageError(f"{flag}: {value!r} is not a number.") from None
        if not low <= parsed <= high:  # also rejects NaN
            bound = f"at least {low:g}" if high == math.inf else f"in ({low:g}, {high:g}]"
            raise pytest.UsageError(f"{flag}: {value!r} must be {bound}.")
        return parsed

    def choice(name: str, default: str, choices: Sequence[str], flag: str) -> str:
        value, _ = raw(name)
        if value is None:
            return default
        if value not in choices:
            raise pytest.UsageError(
                f"{name} = {value!r} in the ini file is not one of {', '.join(choices)} ({flag})."
            )
        return str(value)

    models_value, models_base = raw("int8_models")
    models = tuple((models_base / str(m)).resolve() for m in (models_value or []))
    budget_value, _ = raw("int8_budget")
    try:
        budget = Budget.parse(budget_value or [], source="--int8-budget")
    except Int8GateError as exc:
        raise pytest.UsageError(str(exc)) from None
    tolerance_value, _ = raw("int8_baseline_tolerance")
    try:
        tolerance = parse_tolerances(tolerance_value or [])
    except Int8GateError as exc:
        raise pytest.UsageError(str(exc)) from None
    bisect_flag = config.getoption("int8_bisect")
    manifest = path("int8_manifest")
    if manifest is None and (config.rootpath / MANIFEST_NAME).is_file():
        manifest = config.rootpath / MANIFEST_NAME
    elif manifest is not None and not manifest.is_file():
        raise pytest.UsageError(f"--int8-manifest: {manifest} not found.")
    cache_dir = path("int8_cache_dir")
    if cache_dir is None:
        cache_dir = _default_cache_dir(config)
    return Int8Options(
        models=models,
        calib_data=data("int8_calib_data"),
        eval_data=data("int8_eval_data"),
        labels=None if path("int8_labels") is None else str(path("int8_labels")),
        budget=budget,
        calibrator=choice("int8_calibrator", "entropy", CALIBRATORS, "--int8-calibrator"),
        backend=choice("int8_backend", "onnxruntime", BACKEND_NAMES, "--int8-backend"),
        ort_mode=choice("int8_ort_mode", "simulated", ORT_MODES, "--int8-ort-mode"),
        bisect=bool(config.getini("int8_bisect")) if bisect_flag is None else bool(bisect_flag),
        bisect_strategy=choice("int8_bisect_strategy", "binary", STRATEGIES, "--int8-bisect-strategy"),
        bisect_subset=int(number("int8_bisect_subset", "--int8-bisect-subset", int, 200, 1)),
        bisect_max_evaluations=int(number("int8_bisect_max_evals", "--int8-bisect-max-evals", int, 200, 1)),
        cache_dir=cache_dir,
        report_json=path("int8_report_json"),
        report_md=path("int8_report_md"),
        report_html=path("int8_report_html"),
        baseline=path("int8_baseline"),
        baseline_tolerance=tolerance,
        manifest=manifest,
        output=raw("int8_output")[0],
        batch_size=int(number("int8_batch_size", "--int8-batch-size", int, DEFAULT_BATCH_SIZE, 1)),
        percentile=number("int8_percentile", "--int8-percentile", float, 99.99, 1e-9, 100.0),
        rootdir=config.rootpath,
        fp32_reference=None if path("int8_fp32_reference") is None else str(path("int8_fp32_reference")),
        min_calib_samples=int(
            number("int8_min_calib_samples", "--int8-min-calib-samples", int, DEFAULT_MIN_CALIB_SAMPLES, 0)
        ),
        strict_ci=_flag(config, "int8_strict_ci"),
        check_determinism=_flag(config, "int8_check_determinism"),
        repairs=_repairs(raw("int8_repair")[0]),
    )


def _repairs(value: Sequence[str] | None) -> tuple[str, ...]:
    """The ladder's rungs from ``--int8-repair`` / ``int8_repair`` ("none": no rung, straight to float)."""
    if not value:
        return REPAIRS
    unknown = [v for v in value if v not in (*REPAIRS, "none")]
    if unknown:
        raise pytest.UsageError(
            f"int8_repair = {unknown[0]!r} in the ini file is not one of {', '.join(REPAIRS)}, none "
            "(--int8-repair)."
        )
    return check_repairs([v for v in value if v != "none"], "--int8-repair")


def _flag(config: pytest.Config, name: str) -> bool:
    """A store_true option, else its ini twin (type bool, default false)."""
    value = config.getoption(name)
    return bool(config.getini(name)) if value is None else bool(value)


def _default_cache_dir(config: pytest.Config) -> Path:
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("int8gate"))
    return config.rootpath / ".int8gate_cache"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**limits): INT8 budget for the int8_gate fixture, e.g. "
        f"@pytest.mark.{MARKER}(top1_drop=0.01, cosine=0.98); keys: {valid_keys_text()}",
    )
    config.addinivalue_line(
        "markers", "int8gate: a zero-code INT8 gate item (from --int8-model or a manifest)"
    )
    options = _resolve_options(config)
    state = Int8State(options=options)
    config.stash[STATE] = state
    config.pluginmanager.register(Int8SessionReport(config, state), "int8gate-session-report")
    register_report_plugins(config, state)
    for model in options.models:
        if not model.is_file():
            raise pytest.UsageError(f"--int8-model: {model} not found.")
        state.model_paths.add(model)
    # What the command line names always joins the run; what comes from the ini file or the default
    # manifest joins only when the command line selects nothing (``pytest tests/test_x.py`` runs test_x).
    selected = config.args_source == pytest.Config.ArgsSource.ARGS
    extra = [*options.models] if config.getoption("int8_models") or not selected else []
    if options.manifest is not None:
        state.manifest_path = options.manifest.resolve()
        if config.getoption("int8_manifest") is not None or not selected:
            extra.append(state.manifest_path)
    # Models and the manifest may lie outside the collected directories: make them collection arguments.
    # Duplicates of paths that the directory walk also reaches are dropped by pytest itself.
    known = {Path(config.invocation_params.dir, a).resolve() for a in config.args}
    for path in extra:
        if not any(path == k or k in path.parents for k in known):
            config.args.append(str(path))


# ---- collection -----------------------------------------------------------------------------------


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    state = parent.config.stash.get(STATE, None)
    if state is None:
        return None
    resolved = file_path.resolve()
    file_type: type[pytest.File]
    if resolved == state.manifest_path:
        file_type = Int8ManifestFile
    elif resolved in state.model_paths:
        file_type = Int8ModelFile
    else:
        return None
    return file_type.from_parent(parent, path=file_path, nodeid=_nodeid_outside_rootdir(parent, file_path))


def _nodeid_outside_rootdir(parent: pytest.Collector, path: Path) -> str | None:
    """``../models/m.onnx`` for a file outside the rootdir (None: pytest's own id inside it).

    pytest names a file outside the rootdir after the initial argument it was given as, which for a file
    argument is the empty string: every such model would be ``::int8_gate``, one node id for all of them.
    """
    rootpath = parent.config.rootpath
    if path.resolve().is_relative_to(rootpath.resolve()):
        return None
    try:
        return Path(os.path.relpath(path.resolve(), rootpath.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return path.resolve().as_posix()


class Int8ModelFile(pytest.File):
    """An ONNX model given with ``--int8-model``: one gate item."""

    def collect(self) -> Iterator[pytest.Item]:
        yield Int8GateItem.from_parent(self, name="int8_gate", entry=None)


class Int8ManifestFile(pytest.File):
    """``int8gate.yaml``: one gate item per model entry."""

    def collect(self) -> Iterator[pytest.Item]:
        try:
            entries = load_manifest(self.path)
        except Int8GateError as exc:
            raise self.CollectError(str(exc)) from None
        for entry in entries:
            yield Int8GateItem.from_parent(self, name=entry.name, entry=entry)


class GateFailed(Exception):
    """Raised by a gate whose budget is not met; carries the verdict for the failure text."""

    def __init__(self, verdict: GateVerdict) -> None:
        super().__init__(f"INT8 gate failed: {verdict.name}")
        self.verdict = verdict


class Int8GateItem(pytest.Item):
    """A zero-code gate: a model from ``--int8-model`` or a manifest entry."""

    def __init__(self, *, entry: ManifestEntry | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entry = entry
        self.add_marker(pytest.mark.int8gate)

    def _spec(self) -> GateSpec:
        options = self.config.stash[STATE].options
        if self.entry is None:
            return options.spec(self.path.resolve(), name=self.path.name)
        values = self.entry.values
        overrides: dict[str, Any] = {
            "name": self.entry.name,
            "budget": options.budget.merged(self.entry.budget),
        }
        simple = {
            "calib_data": "calib_data",
            "eval_data": "eval_data",
            "labels": "labels",
            "output": "output",
            "calibrator": "calibrator",
            "percentile": "percentile",
            "backend": "backend",
            "ort_mode": "ort_mode",
            "batch_size": "batch_size",
            "bisect": "bisect",
            "bisect_strategy": "bisect_strategy",
            "bisect_subset": "bisect_subset",
            "strict_ci": "strict_ci",
            "fp32_reference": "fp32_reference",
        }
        for key, attr in simple.items():
            if key in values:
                overrides[attr] = values[key]
        if "eval_data" not in values and "calib_data" in values:
            overrides["eval_data"] = None
        if "labels" not in values and "calib_data" in values:
            overrides["labels"] = None
        overrides["exclude"] = frozenset(values.get("exclude", ()))
        overrides["overrides"] = dict(values.get("calibrator_overrides", {}))
        if "equalize" in values:
            equalize = values["equalize"]
            overrides["equalize"] = equalize if isinstance(equalize, bool) else frozenset(equalize)
        overrides["bias_correction"] = frozenset(values.get("bias_correction", ()))
        if "repairs" in values:
            overrides["repairs"] = check_repairs(values["repairs"], f"{self.path}: {self.entry.name}")
        overrides["data_search_path"] = self.path.parent
        return options.spec(Path(values["model"]), **overrides)

    def runtest(self) -> None:
        run_gate(self, self._spec())

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        return gate_failure_repr(excinfo) or str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"int8 gate: {self.entry.name if self.entry else self.path.name}"


def gate_failure_repr(excinfo: pytest.ExceptionInfo[BaseException]) -> str | None:
    if isinstance(excinfo.value, GateFailed):
        return failure_text(excinfo.value.verdict)
    if isinstance(excinfo.value, Int8GateError):
        return f"INT8 gate error: {excinfo.value}"
    return None


def run_gate(
    item: pytest.Item, spec: GateSpec, *, kpi: KpiFunction | None = None, raise_failure: bool = True
) -> GateVerdict:
    """Run one gate for ``item``, record it for the reports, and raise on failure or error."""
    config = item.config
    started = time.perf_counter()
    progress = terminal_progress(config)
    pipeline = GatePipeline(spec, progress=progress, kpi=kpi)
    records = item.stash.setdefault(ITEM_RECORDS, [])
    try:
        verdict = pipeline.run()
    except Int8GateError as exc:
        records.append(
            error_record(
                model=str(spec.model),
                name=spec.display_name,
                nodeid=item.nodeid,
                message=str(exc),
                duration_s=time.perf_counter() - started,
                backend=spec.backend,
                calibrator=spec.calibrator,
                diagnostics=exc.findings if isinstance(exc, NonFiniteTensorError) else (),
            )
        )
        raise
    finally:
        progress.close()
    verdict = replace(verdict, evaluations=pipeline.evaluations)
    records.append(verdict_record(verdict, nodeid=item.nodeid, duration_s=time.perf_counter() - started))
    item.user_properties.extend(junit_properties(verdict))
    if not verdict.passed and raise_failure:
        raise GateFailed(verdict)
    return verdict


def _marker_problem(item: pytest.Item) -> str | None:
    """Why the item's ``int8_budget`` markers are invalid, naming the test and the key; None when valid."""
    for marker in item.iter_markers(MARKER):
        if marker.args:
            return (
                f"{item.nodeid}: @{MARKER} takes keyword limits only (e.g. cosine=0.98), got {marker.args!r}."
            )
        try:
            Budget.from_mapping(marker.kwargs, source=f"{item.nodeid}: @{MARKER}")
        except Int8GateError as exc:
            return str(exc)
    return None


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, object, object]:
    """Validate every ``int8_budget`` marker as its test is collected: a bad one is a collection error.

    Not a UsageError from ``pytest_collection_modifyitems``: raised in an xdist worker, that one is an
    INTERNALERROR that never shows the message.
    """
    result = yield
    for item in result if isinstance(result, list) else [result]:
        if isinstance(item, pytest.Item):
            problem = _marker_problem(item)
            if problem is not None:
                raise collector.CollectError(problem)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    records = item.stash.get(ITEM_RECORDS, None)
    if call.when == "call" and records:
        # plain JSON data on the report travels from xdist workers to the controller
        report.int8gate_records = list(records)  # type: ignore[attr-defined]
    requested_gate = "int8_gate" in getattr(item, "fixturenames", ())
    if call.when == "call" and report.passed and not records and requested_gate:
        # a test that asked for a gate and never ran one would otherwise pass without gating anything
        report.outcome = "failed"
        report.longrepr = (
            f"INT8 gate error: {item.nodeid} requests the int8_gate fixture but ran no gate; call "
            "int8_gate.check(...) or int8_gate.evaluate(...)."
        )
    return report


class Int8SessionReport:
    """Collects every gate's record (from xdist workers too) and reports them once, on the controller."""

    def __init__(self, config: pytest.Config, state: Int8State) -> None:
        self.config = config
        self.state = state
        self.is_worker = hasattr(config, "workerinput")

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        options = self.state.options
        try:
            backend = str(get_backend(options.backend, ort_mode=options.ort_mode).describe())
        except Int8GateError as exc:
            backend = f"unavailable: {exc}"
        lines = [
            f"int8gate: backend {backend} (requested: {options.backend})",
            f"int8gate: calibrator {options.calibrator}; bisection "
            f"{options.bisect_strategy if options.bisect else 'off'}; cache {options.cache_dir}",
        ]
        if options.calib_data and not options.eval_data:
            lines.append(
                "int8gate: WARNING no --int8-eval-data: gates evaluate on the calibration data, which "
                "overstates INT8 accuracy; give a held-out set"
            )
        return lines

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        records = getattr(report, "int8gate_records", None)
        if records:
            self.state.records.extend(records)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker or not self.state.records:
            return
        terminalreporter.section("int8gate")
        for line in summary_lines(self.state.records):
            terminalreporter.write_line(line)
        if self.state.options.report_json is not None:
            terminalreporter.write_line(f"int8gate: JSON report written to {self.state.options.report_json}")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        path = self.state.options.report_json
        if self.is_worker or path is None:
            return
        records = sorted(self.state.records, key=lambda r: str(r["nodeid"]))
        write_json_report(
            path, records, {"tool": "pytest-int8gate", "tool_version": _version(), **self.state.report_meta}
        )


def _version() -> str:
    from . import __version__

    return __version__


# ---- fixtures -------------------------------------------------------------------------------------


def _state(config: pytest.Config) -> Int8State:
    return config.stash[STATE]


def _fail_missing(what: str, flag: str, fixture: str) -> NoReturn:
    pytest.fail(
        f"int8gate: no {what}; pass {flag} or override the {fixture!r} fixture in conftest.py.", pytrace=False
    )


@pytest.fixture(scope="session")
def int8_model(pytestconfig: pytest.Config) -> Path:
    """The ONNX model under test: the single --int8-model, unless overridden in conftest.py."""
    models = _state(pytestconfig).options.models
    if len(models) != 1:
        _fail_missing("single model (give exactly one --int8-model)", "--int8-model", "int8_model")
    return models[0]


@pytest.fixture(scope="session")
def int8_calibration_data(pytestconfig: pytest.Config) -> DataSource:
    """Calibration data: --int8-calib-data, unless overridden in conftest.py."""
    data = _state(pytestconfig).options.calib_data
    if data is None:
        _fail_missing("calibration data", "--int8-calib-data", "int8_calibration_data")
    return data


@pytest.fixture(scope="session")
def int8_eval_data(pytestconfig: pytest.Config, int8_calibration_data: DataSource) -> DataSource:
    """Evaluation data: --int8-eval-data, else the calibration data."""
    return _state(pytestconfig).options.eval_data or int8_calibration_data


@pytest.fixture(scope="session")
def int8_labels(pytestconfig: pytest.Config) -> str | None:
    """Labels for accuracy budgets: --int8-labels, else None."""
    return _state(pytestconfig).options.labels


def _session_pipeline(
    config: pytest.Config, model: Path, calib: DataSource, eval_data: DataSource, labels: str | None
) -> GatePipeline:
    state = _state(config)
    key = (str(model), _data_key(calib), _data_key(eval_data), str(labels))
    if key not in state.pipelines:
        spec = state.options.spec(Path(model), calib_data=calib, eval_data=eval_data, labels=labels)
        state.pipelines[key] = GatePipeline(spec, progress=terminal_progress(config))
    return state.pipelines[key]


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
        self, item: pytest.Item, model: Path, calib: DataSource, eval_data: DataSource, labels: str | None
    ) -> None:
        self.item = item
        self.model = model
        self.calib = calib
        self.eval_data = eval_data
        self.labels = labels
        self.verdicts: list[GateVerdict] = []

    @property
    def budget(self) -> Budget:
        """CLI/ini default budget with the test's ``int8_budget`` marker on top."""
        budget = _state(self.item.config).options.budget
        for marker in reversed(list(self.item.iter_markers(MARKER))):
            budget = budget.merged(Budget.from_mapping(marker.kwargs, source=f"@{MARKER}"))
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
        exclude: Sequence[str] = (),
        overrides: Mapping[str, str] | None = None,
        equalize: bool | Sequence[str] = (),
        bias_correction: Sequence[str] = (),
        kpi: KpiFunction | None = None,
        name: str | None = None,
        raise_on_failure: bool = True,
    ) -> GateVerdict:
        """Gate ``model`` (default: the ``int8_model`` fixture); fail the test when the budget is not met."""
        options = _state(self.item.config).options
        gate_budget = self.budget
        if budget is not None:
            try:
                gate_budget = gate_budget.merged(
                    Budget.from_mapping(budget, source="int8_gate.check(budget=...)")
                )
            except Int8GateError as exc:
                pytest.fail(f"INT8 gate error: {exc}", pytrace=False)
        if kpi is None and "kpi_drop" in gate_budget.limits:
            pytest.fail(
                "INT8 gate error: budget kpi_drop needs int8_gate.check(..., kpi=callable).", pytrace=False
            )
        path = Path(model) if model is not None else self.model
        label_source = self.labels if labels is None else labels
        fields: dict[str, Any] = {
            "calib_data": self.calib if calib_data is None else calib_data,
            "eval_data": self.eval_data if eval_data is None else eval_data,
            "labels": label_source
            if isinstance(label_source, (np.ndarray, type(None)))
            else os.fspath(label_source),
            "budget": gate_budget,
            "exclude": frozenset(exclude),
            "overrides": dict(overrides or {}),
            "equalize": equalize if isinstance(equalize, bool) else frozenset(equalize),
            "bias_correction": frozenset(bias_correction),
            "name": name or f"{self.item.name}[{path.name}]",
        }
        if output is not None:
            fields["output"] = output
        if calibrator is not None:
            fields["calibrator"] = calibrator
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


@pytest.fixture
def int8_gate(
    request: pytest.FixtureRequest,
    int8_model: Path,
    int8_calibration_data: DataSource,
    int8_eval_data: DataSource,
    int8_labels: str | None,
) -> Int8Gate:
    """Runs INT8 gates in a test, with the test's ``int8_budget`` marker as its budget."""
    return Int8Gate(request.node, int8_model, int8_calibration_data, int8_eval_data, int8_labels)
