"""The repair ladder: layers kept in float and the verified metric, before and after the ladder.

Run from anywhere: ``python benchmarks/bench_repair.py``. Prints a Markdown table and writes it to
``benchmarks/results/repair.md``. Every case is gated twice through the real GatePipeline and ONNX
Runtime, with the same model, data and budget: "before" is the bisection without FP32 rewrites (other
calibrators, then float: the answer of NVIDIA's guide and of the previous version), "after" is the whole
ladder (calibrators, cross-layer equalization, bias correction, SmoothQuant, then float). Cases:

- the planted chains of ``tests/planted.py`` (Gemm+ReLU, 16 channels, one activation channel 10^4 wider
  at each planted layer), the four cases of ``tests/test_bisect.py``;
- a chain whose *input* feature 0 is 10^4 wider: no layer produces it, so equalization cannot help and
  SmoothQuant (an inserted Mul before the first layer) keeps it in INT8;
- a Gemm whose small weights int8 rounds to zero (``planted.rounded_away``): a mean shift, bias
  correction's case;
- the example project's ``digits_cnn_outlier.onnx`` (planted channel across /conv1/Conv -> Relu ->
  /conv2/Conv), with the entropy and the max calibrator.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from _common import ROOT, environment_lines

sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
from planted import (  # noqa: E402
    INPUT,
    chain_weights,
    inputs,
    plant,
    positive_inputs,
    rounded_away,
    save_chain,
)

from pytest_int8gate.bisect import BisectionReport  # noqa: E402
from pytest_int8gate.gate import Budget, GateVerdict  # noqa: E402
from pytest_int8gate.pipeline import GatePipeline, GateSpec  # noqa: E402

EXAMPLE = ROOT / "example_project"
CHAIN_BUDGET = Budget({"cosine": 0.99})
EXAMPLE_BUDGET = Budget({"top1_drop": 0.01, "cosine": 0.98})
EVAL_SAMPLES = 1000
SUBSET = 200
FACTOR = 1e4
WITHOUT_REWRITES = ("calibrator",)


@dataclass(frozen=True)
class Case:
    name: str
    spec: GateSpec


@dataclass(frozen=True)
class Outcome:
    verdict: GateVerdict
    report: BisectionReport
    seconds: float

    @property
    def in_float(self) -> int:
        return len(self.report.fix.exclude) if self.report.fix is not None else -1

    @property
    def fix_text(self) -> str:
        fix = self.report.fix
        if fix is None:
            return "no fix"
        metrics = ", ".join(f"{r.name} {round(r.observed, 4) + 0.0:.4f}" for r in fix.results)
        return f"{metrics} {'PASS' if fix.passed else 'FAIL'}"

    @property
    def rungs(self) -> str:
        names = {
            "calibrator": "calibrator",
            "equalize": "equalize",
            "bias_correction": "bias corr.",
            "smoothquant": "smoothquant",
            "float": "float",
        }
        counts: dict[str, int] = {}
        for offender in self.report.offenders:
            counts[names[offender.action]] = counts.get(names[offender.action], 0) + 1
        return ", ".join(f"{n} {k}" for k, n in counts.items()) or "-"


def chain_case(workdir: Path, n_layers: int, positions: tuple[int, ...]) -> Case:
    weights = chain_weights(n_layers)
    for position in positions:
        weights = plant(weights, position, FACTOR)
    model = save_chain(weights, workdir / f"chain{n_layers}_{'_'.join(map(str, positions))}.onnx")
    spec = GateSpec(
        model=model,
        calib_data=inputs(512, seed=1),
        eval_data=inputs(EVAL_SAMPLES, seed=2),
        budget=CHAIN_BUDGET,
        bisect_subset=SUBSET,
        cache_dir=workdir / "cache",
    )
    return Case(f"chain N={n_layers}, planted at {', '.join(f'fc{p}' for p in positions)}", spec)


def wide_input_case(workdir: Path) -> Case:
    weights = chain_weights(16)
    weights[0].weight[:, 0] /= np.float32(FACTOR)

    def feeds(samples: int, seed: int) -> dict[str, np.ndarray]:
        data = inputs(samples, seed=seed)
        data[INPUT][:, 0] *= FACTOR
        return data

    spec = GateSpec(
        model=save_chain(weights, workdir / "wide_input.onnx"),
        calib_data=feeds(512, 1),
        eval_data=feeds(EVAL_SAMPLES, 2),
        budget=CHAIN_BUDGET,
        bisect_subset=SUBSET,
        cache_dir=workdir / "cache",
    )
    return Case("chain N=16, input feature 0 10^4 wider (fc0)", spec)


def bias_case(workdir: Path) -> Case:
    spec = GateSpec(
        model=save_chain([rounded_away()], workdir / "rounded_away.onnx"),
        calib_data=positive_inputs(512, seed=1),
        eval_data=positive_inputs(EVAL_SAMPLES, seed=2),
        budget=Budget({"cosine": 0.999}),
        calibrator="max",
        bisect_subset=SUBSET,
        cache_dir=workdir / "cache",
    )
    return Case("Gemm, small weights rounded to 0 (fc0), cosine >= 0.999, max", spec)


def example_case(workdir: Path, calibrator: str) -> Case:
    spec = GateSpec(
        model=EXAMPLE / "models" / "digits_cnn_outlier.onnx",
        calib_data=str(EXAMPLE / "data" / "calib.npz"),
        eval_data=str(EXAMPLE / "data" / "eval.npz"),
        labels=str(EXAMPLE / "data" / "eval_labels.npy"),
        budget=EXAMPLE_BUDGET,
        calibrator=calibrator,
        cache_dir=workdir / "cache",
    )
    return Case(f"example digits_cnn_outlier.onnx, {calibrator}", spec)


def gate(spec: GateSpec) -> Outcome:
    started = time.perf_counter()
    verdict = GatePipeline(spec).run()
    seconds = time.perf_counter() - started
    if verdict.passed or not isinstance(verdict.bisection, BisectionReport):
        raise SystemExit(f"{spec.model.name}: the gate passed; nothing to repair")
    return Outcome(verdict, verdict.bisection, seconds)


def failing_text(verdict: GateVerdict) -> str:
    return ", ".join(f"{r.name} {round(r.observed, 4) + 0.0:.4f}" for r in verdict.results)


def measure(cases: list[Case]) -> list[str]:
    rows = [
        "| case | quantizable layers | gate as is | offenders | before: in float | before: verified fix | "
        "after: rungs | after: in float | after: verified fix | FP32 max abs diff (equalized) | "
        "repair evals before / after | gate + bisection s before / after |",
        "|---|---:|---|---|---:|---|---|---:|---|---|---:|---:|",
    ]
    for case in cases:
        # separate caches: each run calibrates for itself, so neither is timed with the other's table
        cache = case.spec.cache_dir or Path(tempfile.gettempdir())
        before = gate(replace(case.spec, repairs=WITHOUT_REWRITES, cache_dir=cache / f"{id(case)}-before"))
        after = gate(replace(case.spec, cache_dir=cache / f"{id(case)}-after"))
        fix = after.report.fix
        difference = "-"
        if fix is not None and fix.fp32_max_abs_difference is not None:
            difference = f"{fix.fp32_max_abs_difference:.2g} (of {fix.fp32_reference_max_abs:.3g})"
        offenders = ", ".join(o.name for o in after.report.offenders) or "-"
        rows.append(
            f"| {case.name} | {after.verdict.total_layers} | {failing_text(after.verdict)} | {offenders} | "
            f"{before.in_float} | {before.fix_text} | {after.rungs} | {after.in_float} | {after.fix_text} | "
            f"{difference} | {before.report.repair_evaluations} / {after.report.repair_evaluations} | "
            f"{before.seconds:.2f} / {after.seconds:.2f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "repair.md")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        builders: list[Callable[[], Case]] = [
            lambda: chain_case(workdir, 16, (8,)),
            lambda: chain_case(workdir, 16, (8, 13)),
            lambda: chain_case(workdir, 16, (8, 11, 14)),
            lambda: chain_case(workdir, 48, (30, 40)),
            lambda: wide_input_case(workdir),
            lambda: bias_case(workdir),
            lambda: example_case(workdir, "entropy"),
            lambda: example_case(workdir, "max"),
        ]
        rows = measure([build() for build in builders])
    header = [
        "# Repair ladder benchmark: layers kept in float, before and after",
        "",
        *environment_lines(),
        "",
        "Before = bisection with calibrator repairs only, then float (`repairs: [calibrator]`); after = the "
        "whole ladder (calibrators, cross-layer equalization, bias correction, SmoothQuant, float). Chains: "
        f"budget cosine >= 0.99, entropy calibrator, 512 calibration and {EVAL_SAMPLES} evaluation samples, "
        f"search subset {SUBSET}. Example: budget top1_drop <= 0.01 and cosine >= 0.98, 600 calibration and "
        "500 evaluation samples. The verified fix is judged on the full evaluation set. Seconds include "
        "calibration (and recalibration of each equalized model) on a shared machine: indicative only.",
        "",
    ]
    text = "\n".join([*header, *rows]) + "\n"
    print(text)
    print(f"(benchmark took {time.perf_counter() - started:.0f} s)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
