"""Calibration cost: int8gate's calibration against a bare FP32 pass and ONNX Runtime's quantize_static.

Every variant runs in its own fresh process (so peak RSS, read by the parent with ``os.wait4``, belongs to
that variant alone) on the same model and the same in-memory data, with the same batch size and threads.
Trials are interleaved across variants; the table reports the median of the trials.

    python benchmarks/bench_calibrate.py                     # example model, calib data x5 = 3000 samples
    python benchmarks/bench_calibrate.py --model m.onnx --data calib.npz --repeat 1 --trials 5

Timed region of each variant (imports, data loading and repetition are outside it, the same for all):

* ``fp32``: an ONNX Runtime session (all graph optimisations) built from the model file, then one pass
  over the batches. The baseline of every ratio.
* ``int8gate``: load + prepare the model, list the activation tensors, check and fingerprint the data,
  ``calibrate.calibrate`` (one FP32 pass with the activations exposed, streaming statistics, the amax of
  all four calibrators: max, percentile, entropy, mse).
* ``int8gate+qdq``: the same, plus ``quantize_model`` (entropy plan) and writing the Q/DQ model, which
  is what quantize_static also produces.
* ``ort-<method>-cgm`` / ``ort-<method>-all``: ``onnxruntime.quantization.quantize_static`` (QDQ,
  per-channel, QInt8 activations and weights) with ``op_types_to_quantize=["Conv","Gemm","MatMul"]``
  or with its default op set, fed by a ``CalibrationDataReader`` over the same batches.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import ROOT, environment_lines, load_average

sys.path.insert(0, str(ROOT))  # this checkout's pytest_int8gate (the workers get it through PYTHONPATH)

DEFAULT_MODEL = ROOT / "example_project" / "models" / "digits_cnn.onnx"
DEFAULT_DATA = ROOT / "example_project" / "data" / "calib.npz"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "calibrate.md"

CGM_OPS = ["Conv", "Gemm", "MatMul"]
VARIANTS: dict[str, str] = {
    "fp32": "bare FP32 pass (ONNX Runtime session + run)",
    "int8gate": "int8gate calibrate (4 calibrators)",
    "int8gate+qdq": "int8gate calibrate + Q/DQ model",
    "ort-entropy-cgm": "ORT quantize_static Entropy, Conv/Gemm/MatMul",
    "ort-percentile-cgm": "ORT quantize_static Percentile, Conv/Gemm/MatMul",
    "ort-entropy-all": "ORT quantize_static Entropy, default op set",
    "ort-percentile-all": "ORT quantize_static Percentile, default op set",
    "ort-minmax-cgm": "ORT quantize_static MinMax, Conv/Gemm/MatMul",
}
DEFAULT_VARIANTS = list(VARIANTS)


# ---- worker: one variant, one process -------------------------------------------------------------
def _load_arrays(model_path: Path, data_path: Path, repeat: int, batch_size: int) -> dict[str, Any]:
    """The data repeated ``repeat`` times, trimmed to whole batches.

    ONNX Runtime's histogram calibrators (Entropy, Percentile) fail on a smaller last batch
    (microsoft/onnxruntime#18792), so every variant gets the same whole batches.
    """
    import numpy as np

    if data_path.suffix == ".npz":
        with np.load(data_path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    elif data_path.suffix == ".npy":
        import onnx

        graph = onnx.load(str(model_path), load_external_data=False).graph
        initializers = {init.name for init in graph.initializer}
        first_input = next(vi.name for vi in graph.input if vi.name not in initializers)
        arrays = {first_input: np.load(data_path, allow_pickle=False)}
    else:
        raise SystemExit(f"{data_path}: the benchmark reads .npz or .npy data")
    total = len(next(iter(arrays.values()))) * repeat
    whole = max(total // batch_size, 1) * batch_size
    return {key: np.concatenate([value] * repeat, axis=0)[:whole] for key, value in arrays.items()}


def _batches(arrays: dict[str, Any], batch_size: int) -> Iterator[dict[str, Any]]:
    total = len(next(iter(arrays.values())))
    for start in range(0, total, batch_size):
        yield {key: value[start : start + batch_size] for key, value in arrays.items()}


def _rss_mb(field: str = "VmRSS") -> float:
    """Current resident set size, or with ``field="VmHWM"`` its peak (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _run_fp32(model: Path, arrays: dict[str, Any], batch_size: int, threads: int) -> dict[str, float]:
    import onnxruntime as ort

    started = time.perf_counter()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    built = time.perf_counter()
    for feeds in _batches(arrays, batch_size):
        session.run(None, feeds)
    done = time.perf_counter()
    return {"wall_s": done - started, "build_s": built - started, "fp32_pass_s": done - built}


def _run_int8gate(
    model: Path, arrays: dict[str, Any], batch_size: int, threads: int, qdq: bool, workdir: Path
) -> dict[str, float]:
    import onnx

    from pytest_int8gate.calibrate import calibrate
    from pytest_int8gate.data import Dataset, batch_size_for, check_dataset
    from pytest_int8gate.graph import load_model
    from pytest_int8gate.quantize import QuantPlan, activation_tensors, quantize_model

    started = time.perf_counter()
    loaded = load_model(model)
    tensors = activation_tensors(loaded)
    dataset = check_dataset(Dataset.from_arrays(arrays, source="benchmark"), loaded.info)
    table, stats = calibrate(
        loaded.proto,
        tensors,
        dataset.batches(batch_size_for(loaded.info, batch_size)),
        model_hash=loaded.info.model_hash,
        data_fingerprint=dataset.fingerprint,
        threads=threads,
    )
    calibrated = time.perf_counter()
    result = {
        "fp32_pass_s": stats.fp32_pass_s,
        "statistics_s": stats.statistics_s,
        "pass_wall_s": stats.pass_wall_s,
        "workers": float(stats.workers),
        "tensors": float(len(tensors)),
        "layers": float(len(loaded.info.layers)),
    }
    if qdq:
        quantized = quantize_model(loaded, table, QuantPlan(calibrator="entropy"))
        onnx.save(quantized.proto, str(workdir / "model.int8.onnx"))
        result["qdq_s"] = time.perf_counter() - calibrated
    result["wall_s"] = time.perf_counter() - started
    return result


def _run_ort(
    model: Path,
    arrays: dict[str, Any],
    batch_size: int,
    method: str,
    op_set: str,
    workdir: Path,
    scales_file: Path,
) -> dict[str, float]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = _batches(arrays, batch_size)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._batches, None)

    calibrate_method = {
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "minmax": CalibrationMethod.MinMax,
    }[method]
    started = time.perf_counter()
    quantize_static(
        str(model),
        str(workdir / "model.int8.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=CGM_OPS if op_set == "cgm" else None,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=calibrate_method,
    )
    wall_s = time.perf_counter() - started
    _write_activation_ranges(workdir / "model.int8.onnx", scales_file)
    return {"wall_s": wall_s}


def _write_activation_ranges(model_path: Path, target: Path) -> None:
    """The (scale, zero point) of every activation QuantizeLinear, to compare calibrators' ranges."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path)).graph
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    ranges = {
        node.input[0]: [float(values[node.input[1]]), float(values[node.input[2]])]
        for node in graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] not in values
    }
    target.write_text(json.dumps(ranges))


def worker(args: argparse.Namespace) -> None:
    arrays = _load_arrays(args.model, args.data, args.repeat, args.batch_size)
    samples = len(next(iter(arrays.values())))
    # Import what the variant needs before measuring the baseline RSS, so "growth" is the variant's own.
    if args.worker == "fp32":
        import onnxruntime
    elif args.worker.startswith("int8gate"):
        import pytest_int8gate.calibrate
        import pytest_int8gate.quantize  # noqa: F401
    else:
        import onnxruntime.quantization  # noqa: F401
    rss_setup_mb = _rss_mb()
    with tempfile.TemporaryDirectory(prefix="bench_calibrate_") as tmp:
        workdir = Path(tmp)
        cpu_started = time.process_time()
        if args.worker == "fp32":
            result = _run_fp32(args.model, arrays, args.batch_size, args.threads)
        elif args.worker in ("int8gate", "int8gate+qdq"):
            qdq = args.worker == "int8gate+qdq"
            result = _run_int8gate(args.model, arrays, args.batch_size, args.threads, qdq, workdir)
        else:
            _, method, op_set = args.worker.split("-")
            scales_file = args.result.with_suffix(".scales.json")
            result = _run_ort(args.model, arrays, args.batch_size, method, op_set, workdir, scales_file)
    result["cpu_s"] = time.process_time() - cpu_started
    result["samples"] = float(samples)
    result["rss_setup_mb"] = rss_setup_mb
    # The process's own peak: ru_maxrss as the parent reads it also counts the parent's RSS at fork time
    # (Linux folds the forking process's high-water mark in at exec), which matters when the parent is large.
    result["peak_hwm_mb"] = _rss_mb("VmHWM")
    args.result.write_text(json.dumps(result))


# ---- parent: schedule workers, aggregate, report --------------------------------------------------
def run_variant(args: argparse.Namespace, variant: str, result_file: Path) -> dict[str, float]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        variant,
        "--model",
        str(args.model),
        "--data",
        str(args.data),
        "--repeat",
        str(args.repeat),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--result",
        str(result_file),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = process.stderr.read()  # drained before waiting: a full pipe would block the child
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stderr.close()
    if process.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"variant {variant} failed (exit {process.returncode}):\n" + "\n".join(tail))
    result: dict[str, float] = json.loads(result_file.read_text())
    # ru_maxrss: kilobytes on Linux, bytes on macOS.
    result["peak_rss_mb"] = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return result


def compare_ranges(workdir: Path, variants: list[str]) -> list[str]:
    """How many activation (scale, zero point) pairs of each ORT histogram variant equal MinMax's."""
    reference_file = workdir / "ort-minmax-cgm.0.scales.json"
    if not reference_file.exists():
        return []
    reference: dict[str, list[float]] = json.loads(reference_file.read_text())
    notes = []
    for variant in variants:
        scales_file = workdir / f"{variant}.0.scales.json"
        if variant == "ort-minmax-cgm" or not scales_file.exists():
            continue
        ranges: dict[str, list[float]] = json.loads(scales_file.read_text())
        common = sorted(set(ranges) & set(reference))
        same = sum(
            math.isclose(ranges[t][0], reference[t][0], rel_tol=1e-6) and ranges[t][1] == reference[t][1]
            for t in common
        )
        notes.append(
            f"{VARIANTS[variant]}: {same} of {len(common)} activation tensors quantized by both have "
            "exactly the MinMax scale and zero point"
        )
    return notes


def _median(trials: list[dict[str, float]], key: str) -> float | None:
    values = [trial[key] for trial in trials if key in trial]
    return statistics.median(values) if values else None


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(
    args: argparse.Namespace,
    results: dict[str, list[dict[str, float]]],
    command: str,
    load: str,
    range_notes: list[str],
) -> str:
    baseline = _median(results["fp32"], "wall_s") if "fp32" in results else None
    baseline_pass = _median(results["fp32"], "fp32_pass_s") if "fp32" in results else None
    baseline_cpu = _median(results["fp32"], "cpu_s") if "fp32" in results else None
    first = next(iter(results.values()))[0]
    int8gate_run = results.get("int8gate", results.get("int8gate+qdq", [{}]))[0]
    layers = int(int8gate_run["layers"]) if "layers" in int8gate_run else None
    tensors = int(int8gate_run["tensors"]) if "tensors" in int8gate_run else None
    lines = [
        "# Calibration benchmark",
        "",
        *environment_lines(),
        f"- command: `{command}`",
        f"- load average (1 min) at start / end: {load}",
        f"- model: `{_display(args.model)}`"
        + (f" ({layers} quantizable layers, {tensors} activation tensors)" if layers is not None else ""),
        f"- data: `{_display(args.data)}` x{args.repeat}, {int(first['samples'])} samples in whole "
        f"batches of {args.batch_size} (ORT's histogram calibrators reject a smaller last batch), threads "
        f"{args.threads or 'auto'}",
        f"- median of {args.trials} trial(s); every trial of every variant in a fresh process, "
        "trials interleaved",
        "",
        "| variant | wall s | x FP32 pass (wall) | FP32 pass s | statistics s | CPU s | x FP32 pass (CPU) "
        "| peak RSS MB | RSS growth MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, trials in results.items():
        wall = _median(trials, "wall_s")
        ratio = "-" if baseline is None or wall is None else f"{wall / baseline:.2f}"
        cpu = _median(trials, "cpu_s")
        cpu_ratio = "-" if not baseline_cpu or cpu is None else f"{cpu / baseline_cpu:.2f}"
        peak = _median(trials, "peak_rss_mb")
        setup = _median(trials, "rss_setup_mb")
        growth = "-" if peak is None or setup is None or not setup else f"{peak - setup:.0f}"
        fp32_pass = _seconds(_median(trials, "fp32_pass_s"))
        stats = _seconds(_median(trials, "statistics_s"))
        lines.append(
            f"| {VARIANTS[variant]} | {_seconds(wall)} | {ratio} | {fp32_pass} | {stats} | "
            f"{_seconds(cpu)} | {cpu_ratio} | {_seconds_or_mb(peak)} | {growth} |"
        )
    lines += [
        "",
        "x FP32 pass (wall) = wall time / the bare FP32 variant's wall time (session build + pass"
        + (f", {_seconds(baseline)} s of which {_seconds(baseline_pass)} s running" if baseline else "")
        + "). FP32 pass s and statistics s are the split reported by int8gate's calibration (time inside "
        "ONNX Runtime vs. updating histograms); the rest of its wall time is model preparation, data "
        "checking/fingerprinting, session build and the four calibrators. CPU s is the process CPU time "
        "(all threads) over the same timed region as wall s; it is less disturbed by other load on the "
        "machine, and x FP32 pass (CPU) is the same ratio on CPU time. Peak RSS is the child process's "
        "ru_maxrss (imports and the in-memory data included); RSS growth = peak minus the RSS after imports "
        "and data loading.",
        "",
    ]
    if range_notes:
        lines += ["Activation ranges that quantize_static wrote (first trial), against its MinMax:", ""]
        lines += [f"- {note}" for note in range_notes]
        lines.append("")
    return "\n".join(lines)


def _seconds_or_mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=".npz (keys = inputs) or .npy")
    parser.add_argument("--repeat", type=int, default=5, help="repeat the data N times (default 5)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = auto)")
    parser.add_argument("--trials", type=int, default=5, help="runs per variant; the median is reported")
    parser.add_argument(
        "--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS), metavar="VARIANT"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown result file")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.batch_size < 1 or args.trials < 1 or args.threads < 0:
        parser.error("--repeat, --batch-size and --trials must be >= 1, --threads >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    for path in (args.model, args.data):
        if not path.exists():
            raise SystemExit(f"{path}: not found")
    variants = list(dict.fromkeys(["fp32", *args.variants]))
    results: dict[str, list[dict[str, float]]] = {variant: [] for variant in variants}
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="bench_calibrate_") as tmp:
        for trial in range(args.trials):
            for variant in variants:
                print(f"trial {trial + 1}/{args.trials}: {variant} ...", file=sys.stderr, flush=True)
                results[variant].append(run_variant(args, variant, Path(tmp) / f"{variant}.{trial}.json"))
        range_notes = compare_ranges(Path(tmp), variants)
    command = shlex.join(["python", _display(Path(__file__)), *(sys.argv[1:] if argv is None else argv)])
    report = render(args, results, command, f"{load_start} / {load_average()}", range_notes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    print(f"wrote {_display(args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
