"""The adaptive search on real chains (ONNX Runtime): planted culprits named exactly within the issue's
bound, never more than a linear scan's N + 1 search evaluations, the wall-time budget that stops it with
the best plan so far, pruning of fix entries that are not needed, and the report's phases and fix cost.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pytest_int8gate.bisect import (
    MAX_SECONDS_OPTION,
    Pruning,
    SearchClock,
    SubsetOracle,
    Verifier,
    _candidate_layers,
    choose_walk,
    clears_margin,
    find_offenders,
    probe_of,
    standard_error,
)
from pytest_int8gate.gate import Budget, GateVerdict
from pytest_int8gate.pipeline import GatePipeline, GateSpec
from pytest_int8gate.quantize import QuantPlan
from pytest_int8gate.ranked import prefix_plan, rank_entries, shortest_accepted_prefix
from pytest_int8gate.report import verdict_record
from pytest_int8gate.results import BisectionReport
from pytest_int8gate.sensitivity import SensitivityTable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from planted import (
    Dense,
    chain_weights,
    inputs,
    layer_name,
    mild_ranges,
    plant,
    route_spike,
    save_chain,
    spiky_inputs,
)

BUDGET = Budget({"cosine": 0.99})
EVAL_SAMPLES = 256
SEARCH_SUBSET = 64


def issue_bound(n_layers: int, k: int) -> int:
    return k * math.ceil(math.log2(n_layers)) + 2


def planted_model(root: Path, n_layers: int, positions: tuple[int, ...]) -> Path:
    weights = chain_weights(n_layers)
    for position in positions:
        weights = plant(weights, position, factor=1e4)
    return save_chain(weights, root / f"chain{n_layers}-{'-'.join(map(str, positions))}.onnx")


def spec_for(model: Path, **changes: object) -> GateSpec:
    fields: dict[str, object] = {
        "model": model,
        "calib_data": inputs(EVAL_SAMPLES, seed=1),
        "eval_data": inputs(EVAL_SAMPLES, seed=2),
        "budget": BUDGET,
        "bisect_subset": SEARCH_SUBSET,
        "threads": 1,
    }
    fields.update(changes)
    return GateSpec(**fields)  # type: ignore[arg-type]


def bisection(verdict: GateVerdict) -> BisectionReport:
    assert not verdict.passed
    assert isinstance(verdict.bisection, BisectionReport)
    return verdict.bisection


CASES = [(8, (5,)), (16, (3, 12)), (32, (4, 17, 29)), (64, (40,))]


@pytest.mark.parametrize(("n_layers", "positions"), CASES, ids=lambda c: str(c))
def test_adaptive_search_names_exactly_the_planted_layers_within_the_bound(
    tmp_path: Path, n_layers: int, positions: tuple[int, ...]
) -> None:
    verdict = GatePipeline(spec_for(planted_model(tmp_path, n_layers, positions))).run()
    report = bisection(verdict)
    k = len(positions)
    assert report.strategy == "adaptive" and report.walk == "culprits"
    assert [o.name for o in report.offenders] == [layer_name(p) for p in positions]
    assert report.search_evaluations <= issue_bound(n_layers, k)
    assert report.search_evaluations <= n_layers + 1
    assert report.fix is not None and report.fix.passed and report.fix.int8_layers == n_layers
    assert report.fix.int8_mac_share == 1.0 and report.stopped_by == ""
    # the evaluations by phase add up to every evaluation the pipeline counted
    phases = report.phases()
    assert sum(p["evaluations"] for p in phases.values()) == report.evaluations == verdict.evaluations - 1
    assert phases["search"]["samples"] == SEARCH_SUBSET
    assert phases["verification"] == {
        "evaluations": report.verification_evaluations,
        "samples": EVAL_SAMPLES,
        "unseen_samples": EVAL_SAMPLES - SEARCH_SUBSET,
    }
    record = verdict_record(verdict, nodeid="chain::int8_gate", duration_s=1.0)["bisection"]
    assert record["phases"] == phases and record["walk"] == "culprits"
    assert record["fix"]["entries"] == k and record["fix"]["float_layers"] == 0


def test_a_clean_model_is_not_searched(tmp_path: Path) -> None:
    # the benign twin: the same chain without a planted layer passes, and nothing is searched
    verdict = GatePipeline(spec_for(planted_model(tmp_path, 16, ()))).run()
    assert verdict.passed and verdict.bisection is None and verdict.evaluations == 1


def test_the_walk_follows_the_shape_of_the_sensitivity() -> None:
    few = choose_walk([30.0, 31.0, 0.5, 29.0, 30.5, 32.0, 31.5, 30.0])
    assert few.mode == "culprits" and few.order[-1] == 2  # the worst layer is added last
    spread = choose_walk([22.0, 25.0, 21.0, 24.0, 23.0, 26.0, 22.5, 24.5])
    assert spread.mode == "spread" and spread.order[-1] == 2
    many = choose_walk([1.0, 30.0, 2.0, 31.0, 1.5, 30.0, 0.5, 29.0])  # half the layers broken: not "few"
    assert many.mode == "spread"


class ManyOffenders:
    """Every other layer breaks the budget: bisection would cost far more than a linear scan."""

    def __init__(self, n_layers: int) -> None:
        self.bad = set(range(0, n_layers, 2))
        self.calls = 0

    def __call__(self, accepted: object, trial: list[int], overrides: dict[int, str]) -> object:
        from pytest_int8gate.bisect import Probe

        self.calls += 1
        quantized = [*accepted, *trial]  # type: ignore[misc]
        bad = [i for i in quantized if i in self.bad and i not in overrides]
        return Probe(len(quantized), -float(len(bad)) if bad else 0.01, not bad)


@pytest.mark.parametrize("n_layers", [4, 8, 16, 33])
def test_the_search_never_spends_more_than_a_linear_scan(n_layers: int) -> None:
    oracle = ManyOffenders(n_layers)
    state = find_offenders(n_layers, oracle)  # type: ignore[arg-type]
    assert state.search_evaluations == oracle.calls <= n_layers + 1
    assert state.capped and state.stopped_by == ""
    assert state.offenders == sorted(oracle.bad)[: len(state.offenders)]  # what it found is right
    (note,) = state.notes
    assert note.startswith(f"stopped after {n_layers + 1} search evaluations, what a linear scan")
    # the benign twin: one offender costs far less than the limit, and nothing is cut short
    single = find_offenders(n_layers, ManyOffendersAt({n_layers // 2}))  # type: ignore[arg-type]
    assert single.offenders == [n_layers // 2] and not single.capped and single.notes == []


class ManyOffendersAt(ManyOffenders):
    def __init__(self, bad: set[int]) -> None:
        self.bad = bad
        self.calls = 0


def test_the_wall_time_budget_stops_the_search_and_reports_the_best_plan(tmp_path: Path) -> None:
    model = planted_model(tmp_path, 16, (3, 12))
    report = bisection(GatePipeline(spec_for(model, bisect_max_seconds=1e-9)).run())
    assert report.stopped_by == MAX_SECONDS_OPTION
    assert any(f"wall-time budget of 1e-09 s ({MAX_SECONDS_OPTION})" in note for note in report.notes)
    (best,) = [
        note for note in report.notes if note.startswith("best plan found before the wall-time budget")
    ]
    assert f"raise {MAX_SECONDS_OPTION}" in best and "cosine" in best
    assert report.fix is not None and report.fix.results and not report.fix.passed
    # the benign twin: the default budget does not stop the same search
    full = bisection(GatePipeline(spec_for(model)).run())
    assert full.stopped_by == "" and full.fix is not None and full.fix.passed


def test_pruning_drops_the_entries_a_fix_does_not_need_and_keeps_the_rest(tmp_path: Path) -> None:
    pipeline = GatePipeline(spec_for(planted_model(tmp_path, 16, (8,)), bisect=False))
    assert not pipeline.run().passed
    context, evaluator = pipeline.context, pipeline.evaluator
    oracle = SubsetOracle(context, evaluator, _candidate_layers(context), SEARCH_SUBSET)
    verifier = Verifier(context, evaluator, oracle.subset_size)
    needed = replace(context.plan, equalize=frozenset({"fc8"}))
    padded = replace(needed, exclude=frozenset({"fc3"}), overrides={"fc5": "percentile"})

    pruning = Pruning(context, oracle, verifier, SearchClock(200, None, time.perf_counter()))
    fix = pruning.prune(padded, verifier.verify(padded))
    assert pruning.dropped == ["fc3 in float", "fc5 with calibrator percentile"]
    assert pruning.evaluations == 3  # fc3, fc5, then fc8's equalization (needed: the drop fails)
    assert fix.passed and fix.exclude == () and fix.overrides == {} and fix.equalize == ("fc8",)
    assert fix.int8_layers == 16 and fix.entries == 1
    (note,) = pruning.notes
    assert note.startswith("pruned 2 of 3 entries the fix does not need")

    # the benign twin: a fix with nothing to spare keeps its one entry; the plan without it was measured
    # above, so pruning remembers it fails instead of evaluating it again
    minimal = Pruning(context, oracle, verifier, SearchClock(200, None, time.perf_counter()))
    kept = minimal.prune(needed, verifier.verify(needed))
    assert minimal.dropped == [] and minimal.evaluations == 0 and kept.equalize == ("fc8",)
    assert np.isclose(kept.results[0].observed, fix.results[0].observed)


# ---- error spread thin: INT8 fixes the sensitivity table points to ----------------------------------


def mild_ranges_with_a_spike(n_layers: int) -> list[Dense]:
    """Every layer's input has one channel 4-12 times wider than the rest (seeded): INT8 error spread over
    the whole chain; the middle layer's input also carries rare calibration spikes (route_spike)."""
    rng = np.random.default_rng(0)
    spike = n_layers // 2
    weights = chain_weights(n_layers)
    for index in range(1, n_layers):
        if abs(index - spike) > 1:
            weights = plant(weights, index, factor=float(rng.uniform(4, 12)), channel=int(rng.integers(1, 8)))
    return route_spike(weights, spike, gain=300.0)


def spread_spec(model: Path, cosine: float) -> GateSpec:
    return GateSpec(
        model=model,
        calib_data=spiky_inputs(2048, spikes=2, seed=1),
        eval_data=spiky_inputs(512, spikes=0, seed=2),
        budget=Budget({"cosine": cosine}),
        calibrator="max",
        bisect_subset=128,
        threads=1,
        min_calib_samples=0,
    )


def test_spread_error_gets_an_all_int8_fix_of_few_entries_that_holds_on_unseen_samples(
    tmp_path: Path,
) -> None:
    model = save_chain(mild_ranges_with_a_spike(8), tmp_path / "spread8.onnx")
    # measured: max 0.69 (the spikes), percentile 0.994, entropy 0.990; 0.9958 closes 30 % of the best gap
    report = bisection(GatePipeline(spread_spec(model, 0.9958)).run())
    assert report.walk == "spread"
    fix = report.fix
    assert fix is not None and fix.passed and fix.generalised is True
    assert fix.exclude == () and fix.int8_layers == 8  # all INT8
    assert fix.entries <= 3
    assert report.search_evaluations <= 8 + 1
    assert report.evaluations <= 2 * math.ceil(math.log2(8)) + 4 + 2  # measured 11: "about" the target
    # the benign twin: a budget the best calibrator for the whole model meets is a one-entry fix
    easy = bisection(GatePipeline(spread_spec(model, 0.99)).run())
    assert easy.fix is not None and easy.fix.passed and easy.fix.entries == 1
    assert easy.search_evaluations == 0 and easy.walk == ""


def test_a_calibrator_override_predicted_by_own_sqnr_costs_one_search_evaluation(tmp_path: Path) -> None:
    # The spec's own override gives the spiking layer max; its own SQNR says percentile serves it far
    # better, and that one override, evaluated once, is the fix.
    model = save_chain(route_spike(chain_weights(8), 4, gain=1e3), tmp_path / "spiky.onnx")
    spec = GateSpec(
        model=model,
        calib_data=spiky_inputs(2048, spikes=2, seed=1),
        eval_data=spiky_inputs(EVAL_SAMPLES, spikes=1, seed=2),
        budget=BUDGET,
        calibrator="percentile",
        overrides={"fc4": "max"},
        bisect_subset=SEARCH_SUBSET,
        threads=1,
    )
    report = bisection(GatePipeline(spec).run())
    assert report.search_evaluations == 1 and report.repair_evaluations == 0
    (offender,) = report.offenders
    assert (offender.name, offender.action, offender.calibrator) == ("fc4", "calibrator", "percentile")
    assert offender.attempts[0].startswith("predicted by own SQNR: ")
    fix = report.fix
    assert (
        fix is not None and fix.passed and fix.overrides == {"fc4": "percentile"} and fix.calibrator is None
    )
    # the benign twin: without the spec's override the same model passes, nothing to predict
    plain = GatePipeline(replace(spec, overrides={})).run()
    assert plain.passed and plain.bisection is None


# ---- error spread thin: the shortest passing prefix of ranked entries ------------------------------


def spread16_spec(root: Path, cosine: float, **changes: object) -> GateSpec:
    """A 16-layer chain whose every layer's input has a mildly wide channel, calibrator entropy, 128 of
    512 evaluation samples for the search (384 unseen)."""
    spec = GateSpec(
        model=save_chain(mild_ranges(16), root / "spread16.onnx"),
        calib_data=inputs(2048, seed=1),
        eval_data=inputs(512, seed=2),
        budget=Budget({"cosine": cosine}),
        calibrator="entropy",
        bisect_subset=128,
        threads=1,
        min_calib_samples=0,
    )
    return replace(spec, **changes)  # type: ignore[arg-type]


def test_spread_error_gets_a_small_int8_fix_within_the_target_count_and_it_holds_on_unseen_samples(
    tmp_path: Path,
) -> None:
    # Every layer's input has a mildly wide channel: no layer breaks the budget alone, no calibrator for
    # the whole model passes (measured: entropy 0.979, the best), and the error accumulates over 16 layers.
    spec = spread16_spec(tmp_path, 0.986)
    verdict = GatePipeline(spec).run()
    report = bisection(verdict)
    assert report.walk == "spread"
    fix = report.fix
    assert fix is not None and fix.passed and fix.generalised is True and fix.unseen_samples == 384
    assert fix.exclude == () and fix.int8_layers == 16 and fix.int8_mac_share == 1.0  # all INT8
    assert 1 <= fix.entries <= 6  # measured 4
    # global rungs, search, pruning and verification all count, and stay within 2 * ceil(log2 16) + 4
    assert report.evaluations == verdict.evaluations - 1 <= 2 * 4 + 4
    assert report.repair_evaluations == 0 and report.pruning_evaluations <= 2
    # the report's rows are the fix's entries, each with why it was ranked where it was
    rows = {o.name: o for o in report.offenders}
    assert set(rows) == set(fix.overrides) | set(fix.equalize)
    assert all(o.action != "float" and o.attempts[0].startswith("ranked by own SQNR") for o in rows.values())
    # the benign twin: a budget the spec's plan meets is not searched
    easy = GatePipeline(replace(spec, budget=Budget({"cosine": 0.97}))).run()
    assert easy.passed and easy.bisection is None


def test_the_shortest_accepted_prefix_costs_a_bisection() -> None:
    for size in (5, 37, 70):
        for shortest in (1, size // 3, size - 1, size):
            measured: list[int] = []

            def measure(length: int, measured: list[int] = measured) -> int:
                measured.append(length)
                return length

            def accept(length: int, shortest: int = shortest) -> bool:
                return length >= shortest

            search = shortest_accepted_prefix(size, measure, accept)
            assert search.length == shortest and not search.stopped
            assert len(measured) <= math.ceil(math.log2(size))
            assert all(length < size for length in measured)  # every entry applied: FP32, never measured
    # stopped by a limit: the shortest length known to be accepted, never one that was not
    calls: list[int] = []

    def limited(length: int) -> int | None:
        calls.append(length)
        return length if len(calls) <= 2 else None

    stopped = shortest_accepted_prefix(64, limited, lambda length: length >= 10)
    assert stopped.stopped and stopped.length >= 10 and stopped.length in (*calls, 64)


def test_entries_are_ranked_int8_first_by_predicted_gain_then_float_by_own_sqnr() -> None:
    table = SensitivityTable(
        (),
        {
            "a": {"entropy": 20.0, "percentile": 29.0},  # +9 dB with percentile
            "b": {"entropy": 15.0, "percentile": 15.5},  # +0.5 dB: not worth an entry
            "c": {"entropy": 25.0, "mse": 28.0},  # +3 dB with mse
        },
    )
    own = {"a": 20.0, "b": 15.0, "c": 25.0}
    entries = rank_entries(table, ["a", "b", "c"], QuantPlan(), own, equalizable=["c", "b"])
    assert [e.text for e in entries] == [
        "a with calibrator percentile",
        "c with calibrator mse",
        "b equalized",
        "c equalized",
        "b in float",
        "c in float",  # 28 dB with its override
        "a in float",  # 29 dB with its override
    ]
    # a prefix floating a layer drops that layer's INT8 repairs
    plan = prefix_plan(QuantPlan(), entries[:6])
    assert plan.exclude == {"b", "c"} and plan.overrides == {"a": "percentile"} and plan.equalize == set()
    # with the calibrator rung disabled, no override is ranked
    plain = rank_entries(table, ["a", "b", "c"], QuantPlan(), own, calibrators=False)
    assert all(e.kind != "override" for e in plain)


def test_one_outlier_among_many_layers_does_not_send_the_walk_after_culprits() -> None:
    # One layer 16 dB below 60 others: it stands out, but floating it would remove only 40 % of the noise.
    many = choose_walk([30.0] * 60 + [14.0])
    assert many.mode == "spread" and "carries only 40%" in many.note
    # the benign twin: the same outlier among 8 layers carries most of the noise, a culprit walk
    few = choose_walk([30.0] * 8 + [14.0])
    assert few.mode == "culprits" and "carries 83%" in few.note


def test_a_subset_pass_is_accepted_only_by_a_standard_error_of_margin(tmp_path: Path) -> None:
    pipeline = GatePipeline(spec_for(planted_model(tmp_path, 8, (5,)), bisect=False))
    assert not pipeline.run().passed
    context, evaluator = pipeline.context, pipeline.evaluator
    subset = evaluator.subset(SEARCH_SUBSET)
    comparison = subset.compare(context.plan)
    results = evaluator.judge(comparison)
    cosines = comparison.per_sample_cosine
    # the standard error of the subset's mean cosine, in the margin's units (cosine: unscaled)
    expected = float(np.std(cosines, ddof=1)) / math.sqrt(cosines.size)
    assert math.isclose(standard_error(results, comparison), expected, rel_tol=1e-9) and expected > 0
    probe = probe_of(8, results, comparison)
    assert probe.stderr == standard_error(results, comparison)
    holdout = math.sqrt(1 + SEARCH_SUBSET / (EVAL_SAMPLES - SEARCH_SUBSET))
    # a pass by less than the standard error of the subset-unseen difference is not accepted; by more, it is
    narrow = replace(probe, passed=True, margin=0.9 * holdout * probe.stderr)
    clear = replace(probe, passed=True, margin=1.1 * holdout * probe.stderr)
    assert not clears_margin(narrow, holdout) and clears_margin(clear, holdout)
    assert clears_margin(narrow, 0.0)  # nothing held out: any pass
    assert not clears_margin(probe, 0.0)  # the planted plan fails


def test_a_plan_that_misses_the_budget_on_all_samples_is_never_verified_as_a_fix(tmp_path: Path) -> None:
    pipeline = GatePipeline(spec_for(planted_model(tmp_path, 8, (5,)), bisect=False))
    assert not pipeline.run().passed
    context, evaluator = pipeline.context, pipeline.evaluator
    # nothing held out (the search used every sample): the full set alone decides
    everything = Verifier(context, evaluator, EVAL_SAMPLES)
    assert everything.unseen is None
    broken = everything.verify(context.plan)
    assert not broken.passed and not any(r.passed for r in broken.results) and broken.unseen_results == ()
    # the benign twin: the planted layer in float meets the budget, verified as a fix
    fixed = everything.verify(replace(context.plan, exclude=frozenset({"fc5"})))
    assert fixed.passed and fixed.exclude == ("fc5",)


@pytest.mark.parametrize("cap", [2, 4])
def test_every_evaluation_is_counted_when_the_cap_stops_the_search_before_its_walk(
    tmp_path: Path, cap: int
) -> None:
    # The whole-calibrator rungs (and the predicted override) spend the cap: the culprit walk that would
    # count the failing whole-plan probe as its first evaluation never starts, and that probe must still
    # be counted in some phase.
    verdict = GatePipeline(spec_for(planted_model(tmp_path, 16, (3, 12)), bisect_max_evaluations=cap)).run()
    report = bisection(verdict)
    assert report.stopped_by == "--int8-bisect-max-evals"
    phases = report.phases()
    assert sum(p["evaluations"] for p in phases.values()) == report.evaluations == verdict.evaluations - 1
    # the twin whose cap leaves room for the walk: it counts that probe as its first evaluation
    roomy = GatePipeline(spec_for(planted_model(tmp_path, 16, (3, 12)), bisect_max_evaluations=8)).run()
    assert bisection(roomy).search_evaluations >= 1 and bisection(roomy).evaluations == roomy.evaluations - 1


def test_layers_the_spread_walk_keeps_in_float_are_each_tried_back_in_int8(tmp_path: Path) -> None:
    # Calibrator overrides alone cannot meet this budget, so the ranked prefix reaches layers in float,
    # ranked by own SQNR; one of them (measured: fc14) comes back in INT8 with another calibrator, by the
    # search samples' standard-error margin, and the smaller fix holds on the unseen ones.
    spec = spread16_spec(tmp_path, 0.997, repairs=("calibrator",))
    verdict = GatePipeline(spec).run()
    report = bisection(verdict)
    assert report.walk == "spread"
    fix = report.fix
    assert fix is not None and fix.passed and fix.generalised is True
    back = [label for label in report.pruned if " in float" in label]
    assert back, report.pruned
    assert all(label.split(" ")[0] not in fix.exclude for label in back)
    assert fix.exclude and "fc14" not in fix.exclude and fix.overrides.get("fc14") == "percentile"
    # the report's rows are the fix's entries; every evaluation is counted in a phase
    assert {o.name for o in report.offenders if o.action == "float"} == set(fix.exclude)
    assert report.evaluations == verdict.evaluations - 1
