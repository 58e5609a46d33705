"""Security: nothing the gate reads can run code, except a ``module:function`` loader the user named.

The package source is checked statically (every module, so that new code is held to it too): no pickle
or its relatives, YAML only through ``yaml.safe_load``, every ``numpy.load`` with ``allow_pickle=False``,
no ``eval``/``exec``, and a module imported by a name that is not a literal only in the data loader. Then
the behaviour: a YAML tag or a pickled object that would run code if loaded is refused with one sentence,
and the code never runs. Cache directory permissions are tested in test_cache_integrity.py.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest

from pytest_int8gate.data import load_labels, read_numpy_file
from pytest_int8gate.errors import DataError
from pytest_int8gate.manifest import ManifestError, load_manifest

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_int8gate"
SOURCES = sorted(PACKAGE.rglob("*.py"))
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def _violations(text: str, name: str) -> list[str]:
    """What ``text`` (the module ``name``, e.g. ``pytest_int8gate/data.py``) does that is forbidden."""
    tree = ast.parse(text, filename=name)
    found: list[str] = []

    def where(node: ast.AST) -> str:
        return f"{name}:{getattr(node, 'lineno', '?')}"

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                f"{where(node)} imports {a.name}"
                for a in node.names
                if a.name.split(".")[0] in UNSAFE_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where(node)} imports from {node.module}")
        elif isinstance(node, ast.Call):
            func = node.func
            called = getattr(func, "attr", None) or getattr(func, "id", "")
            owner = (
                func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            )
            keywords = {k.arg: k.value for k in node.keywords}
            if owner == "yaml" and called in UNSAFE_YAML:
                found.append(f"{where(node)} calls yaml.{called} (use yaml.safe_load)")
            if owner in ("np", "numpy") and called == "load":
                flag = keywords.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    found.append(f"{where(node)} calls numpy.load without allow_pickle=False")
            if "allow_pickle" in keywords and not (
                isinstance(keywords["allow_pickle"], ast.Constant) and keywords["allow_pickle"].value is False
            ):
                found.append(f"{where(node)} passes allow_pickle other than False")
            if isinstance(func, ast.Name) and called in ("eval", "exec", "__import__"):
                found.append(f"{where(node)} calls {called}")
            literal = bool(node.args) and isinstance(node.args[0], ast.Constant)
            # the user's module:function loader in data.py, and only it, imports a name given at run time
            if called == "import_module" and not literal and name != "pytest_int8gate/data.py":
                found.append(f"{where(node)} imports a module named at run time")
            if called in ("run", "Popen", "call", "check_output") and keywords.get("shell") is not None:
                found.append(f"{where(node)} runs a shell")
    return sorted(found, key=lambda v: int(v.split(" ", 1)[0].rsplit(":", 1)[1]))


def test_the_package_source_has_no_pickle_unsafe_yaml_or_dynamic_code() -> None:
    assert len(SOURCES) > 10  # the walk found the package
    violations = [
        v
        for source in SOURCES
        for v in _violations(
            source.read_text(encoding="utf-8"), source.relative_to(PACKAGE.parent).as_posix()
        )
    ]
    assert violations == []


def test_the_static_check_sees_what_it_forbids() -> None:
    code = (
        "import pickle\nimport yaml\nimport numpy as np\nfrom importlib import import_module\n"
        "yaml.load(t)\nnp.load(f)\nnp.load(f, allow_pickle=True)\neval('1')\nimport_module(name)\n"
        "import_module('tensorrt')\nnp.load(f, allow_pickle=False)\nyaml.safe_load(t)\n"
    )
    found = _violations(code, "pytest_int8gate/probe.py")
    assert [v.split(" ", 1)[1] for v in found] == [
        "imports pickle",
        "calls yaml.load (use yaml.safe_load)",
        "calls numpy.load without allow_pickle=False",
        "calls numpy.load without allow_pickle=False",
        "passes allow_pickle other than False",
        "calls eval",
        "imports a module named at run time",
    ]
    assert (
        _violations("from importlib import import_module\nimport_module(name)\n", "pytest_int8gate/data.py")
        == []
    )


# ---- behaviour --------------------------------------------------------------------------------------------


class _Planted:
    """Unpickling this object creates ``marker``: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_a_yaml_tag_that_would_run_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    manifest = tmp_path / "int8gate.yaml"
    manifest.write_text(f'models: !!python/object/apply:os.mkdir ["{marker}"]\n')

    with pytest.raises(ManifestError) as info:
        load_manifest(manifest)

    assert str(info.value).startswith(f"{manifest}: not valid YAML (could not determine a constructor")
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_pickled_object_in_a_numpy_file_is_refused_and_never_runs(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "pwned"
    payload = np.array([_Planted(marker)], dtype=object)
    path = tmp_path / f"data{suffix}"
    if suffix == ".npy":
        np.save(path, payload, allow_pickle=True)
    else:
        np.savez(path, x=payload)

    with pytest.raises(DataError, match="holds pickled objects, which are refused"):
        read_numpy_file(path)
    with pytest.raises(DataError, match="holds pickled objects, which are refused"):
        load_labels(path, num_samples=1)
    assert not marker.exists()
