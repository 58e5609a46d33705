"""Print FP32 and INT8 top-1 of the example models under every calibrator and ONNX Runtime mode.

    python example_project/measure_accuracy.py

The numbers in example_project/README.md come from this script.
"""

from __future__ import annotations

from pathlib import Path

from pytest_int8gate.gate import Budget
from pytest_int8gate.pipeline import GatePipeline, GateSpec
from pytest_int8gate.quantize import CALIBRATORS

HERE = Path(__file__).resolve().parent


def main() -> None:
    print("| model | calibrator | ORT mode | FP32 top-1 | INT8 top-1 | drop (points) | mean cosine |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model in ("digits_cnn.onnx", "digits_cnn_outlier.onnx"):
        for calibrator in ("entropy", *sorted(c for c in CALIBRATORS if c != "entropy")):
            for mode in ("simulated", "fused"):
                spec = GateSpec(
                    model=HERE / "models" / model,
                    calib_data=str(HERE / "data" / "calib.npz"),
                    eval_data=str(HERE / "data" / "eval.npz"),
                    labels=str(HERE / "data" / "eval_labels.npy"),
                    budget=Budget({"top1_drop": 0.01}),
                    calibrator=calibrator,
                    ort_mode=mode,
                    bisect=False,
                )
                verdict = GatePipeline(spec).run()
                fp32, int8 = verdict.fp32["top1"], verdict.int8["top1"]
                drop = 100 * (fp32 - int8)
                cosine = verdict.int8["cosine"]
                cells = [
                    model,
                    calibrator,
                    mode,
                    f"{fp32:.1%}",
                    f"{int8:.1%}",
                    f"{drop:.1f}",
                    f"{cosine:.4f}",
                ]
                print("| " + " | ".join(cells) + " |")
    print(f"\nbackend: {verdict.backend_text}")


if __name__ == "__main__":
    main()
