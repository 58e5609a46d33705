"""The settings table and every surface generated from it: each setting the table puts on a surface is
spelt there, parses, and reaches ``GateSpec`` (or the run's options) with the value given; each setting
it keeps off a surface says why. Walked from the table, so a new setting is tested without copying it."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from example_files import DIGITS

from pytest_int8gate.budget import Budget
from pytest_int8gate.cli import build_parser, check_spec
from pytest_int8gate.manifest import ENTRY_KEYS, load_manifest
from pytest_int8gate.pipeline import GateSpec
from pytest_int8gate.plugin import Int8Options
from pytest_int8gate.plugin.items import entry_spec
from pytest_int8gate.settings import (
    SETTINGS,
    Absent,
    Setting,
    gate_settings,
    markdown_table,
    name_of,
    negative_flag,
    on,
    spec_value,
    surface,
)

SURFACES = ("option", "ini", "manifest", "cli")


def plain(value: Any) -> Any:
    """A value as JSON carries it: the inner runs report through a JSON file."""
    if isinstance(value, Budget):
        return {k: float(v) for k, v in value.limits.items()}
    if isinstance(value, (frozenset, set)):
        return sorted(plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def expected(setting: Setting, base: Path | None) -> Any:
    """What ``setting``'s example becomes after a surface read it (relative paths against ``base``)."""
    example = setting.example

    def path(text: str) -> Path:
        return Path(text) if base is None else (base / text).resolve()

    if setting.kind in ("path", "data"):
        value = path(str(example))
        return str(value) if setting.path_as_str or setting.kind == "data" else value
    if setting.kind == "paths":
        assert isinstance(example, list)
        return tuple(path(p) for p in example)
    return spec_value(setting, example)


def as_text(setting: Setting) -> list[str]:
    """The example as command-line / ini values (one per repeat)."""
    example = setting.example
    if isinstance(example, dict):
        return [f"{k}={v}" for k, v in example.items()]
    if isinstance(example, list):
        return [str(v) for v in example]
    return [str(example)]


# ---- the table itself ----------------------------------------------------------------------------------


def test_every_setting_has_a_spelling_or_a_reason_on_every_surface() -> None:
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    for setting in SETTINGS:
        assert setting.help and setting.example is not None, setting.name
        assert spec_value(setting, setting.example) != spec_value(setting, setting.default), setting.name
        for where in SURFACES:
            spelling = getattr(setting, where)
            if isinstance(spelling, Absent):
                assert len(spelling.reason) > 10, (setting.name, where)
        if on(setting.option):
            assert name_of(setting.option).startswith("--int8-"), setting.name
            assert on(setting.ini) and name_of(setting.ini).startswith("int8_"), setting.name
        if on(setting.cli):
            assert name_of(setting.cli).startswith("--"), setting.name
            if setting.kind == "flag" and setting.default is True:  # spelt as its off switch
                assert name_of(setting.cli).startswith("--no-"), setting.name


def test_the_settings_that_had_drifted_are_on_the_manifest_and_the_command_line() -> None:
    manifest = {s.name for s in surface("manifest")}
    cli = {s.name for s in surface("cli")}
    assert {"bisect_max_evaluations", "min_calib_samples", "check_determinism"} <= manifest
    assert {
        "strict_ci",
        "fp32_reference",
        "min_calib_samples",
        "check_determinism",
        "bisect_strategy",
        "bisect_subset",
        "bisect_max_evaluations",
    } <= cli


def test_the_readme_table_is_the_settings_table() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    begin = readme.index("<!-- generated from pytest_int8gate/settings.py")
    end = readme.index("<!-- end of the generated table -->")
    table = readme[readme.index("\n", begin) + 1 : end]

    assert table == markdown_table(), "regenerate it with pytest_int8gate.settings.markdown_table()"
    for setting in SETTINGS:
        for where in SURFACES:
            spelling = getattr(setting, where)
            if on(spelling):
                assert f"`{name_of(spelling)}" in table, (setting.name, where)


def test_gate_spec_fields_and_defaults_agree_with_the_table() -> None:
    fields = {f.name: f for f in dataclasses.fields(GateSpec)}
    assert set(fields) == {s.name for s in gate_settings()}
    for setting in gate_settings():
        field = fields[setting.name]
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:  # required: the model and the calibration data
            assert setting.default is None, setting.name
            continue
        if isinstance(default, Budget):
            default = dict(default.limits)
        assert default == spec_value(setting, setting.default), setting.name


def test_run_options_have_one_field_per_option_and_the_tables_defaults() -> None:
    fields = {f.name: f for f in dataclasses.fields(Int8Options)}
    assert set(fields) == {s.name for s in surface("option")} | {"rootdir"}
    options = Int8Options()
    for setting in surface("option"):
        value = getattr(options, setting.name)
        assert plain(value) == plain(spec_value(setting, setting.default)), setting.name


def test_percentile_has_one_rule_everywhere() -> None:
    """The range that used to be checked differently by the plugin and the manifest."""
    percentile = next(s for s in SETTINGS if s.name == "percentile")
    parser = build_parser()
    for bad in ("0", "-1", "100.5", "nan", "inf"):
        with pytest.raises(SystemExit):
            parser.parse_args(["check", "m.onnx", "--calib-data", "c.npz", "--percentile", bad])
    assert percentile.describe == "a number in (0, 100]"
    args = parser.parse_args(["check", "m.onnx", "--calib-data", "c", "--percentile", "100"])
    assert math.isclose(check_spec(args).percentile, 100.0)


# ---- every surface, walked from the table ---------------------------------------------------------------

# An inner test that dumps the run's options and the gate spec they make, as JSON.
PROBE = """
import dataclasses, json
from pathlib import Path

from pytest_int8gate.plugin import STATE


def plain(value):
    if hasattr(value, "limits"):
        return {k: float(v) for k, v in value.limits.items()}
    if isinstance(value, (frozenset, set)):
        return sorted(plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def test_probe(pytestconfig):
    options = pytestconfig.stash[STATE].options
    spec = options.spec(Path("m.onnx"))
    dump = {
        "options": {f.name: plain(getattr(options, f.name)) for f in dataclasses.fields(options)},
        "spec": {f.name: plain(getattr(spec, f.name)) for f in dataclasses.fields(spec)},
    }
    Path(__file__).with_name("probe.json").write_text(json.dumps(dump))
"""


def _files_the_examples_name(root: Path) -> None:
    """Files that must exist for the run to start: the model, the manifest and the baseline."""
    by_name = {s.name: s for s in SETTINGS}
    for name in by_name["models"].example:  # type: ignore[attr-defined]
        shutil.copy(DIGITS, root / name)
    (root / str(by_name["manifest"].example)).write_text(
        f"models:\n  - {{name: listed, model: {by_name['models'].example[0]}, calib_data: c.npz}}\n"  # type: ignore[index]
    )
    (root / str(by_name["baseline"].example)).write_text('{"gates": []}')


def _probe(pytester: pytest.Pytester, *args: str) -> dict[str, Any]:
    pytester.makepyfile(test_inner_probe=PROBE)
    pytester.runpytest("-k", "probe", *args).assert_outcomes(passed=1)
    payload: dict[str, Any] = json.loads((pytester.path / "probe.json").read_text())
    return payload


def _assert_reached(dump: dict[str, Any], settings: tuple[Setting, ...], base: Path) -> None:
    for setting in settings:
        want = plain(expected(setting, base))
        assert dump["options"][setting.name] == want, setting.name
        if setting.scope == "gate":
            assert dump["spec"][setting.name] == want, setting.name


def test_every_option_parses_and_reaches_the_gate_spec(project: pytest.Pytester) -> None:
    _files_the_examples_name(project.path)
    args: list[str] = []
    for setting in surface("option"):
        flag = name_of(setting.option)
        if setting.kind == "flag":
            args.append(flag if setting.example else negative_flag(flag))
        else:
            for text in as_text(setting):
                args += [flag, text]

    dump = _probe(project, *args)

    _assert_reached(dump, surface("option"), project.path.resolve())


def test_every_ini_key_is_read_and_reaches_the_gate_spec(project: pytest.Pytester) -> None:
    _files_the_examples_name(project.path)
    lines = ["[pytest]"]
    for setting in surface("ini"):
        values = as_text(setting)
        if setting.repeatable:
            lines += [f"{name_of(setting.ini)} =", *(f"    {v}" for v in values)]
        else:
            value = values[0].lower() if setting.kind == "flag" else values[0]
            lines.append(f"{name_of(setting.ini)} = {value}")
    (project.path / "pytest.ini").write_text("\n".join(lines) + "\n")

    dump = _probe(project)

    _assert_reached(dump, surface("ini"), project.path.resolve())


def test_every_manifest_key_is_accepted_and_reaches_the_gate_spec(tmp_path: Path) -> None:
    shutil.copy(DIGITS, tmp_path / "model.onnx")
    entry = {name_of(s.manifest): s.example for s in surface("manifest")}
    assert set(entry) == set(ENTRY_KEYS)
    manifest = tmp_path / "int8gate.yaml"
    manifest.write_text("models:\n  - " + json.dumps(entry) + "\n")  # JSON is YAML

    (loaded,) = load_manifest(manifest)
    spec = entry_spec(Int8Options(), loaded, tmp_path)

    for setting in surface("manifest"):
        if setting.name == "budget":
            assert dict(spec.budget.limits) == setting.example
        else:
            assert plain(getattr(spec, setting.name)) == plain(expected(setting, tmp_path)), setting.name


def test_every_command_line_flag_exists_and_reaches_the_gate_spec() -> None:
    argv = ["check", "model.onnx"]
    for setting in surface("cli"):
        flag = name_of(setting.cli)
        if setting.kind == "flag":
            argv.append(flag)  # a flag on by default is spelt as its off switch (--no-bisect)
        else:
            argv += [flag, *as_text(setting)]

    spec = check_spec(build_parser().parse_args(argv))

    for setting in surface("cli"):
        value = getattr(spec, setting.name)
        if setting.name == "budget":
            assert dict(value.limits) == setting.example
        elif setting.name == "overrides":
            assert value == setting.example
        else:
            assert plain(value) == plain(expected(setting, None)), setting.name

