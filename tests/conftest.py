"""Fixtures of the tests that run pytest inside pytest (``pytester``): an inner project with its own ini,
empty or holding the example project's models and data."""

from __future__ import annotations

import shutil

import pytest
from example_files import EXAMPLE_FILES


@pytest.fixture
def empty_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """An inner project with only its own ``pytest.ini``, so that this project's configuration is not
    picked up."""
    # Plugins that play no part here: hypothesis's would be re-imported (and assertion-rewritten) by every
    # in-process run, which costs most of a second each.
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest -p no:benchmark")
    (pytester.path / "pytest.ini").write_text("[pytest]\n")
    return pytester


@pytest.fixture
def project(empty_project: pytest.Pytester) -> pytest.Pytester:
    """An inner project with no tests and no conftest: its own ini, the example models and data side by
    side in its root."""
    for source in EXAMPLE_FILES:
        shutil.copy(source, empty_project.path / source.name)
    return empty_project
