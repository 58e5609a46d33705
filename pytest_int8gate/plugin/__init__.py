"""The pytest plugin (entry point ``pytest11: int8gate``): the hooks, each delegating to one module.

``options`` (the ``--int8-*`` options and ini keys, from the settings table), ``session`` (the one
session object in ``config.stash``: records and reports), ``items`` (zero-code gate items, the marker
check, running a gate), ``fixtures`` and ``terminal`` (progress on the terminal).

Importing the plugin is cheap: ONNX, ONNX Runtime and the stages load when the first gate runs, so a
pytest run that gates nothing does not pay for them.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

from ..budget import valid_keys_text
from ..settings import MANIFEST_NAME
from .fixtures import (
    Int8Gate,
    fp32_engine,
    int8_calibration_data,
    int8_constants,
    int8_engine,
    int8_eval_data,
    int8_gate,
    int8_labels,
    int8_model,
    int8_sample_axes,
)
from .items import (
    MARKER,
    STATE,
    GateFailed,
    Int8GateItem,
    collect_file,
    marker_problem,
    one_item_per_real_file,
    run_gate,
)
from .options import Int8Options, add_options, resolve_options
from .session import ITEM_RECORDS, Int8HtmlExtras, Int8Session

__all__ = [
    "ITEM_RECORDS",
    "MANIFEST_NAME",
    "MARKER",
    "STATE",
    "GateFailed",
    "Int8Gate",
    "Int8GateItem",
    "Int8Options",
    "Int8Session",
    "fp32_engine",
    "int8_calibration_data",
    "int8_constants",
    "int8_engine",
    "int8_eval_data",
    "int8_gate",
    "int8_labels",
    "int8_model",
    "int8_sample_axes",
    "run_gate",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**limits): INT8 budget for the int8_gate fixture, e.g. "
        f"@pytest.mark.{MARKER}(top1_drop=0.01, cosine=0.98); keys: {valid_keys_text()}",
    )
    config.addinivalue_line(
        "markers", "int8gate: a zero-code INT8 gate item (from --int8-model or a manifest)"
    )
    options, configured = resolve_options(config)
    session = Int8Session(config, options, configured=configured)
    config.stash[STATE] = session
    config.pluginmanager.register(session, "int8gate-session")
    if config.pluginmanager.hasplugin("html"):
        config.pluginmanager.register(Int8HtmlExtras(), "int8gate-html-extras")
    for model in options.models:
        if not model.is_file():
            raise pytest.UsageError(f"--int8-model: {model} not found.")
        session.model_paths.add(model)
    # What the command line names always joins the run; what comes from the ini file or the default
    # manifest joins only when the command line selects nothing (``pytest tests/test_x.py`` runs test_x).
    selected = config.args_source == pytest.Config.ArgsSource.ARGS
    extra = [*options.models] if config.getoption("int8_models") or not selected else []
    if options.manifest is not None:
        session.manifest_path = options.manifest.resolve()
        if config.getoption("int8_manifest") is not None or not selected:
            extra.append(session.manifest_path)
    # Models and the manifest may lie outside the collected directories: make them collection arguments.
    # Duplicates of paths that the directory walk also reaches are dropped by pytest itself.
    known = {Path(config.invocation_params.dir, a).resolve() for a in config.args}
    for path in extra:
        if not any(path == k or k in path.parents for k in known):
            config.args.append(str(path))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    return collect_file(file_path, parent)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    one_item_per_real_file(items)


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
            problem = marker_problem(item)
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
