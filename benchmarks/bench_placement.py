"""Placement profiles side by side: Q/DQ pairs, INT8 coverage and accuracy of ``minimal`` and ``tensorrt``;
and depthwise-separable equalization on the example MobileNet, before and after.

Run from anywhere: ``python benchmarks/bench_placement.py``. Prints Markdown tables and writes them to
``benchmarks/results/placement.md``. Every model of ``example_project/models`` is calibrated once (one
FP32 pass, this project's statistics; the table serves both profiles), quantized with each profile and
the entropy and max calibrators, and evaluated against FP32 by ONNX Runtime (simulated Q/DQ) on the
example project's 500 held-out samples. The MobileNet is then gated through GatePipeline with and without
``equalize: true`` (every conv → depthwise → conv pair), once per calibrator.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import ROOT, environment_lines

sys.path[:0] = [str(ROOT)]

from pytest_int8gate.backends import get_backend  # noqa: E402
from pytest_int8gate.calibrate import calibrate  # noqa: E402
from pytest_int8gate.choices import PLACEMENTS  # noqa: E402
from pytest_int8gate.data import load_dataset, load_labels  # noqa: E402
from pytest_int8gate.evaluate import compare  # noqa: E402
from pytest_int8gate.graph import load_model  # noqa: E402
from pytest_int8gate.pipeline import GatePipeline, GateSpec  # noqa: E402
from pytest_int8gate.placement import place, placement_counts  # noqa: E402
from pytest_int8gate.quantize import QuantPlan, activation_tensors, quantize_model  # noqa: E402

EXAMPLE = ROOT / "example_project"
MODELS = ("digits_cnn.onnx", "digits_cnn_outlier.onnx", "digits_mobilenet.onnx", "digits_vit.onnx")
CALIBRATORS = ("entropy", "max")
BATCH = 100


def measure(model_name: str, calibrators: tuple[str, ...] = CALIBRATORS) -> list[dict[str, object]]:
    loaded = load_model(EXAMPLE / "models" / model_name)
    calib = load_dataset(EXAMPLE / "data" / "calib.npz", loaded.info, role="calibration")
    evaluation = load_dataset(EXAMPLE / "data" / "eval.npz", loaded.info, role="evaluation")
    labels = load_labels(EXAMPLE / "data" / "eval_labels.npy", evaluation.num_samples, classes=10)
    tensors = tuple(dict.fromkeys(t for p in PLACEMENTS for t in activation_tensors(loaded, p)))
    table, _ = calibrate(
        loaded.proto,
        tensors,
        calib.batches(BATCH),
        model_hash=loaded.info.model_hash,
        data_fingerprint=calib.fingerprint,
    )
    backend = get_backend("onnxruntime", batch_size=BATCH)
    fp32 = backend.fp32_runner(loaded.proto)
    rows = []
    for profile in PLACEMENTS:
        rules = placement_counts(place(loaded.proto.graph, profile))
        for calibrator in calibrators:
            quantized = quantize_model(loaded, table, QuantPlan(calibrator=calibrator, placement=profile))
            pairs = sum(1 for n in quantized.proto.graph.node if n.op_type == "QuantizeLinear")
            weights = sum(1 for n in quantized.proto.graph.node if n.op_type == "DequantizeLinear") - pairs
            result = compare(
                fp32, backend.int8_runner(quantized.proto), evaluation, batch_size=BATCH, labels=labels
            )
            coverage = quantized.coverage
            rows.append(
                {
                    "model": model_name,
                    "placement": profile,
                    "calibrator": calibrator,
                    "qdq": pairs,
                    "weights": weights,
                    "layers": f"{coverage.quantized}/{coverage.quantizable}",
                    "mac_share": coverage.int8_mac_share,
                    "fp32": result.fp32["top1"],
                    "int8": result.int8["top1"],
                    "agreement": result.int8["top1_agreement"],
                    "cosine": result.int8["cosine"],
                    "rules": ", ".join(f"{rule} {count}" for rule, count in sorted(rules.items())),
                }
            )
    return rows


def render(rows: list[dict[str, object]]) -> str:
    lines = [
        "| model | placement | calibrator | Q/DQ pairs (activations) | weight DQ | layers in INT8 | "
        "INT8 share of MACs | FP32 top-1 | INT8 top-1 | top-1 agreement | cosine |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['placement']} | {r['calibrator']} | {r['qdq']} | {r['weights']} | "
            f"{r['layers']} | {100 * float(r['mac_share']):.1f} % | {float(r['fp32']):.3f} | "  # type: ignore[arg-type]
            f"{float(r['int8']):.3f} | {float(r['agreement']):.3f} | {float(r['cosine']):.4f} |"  # type: ignore[arg-type]
        )
    lines += ["", "Layers per rule:", ""]
    seen = set()
    for r in rows:
        key = (r["model"], r["placement"])
        if key not in seen:
            seen.add(key)
            lines.append(f"- {r['model']}, {r['placement']}: {r['rules']}")
    return "\n".join(lines)


def equalization_rows(calibrators: tuple[str, ...] = ("entropy", "max", "percentile", "mse")) -> str:
    lines = [
        "| model | calibrator | equalized pairs | INT8 top-1 before → after | SQNR dB before → after | "
        "cosine before → after |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    data = EXAMPLE / "data"
    for calibrator in calibrators:
        results = []
        for equalize in (False, True):
            spec = GateSpec(
                model=EXAMPLE / "models" / "digits_mobilenet.onnx",
                calib_data=data / "calib.npz",
                eval_data=data / "eval.npz",
                labels=str(data / "eval_labels.npy"),
                calibrator=calibrator,
                equalize=equalize,
                bisect=False,
            )
            pipeline = GatePipeline(spec)
            results.append((pipeline.run().int8, len(pipeline.plan.equalize)))
        (b, _), (a, pairs) = results
        lines.append(
            f"| digits_mobilenet.onnx | {calibrator} | {pairs} | {b['top1']:.3f} → {a['top1']:.3f} | "
            f"{b['sqnr_db']:.1f} → {a['sqnr_db']:.1f} | {b['cosine']:.4f} → {a['cosine']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one model, one calibrator; nothing written")
    args = parser.parse_args()
    if args.smoke:
        print(render(measure("digits_mobilenet.onnx", ("max",))))
        print(equalization_rows(("max",)))
        return
    rows = [row for model in MODELS for row in measure(model)]
    text = "\n".join(
        [
            "# Placement profiles: minimal against tensorrt",
            "",
            *environment_lines(),
            "- command: `python benchmarks/bench_placement.py`",
            "",
            render(rows),
            "",
            "## Depthwise-separable equalization (BatchNorm folded at load)",
            "",
            equalization_rows(),
            "",
        ]
    )
    print(text)
    out = Path(__file__).resolve().parent / "results" / "placement.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
