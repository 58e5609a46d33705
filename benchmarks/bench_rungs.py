"""INT8 accuracy before and after each rung of the repair ladder, applied to the whole model, on the example
transformer (``digits_vit.onnx``) and depthwise network (``digits_mobilenet.onnx``).

Run from anywhere: ``python benchmarks/bench_rungs.py`` (about a minute on 2 cores). Prints a Markdown table
and writes it to ``benchmarks/results/rungs.md``. For each model and each calibrator (the calibrator rung),
the gate's own pipeline (``GatePipeline``, ONNX Runtime, simulated Q/DQ) evaluates FP32 against INT8 on the
example project's 500 held-out samples with labels, for the plan as is and with one rung applied to every
layer it can apply to: cross-layer equalization (``equalize: true``), bias correction (every quantized layer
with a correctable bias), SmoothQuant (every MatMul/Gemm it can apply to; alpha chosen over 0.5, 0.75, 0.25
by the gate's metrics: top-1 agreement, then output SQNR), and all three together. Each row is measured
against the calibrator's own "none" row of the same run, on the same data.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from _common import ROOT, environment_lines

sys.path[:0] = [str(ROOT)]

from pytest_int8gate.equalize import select_pairs  # noqa: E402
from pytest_int8gate.ladder import bias_problem  # noqa: E402
from pytest_int8gate.pipeline import GatePipeline, GateSpec  # noqa: E402
from pytest_int8gate.quantize import QuantPlan  # noqa: E402
from pytest_int8gate.smoothquant import ALPHAS, select_targets  # noqa: E402

EXAMPLE = ROOT / "example_project"
MODELS = ("digits_vit.onnx", "digits_mobilenet.onnx")
CALIBRATORS = ("entropy", "max", "percentile", "mse")
RUNGS = ("none", "equalization", "bias correction", "SmoothQuant", "all three")


@dataclass(frozen=True)
class Row:
    model: str
    calibrator: str
    rung: str
    layers: int  # layers the rung changed
    detail: str
    fp32_top1: float
    top1: float
    agreement: float
    cosine: float
    sqnr_db: float


def _metrics(pipeline: GatePipeline, plan: QuantPlan) -> tuple[float, float, float, float, float]:
    output = pipeline.evaluate(plan).primary
    return (
        output.fp32.get("top1", float("nan")),
        output.int8.get("top1", float("nan")),
        output.int8["top1_agreement"],
        output.int8["cosine"],
        output.int8["sqnr_db"],
    )


def measure(model_name: str, calibrators: Sequence[str] = CALIBRATORS) -> list[Row]:
    data = EXAMPLE / "data"
    spec = GateSpec(
        model=EXAMPLE / "models" / model_name,
        calib_data=data / "calib.npz",
        eval_data=data / "eval.npz",
        labels=str(data / "eval_labels.npy"),
        bisect=False,
    )
    rows: list[Row] = []
    with GatePipeline(spec) as pipeline:
        model = pipeline.model
        pairs, _ = select_pairs(model)
        equalize = frozenset(pair.consumer for pair in pairs)
        base_layers = {layer.name for layer in pipeline.plan.quantized_layers(model.info)}
        corrected = frozenset(name for name in sorted(base_layers) if not bias_problem(model, name))
        targets, _ = select_targets(model)
        smoothed = [t.layer for t in targets]
        for calibrator in calibrators:
            base = replace(pipeline.plan, calibrator=calibrator)
            plans: dict[str, tuple[QuantPlan, int, str]] = {
                "none": (base, 0, ""),
                "equalization": (replace(base, equalize=equalize), len(equalize), f"{len(equalize)} pairs"),
                "bias correction": (
                    replace(base, bias_correction=corrected),
                    len(corrected),
                    f"{len(corrected)} layers",
                ),
            }
            best: tuple[tuple[float, float], float] | None = None
            for alpha in ALPHAS if smoothed else ():
                candidate = replace(base, smoothquant={layer: alpha for layer in smoothed})
                _, _, agreement, _, sqnr = _metrics(pipeline, candidate)
                if best is None or (agreement, sqnr) > best[0]:
                    best = ((agreement, sqnr), alpha)
            if best is not None:
                alpha = best[1]
                folds = sorted({t.fold for t in targets})
                plans["SmoothQuant"] = (
                    replace(base, smoothquant={layer: alpha for layer in smoothed}),
                    len(smoothed),
                    f"{len(smoothed)} layers, alpha {alpha:g} ({'/'.join(folds)})",
                )
                plans["all three"] = (
                    replace(
                        base,
                        equalize=equalize,
                        bias_correction=corrected,
                        smoothquant={layer: alpha for layer in smoothed},
                    ),
                    len(equalize | corrected | set(smoothed)),
                    f"{len(equalize)} pairs + {len(corrected)} + {len(smoothed)} layers",
                )
            else:
                plans["all three"] = (
                    replace(base, equalize=equalize, bias_correction=corrected),
                    len(equalize | corrected),
                    f"{len(equalize)} pairs + {len(corrected)} layers",
                )
            for rung in RUNGS:
                if rung not in plans:
                    rows.append(
                        Row(
                            model_name,
                            calibrator,
                            rung,
                            0,
                            "no MatMul/Gemm it can apply to",
                            *[float("nan")] * 5,
                        )
                    )
                    continue
                plan, layers, detail = plans[rung]
                rows.append(Row(model_name, calibrator, rung, layers, detail, *_metrics(pipeline, plan)))
    return rows


def render(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| model | calibrator | rung (whole model) | what it changed | INT8 top-1 (FP32) | top-1 agreement | "
        "cosine | output SQNR dB | SQNR vs none |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    baseline: dict[tuple[str, str], float] = {}
    for row in rows:
        if row.rung == "none":
            baseline[(row.model, row.calibrator)] = row.sqnr_db
        delta = row.sqnr_db - baseline[(row.model, row.calibrator)]
        lines.append(
            f"| {row.model} | {row.calibrator} | {row.rung} | {row.detail or '-'} | {row.top1:.3f} "
            f"({row.fp32_top1:.3f}) | {row.agreement:.3f} | {row.cosine:.4f} | {row.sqnr_db:.1f} | "
            f"{'-' if row.rung == 'none' else f'{delta:+.1f}'} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one model, one calibrator; nothing written")
    args = parser.parse_args(argv)
    if args.smoke:
        print("\n".join(render(measure("digits_mobilenet.onnx", ("max",)))))
        return 0
    rows = [row for model in MODELS for row in measure(model)]
    text = "\n".join(
        [
            "# Repair rungs on the example transformer and depthwise network",
            "",
            *environment_lines(),
            "- command: `python benchmarks/bench_rungs.py`",
            "",
            *render(rows),
            "",
        ]
    )
    print(text)
    (Path(__file__).resolve().parent / "results" / "rungs.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
