"""The search side by side: ``adaptive`` (the default), ``binary`` only and a ``linear`` scan.

Run from anywhere: ``python benchmarks/bench_search.py`` (``--smoke`` for one tiny case of each family).
Prints a Markdown table and writes it to ``benchmarks/results/search.md``. Every run goes through the real
GatePipeline and ONNX Runtime on real ONNX chains (``tests/planted.py``), the three strategies in the same
process on the same data:

- planted culprits: k = 1, 2, 3 layers made INT8-hostile (one input channel 10^4 times wider, the same FP32
  function) among N = 8, 16, 32, 64;
- error spread thin: every layer of a chain gets a mild range problem (one input channel 4-12 times wider,
  seeded), so that no single layer breaks the budget and the INT8 error accumulates over many;
- spread with one spiking layer: the same, plus a layer whose calibration input has rare huge spikes, which
  ruin the max, mse and percentile calibrators there (an all-INT8 fix exists: a calibrator override).

Per run: search evaluations (the walk, the predicted repairs), evaluations in all (baseline, calibrators for
the whole model, search, repair, pruning, verification), the bisection's wall time, the fix's entries and
layers in float, and whether it holds on the evaluation samples the search never used.

``--reference`` (slow: thousands of evaluations): per spread-error model, the adaptive fix against the fixes
a brute-force greedy finds (every remaining entry tried at each step, the best kept), all-INT8 and with float
allowed; written to ``benchmarks/results/search_reference.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from _common import ROOT, Figure, environment_lines

sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from planted import (  # noqa: E402
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

from pytest_int8gate.adaptive import clears_margin  # noqa: E402
from pytest_int8gate.bisect import _candidate_layers  # noqa: E402
from pytest_int8gate.calibrate import CALIBRATORS  # noqa: E402
from pytest_int8gate.data import Feeds  # noqa: E402
from pytest_int8gate.equalize import EqualizationPair  # noqa: E402
from pytest_int8gate.gate import Budget  # noqa: E402
from pytest_int8gate.ladder import equalization_candidates  # noqa: E402
from pytest_int8gate.pipeline import GatePipeline, GateSpec  # noqa: E402
from pytest_int8gate.quantize import QuantPlan  # noqa: E402
from pytest_int8gate.results import BisectionReport, VerifiedFix  # noqa: E402
from pytest_int8gate.search_oracle import Probe, SubsetOracle  # noqa: E402
from pytest_int8gate.verification import Verifier  # noqa: E402

STRATEGIES = ("adaptive", "binary", "linear")
EVAL_SAMPLES = 512
SUBSET = 128
CALIB_SAMPLES = 2048


@dataclass(frozen=True)
class Case:
    family: str  # "planted", "spread", "spread+spike"
    n_layers: int
    weights: list[Dense]
    budget: Budget | None  # None: set so that no calibrator for the whole model passes (see tightened)
    calib: Feeds
    evaluation: Feeds
    planted: tuple[int, ...] = ()
    calibrator: str = "entropy"

    @property
    def name(self) -> str:
        where = f" at {', '.join(layer_name(p) for p in self.planted)}" if self.planted else ""
        return f"{self.family} N={self.n_layers}{where}"


def planted_positions(n_layers: int, k: int) -> tuple[int, ...]:
    """k positions spread over the chain (never the first layer: a planted layer needs a predecessor)."""
    return tuple(max(1, (i + 1) * n_layers // (k + 1)) for i in range(k))


def planted_case(n_layers: int, k: int) -> Case:
    positions = planted_positions(n_layers, k)
    weights = chain_weights(n_layers)
    for position in positions:
        weights = plant(weights, position, factor=1e4)
    return Case(
        "planted",
        n_layers,
        weights,
        Budget({"cosine": 0.99}),
        inputs(CALIB_SAMPLES, seed=1),
        inputs(EVAL_SAMPLES, seed=2),
        positions,
    )


def spread_case(n_layers: int) -> Case:
    return Case(
        "spread",
        n_layers,
        mild_ranges(n_layers, 0, set()),
        None,
        inputs(CALIB_SAMPLES, seed=1),
        inputs(EVAL_SAMPLES, seed=2),
    )


def spiky_case(n_layers: int) -> Case:
    spike = n_layers // 2
    weights = route_spike(mild_ranges(n_layers, 0, {spike - 1, spike, spike + 1}), spike, gain=300.0)
    return Case(
        "spread+spike",
        n_layers,
        weights,
        None,
        spiky_inputs(CALIB_SAMPLES, spikes=2, seed=1),
        spiky_inputs(EVAL_SAMPLES, spikes=0, seed=2),
        calibrator="max",
    )


#: A spread-error model's budget closes this share of the best calibrator-for-the-whole-model's gap to FP32
#: (cosine 1): tight enough that no calibrator alone passes, so the search has something to find.
TIGHTEN = 0.3


def tightened(case: Case, model: Path) -> Budget:
    """The budget that asks for ``TIGHTEN`` of the best whole-model calibrator's cosine gap to be closed."""
    best = 0.0
    for calibrator in ("entropy", "max", "mse", "percentile"):
        spec = GateSpec(
            model=model,
            calib_data=case.calib,
            eval_data=case.evaluation,
            budget=Budget({"cosine": 0.0}),
            calibrator=calibrator,
            bisect=False,
            threads=1,
            min_calib_samples=0,
        )
        best = max(best, GatePipeline(spec).run().int8["cosine"])
    return Budget({"cosine": round(1.0 - (1.0 - best) * (1.0 - TIGHTEN), 4)})


@dataclass(frozen=True)
class Run:
    case: Case
    strategy: str
    report: BisectionReport
    seconds: float

    @property
    def named_exactly(self) -> bool | None:
        if not self.case.planted:
            return None
        return [o.name for o in self.report.offenders] == [layer_name(p) for p in self.case.planted]


def case_pipeline(case: Case, model: Path, **changes: object) -> GatePipeline:
    """The gate of ``case`` on ``model`` (its chain saved), calibrated outside any timing."""
    assert case.budget is not None
    spec = GateSpec(
        model=model,
        calib_data=case.calib,
        eval_data=case.evaluation,
        budget=case.budget,
        calibrator=case.calibrator,
        bisect_subset=SUBSET,
        threads=1,
        min_calib_samples=0,
    )
    pipeline = GatePipeline(replace(spec, **changes))  # type: ignore[arg-type]
    pipeline.table  # noqa: B018 - calibrate outside the timing
    return pipeline


def run_case(case: Case, workdir: Path, strategy: str) -> Run:
    model = save_chain(case.weights, workdir / f"{case.family}_{case.n_layers}_{len(case.planted)}.onnx")
    pipeline = case_pipeline(case, model, bisect_strategy=strategy)
    started = time.perf_counter()
    verdict = pipeline.run()
    seconds = time.perf_counter() - started
    if not isinstance(verdict.bisection, BisectionReport):
        raise SystemExit(f"{case.name}: the gate passed ({verdict.int8}); nothing to search")
    return Run(case, strategy, verdict.bisection, seconds)


@dataclass(frozen=True)
class ReferenceEntry:
    """One entry the brute-force greedy may add: a calibrator for the whole model, a layer's calibrator
    override, a layer equalized with its producer, or a layer kept in float."""

    kind: str  # "calibrator", "override", "equalize", "exclude"
    name: str  # the layer ("" for a calibrator for the whole model)
    calibrator: str = ""

    @property
    def text(self) -> str:
        if self.kind == "calibrator":
            return f"calibrator {self.calibrator}"
        if self.kind == "override":
            return f"{self.name} {self.calibrator}"
        return f"{self.name} {'equalized' if self.kind == 'equalize' else 'in float'}"

    def apply(self, plan: QuantPlan) -> QuantPlan:
        if self.kind == "calibrator":
            return replace(plan, calibrator=self.calibrator)
        if self.kind == "override":
            return replace(plan, overrides={**plan.overrides, self.name: self.calibrator})
        if self.kind == "equalize":
            return replace(plan, equalize=plan.equalize | {self.name})
        return replace(plan, exclude=plan.exclude | {self.name})

    def excludes(self, other: ReferenceEntry) -> bool:
        """Whether adding this entry makes ``other`` pointless (one calibrator for the model, one override
        per layer, nothing more on a layer in float)."""
        if self.kind == "calibrator":
            return other.kind == "calibrator"
        if self.kind == "override":
            return other.kind == "override" and other.name == self.name
        if self.kind == "exclude":
            return other.name == self.name
        return other == self


@dataclass(frozen=True)
class Reference:
    """What the brute-force greedy found on one model."""

    case: Case
    int8_only: bool
    entries: tuple[ReferenceEntry, ...]
    fix: VerifiedFix
    evaluations: int  # subset evaluations of the greedy (verification not counted)
    steps: tuple[Probe, ...]  # the best probe after each step
    seconds: float


def reference_fix(case: Case, workdir: Path, *, int8_only: bool, max_entries: int = 24) -> Reference:
    """The brute-force greedy: at each step every remaining entry is tried on the search subset (the same
    subset and acceptance margin as the adaptive search) and the one with the largest margin kept, until the
    plan passes by the margin; then the fix is verified on every sample and on the unseen ones.
    ``int8_only``: no layer in float (the smallest all-INT8 fix the greedy finds)."""
    model = save_chain(case.weights, workdir / f"{case.family}_{case.n_layers}_reference.onnx")
    pipeline = case_pipeline(case, model)
    started = time.perf_counter()
    context, evaluator = pipeline.context, pipeline.evaluator
    candidates = _candidate_layers(context)
    oracle = SubsetOracle(context, evaluator, candidates, SUBSET)
    verifier = Verifier(context, evaluator, oracle.subset_size)
    holdout = 0.0 if verifier.unseen is None else math.sqrt(1 + oracle.subset_size / verifier.unseen.size)
    pairs = equalization_candidates(context.model)
    plan = context.plan
    remaining = [ReferenceEntry("calibrator", "", c) for c in CALIBRATORS if c != plan.calibrator]
    for layer in candidates:
        remaining += [ReferenceEntry("override", layer.name, c) for c in CALIBRATORS]
        if isinstance(pairs.get(layer.name), EqualizationPair):
            remaining.append(ReferenceEntry("equalize", layer.name))
        if not int8_only:
            remaining.append(ReferenceEntry("exclude", layer.name))
    chosen: list[ReferenceEntry] = []
    steps: list[Probe] = []
    evaluations = 0
    while remaining and len(chosen) < max_entries:
        best: tuple[Probe, ReferenceEntry] | None = None
        for entry in remaining:
            trial = entry.apply(plan)
            same = trial.calibrator_for(entry.name) == plan.calibrator_for(entry.name)
            if entry.kind == "override" and same:
                continue  # the layer's calibrator already
            probe = oracle.measure(trial)
            evaluations += 1
            if best is None or probe.margin > best[0].margin:
                best = (probe, entry)
        if best is None:
            break
        probe, entry = best
        plan = entry.apply(plan)
        chosen.append(entry)
        steps.append(probe)
        remaining = [e for e in remaining if not entry.excludes(e)]
        print(
            f"    reference step {len(chosen)}: {entry.text} -> margin {probe.margin:+.4f} "
            f"(stderr {probe.stderr:.4f}, {evaluations} evaluations, {time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
        )
        if clears_margin(probe, holdout):
            break
    fix = verifier.verify(plan)
    seconds = time.perf_counter() - started
    return Reference(case, int8_only, tuple(chosen), fix, evaluations, tuple(steps), seconds)


def reference_table(references: list[Reference], runs: list[Run]) -> str:
    """Per model: the adaptive search's fix against the brute-force greedy's."""
    adaptive = {r.case.name: r for r in runs if r.strategy == "adaptive"}
    lines = [
        "| model | budget | adaptive: evals in all | adaptive: fix entries | adaptive: holds on unseen | "
        "reference entries | reference: subset evals | reference: s | reference: fix entries | "
        "reference: fix | reference: holds on unseen |",
        "|---|---|---:|---:|---|---|---:|---:|---:|---|---|",
    ]
    for ref in references:
        run = adaptive.get(ref.case.name)
        assert ref.case.budget is not None
        fix = None if run is None else run.report.fix
        lines.append(
            f"| {ref.case.name} ({ref.case.calibrator}) | cosine >= {ref.case.budget.limits['cosine']} | "
            f"{'-' if run is None else run.report.evaluations} | {'-' if fix is None else fix.entries} | "
            f"{'-' if fix is None else _holds(fix)} | {'INT8 only' if ref.int8_only else 'any'} | "
            f"{ref.evaluations} | {ref.seconds:.0f} | "
            f"{ref.fix.entries} | {', '.join(e.text for e in ref.entries)} | {_holds(ref.fix)} |"
        )
    return "\n".join(lines)


def _holds(fix: VerifiedFix) -> str:
    unseen = ", ".join(f"{r.observed:.4f}" for r in fix.unseen_results)
    return f"{'yes' if fix.passed else 'no'} ({unseen})"


def cases(smoke: bool) -> list[Case]:
    if smoke:
        return [planted_case(8, 1), spiky_case(8)]
    found = [planted_case(n, k) for n in (8, 16, 32, 64) for k in (1, 2, 3)]
    found += [spread_case(n) for n in (16, 32, 64)]
    found += [spiky_case(n) for n in (16, 32, 64)]
    return found


def measure(
    smoke: bool, workdir: Path, families: Sequence[str] = (), strategies: Sequence[str] = STRATEGIES
) -> list[Run]:
    runs = []
    for case in cases(smoke):
        if families and case.family not in families:
            continue
        print(f"  search: {case.name}", file=sys.stderr)
        if case.budget is None:
            model = save_chain(case.weights, workdir / f"{case.family}_{case.n_layers}_budget.onnx")
            case = replace(case, budget=tightened(case, model))
        runs += [run_case(case, workdir, strategy) for strategy in strategies]
    return runs


def target(run: Run) -> int:
    """The issue's target for this family: k·⌈log2 N⌉+2 search evaluations for planted culprits;
    about 2·⌈log2 N⌉+4 evaluations in all on spread-error models."""
    log_n = math.ceil(math.log2(run.case.n_layers))
    return len(run.case.planted) * log_n + 2 if run.case.planted else 2 * log_n + 4


def table(runs: list[Run]) -> str:
    lines = [
        "| model | budget | strategy | walk | search evals | target | evals in all (global / search / repair "
        "/ pruning / verification) | bisection s | fix entries | layers in float | MACs in INT8 | holds on "
        "unseen | planted named exactly |",
        "|---|---|---|---|---:|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for run in runs:
        r, fix = run.report, run.report.fix
        holds = "no fix" if fix is None else "yes" if fix.passed else "no (did not generalise)"
        if fix is not None and not fix.passed and fix.generalised is not False:
            holds = "no (fails on all samples)"
        if fix is not None and fix.passed and fix.generalised is None:
            holds = "yes (nothing held out)"
        named = {None: "-", True: "yes", False: "no"}[run.named_exactly]
        assert run.case.budget is not None
        cosine = run.case.budget.limits["cosine"]
        lines.append(
            f"| {run.case.name} ({run.case.calibrator}) | cosine >= {cosine} | {run.strategy} | "
            f"{r.walk or '-'} | "
            f"{r.search_evaluations} | {target(run)} | {r.evaluations} ({r.global_evaluations} / "
            f"{r.search_evaluations} / {r.repair_evaluations} / {r.pruning_evaluations} / "
            f"{r.verification_evaluations}) | {run.seconds:.2f} | {'-' if fix is None else fix.entries} | "
            f"{'-' if fix is None else len(fix.exclude)} | "
            f"{'-' if fix is None or fix.int8_mac_share is None else f'{100 * fix.int8_mac_share:.0f} %'} | "
            f"{holds} | {named} |"
        )
    return "\n".join(lines)


def summary(runs: list[Run]) -> list[str]:
    """Per family, the adaptive search against the binary-only search and the linear scan."""
    lines = []
    for family in ("planted", "spread", "spread+spike"):
        chosen = [r for r in runs if r.case.family == family]
        if not chosen:
            continue
        by = {s: [r for r in chosen if r.strategy == s] for s in STRATEGIES}
        evals = {s: sum(r.report.evaluations for r in by[s]) for s in STRATEGIES}
        held = {
            s: sum(1 for r in by[s] if r.report.fix is not None and r.report.fix.passed) for s in STRATEGIES
        }
        within = sum(
            1
            for r in by["adaptive"]
            if (r.report.search_evaluations if r.case.planted else r.report.evaluations) <= target(r)
        )
        lines.append(
            f"- {family} ({len(by['adaptive'])} models): evaluations in all, adaptive {evals['adaptive']} / "
            f"binary {evals['binary']} / linear {evals['linear']}; verified fixes {held['adaptive']} / "
            f"{held['binary']} / {held['linear']}; adaptive within the target in {within} of "
            f"{len(by['adaptive'])}"
        )
    return lines


def figures(runs: list[Run]) -> list[Figure]:
    """The summary rows of RESULTS.md: per model, the adaptive search against the linear scan, and whether it
    meets the target (planted: named exactly within k*ceil(log2 N)+2 search evaluations; spread: a fix that
    holds on the unseen samples within 2*ceil(log2 N)+4 evaluations in all)."""
    by_case: dict[str, dict[str, Run]] = {}
    for run in runs:
        by_case.setdefault(run.case.name, {})[run.strategy] = run
    found = []
    for name, strategies in by_case.items():
        adaptive, linear = strategies.get("adaptive"), strategies.get("linear")
        if adaptive is None or linear is None:
            continue
        goal = target(adaptive)
        if adaptive.case.planted:
            found.append(
                Figure(
                    "8 search",
                    f"adaptive search evaluations, {name}",
                    adaptive.report.search_evaluations / linear.report.search_evaluations,
                    f"linear ({linear.report.search_evaluations})",
                    f"<= k*ceil(log2 N)+2 = {goal}, planted layers named exactly",
                    adaptive.report.search_evaluations <= goal and adaptive.named_exactly is True,
                )
            )
        else:
            fix = adaptive.report.fix
            found.append(
                Figure(
                    "8 search",
                    f"adaptive evaluations in all, {name}",
                    adaptive.report.evaluations / linear.report.evaluations,
                    f"linear ({linear.report.evaluations})",
                    f"<= 2*ceil(log2 N)+4 = {goal}, a fix that holds on unseen samples",
                    adaptive.report.evaluations <= goal and fix is not None and fix.passed,
                )
            )
    return found


def figure_rows(found: list[Figure]) -> list[str]:
    """``found`` as rows of RESULTS.md's summary table."""
    return [
        f"| {f.benchmark} | {f.what} | {f.ratio:.2f} | {f.baseline} | {f.target} | "
        f"{'met' if f.met else '**not met**'} |"
        for f in found
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one tiny case per family")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "search.md")
    parser.add_argument("--family", action="append", default=[], help="only this family (repeatable)")
    parser.add_argument(
        "--strategy", action="append", default=[], help="only this strategy (repeatable; not written)"
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="the spread-error models' adaptive fixes against a brute-force greedy's (slow; written to "
        "benchmarks/results/search_reference.md)",
    )
    parser.add_argument("--n", action="append", type=int, default=[], help="with --reference: only N layers")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.reference:
        reference_main(args.n, started)
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = measure(args.smoke, Path(tmp), args.family, args.strategy or STRATEGIES)
    if args.family or args.strategy:
        print("\n".join([*summary(runs), "", table(runs)]))
        return
    text = "\n".join(
        [
            "# Search benchmark: adaptive vs binary-only vs linear",
            "",
            *environment_lines(),
            "",
            f"Chains of N Gemm+ReLU layers (16 channels, tests/planted.py), calibrator entropy, "
            f"{CALIB_SAMPLES} calibration samples, search subset {SUBSET} of {EVAL_SAMPLES} evaluation "
            f"samples (the other {EVAL_SAMPLES - SUBSET} are never seen by the search and verify the fix). "
            "Evaluation counts are exact; seconds are one run on a shared machine. Spread-error models: the "
            f"budget asks for {TIGHTEN:.0%} of the best calibrator-for-the-whole-model's cosine gap to be "
            "closed, so that no calibrator alone passes.",
            "",
            *summary(runs),
            "",
            table(runs),
            "",
            "Rows for RESULTS.md's summary table:",
            "",
            "| # | figure | ratio | against (same run) | target | met |",
            "| --- | --- | ---: | --- | --- | --- |",
            *figure_rows(figures(runs)),
            "",
        ]
    )
    print(text)
    print(f"(benchmark took {time.perf_counter() - started:.0f} s)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


def reference_main(sizes: Sequence[int], started: float) -> None:
    """--reference: per spread-error model, the adaptive fix and the brute-force greedy's."""
    runs, references = [], []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for case in cases(False):
            if case.planted or (sizes and case.n_layers not in sizes):
                continue
            print(f"  reference: {case.name}", file=sys.stderr)
            model = save_chain(case.weights, workdir / f"{case.family}_{case.n_layers}_budget.onnx")
            case = replace(case, budget=tightened(case, model))
            runs.append(run_case(case, workdir, "adaptive"))
            references.append(reference_fix(case, workdir, int8_only=True))
            references.append(reference_fix(case, workdir, int8_only=False))
    text = "\n".join(
        [
            "# Search benchmark: the adaptive fix against a brute-force greedy's",
            "",
            *environment_lines(),
            "",
            "The spread-error models of search.md, same budgets, subset and acceptance margin. The reference "
            "greedy tries, at each step, every remaining entry (a calibrator for the whole model, each "
            "layer with each other calibrator, each layer equalized with its producer, and, for \"any\", "
            f"each layer in float) on the {SUBSET} search samples and keeps the one with the largest margin, "
            "until the plan passes by the standard-error margin; its fix is then verified on all samples and "
            "the unseen ones. Reference seconds: one thread, a shared machine.",
            "",
            reference_table(references, runs),
            "",
        ]
    )
    print(text)
    print(f"(benchmark took {time.perf_counter() - started:.0f} s)")
    if not sizes:
        output = ROOT / "benchmarks" / "results" / "search_reference.md"
        output.write_text(text)


if __name__ == "__main__":
    main()
