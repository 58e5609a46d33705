"""Every benchmark in one run; writes ``benchmarks/RESULTS.md``: each figure a ratio against its baseline
measured in the same run, with the issue's target and whether it is met.

    python benchmarks/run_all.py            # ~10 minutes on 2 cores
    python benchmarks/run_all.py --smoke    # a tiny case of every benchmark, seconds (what the test runs)

1. Calibration (all four calibrators from one pass) against a bare FP32 ONNX Runtime pass over the same
   data and against ONNX Runtime's ``quantize_static`` (MinMax, Entropy, Percentile): time and peak memory,
   each variant in a fresh process (``bench_calibrate.py``), on the example model and on a larger residual
   CNN built here (Conv/Relu/Add at 3x64x64, random weights, generated inputs).
2. Peak memory of calibration as the number of samples grows.
3. Bisection: evaluations and time, ``binary`` against ``linear``, as N grows, 2 planted offenders at N/2
   and 3N/4 (``bench_bisect.py``), and the search's evaluation count over every placement of the 2.
4. A warm re-run of a gate (calibration table from the cache) against a cold run of the same gate.
5. Gate overhead: the gate's evaluation loop and its diagnostics pass against a bare ONNX Runtime loop over
   the same batches.
6. Plugin import: ``pytest -q`` on a one-test project with the plugin against ``-p no:int8gate``, alternating
   fresh processes (``bench_plugin_import.py``).
7. Speed where users wait, on a ResNet-style network at 224 px (``bench_speed.py``): calibration as a whole
   process and in the loop against a bare FP32 pass, peak memory, growth with samples and width, a rerun
   that changes only the budget, simulated INT8 evaluation against the FP32 pass.
8. The search side by side (``bench_search.py``): adaptive, binary-only and a linear scan on planted
   culprits (k = 1, 2, 3 among N = 8...64) and on chains with error spread thin over every layer.
9. INT8 accuracy before and after each repair rung applied to the whole model, on the example transformer
   and depthwise network (``bench_rungs.py``).
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from _common import ROOT, Figure, environment_lines, load_average
from _models import image_inputs

sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import bench_bisect  # noqa: E402
import bench_calibrate  # noqa: E402
import bench_plugin_import  # noqa: E402
import bench_rungs  # noqa: E402
import bench_search  # noqa: E402
import bench_speed  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pytest_int8gate.evaluate import compare  # noqa: E402
from pytest_int8gate.gate import Budget  # noqa: E402
from pytest_int8gate.pipeline import GatePipeline, GateSpec  # noqa: E402

EXAMPLE_MODEL = ROOT / "example_project" / "models" / "digits_cnn.onnx"
EXAMPLE_CALIB = ROOT / "example_project" / "data" / "calib.npz"
EXAMPLE_EVAL = ROOT / "example_project" / "data" / "eval.npz"
EXAMPLE_LABELS = ROOT / "example_project" / "data" / "eval_labels.npy"
DEFAULT_OUT = ROOT / "benchmarks" / "RESULTS.md"

CALIBRATION_TARGET = 1.3  # x a bare FP32 pass
QUANTIZE_STATIC_TARGET = 10.0  # int8gate at least this many times faster than Entropy / Percentile
WARM_TARGET = 0.10  # warm run / cold run
OVERHEAD_TARGET = 1.05  # (gate evaluation loop + diagnostics pass) / bare ONNX Runtime loop
FLAT_MB = 10.0  # "flat": RSS growth varies by at most this (or 10 %) across sample counts


# ---- a larger model ------------------------------------------------------------------------------------


def residual_cnn(path: Path, *, size: int = 64, width: int = 32, blocks: int = 3, seed: int = 0) -> Path:
    """A ResNet-like CNN: stem conv (stride 2), two stages of ``blocks`` residual blocks (Conv-Relu-Conv,
    Add, Relu), the second at twice the width and half the resolution, global pooling and a Gemm to 10
    classes. He-initialised random weights (seeded); input ``input`` [N, 3, size, size]."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []

    def conv(x: str, cin: int, cout: int, stride: int, name: str, scale: float = 1.0) -> str:
        w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * scale * math.sqrt(2.0 / (cin * 9))
        b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        weights.extend([numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")])
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.w", f"{name}.b"],
                [f"{name}.out"],
                name=name,
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            )
        )
        return f"{name}.out"

    def relu(x: str, name: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [f"{name}.out"], name=name))
        return f"{name}.out"

    x = relu(conv("input", 3, width, 2, "stem"), "stem_relu")
    channels = width
    for stage in range(2):
        if stage:
            x = relu(conv(x, channels, channels * 2, 2, f"down{stage}"), f"down{stage}_relu")
            channels *= 2
        for block in range(blocks):
            name = f"s{stage}b{block}"
            y = relu(conv(x, channels, channels, 1, f"{name}_conv1"), f"{name}_relu1")
            y = conv(y, channels, channels, 1, f"{name}_conv2", scale=0.5)
            nodes.append(helper.make_node("Add", [x, y], [f"{name}_add.out"], name=f"{name}_add"))
            x = relu(f"{name}_add.out", f"{name}_relu2")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool.out"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool.out"], ["flat.out"], name="flatten"))
    fc_w = (rng.standard_normal((10, channels)) * math.sqrt(1.0 / channels)).astype(np.float32)
    weights.extend(
        [numpy_helper.from_array(fc_w, "fc.w"), numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]
    )
    nodes.append(helper.make_node("Gemm", ["flat.out", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes,
        "residual_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


# ---- 1 and 2: calibration time and memory ----------------------------------------------------------------


def calibration_runs(
    model: Path,
    data: Path,
    *,
    repeat: int,
    trials: int,
    variants: Sequence[str],
    batch_size: int,
    workdir: Path,
) -> dict[str, list[dict[str, float]]]:
    """``bench_calibrate``'s variants, each trial in a fresh process, trials interleaved."""
    args = bench_calibrate.parse_args(
        ["--model", str(model), "--data", str(data), "--repeat", str(repeat), "--batch-size", str(batch_size)]
    )
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for trial in range(trials):
        for variant in variants:
            print(
                f"  calibration {model.name} x{repeat} trial {trial + 1}/{trials}: {variant}", file=sys.stderr
            )
            results[variant].append(
                bench_calibrate.run_variant(args, variant, workdir / f"{variant}.{trial}.json")
            )
    return results


def median(trials: list[dict[str, float]], key: str) -> float:
    value = bench_calibrate._median(trials, key)
    return math.nan if value is None else value


def peak_mb(trials: list[dict[str, float]]) -> float:
    """The worker's own peak RSS (VmHWM), else ``ru_maxrss`` as its parent read it."""
    hwm = median(trials, "peak_hwm_mb")
    return hwm if hwm > 0 else median(trials, "peak_rss_mb")


def calibration_section(
    title: str, results: dict[str, list[dict[str, float]]], figures: list[Figure], label: str
) -> list[str]:
    fp32_wall, fp32_cpu = median(results["fp32"], "wall_s"), median(results["fp32"], "cpu_s")
    ours = median(results["int8gate"], "wall_s")
    samples = int(results["fp32"][0]["samples"])
    lines = [
        f"### {title} ({samples} samples, median of {len(results['fp32'])} trial(s))",
        "",
        "| variant | wall s | x bare FP32 pass | CPU s | x FP32 (CPU) | int8gate faster by | peak RSS MB "
        "| RSS growth MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, trials in results.items():
        wall, cpu = median(trials, "wall_s"), median(trials, "cpu_s")
        peak, setup = peak_mb(trials), median(trials, "rss_setup_mb")
        faster = f"{wall / ours:.1f}x" if variant.startswith("ort-") else "-"
        lines.append(
            f"| {bench_calibrate.VARIANTS[variant]} | {wall:.3f} | {wall / fp32_wall:.2f} | {cpu:.3f} | "
            f"{cpu / fp32_cpu:.2f} | {faster} | {peak:.0f} | {peak - setup:.0f} |"
        )
    lines.append("")
    figures.append(
        Figure(
            "1 calibration",
            f"int8gate calibration, {label}",
            ours / fp32_wall,
            "bare FP32 pass (wall)",
            f"<= {CALIBRATION_TARGET}x",
            ours / fp32_wall <= CALIBRATION_TARGET,
        )
    )
    for method in ("entropy", "percentile"):
        variant = f"ort-{method}-cgm"
        if variant in results:
            speedup = median(results[variant], "wall_s") / ours
            figures.append(
                Figure(
                    "1 calibration",
                    f"quantize_static {method.capitalize()} / int8gate, {label}",
                    speedup,
                    "int8gate calibration (wall)",
                    f">= {QUANTIZE_STATIC_TARGET:g}x faster",
                    speedup >= QUANTIZE_STATIC_TARGET,
                )
            )
    if ours / fp32_wall > CALIBRATION_TARGET:
        fp32_pass, stats, pass_wall, workers = (
            median(results["int8gate"], "fp32_pass_s"),
            median(results["int8gate"], "statistics_s"),
            median(results["int8gate"], "pass_wall_s"),
            median(results["int8gate"], "workers"),
        )
        NOTES.append(
            f"**Calibration, {label}.** int8gate took {ours:.3f} s against {fp32_wall:.3f} s for the bare "
            f"FP32 pass: its own pass {pass_wall:.3f} s (every activation exposed as an output, the steps "
            f"spread over {workers:.0f} single-threaded inference(s) side by side, which spent "
            f"{fp32_pass:.3f} s inside ONNX Runtime and {stats:.3f} s on histogram updates, summed over "
            f"them), and {ours - pass_wall:.3f} s of fixed costs (model validation and preparation, data "
            "check and fingerprint, session build, the entropy and mse threshold searches per tensor). "
            "Histogram work grows with the number of activation values and the FP32 pass with the "
            "arithmetic, so models that do more work per activation value come closer to 1x; fixed costs "
            "weigh most on small calibration sets. Section 7 measures the same work on realistic models."
        )
    slower = [
        f for f in figures if f.what.startswith("quantize_static") and f.what.endswith(label) and not f.met
    ]
    if slower:
        NOTES.append(
            f"**quantize_static, {label}.** quantize_static Entropy and Percentile took "
            f"{' and '.join(f'{f.ratio:.1f}x' for f in slower)} int8gate's time here, not "
            f"{QUANTIZE_STATIC_TARGET:g}x. quantize_static's histogram calibrators keep every intermediate "
            "output of every batch and build the histograms at the end, so their memory grows with the "
            "sample count (section 2 of this run) while int8gate streams; on small sets both are dominated "
            "by fixed costs. Larger calibration sets should widen the gap (`bench_calibrate.py --repeat 50` "
            "measures it at about 30,000 samples; not part of this run)."
        )
    return lines


#: Explanations of missed targets, collected while the sections are built.
NOTES: list[str] = []
#: samples -> (data check + fingerprint, statistics) peak allocations in MB, residual CNN (tracemalloc).
TRACED: dict[int, tuple[float, float]] = {}


def memory_section(
    rows: list[tuple[str, int, str, dict[str, list[dict[str, float]]]]], figures: list[Figure]
) -> list[str]:
    """Peak RSS and its growth over the RSS after imports and data loading, as the sample count grows."""
    lines = [
        "### Peak memory of calibration as the number of samples grows",
        "",
        "| model | samples | variant | peak RSS MB | RSS growth MB |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    growth: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for model, samples, variant, results in rows:
        peak, setup = peak_mb(results[variant]), median(results[variant], "rss_setup_mb")
        lines.append(
            f"| {model} | {samples} | {bench_calibrate.VARIANTS[variant]} | {peak:.0f} | {peak - setup:.0f} |"
        )
        growth.setdefault((model, variant), []).append((samples, peak - setup))
    if TRACED:
        lines.append(
            "Peak allocations inside one process (tracemalloc), residual CNN: "
            + "; ".join(
                f"{n} samples: data check and fingerprint {data:.0f} MB, statistics {stats:.0f} MB"
                for n, (data, stats) in sorted(TRACED.items())
            )
            + ". The activations (one step at a time), the histograms (fixed size) and the data stage "
            "(which hashes each chunk of input data in place and scans it for NaN/Inf in blocks of at most "
            "4 MiB, pytest_int8gate/data.py) hold nothing that grows with the number of samples."
        )
    lines.append("")
    for (model, variant), points in growth.items():
        if variant == "int8gate" and len(points) > 1:
            (few, low), (many, high) = points[0], points[-1]
            if high - low > max(FLAT_MB, 0.1 * low):
                traced = " ".join(
                    f"At {n} samples: data check and fingerprint {data:.0f} MB, statistics {stats:.0f} MB."
                    for n, (data, stats) in sorted(TRACED.items())
                )
                NOTES.append(
                    f"**Memory, {model}.** int8gate's RSS growth rose from {low:.0f} MB at {few} samples "
                    f"to {high:.0f} MB at {many}. Peak allocations measured with tracemalloc in this run, "
                    f"{traced or '(not measured)'} The activations (one step at a time), the histograms "
                    "(fixed size) and the data stage (hashing in place, NaN/Inf scans in 4 MiB blocks) "
                    "hold nothing that grows with the samples; where these traced peaks stay flat, the "
                    "growth is outside Python's allocations (ONNX Runtime's arena, the allocator keeping "
                    "freed pages), and a run on an idle machine tells it from noise."
                )
        if variant != "int8gate" or len(points) < 2:
            continue
        (few, low), (many, high) = points[0], points[-1]
        flat = high - low <= max(FLAT_MB, 0.1 * low)
        figures.append(
            Figure(
                "2 memory",
                f"int8gate RSS growth at {many} vs {few} samples, {model}",
                high / low if low > 0 else math.nan,
                f"RSS growth at {few} samples",
                f"flat (within {FLAT_MB:g} MB or 10 %)",
                flat,
            )
        )
    return lines


def traced_peaks(model: Path, inputs: np.ndarray, batch_size: int) -> tuple[float, float]:
    """Peak allocations (MB, tracemalloc) of the data check and fingerprint, and of the statistics."""
    from pytest_int8gate.calibrate import collect_statistics
    from pytest_int8gate.data import Dataset, check_dataset
    from pytest_int8gate.graph import load_model
    from pytest_int8gate.quantize import activation_tensors

    loaded = load_model(model)
    tensors = activation_tensors(loaded)
    tracemalloc.start()
    try:
        dataset = check_dataset(Dataset.from_arrays({"input": inputs}, source="benchmark"), loaded.info)
        dataset.fingerprint  # noqa: B018
        data_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        collect_statistics(loaded.proto, tensors, dataset.batches(batch_size))
        statistics_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return data_peak / 2**20, statistics_peak / 2**20


# ---- 3: bisection --------------------------------------------------------------------------------------


def bisection_section(sizes: Sequence[int], repeats: int, workdir: Path, figures: list[Figure]) -> list[str]:
    results = {}
    for n_layers in sizes:
        print(f"  bisection N={n_layers}", file=sys.stderr)
        results[n_layers] = bench_bisect.measure(n_layers, workdir, repeats)
    every = [bench_bisect.placements(n_layers) for n_layers in sizes]
    for (n_layers, runs), placed in zip(results.items(), every, strict=True):
        binary, linear = runs["binary"].report, runs["linear"].report
        planted = ", ".join(f"fc{p}" for p in bench_bisect.planted_positions(n_layers))
        figures.append(
            Figure(
                "3 bisection",
                f"binary search evaluations, N={n_layers}, k=2, worst of all {placed.count} placements "
                "(synthetic oracle)",
                placed.worst / n_layers,
                f"linear ({n_layers})",
                f"<= k*ceil(log2 N)+2 = {placed.target} in every placement "
                f"({placed.within_target} of {placed.count} within)",
                placed.within_target == placed.count,
            )
        )
        figures.append(
            Figure(
                "3 bisection",
                f"binary search evaluations, N={n_layers}, k=2, planted at {planted} only (real model)",
                binary.search_evaluations / linear.search_evaluations,
                f"linear ({linear.search_evaluations})",
                f"<= k*ceil(log2 N)+2 = {placed.target}",
                binary.search_evaluations <= placed.target,
            )
        )
        if placed.within_target < placed.count:
            NOTES.append(
                f"**Bisection, N={n_layers}.** The target k·⌈log2 N⌉+2 = {placed.target} search evaluations "
                f"holds in {placed.within_target} of the {placed.count} placements of 2 offenders; the "
                f"others cost up to {placed.worst} (e.g. offenders at "
                f"{', '.join(f'fc{p}' for p in placed.worst_placement)}), bisect.py's documented worst case "
                "k·⌈log2 N⌉+k+1. Each offender costs a binary search over the layers still undecided plus "
                "one probe of everything after it; when a later offender's search spans more than half the "
                "layers it needs as many steps as the first, and the extra probe is over the target. The "
                "planted real-model rows (offenders at N/2 and 3N/4) sit where the target holds. What "
                "would meet it in every placement: one probe less per offender, which a search over "
                "quantization prefixes cannot save without skipping the check that nothing after an "
                "offender fails; the bound to quote is bisect.py's k·⌈log2 N⌉+k+1."
            )
    return [
        f"### Bisection: binary vs linear (k = 2 planted offenders, median of {repeats} run(s))",
        "",
        "One placement per N (offenders at N/2 and 3N/4), real models through the pipeline:",
        "",
        bench_bisect.table(results),
        "",
        "Every placement of the 2 offenders, counted on a synthetic monotone oracle (exact: the count "
        "depends only on where the offenders sit):",
        "",
        bench_bisect.placements_table(every),
        "",
    ]


# ---- 8: the search side by side -----------------------------------------------------------------------


def search_section(smoke: bool, workdir: Path, figures: list[Figure]) -> list[str]:
    runs = bench_search.measure(smoke, workdir)
    figures.extend(bench_search.figures(runs))
    return [
        "Adaptive (the default), binary-only and a linear scan on the same models and data "
        "(`bench_search.py`):",
        "",
        *bench_search.summary(runs),
        "",
        bench_search.table(runs),
        "",
    ]


# ---- 4: warm vs cold -----------------------------------------------------------------------------------


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def warm_cold(spec: GateSpec, rounds: int, workdir: Path) -> dict[str, Any]:
    """Cold: an empty cache directory; warm: the same gate again on the filled one (the calibration table,
    both engines' evaluation outputs and the model-running diagnostics are read from it; the Q/DQ model is
    quantized again). New pipeline each time; the best (minimum) of
    ``rounds`` (the run least disturbed by other load on the machine)."""
    colds, warms, diagnostics, hits = [], [], [], ()
    GatePipeline(replace(spec, cache_dir=workdir / "warmup")).run()  # imports, first sessions
    for round_index in range(rounds):
        cache = workdir / f"cache{round_index}"
        cold_s, _ = timed(GatePipeline(replace(spec, cache_dir=cache)).run)
        warm = GatePipeline(replace(spec, cache_dir=cache))
        warm_s, verdict = timed(warm.run)
        colds.append(cold_s)
        warms.append(warm_s)
        diagnostics.append(warm.timings.get("diagnostics_s", 0.0))
        hits = verdict.cache_hits
        shutil.rmtree(cache, ignore_errors=True)
    pipeline = GatePipeline(replace(spec, cache_dir=None))
    pipeline.table  # noqa: B018 - calibrate first: the evaluation alone is timed below
    pipeline.default_int8_runner  # noqa: B018
    pipeline.fp32_runner  # noqa: B018
    evaluation_s, _ = timed(pipeline.evaluate)
    return {
        "cold": min(colds),
        "warm": min(warms),
        "hits": hits,
        "evaluation": evaluation_s,
        "diagnostics": min(diagnostics),
        "samples": pipeline.eval_data.num_samples,
    }


def warm_section(cases: dict[str, dict[str, Any]], figures: list[Figure]) -> list[str]:
    lines = [
        "### Warm re-run (calibration table, evaluation outputs and diagnostics from the cache) vs cold "
        "run of the same gate (best of each)",
        "",
        "| gate | evaluation samples | cold s | warm s | warm / cold | caches hit on the warm run | "
        "evaluation alone s | diagnostics in the warm run s |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for name, case in cases.items():
        ratio = case["warm"] / case["cold"]
        lines.append(
            f"| {name} | {case['samples']} | {case['cold']:.3f} | {case['warm']:.3f} | {ratio:.2f} | "
            f"{', '.join(case['hits']) or 'none'} | {case['evaluation']:.3f} | {case['diagnostics']:.3f} |"
        )
        figures.append(
            Figure(
                "4 warm re-run",
                f"warm / cold, {name}",
                ratio,
                "cold run",
                f"<= {WARM_TARGET:.0%}",
                ratio <= WARM_TARGET,
            )
        )
        if ratio > WARM_TARGET:
            NOTES.append(
                f"**Warm re-run, {name}.** The warm run took {case['warm']:.3f} s of the cold run's "
                f"{case['cold']:.3f} s (the evaluation alone: {case['evaluation']:.3f} s over "
                f"{case['samples']} samples). It reuses the calibration table, both engines' evaluation "
                "outputs and the model-running diagnostics, so it builds and runs no engine (outputs.py); "
                "what remains is loading and validating the model, checking and fingerprinting the data, "
                "quantizing, and digesting the Q/DQ model for the outputs' key: fixed costs that weigh most "
                "on a small model. What would meet 10 %: keep the prepared model and the data fingerprint "
                "keyed by file content and modification time, so that an unchanged gate reads no model."
            )
    lines.append("")
    return lines


# ---- 5: gate overhead ------------------------------------------------------------------------------------


def overhead(spec: GateSpec, rounds: int) -> dict[str, float]:
    """The gate's evaluation loop (``evaluate.compare``: both runners, finiteness checks, metrics) and its
    diagnostics pass (``pipeline.timings["diagnostics_s"]`` of a full ``run()``) against a bare loop of
    ``InferenceSession.run`` on the same two sessions over the same batches; each the best of ``rounds``."""
    pipeline = GatePipeline(spec)
    fp32, int8 = pipeline.fp32_runner, pipeline.default_int8_runner
    data, batch_size, labels = pipeline.eval_data, pipeline.batch_size, pipeline.labels
    batches = list(data.batches(batch_size))
    fp32_session, int8_session = fp32.inner._session, int8.inner._session  # type: ignore[attr-defined]

    def bare() -> None:
        for feeds in batches:
            fp32_session.run(None, feeds)
            int8_session.run(None, feeds)

    def gate() -> None:
        compare(fp32, int8, data, batch_size=batch_size, output_name=spec.output, labels=labels)

    bare()
    gate()  # warm-up
    bare_s, gate_s, diagnostics_s = [], [], []
    for _ in range(rounds):  # interleaved, so that load from elsewhere hits both alike
        bare_s.append(timed(bare)[0])
        gate_s.append(timed(gate)[0])
        pipeline.run()  # the gate as a user runs it: evaluation, judgement, then the diagnostics pass
        diagnostics_s.append(pipeline.timings["diagnostics_s"])
    return {
        "bare": min(bare_s),
        "gate": min(gate_s),
        "diagnostics": min(diagnostics_s),
        "samples": data.num_samples,
    }


def overhead_section(cases: dict[str, dict[str, float]], rounds: int, figures: list[Figure]) -> list[str]:
    lines = [
        "### Gate overhead: evaluation loop and diagnostics pass vs bare ONNX Runtime loop "
        f"(best of {rounds}, interleaved)",
        "",
        "| gate | samples | bare loop s | gate loop s | gate loop / bare | diagnostics pass s | "
        "(gate loop + diagnostics) / bare |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, case in cases.items():
        loop_ratio = case["gate"] / case["bare"]
        whole_ratio = (case["gate"] + case["diagnostics"]) / case["bare"]
        lines.append(
            f"| {name} | {case['samples']:.0f} | {case['bare']:.3f} | {case['gate']:.3f} | "
            f"{loop_ratio:.3f} | {case['diagnostics']:.3f} | {whole_ratio:.3f} |"
        )
        figures.append(
            Figure(
                "5 overhead",
                f"gate evaluation loop + diagnostics pass, {name}",
                whole_ratio,
                "bare ONNX Runtime loop",
                f"<= {OVERHEAD_TARGET:.2f}x",
                whole_ratio <= OVERHEAD_TARGET,
            )
        )
        figures.append(
            Figure(
                "5 overhead",
                f"gate evaluation loop alone (without the diagnostics pass), {name}",
                loop_ratio,
                "bare ONNX Runtime loop",
                f"<= {OVERHEAD_TARGET:.2f}x",
                loop_ratio <= OVERHEAD_TARGET,
            )
        )
        if whole_ratio > OVERHEAD_TARGET:
            NOTES.append(
                f"**Gate overhead, {name}.** Over the bare loop's {case['bare']:.3f} s, the evaluation loop "
                f"adds {case['gate'] - case['bare']:.3f} s (slicing the batches, the NaN/Inf check of both "
                "outputs, the streaming metrics) and the diagnostics pass "
                f"{case['diagnostics']:.3f} s (the diagnostics package: among them an FP32 pass over the "
                "evaluation data with every activation exposed, for the clipping rates). What would meet "
                "5 %: the clipping statistics from the evaluation pass itself (expose the activations in the "
                "FP32 engine the gate already runs) or from a subset, and the metrics of one batch computed "
                "while ONNX Runtime runs the next."
            )
    lines.append("")
    return lines


# ---- the run ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much of each benchmark to run."""

    trials: int
    example_repeat: int
    example_variants: tuple[str, ...]
    large_samples: int  # 0: no larger model
    large_variants: tuple[str, ...]
    memory_repeats: tuple[int, ...]
    large_memory_samples: tuple[int, ...]
    bisect_sizes: tuple[int, ...]
    bisect_repeats: int
    search_smoke: bool  # bench_search's one tiny case per family
    rounds: int
    import_runs: int  # runs of each variant of the plugin-import benchmark
    speed: bench_speed.Sizes
    rung_models: tuple[str, ...] = bench_rungs.MODELS
    rung_calibrators: tuple[str, ...] = bench_rungs.CALIBRATORS


FULL = Plan(
    trials=3,
    example_repeat=5,
    example_variants=tuple(bench_calibrate.VARIANTS),
    large_samples=256,
    large_variants=(
        "fp32",
        "int8gate",
        "int8gate+qdq",
        "ort-minmax-cgm",
        "ort-entropy-cgm",
        "ort-percentile-cgm",
    ),
    memory_repeats=(1, 5, 25),
    large_memory_samples=(64, 256, 1024),
    bisect_sizes=(8, 16, 32, 64),
    bisect_repeats=3,
    search_smoke=False,
    rounds=5,
    import_runs=15,
    speed=bench_speed.FULL,
)
SMOKE = Plan(
    trials=1,
    example_repeat=1,
    example_variants=("fp32", "int8gate", "ort-entropy-cgm"),
    large_samples=0,
    large_variants=(),
    memory_repeats=(1, 2),
    large_memory_samples=(),
    bisect_sizes=(8,),
    bisect_repeats=1,
    search_smoke=True,
    rounds=1,
    import_runs=1,
    speed=bench_speed.SMOKE,
    rung_models=("digits_mobilenet.onnx",),
    rung_calibrators=("max",),
)


def run(plan: Plan, workdir: Path) -> tuple[list[str], list[Figure]]:
    figures: list[Figure] = []
    sections: list[str] = ["## 1. Calibration: time and peak memory", ""]
    calib_dir = workdir / "calibration"
    calib_dir.mkdir()
    example = calibration_runs(
        EXAMPLE_MODEL,
        EXAMPLE_CALIB,
        repeat=plan.example_repeat,
        trials=plan.trials,
        variants=plan.example_variants,
        batch_size=32,
        workdir=calib_dir,
    )
    sections += calibration_section("Example model: digits CNN (1x8x8 input)", example, figures, "digits CNN")
    large_model = large_data = None
    if plan.large_samples:
        large_model = residual_cnn(workdir / "residual_cnn.onnx")
        large_data = workdir / "residual_calib.npz"
        np.savez(large_data, input=image_inputs(plan.large_samples, 64))
        large = calibration_runs(
            large_model,
            large_data,
            repeat=1,
            trials=plan.trials,
            variants=plan.large_variants,
            batch_size=16,
            workdir=calib_dir,
        )
        sections += calibration_section(
            "Larger model: residual CNN (3x64x64 input, 14 Conv + Gemm, ~0.24 GFLOP per sample)",
            large,
            figures,
            "residual CNN",
        )

    memory_rows: list[tuple[str, int, str, dict[str, list[dict[str, float]]]]] = []
    for repeat in plan.memory_repeats:
        variants = ("int8gate", "ort-entropy-cgm")
        results = calibration_runs(
            EXAMPLE_MODEL,
            EXAMPLE_CALIB,
            repeat=repeat,
            trials=1,
            variants=variants,
            batch_size=32,
            workdir=calib_dir,
        )
        samples = int(results["int8gate"][0]["samples"])
        memory_rows += [("digits CNN", samples, v, results) for v in variants]
    if large_model is not None and plan.large_memory_samples:
        for samples in plan.large_memory_samples:
            data = workdir / f"residual_{samples}.npz"
            np.savez(data, input=image_inputs(samples, 64))
            results = calibration_runs(
                large_model,
                data,
                repeat=1,
                trials=1,
                variants=("int8gate",),
                batch_size=16,
                workdir=calib_dir,
            )
            memory_rows.append(("residual CNN", samples, "int8gate", results))
        for samples in (plan.large_memory_samples[0], plan.large_memory_samples[-1]):
            TRACED[samples] = traced_peaks(large_model, image_inputs(samples, 64), 16)
    sections += ["## 2. Memory as samples grow", "", *memory_section(memory_rows, figures)]

    sections += ["## 3. Bisection", ""]
    sections += bisection_section(plan.bisect_sizes, plan.bisect_repeats, workdir, figures)

    example_spec = GateSpec(
        model=EXAMPLE_MODEL,
        calib_data=EXAMPLE_CALIB,
        eval_data=EXAMPLE_EVAL,
        labels=str(EXAMPLE_LABELS),
        budget=Budget({"top1_drop": 0.01, "cosine": 0.98}),
        bisect=False,
    )
    specs = {"digits CNN (example, labelled)": example_spec}
    if large_model is not None:
        evaluation = {"input": image_inputs(plan.large_samples, 64, seed=2)}
        specs["residual CNN"] = GateSpec(
            model=large_model,
            calib_data={"input": np.load(large_data)["input"]},
            eval_data=evaluation,
            budget=Budget({"cosine": 0.9}),
            batch_size=16,
            bisect=False,
        )
    print("  warm vs cold", file=sys.stderr)
    warm = {name: warm_cold(spec, plan.rounds, workdir) for name, spec in specs.items()}
    sections += ["## 4. Warm re-run", "", *warm_section(warm, figures)]
    print("  gate overhead", file=sys.stderr)
    cost = {name: overhead(spec, plan.rounds) for name, spec in specs.items()}
    sections += ["## 5. Gate overhead", "", *overhead_section(cost, plan.rounds, figures)]
    print("  plugin import", file=sys.stderr)
    project = workdir / "one_test_project"
    project.mkdir()
    times = bench_plugin_import.measure(plan.import_runs, bench_plugin_import.one_test_project(project))
    sections += ["## 6. Plugin import", "", *bench_plugin_import.table(times)]
    figure = bench_plugin_import.ratio(times)
    figures.append(
        Figure(
            "6 plugin import",
            "pytest -q, one-test project, with the plugin",
            figure,
            "-p no:int8gate",
            f"<= {bench_plugin_import.TARGET}x",
            figure <= bench_plugin_import.TARGET,
        )
    )
    print("  speed where users wait (ResNet-style, 224 px)", file=sys.stderr)
    speed_dir = workdir / "speed"
    speed_dir.mkdir()
    speed_lines, speed_figures = bench_speed.measure(plan.speed, speed_dir)
    figures += [Figure(f.benchmark, f.what, f.ratio, f.baseline, f.target, f.met) for f in speed_figures]
    sections += ["## 7. Speed where users wait: a realistic model (`bench_speed.py`)", "", *speed_lines]
    print("  the search side by side", file=sys.stderr)
    search_dir = workdir / "search"
    search_dir.mkdir()
    sections += [
        "## 8. Search: adaptive, binary-only, linear",
        "",
        *search_section(plan.search_smoke, search_dir, figures),
    ]
    print("  repair rungs on the example transformer and depthwise network", file=sys.stderr)
    rung_rows = [
        row for model in plan.rung_models for row in bench_rungs.measure(model, plan.rung_calibrators)
    ]
    sections += [
        "## 9. Repair rungs, whole model: INT8 accuracy before and after (`bench_rungs.py`)",
        "",
        "Each rung applied to every layer it can apply to, against the calibrator's own row without it "
        "(same pipeline, same 500 held-out samples). No target: the figures say what each rung buys here.",
        "",
        *bench_rungs.render(rung_rows),
        "",
    ]
    return sections, figures


def summary(figures: Sequence[Figure]) -> list[str]:
    lines = [
        "| # | figure | ratio | against (same run) | target | met |",
        "| --- | --- | ---: | --- | --- | --- |",
    ]
    for f in figures:
        lines.append(
            f"| {f.benchmark} | {f.what} | {f.ratio:.2f} | {f.baseline} | {f.target} | "
            f"{'met' if f.met else '**not met**'} |"
        )
    return [*lines, ""]


def header(command: str, load: str, plan: Plan, started: float) -> list[str]:
    return [
        "# Benchmark results",
        "",
        *environment_lines(),
        f"- command: `{command}` ({time.perf_counter() - started:.0f} s)",
        f"- load average (1 min) at start / end: {load}",
        f"- plan: {'smoke (tiny sizes, one trial: the numbers mean little)' if plan is SMOKE else 'full'}",
        "",
        "Every figure is a ratio of two measurements taken in this run, on this machine, with the same "
        "data. Calibration variants each run in a fresh process; peak RSS is that process's own high-water "
        "mark (VmHWM) and RSS growth is the peak minus the RSS after imports and data loading. The "
        "machine is shared (see the load average): seconds vary between runs, ratios less so; the "
        "evaluation counts of the bisection are exact.",
        "",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny case of every benchmark (seconds)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown result file")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    started = time.perf_counter()
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="int8gate_bench_") as tmp:
        sections, figures = run(plan, Path(tmp))
    command = shlex.join(["python", "benchmarks/run_all.py", *(sys.argv[1:] if argv is None else argv)])
    lines = header(command, f"{load_start} / {load_average()}", plan, started)
    lines += ["## Summary", "", *summary(figures)]
    if NOTES:
        lines += ["## Where a target is missed: why, and what would meet it", ""]
        lines += [note + "\n" for note in NOTES]
    lines += sections
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines).rstrip() + "\n")
    print("\n".join(summary(figures)))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
