"""The run's options: ``--int8-*`` options and their ini twins, generated from the settings table, and
resolved (command line over ini, paths made absolute, values checked) into :class:`Int8Options`.

Light on purpose: nothing here imports ONNX, ONNX Runtime or a stage of the gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from ..budget import Budget
from ..choices import DEFAULT_MIN_CALIB_SAMPLES, DEFAULT_PLACEMENT, DEFAULT_STRATEGY, REPAIRS
from ..errors import Int8GateError, bounded_repr
from ..settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BISECT_MAX_SECONDS,
    DEFAULT_DATA_TIMEOUT_S,
    DEFAULT_MAX_SAMPLES,
    DEFAULT_PERCENTILE,
    MANIFEST_NAME,
    Setting,
    SettingError,
    from_text,
    gate_settings,
    is_loader_spec,
    name_of,
    negative_flag,
    on,
    ordered_repairs,
    parse_items,
    spec_value,
    surface,
)

if TYPE_CHECKING:
    from ..pipeline import GateSpec


@dataclass(frozen=True)
class Int8Options:
    """The run's resolved options (command line over ini), paths made absolute.

    One field per setting on the pytest surface (a test keeps them in step with the settings table),
    plus the rootdir.
    """

    models: tuple[Path, ...] = ()
    qdq_model: Path | None = None
    calib_data: str | None = None
    eval_data: str | None = None
    labels: str | None = None
    budget: Budget = field(default_factory=Budget)
    calibrator: str = "entropy"
    placement: str = DEFAULT_PLACEMENT
    backend: str = "onnxruntime"
    ort_mode: str = "simulated"
    bisect: bool = True
    bisect_strategy: str = DEFAULT_STRATEGY
    bisect_subset: int = 200
    bisect_max_evaluations: int = 200
    bisect_max_seconds: float = DEFAULT_BISECT_MAX_SECONDS
    cache_dir: Path | None = None
    report_json: Path | None = None
    report_md: Path | None = None
    report_html: Path | None = None
    baseline: Path | None = None
    baseline_tolerance: Mapping[str, float] = field(default_factory=dict)
    manifest: Path | None = None
    output: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    max_samples: int = DEFAULT_MAX_SAMPLES
    data_timeout: float = DEFAULT_DATA_TIMEOUT_S
    percentile: float = DEFAULT_PERCENTILE
    rootdir: Path = Path(".")
    fp32_reference: str | None = None
    min_calib_samples: int = DEFAULT_MIN_CALIB_SAMPLES
    strict_ci: bool = False
    check_determinism: bool = False
    repairs: tuple[str, ...] = REPAIRS
    constants: Mapping[str, object] = field(default_factory=dict)
    sample_axes: Mapping[str, int] = field(default_factory=dict)

    def spec(self, model: Path, **overrides: Any) -> GateSpec:
        """A gate spec for ``model`` from these options; ``overrides`` replace fields."""
        from ..pipeline import GateSpec

        if self.calib_data is None and "calib_data" not in overrides:
            raise Int8GateError(
                f"{model}: no calibration data; pass --int8-calib-data (or set int8_calib_data in the "
                "ini file)."
            )
        values: dict[str, Any] = {s.name: getattr(self, s.name) for s in gate_settings() if on(s.option)}
        values["calib_data"] = self.calib_data or ""
        values["data_search_path"] = self.rootdir
        values.update(overrides)
        return GateSpec(model=model, **values)


def add_options(parser: pytest.Parser) -> None:
    """Every setting on the pytest surface as an ``--int8-*`` option and its ini twin."""
    group = parser.getgroup("int8gate", "INT8 quantization gate (pytest-int8gate)")
    for setting in surface("option"):
        flag, ini = name_of(setting.option), name_of(setting.ini)
        if setting.kind == "flag":
            group.addoption(flag, dest=ini, action="store_true", default=None, help=setting.help_text)
            if setting.default is True:
                group.addoption(
                    negative_flag(flag), dest=ini, action="store_false", help=f"do not: {setting.help}"
                )
            default = "true" if setting.default else "false"
            ini_help = f"{setting.help} (same as {flag}; default: {default})"
            parser.addini(ini, ini_help, type="bool", default=setting.default)
            continue
        group.addoption(
            flag,
            dest=ini,
            default=None,
            action="append" if setting.repeatable else "store",
            metavar=setting.metavar,
            choices=setting.text_choices,
            help=setting.help_text + (" (repeatable)" if setting.repeatable else ""),
        )
        ini_type: Literal["linelist", "string"] = "linelist" if setting.repeatable else "string"
        parser.addini(ini, f"{setting.help_text} (same as {flag})", type=ini_type)


def resolve_options(config: pytest.Config) -> tuple[Int8Options, bool]:
    """The run's options, and whether the run sets any of them (or has a manifest)."""
    resolver = _Resolver(config)
    values = {s.name: resolver.value(s) for s in surface("option")}
    values = {name: value for name, value in values.items() if value is not _DEFAULT}
    values.setdefault("manifest", None)
    values.setdefault("cache_dir", None)
    if values["manifest"] is None and (config.rootpath / MANIFEST_NAME).is_file():
        values["manifest"] = config.rootpath / MANIFEST_NAME
    elif values["manifest"] is not None and not values["manifest"].is_file():
        raise pytest.UsageError(f"--int8-manifest: {values['manifest']} not found.")
    if values["cache_dir"] is None:
        values["cache_dir"] = _default_cache_dir(config)
    for setting in surface("option"):
        target = values.get(setting.name)
        if setting.name.startswith("report_") and isinstance(target, Path) and target.is_dir():
            # found now, not after the run: the report is the artefact the run exists for
            raise pytest.UsageError(
                f"{name_of(setting.option)}: {target} is a directory; name a file to write the report to."
            )
    configured = resolver.configured or values["manifest"] is not None
    return Int8Options(rootdir=config.rootpath, **values), configured


#: "Not set on the command line nor in the ini file": the field's default applies.
_DEFAULT = object()


class _Resolver:
    """Reads one setting from the command line, else the ini file, else its default."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.invocation = Path(config.invocation_params.dir)
        self.ini_base = config.inipath.parent if config.inipath else config.rootpath
        self.configured = False

    def value(self, setting: Setting) -> Any:
        if setting.kind == "budget":
            return self._budget(setting)
        flag, ini = name_of(setting.option), name_of(setting.ini)
        given = self.config.getoption(ini)
        base, where = self.invocation, "option"
        if given is None:
            given = self.config.getini(ini)
            base, where = self.ini_base, "ini"
            if setting.kind == "flag":
                if bool(given) != setting.default:
                    self.configured = True
                return bool(given)
            if given in ("", []):
                return _DEFAULT
        self.configured = True
        if setting.kind == "flag":
            return bool(given)

        def fail(value: object, problem: str) -> pytest.UsageError:
            if where == "option":
                return pytest.UsageError(f"{flag}: {bounded_repr(value)} {problem}.")
            return pytest.UsageError(f"{ini} = {bounded_repr(value)} in the ini file {problem} ({flag}).")

        if setting.repeatable:
            items = [str(v) for v in given]
            return self._list(setting, items, base, fail)
        text = str(given)
        try:
            value = from_text(setting, text)
        except SettingError as exc:
            raise fail(text, str(exc)) from None
        if setting.kind == "path":
            path = (base / text).resolve()
            return str(path) if setting.path_as_str else path
        if setting.kind == "data":
            return text if is_loader_spec(text) else str((base / text).resolve())
        return value

    def _budget(self, setting: Setting) -> Any:
        """The ini file's budget with the command line's keys on top, key by key (one key on the command
        line does not drop the ini file's others); each key remembers where it was set."""
        flag, ini = name_of(setting.option), name_of(setting.ini)
        from_ini, given = self.config.getini(ini) or [], self.config.getoption(ini) or []
        if not from_ini and not given:
            return _DEFAULT
        self.configured = True
        try:
            return Budget.parse([str(v) for v in from_ini], source=flag, origin="ini").merged(
                Budget.parse([str(v) for v in given], source=flag, origin=flag)
            )
        except Int8GateError as exc:
            raise pytest.UsageError(str(exc)) from None

    def _list(self, setting: Setting, items: list[str], base: Path, fail: Any) -> Any:
        if setting.kind == "paths":
            return tuple((base / item).resolve() for item in items)
        if setting.kind == "repairs":
            for item in items:
                try:
                    from_text(setting, item)
                except SettingError as exc:
                    raise fail(item, str(exc)) from None
            return spec_value(setting, ordered_repairs(items))
        if setting.kind in ("constants", "axes"):
            try:
                parsed = parse_items(setting, items)
            except SettingError as exc:
                raise fail(items, str(exc)) from None
            # a .npy named on the command line or in the ini file is relative to where it was written
            return {k: str((base / v).resolve()) if isinstance(v, str) else v for k, v in parsed.items()}
        try:
            if setting.kind == "budget":
                return Budget.parse(items, source=name_of(setting.option))
            if setting.kind == "tolerances":
                from ..report.baseline import parse_tolerances

                return parse_tolerances(items, source=name_of(setting.option))
        except Int8GateError as exc:
            raise pytest.UsageError(str(exc)) from None
        raise AssertionError(f"{setting.name}: no pytest reading for kind {setting.kind}")


def _default_cache_dir(config: pytest.Config) -> Path:
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("int8gate"))
    return config.rootpath / ".int8gate_cache"
