"""Zero-code gate items (a model from ``--int8-model`` or an ``int8gate.yaml`` entry), the marker check,
and :func:`run_gate`, which runs one gate for any item and records it for the session's reports."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..budget import Budget
from ..errors import Int8GateError, bounded_text
from ..settings import SETTINGS, on, spec_value
from .options import Int8Options
from .session import ITEM_RECORDS, Int8Session

if TYPE_CHECKING:
    from ..evaluate import KpiFunction
    from ..manifest import ManifestEntry
    from ..pipeline import GateSpec
    from ..results import GateVerdict

MARKER = "int8_budget"
#: The one session object of the run (options, records, reports).
STATE = pytest.StashKey[Int8Session]()


def collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    session = parent.config.stash.get(STATE, None)
    if session is None:
        return None
    resolved = file_path.resolve()
    file_type: type[pytest.File]
    if resolved == session.manifest_path:
        file_type = Int8ManifestFile
    elif resolved in session.model_paths:
        file_type = Int8ModelFile
    else:
        return None
    return file_type.from_parent(parent, path=file_path, nodeid=_nodeid_outside_rootdir(parent, file_path))


def one_item_per_real_file(items: list[pytest.Item]) -> None:
    """Keep one gate item per real file and entry: a model or manifest reachable through several
    (symlinked) folders is gated once, at its real path when the walk reached it there, else at the first
    path found (a folder linked to itself would otherwise give one item per level, 40 of them)."""
    found: dict[tuple[Path, str], list[pytest.Item]] = {}
    for item in items:
        if isinstance(item, Int8GateItem):
            found.setdefault((item.path.resolve(), item.name), []).append(item)
    dropped: set[int] = set()
    for (real, _), same in found.items():
        keep = next((item for item in same if item.path == real), same[0])
        dropped.update(id(item) for item in same if item is not keep)
    if dropped:
        items[:] = [item for item in items if id(item) not in dropped]


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
        from ..manifest import load_manifest

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


def entry_spec(options: Int8Options, entry: ManifestEntry, folder: Path) -> GateSpec:
    """The gate spec of one manifest entry: the run's options, with every key the entry sets on top."""
    values = entry.values
    overrides: dict[str, Any] = {"name": entry.name}
    for setting in SETTINGS:
        if on(setting.manifest) and setting.manifest in values and setting.name not in ("name", "budget"):
            overrides[setting.name] = spec_value(setting, values[str(setting.manifest)])
    overrides["budget"] = options.budget.merged(entry.budget)
    if "calib_data" in values:  # the entry's own data: the run's evaluation data and labels do not apply
        overrides.setdefault("eval_data", None)
        overrides.setdefault("labels", None)
    overrides["data_search_path"] = folder
    return options.spec(overrides.pop("model"), **overrides)


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
        return entry_spec(options, self.entry, self.path.parent)

    def runtest(self) -> None:
        run_gate(self, self._spec())

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        return gate_failure_repr(excinfo) or str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"int8 gate: {self.entry.name if self.entry else self.path.name}"


def gate_failure_repr(excinfo: pytest.ExceptionInfo[BaseException]) -> str | None:
    if isinstance(excinfo.value, GateFailed):
        from ..report import failure_text

        return failure_text(excinfo.value.verdict)
    if isinstance(excinfo.value, Int8GateError):
        return f"INT8 gate error: {excinfo.value}"
    return None


def run_gate(
    item: pytest.Item, spec: GateSpec, *, kpi: KpiFunction | None = None, raise_failure: bool = True
) -> GateVerdict:
    """Run one gate for ``item``, record it for the reports, and raise on failure or error."""
    from ..pipeline import GatePipeline
    from ..report import error_record, junit_properties, verdict_record
    from ..results import NonFiniteTensorError
    from .terminal import terminal_progress

    started = time.perf_counter()
    progress = terminal_progress(item.config)
    pipeline = GatePipeline(spec, progress=progress, kpi=kpi)
    records = item.stash.setdefault(ITEM_RECORDS, [])
    try:
        verdict = pipeline.run()
    except Exception as exc:  # every gate that ran is in the reports: a crash too is an error record
        message = (
            str(exc)
            if isinstance(exc, Int8GateError)
            else f"{type(exc).__name__} raised inside the gate: {bounded_text(str(exc))}"
        )
        records.append(
            error_record(
                model=str(spec.model),
                name=spec.display_name,
                nodeid=item.nodeid,
                message=message,
                duration_s=time.perf_counter() - started,
                backend=spec.backend,
                calibrator=spec.calibrator,
                diagnostics=exc.findings if isinstance(exc, NonFiniteTensorError) else (),
            )
        )
        raise
    finally:
        progress.close()
        pipeline.close()  # the gate's engines live for this gate only
    verdict = replace(verdict, evaluations=pipeline.evaluations)
    records.append(verdict_record(verdict, nodeid=item.nodeid, duration_s=time.perf_counter() - started))
    item.user_properties.extend(junit_properties(verdict))
    if not verdict.passed and raise_failure:
        raise GateFailed(verdict)
    return verdict


def marker_problem(item: pytest.Item) -> str | None:
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
    if item.get_closest_marker(MARKER) is not None and "int8_gate" not in getattr(item, "fixturenames", ()):
        return (
            f"{item.nodeid}: @{MARKER} is set but the test does not request the int8_gate fixture, so no "
            "gate runs and the budget gates nothing; add int8_gate to its arguments and call "
            "int8_gate.check(...)."
        )
    return None
