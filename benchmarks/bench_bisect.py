"""Bisection cost: ``binary`` against ``linear`` (the seed method) on chains with 2 planted offenders.

Run from anywhere: ``python benchmarks/bench_bisect.py``. Prints two Markdown tables and writes them to
``benchmarks/results/bisect.md``:

- on real models: the Gemm+ReLU chains of ``tests/planted.py`` (16 channels) with N layers and offenders
  planted at N/2 and 3N/4 (one placement per N); every run goes through the real GatePipeline and ONNX
  Runtime, both strategies in the same process, on the same data;
- over every placement: the binary search's evaluation count for each of the C(N, k) placements of k = 2
  offenders, on a synthetic monotone oracle (a prefix fails exactly when it holds an undecided offender).
  The count depends only on where the offenders sit, so this is exact: it says in how many placements the
  target ``k*ceil(log2 N) + 2`` holds and what the worst case is.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import ROOT, environment_lines

sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from planted import chain_weights, inputs, layer_name, plant, save_chain  # noqa: E402

from pytest_int8gate.bisect import BisectionReport, Probe, SubsetOracle, find_offenders  # noqa: E402
from pytest_int8gate.data import Feeds  # noqa: E402
from pytest_int8gate.gate import Budget  # noqa: E402
from pytest_int8gate.pipeline import GatePipeline, GateSpec  # noqa: E402

SIZES = (8, 16, 32, 64)
BUDGET = Budget({"cosine": 0.99})
EVAL_SAMPLES = 1000
SUBSET = 200  # GateSpec's default bisect_subset
STRATEGIES = ("binary", "linear")


def planted_positions(n_layers: int) -> tuple[int, int]:
    return n_layers // 2, (3 * n_layers) // 4


def documented_cost(n_layers: int, offenders: tuple[int, ...]) -> int:
    cost, position = 1, 0
    for offender in offenders:
        cost += 1 + math.ceil(math.log2(n_layers - position))
        position = offender + 1
    return cost


def target_bound(n_layers: int, k: int) -> int:
    """The target: ``k*ceil(log2 N) + 2`` search evaluations."""
    return k * math.ceil(math.log2(n_layers)) + 2


def worst_case_bound(n_layers: int, k: int) -> int:
    """bisect.py's worst case ``k*ceil(log2 N) + k + 1``: offenders early, each costing its search over
    almost all N layers plus one "does everything after it pass?" probe."""
    return k * math.ceil(math.log2(n_layers)) + k + 1


def search_cost(n_layers: int, offenders: tuple[int, ...]) -> int:
    """Search evaluations of the binary strategy with ``offenders`` on a monotone synthetic oracle."""
    planted = set(offenders)

    def oracle(accepted: object, trial: list[int], overrides: object) -> Probe:
        failed = any(layer in planted for layer in trial)
        return Probe(len(trial), -1.0 if failed else 1.0, not failed)

    state = find_offenders(n_layers, oracle)
    if state.offenders != sorted(offenders):
        raise SystemExit(f"N={n_layers}: the search found {state.offenders}, planted {sorted(offenders)}")
    return state.search_evaluations


@dataclass(frozen=True)
class Placements:
    """The binary search's cost over every placement of ``k`` offenders among ``n_layers`` layers."""

    n_layers: int
    k: int
    count: int
    within_target: int  # placements costing at most target_bound
    worst: int
    worst_placement: tuple[int, ...]
    mean: float

    @property
    def target(self) -> int:
        return target_bound(self.n_layers, self.k)


def placements(n_layers: int, k: int = 2) -> Placements:
    costs = {p: search_cost(n_layers, p) for p in itertools.combinations(range(n_layers), k)}
    worst = max(costs, key=lambda p: costs[p])
    target = target_bound(n_layers, k)
    return Placements(
        n_layers,
        k,
        len(costs),
        sum(cost <= target for cost in costs.values()),
        costs[worst],
        worst,
        statistics.fmean(costs.values()),
    )


def placements_table(rows: list[Placements]) -> str:
    lines = [
        "| N | k | placements | within k·⌈log2 N⌉+2 | worst evals | a worst placement | "
        "k·⌈log2 N⌉+k+1 (bisect.py's worst case) | mean evals | linear evals |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        worst_at = ", ".join(layer_name(p) for p in row.worst_placement)
        lines.append(
            f"| {row.n_layers} | {row.k} | {row.count} | {row.within_target} of {row.count} "
            f"(target {row.target}) | {row.worst} | {worst_at} | "
            f"{worst_case_bound(row.n_layers, row.k)} | {row.mean:.2f} | {row.n_layers} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Run:
    report: BisectionReport
    search_seconds: float  # median wall time of the search alone (its INT8 evaluations on the subset)
    bisect_seconds: float  # median wall time of the whole bisection (search, repair, fix, sensitivity)


def gate_pipeline(model: Path, strategy: str, calib: Feeds, evaluation: Feeds) -> GatePipeline:
    spec = GateSpec(
        model=model,
        calib_data=calib,
        eval_data=evaluation,
        budget=BUDGET,
        bisect_strategy=strategy,
        bisect_subset=SUBSET,
    )
    pipeline = GatePipeline(spec)
    pipeline.table  # noqa: B018 - calibrate outside the timed regions
    pipeline.fp32_runner  # noqa: B018
    return pipeline


def bisect_once(pipeline: GatePipeline) -> BisectionReport:
    report = pipeline.run().bisection
    if not isinstance(report, BisectionReport):
        raise SystemExit(f"{pipeline.spec.model.name}: the gate passed, nothing to bisect")
    return report


def search_once(pipeline: GatePipeline) -> float:
    """The search alone, as bisect_failure runs it, without repair: seconds."""
    quantized = set(pipeline.quantized().quantized_layers)
    layers = [layer for layer in pipeline.model.info.layers if layer.name in quantized]
    # FP32 reference outputs: outside the timing
    oracle = SubsetOracle(pipeline.context, pipeline.evaluator, layers, SUBSET)
    strategy = pipeline.spec.bisect_strategy
    started = time.perf_counter()
    first = oracle(range(len(layers)), [], {}) if strategy == "binary" else None
    find_offenders(len(layers), oracle, strategy=strategy, first=first)
    return time.perf_counter() - started


def measure(n_layers: int, workdir: Path, repeats: int) -> dict[str, Run]:
    positions = planted_positions(n_layers)
    weights = chain_weights(n_layers)
    for position in positions:
        weights = plant(weights, position)
    model = save_chain(weights, workdir / f"chain{n_layers}.onnx")
    calib, evaluation = inputs(512, seed=1), inputs(EVAL_SAMPLES, seed=2)
    pipelines = {strategy: gate_pipeline(model, strategy, calib, evaluation) for strategy in STRATEGIES}
    reports: dict[str, list[BisectionReport]] = {strategy: [] for strategy in STRATEGIES}
    searches: dict[str, list[float]] = {strategy: [] for strategy in STRATEGIES}
    # Round 0 warms up (first sessions, lazy imports) and is dropped; rounds interleave the strategies
    # so that load from other processes hits both alike.
    for round_index in range(repeats + 1):
        for strategy, pipeline in pipelines.items():
            report, seconds = bisect_once(pipeline), search_once(pipeline)
            if round_index:
                reports[strategy].append(report)
                searches[strategy].append(seconds)
    expected = [layer_name(p) for p in positions]
    for strategy in STRATEGIES:
        for report in reports[strategy]:
            found = [o.name for o in report.offenders]
            if found != expected:
                raise SystemExit(f"N={n_layers} {strategy}: found {found}, planted {expected}")
    return {
        strategy: Run(
            reports[strategy][0],
            statistics.median(searches[strategy]),
            statistics.median(r.duration_s for r in reports[strategy]),
        )
        for strategy in STRATEGIES
    }


def table(results: dict[int, dict[str, Run]]) -> str:
    lines = [
        "| N | planted | binary evals | bound 1+Σ(1+⌈log2 m⌉) | k·⌈log2 N⌉+2 | linear evals | evals "
        "binary/linear | search s binary | search s linear | search time binary/linear | "
        "whole bisection s binary / linear | binary notes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n_layers, runs in results.items():
        binary, linear = runs["binary"], runs["linear"]
        positions = planted_positions(n_layers)
        b_evals, l_evals = binary.report.search_evaluations, linear.report.search_evaluations
        issue = target_bound(n_layers, 2)
        notes = "; ".join(binary.report.notes) or "-"
        lines.append(
            f"| {n_layers} | {', '.join(layer_name(p) for p in positions)} | {b_evals} | "
            f"{documented_cost(n_layers, positions)} | {issue} | {l_evals} | {b_evals / l_evals:.2f} | "
            f"{binary.search_seconds:.2f} | {linear.search_seconds:.2f} | "
            f"{binary.search_seconds / linear.search_seconds:.2f} | "
            f"{binary.bisect_seconds:.2f} / {linear.bisect_seconds:.2f} | {notes} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per strategy (median reported)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "bisect.md")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = {n: measure(n, Path(tmp), args.repeats) for n in SIZES}
    every = [placements(n) for n in SIZES]
    header = "\n".join(
        [
            "# Bisection benchmark: binary vs linear",
            "",
            *environment_lines(),
            "",
            f"Chains of N Gemm+ReLU layers (16 channels, tests/planted.py), k = 2 planted offenders at N/2 "
            f"and 3N/4, budget cosine >= 0.99, calibrator entropy, search subset {SUBSET} of "
            f"{EVAL_SAMPLES} evaluation samples. Evals = search evaluations (each: Q/DQ model, ONNX Runtime "
            "session, run on the subset). Search s = the search alone; whole bisection s adds what both "
            "strategies share: the reproduction probe, repair (3 evaluations per offender), the verified "
            "fix on the full set and the sensitivity pass. Times are medians of "
            f"{args.repeats} runs after one warm-up run, on a shared machine: the evaluation counts are "
            "exact, the seconds are indicative. This is one placement per N: the next table gives every "
            "placement.",
            "",
            "",
        ]
    )
    text = (
        header
        + table(results)
        + "\n\n## Every placement of the 2 offenders (synthetic monotone oracle, exact counts)\n\n"
        + placements_table(every)
        + "\n"
    )
    print(text)
    print(f"(benchmark took {time.perf_counter() - started:.0f} s)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
