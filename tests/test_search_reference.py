"""The search benchmark's reference (``bench_search.py --reference``): the brute-force greedy that the
adaptive search's fixes are measured against finds the smallest fix where it is obvious, and keeps to
INT8 when asked."""

from __future__ import annotations

import sys
from pathlib import Path

from planted import chain_weights, inputs, plant

from pytest_int8gate.gate import Budget

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_search


def planted_case(calibrator: str = "entropy") -> bench_search.Case:
    weights = plant(chain_weights(6), 3, factor=1e4)
    return bench_search.Case(
        "planted", 6, weights, Budget({"cosine": 0.99}), inputs(256, seed=1), inputs(192, seed=2), (3,),
        calibrator=calibrator,
    )  # fmt: skip


def test_reference_greedy_finds_the_one_planted_layer(tmp_path: Path) -> None:
    reference = bench_search.reference_fix(planted_case(), tmp_path, int8_only=False)

    assert [e.name for e in reference.entries] == ["fc3"]
    assert reference.fix.passed and reference.fix.entries == 1
    # every entry of the first step was measured: 2 calibrators for the model, then per layer 3 overrides,
    # 1 equalization when it has a producer, float
    assert reference.evaluations >= 2 + 6 * 4


def test_reference_greedy_int8_only_never_keeps_a_layer_in_float(tmp_path: Path) -> None:
    reference = bench_search.reference_fix(planted_case(), tmp_path, int8_only=True)

    assert reference.entries and all(e.kind != "exclude" for e in reference.entries)
    assert reference.fix.exclude == ()
    assert reference.fix.passed
