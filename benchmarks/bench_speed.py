"""Speed where users wait, on a ResNet-style network at 224 px built here (``_models.py``: seeded random
weights, generated inputs; nothing large is committed). Every figure is a ratio against a baseline measured
in the same run, on the same data (wall time, and CPU time, which a shared machine disturbs less):

1. ``int8gate calibrate`` as a whole process against a bare FP32 process (``python`` + onnxruntime + a session
   + a batch-1 pass over the same ``.npy`` data): wall time and peak RSS (each process's own VmHWM).
2. Calibration in the loop (``calibrate.calibrate``: session build, the pass with statistics, the four
   calibrators) against the bare pass (``InferenceSession.run`` at batch 1) in the same process, interleaved.
   Every bare baseline runs with ONNX Runtime's default (threads that spin while they wait) and with
   spinning off, and the faster is the baseline: a shared machine slows spinning threads most, and a ratio
   against the default alone would flatter int8gate whenever others use the cores.
   1 and 2 are measured again on a ResNet-18-shaped network (stage widths 64/128/256/512, same data), where
   the model's own work is larger against the fixed costs; the process figure also splits its time into
   imports (measured in fresh processes), what comes before calibration, and calibration.
3. How 1 and 2 grow with the number of samples and with the model's width.
4. A rerun of the same gate that changes only the budget against the cold run (``GatePipeline``, cache on).
5. Simulated INT8 evaluation (weights folded, the FP32 engine's optimisations with Q/DQ kept) against the FP32
   pass, the previous simulated modes against the same pass, and its outputs against the unoptimised model's.

    python benchmarks/bench_speed.py            # a few minutes on 2 cores; writes benchmarks/results/speed.md
    python benchmarks/bench_speed.py --smoke    # tiny sizes, seconds
    python benchmarks/bench_speed.py --model det.onnx --size 320 --out det.md   # a model of your own
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from _common import ROOT, Figure, environment_lines, load_average
from _models import image_inputs, resnet_style

sys.path.insert(0, str(ROOT))

import numpy as np

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "speed.md"

CALIBRATION_PROCESS_TARGET = 1.5  # whole process, x a bare FP32 process
CALIBRATION_LOOP_TARGET = 1.3  # in the loop, x the bare pass
WARM_TARGET = 0.3  # budget-only rerun / cold run
SIMULATED_TARGET = 2.0  # simulated INT8 evaluation / FP32 pass
MEMORY_TARGET = 1.5  # calibration process peak RSS / bare process peak RSS

#: Run inside each child process: the process's own peak RSS (VmHWM) is written at exit.
_PEAK_HOOK = """
import atexit, sys
_PEAK_FILE = sys.argv.pop(1)
def _peak():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            open(_PEAK_FILE, 'w').write(str(int(line.split()[1]) / 1024))
atexit.register(_peak)
"""
_BARE_PASS = """
import sys, numpy as np, onnxruntime as ort
model, data, spinning = sys.argv[1], sys.argv[2], sys.argv[3]
x = np.load(data)
options = ort.SessionOptions()
options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
for i in range(len(x)):
    session.run(None, {name: x[i : i + 1]})
"""
_CALIBRATE = """
from pytest_int8gate.cli import main
sys.exit(main(["calibrate", *sys.argv[1:]]))
"""


@dataclass(frozen=True)
class Sizes:
    """How much of each measurement to run."""

    size: int
    widths: tuple[int, ...]
    samples: int
    eval_samples: int
    sample_counts: tuple[int, ...]
    width_scales: tuple[float, ...]
    rounds: int
    #: Measure whole processes too (each imports everything: seconds of fixed cost, not for a smoke run).
    processes: bool = True
    #: Stage widths of the ResNet-18-shaped network whose calibration is measured too (empty: none).
    realistic_widths: tuple[int, ...] = ()


FULL = Sizes(
    224,
    (32, 64, 128, 256),
    256,
    128,
    (64, 128, 256),
    (0.5, 1.0, 2.0),
    2,
    realistic_widths=(64, 128, 256, 512),
)
SMOKE = Sizes(32, (8, 16, 16, 16), 16, 8, (), (), 1, processes=False, realistic_widths=(8, 16, 32, 64))


def _process(code: str, args: Sequence[str], workdir: Path) -> dict[str, float]:
    """Wall s, CPU s (user + system, all threads) and peak RSS MB of ``python -c code args``; and the
    seconds of every ``NAME  SECONDS s`` line it prints (``int8gate calibrate``'s own timings)."""
    peak_file = workdir / "peak.txt"
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    out_file = workdir / "stdout.txt"
    started = time.perf_counter()
    with out_file.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", _PEAK_HOOK + code, str(peak_file), *args],
            env={**os.environ, "PYTHONPATH": path},
            stdout=out,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        stderr = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark process failed:\n{stderr.decode(errors='replace')[-2000:]}")
    result = {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak": float(peak_file.read_text())}
    for line in out_file.read_text(errors="replace").splitlines():
        match = _TIMING_LINE.match(line)
        if match:
            result[match["name"]] = float(match["seconds"])
    return result


_TIMING_LINE = re.compile(r"^  (?P<name>[a-z0-9 ]+?) +(?P<seconds>[0-9.]+) s\b")


def whole_process(model: Path, data: Path, workdir: Path, rounds: int) -> dict[str, float]:
    """Bare FP32 process and ``int8gate calibrate`` over the same data, interleaved; the best of each. The
    bare process runs with ONNX Runtime's default (spinning threads) and with spinning off, and the faster
    one is the baseline: a shared machine slows spinning threads most, a quiet one the others."""
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "ours": []}
    for _ in range(rounds):
        for spinning in ("1", "0"):
            runs["bare"].append(_process(_BARE_PASS, [str(model), str(data), spinning], workdir))
        table = str(workdir / "t.json")
        runs["ours"].append(_process(_CALIBRATE, [str(model), "--data", str(data), "--out", table], workdir))
    best = {
        f"{who}{suffix}": min(run[key] for run in runs[who])
        for who in runs
        for key, suffix in (("wall", ""), ("cpu", "_cpu"), ("peak", "_peak"))
    }
    # the spread says how much the machine disturbed the runs (the ratio takes the fastest of each)
    best.update({f"{who}_slowest": max(run["wall"] for run in runs[who]) for who in runs})
    best.update({f"{who}_runs": float(len(runs[who])) for who in runs})
    # the fastest calibrate process's own timings: its calibration (session, pass, calibrators) and the pass
    fastest = min(runs["ours"], key=lambda run: run["wall"])
    return {
        **best,
        "ours_calibration": fastest.get("total", 0.0),
        "ours_pass": fastest.get("pass in all", 0.0),
    }


_IMPORTS = """
import time
started = time.perf_counter()
import numpy, onnxruntime
bare = time.perf_counter()
import onnx
onnx_s = time.perf_counter()
import pytest_int8gate.cli
print(f"  bare imports {bare - started:.3f} s")
print(f"  onnx import {onnx_s - bare:.3f} s")
print(f"  own imports {time.perf_counter() - onnx_s:.3f} s")
"""


def import_costs(workdir: Path, rounds: int) -> dict[str, float]:
    """Seconds to import numpy + onnxruntime (what the bare process imports), then onnx, then the rest of
    ``int8gate calibrate``'s modules, in fresh processes; the best of ``rounds``."""
    runs = [_process(_IMPORTS, [], workdir) for _ in range(max(rounds, 3))]
    return {key: min(run[key] for run in runs) for key in ("bare imports", "onnx import", "own imports")}


def in_loop(model: Path, inputs: np.ndarray, rounds: int) -> dict[str, float]:
    """The bare pass (session build + batch-1 pass; the faster of ONNX Runtime's default and spinning off)
    against ``calibrate`` (session build, pass with statistics, calibrators) in this process, after imports
    and data loading, interleaved."""
    import onnxruntime as ort

    from pytest_int8gate.calibrate import HISTOGRAM_KERNEL, calibrate
    from pytest_int8gate.data import Dataset, check_dataset
    from pytest_int8gate.graph import load_model
    from pytest_int8gate.quantize import activation_tensors

    loaded = load_model(model)
    tensors = activation_tensors(loaded)
    name = loaded.info.inputs[0].name
    dataset = check_dataset(Dataset.from_arrays({name: inputs}), loaded.info)
    bare, ours, bare_cpu, ours_cpu, details, quiet, quiet_cpu = [], [], [], [], [], [], []
    # ONNX Runtime's threads spin while they wait (its default): on a shared machine the spinning costs
    # the bare pass most; the same pass with spinning off (as int8gate's pass runs) is measured beside it
    no_spin = ort.SessionOptions()
    no_spin.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for _ in range(rounds):
        started, cpu = time.perf_counter(), time.process_time()
        session = ort.InferenceSession(str(model), no_spin, providers=["CPUExecutionProvider"])
        for i in range(len(inputs)):
            session.run(None, {name: inputs[i : i + 1]})
        quiet.append(time.perf_counter() - started)
        quiet_cpu.append(time.process_time() - cpu)
        del session
        started, cpu = time.perf_counter(), time.process_time()
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        for i in range(len(inputs)):
            session.run(None, {name: inputs[i : i + 1]})
        bare.append(time.perf_counter() - started)
        bare_cpu.append(time.process_time() - cpu)
        del session
        started, cpu = time.perf_counter(), time.process_time()
        _, stats = calibrate(
            loaded.proto, tensors, dataset.batches(32), model_hash="m", data_fingerprint=dataset.fingerprint
        )
        ours.append(time.perf_counter() - started)
        ours_cpu.append(time.process_time() - cpu)
        details.append(stats)
    best = details[int(np.argmin(ours))]
    return {
        # the baseline is the faster bare pass: a shared machine slows spinning threads most
        "bare": min(min(bare), min(quiet)),
        "bare_spinning": min(bare),
        "bare_no_spin": min(quiet),
        "ours": min(ours),
        "bare_cpu": min(min(bare_cpu), min(quiet_cpu)),
        "ours_cpu": min(ours_cpu),
        "pass_wall": best.pass_wall_s,
        "fp32_pass": best.fp32_pass_s,
        "statistics": best.statistics_s,
        "step": best.step_samples,
        "workers": best.workers,
        "threads": best.threads_per_worker,
        "kernel": HISTOGRAM_KERNEL,
        "tensors": len(tensors),
    }


def warm_rerun(model: Path, calib: np.ndarray, evaluation: np.ndarray, workdir: Path) -> dict[str, Any]:
    """Cold gate (empty cache) and a rerun that changes only the budget, each a new pipeline."""
    from pytest_int8gate.gate import Budget
    from pytest_int8gate.pipeline import GatePipeline, GateSpec

    spec = GateSpec(
        model=model,
        calib_data={_input_name(model): calib},
        eval_data={_input_name(model): evaluation},
        budget=Budget.from_mapping({"cosine": 0.9}),
        cache_dir=workdir / "gate-cache",
        bisect=False,
    )
    cold = GatePipeline(spec)
    started = time.perf_counter()
    cold_verdict = cold.run()
    cold_s = time.perf_counter() - started
    warm = GatePipeline(replace(spec, budget=Budget.from_mapping({"cosine": 0.95, "sqnr_db": 10.0})))
    started = time.perf_counter()
    warm_verdict = warm.run()
    warm_s = time.perf_counter() - started
    return {
        "cold": cold_s,
        "warm": warm_s,
        "cold_timings": dict(cold_verdict.timings),
        "warm_timings": dict(warm_verdict.timings),
        "hits": warm_verdict.cache_hits,
    }


def simulated_eval(model: Path, calib: np.ndarray, evaluation: np.ndarray, rounds: int) -> dict[str, float]:
    """FP32 pass, simulated INT8 and the previous simulated modes over the same batches, interleaved; and how
    far simulated INT8's outputs are from the unoptimised Q/DQ model's (RMS, in units of the latter's own
    error against FP32), beside how far a one-ulp change of the input moves the unoptimised model."""
    import onnx

    from pytest_int8gate.backends.onnxruntime import OrtBackend, OrtRunner
    from pytest_int8gate.backends.simulated import SIMULATED_SESSION_CONFIG, fold_weight_dequantize
    from pytest_int8gate.calibrate import calibrate
    from pytest_int8gate.data import Dataset
    from pytest_int8gate.graph import load_model
    from pytest_int8gate.quantize import QuantPlan, activation_tensors, quantize_model

    loaded = load_model(model)
    image = loaded.info.inputs[0].name
    batches = list(Dataset.from_arrays({image: calib}).batches(32))
    table, _ = calibrate(
        loaded.proto, activation_tensors(loaded), batches, model_hash="m", data_fingerprint="d"
    )
    qdq = quantize_model(loaded, table, QuantPlan(calibrator="entropy")).proto
    backend = OrtBackend()
    folded, _ = fold_weight_dequantize(qdq)
    runners: dict[str, Any] = {
        "fp32": backend.fp32_runner(onnx.load(str(model))),
        "simulated": backend.int8_runner(qdq),
        "extended": OrtRunner(
            folded,
            precision="int8",
            optimize=False,
            optimization="extended",
            session_config=SIMULATED_SESSION_CONFIG,
        ),
        "unoptimised": OrtRunner(qdq, precision="int8", optimize=False),
    }
    feeds = list(Dataset.from_arrays({image: evaluation}).batches(32))
    times: dict[str, list[float]] = {engine: [] for engine in runners}
    for _ in range(rounds + 1):  # the first round warms up
        for engine, runner in runners.items():
            started = time.perf_counter()
            for batch in feeds:
                runner.run(batch)
            times[engine].append(time.perf_counter() - started)
    result = {engine: min(values[1:]) for engine, values in times.items()}
    squares = dict.fromkeys(("moved", "ulp", "error", "simulated_error"), 0.0)
    output = runners["fp32"].output_names[0]
    for batch in feeds:
        nudged = {image: np.nextafter(batch[image], np.float32(np.inf))}
        fp32, sim = runners["fp32"].run(batch)[output], runners["simulated"].run(batch)[output]
        plain = runners["unoptimised"].run(batch)[output].astype(np.float64)
        squares["moved"] += float(np.sum((sim - plain) ** 2))
        squares["ulp"] += float(np.sum((runners["unoptimised"].run(nudged)[output] - plain) ** 2))
        squares["error"] += float(np.sum((plain - fp32) ** 2))
        squares["simulated_error"] += float(np.sum((sim.astype(np.float64) - fp32) ** 2))
    error = squares.pop("error")
    for key, value in squares.items():
        result[key] = (value / error) ** 0.5 if error else 0.0
    return result


def _input_name(model: Path) -> str:
    """The first graph input that is not an initializer (the image input of the models measured here)."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    return next(i.name for i in graph.input if i.name not in weights)


def calibration(
    model: Path,
    label: str,
    calib: np.ndarray,
    data: Path,
    sizes: Sizes,
    workdir: Path,
    heading: str,
) -> tuple[list[str], list[Figure]]:
    """Calibration of ``model`` as a process and in the loop against the bare FP32 baselines (same run)."""
    figures: list[Figure] = []
    load_before = load_average()
    loop = in_loop(model, calib, sizes.rounds)
    table = [heading, "", "| measured | int8gate | bare FP32 | ratio |", "| --- | ---: | ---: | ---: |"]
    notes: list[str] = []
    if sizes.processes:
        # processes vary most on a shared machine: one round more than the loop, the fastest of each counts
        process = whole_process(model, data, workdir, sizes.rounds + 1)
        imports = import_costs(workdir, sizes.rounds)
        ratio = process["ours"] / process["bare"]
        figures.append(
            Figure(
                "1 calibration",
                f"int8gate calibrate process, {label}, {sizes.samples} samples",
                ratio,
                "bare FP32 process, the faster of spinning on/off (wall)",
                f"<= {CALIBRATION_PROCESS_TARGET}x",
                ratio <= CALIBRATION_PROCESS_TARGET,
            )
        )
        memory = process["ours_peak"] / process["bare_peak"]
        figures.append(
            Figure(
                "2 memory",
                f"calibration process peak RSS, {label}",
                memory,
                "bare FP32 process peak RSS",
                f"<= {MEMORY_TARGET}x",
                memory <= MEMORY_TARGET,
            )
        )
        table += [
            f"| whole process, wall s | {process['ours']:.2f} | {process['bare']:.2f} | {ratio:.2f} |",
            f"| whole process, CPU s | {process['ours_cpu']:.2f} | {process['bare_cpu']:.2f} | "
            f"{process['ours_cpu'] / process['bare_cpu']:.2f} |",
            f"| whole process, peak RSS MB | {process['ours_peak']:.0f} | {process['bare_peak']:.0f} | "
            f"{memory:.2f} |",
        ]
        startup = process["ours"] - process["ours_calibration"]
        notes.append(
            f"Process figures are the fastest of {process['ours_runs']:.0f} int8gate and "
            f"{process['bare_runs']:.0f} bare runs, interleaved (the slowest took "
            f"{process['ours_slowest']:.2f} s and {process['bare_slowest']:.2f} s). "
            f"The fastest calibrate process ({process['ours']:.2f} s): {startup:.2f} s before calibration "
            f"starts (imports, reading and checking the model), then {process['ours_calibration']:.2f} s "
            f"of calibration as it reports it (the pass {process['ours_pass']:.2f} s, which reads, checks "
            f"and fingerprints the data as it goes). Imports in fresh processes: "
            f"numpy + onnxruntime {imports['bare imports']:.2f} s (all the bare process imports), then onnx "
            f"{imports['onnx import']:.2f} s (its `ml_dtypes` dependency registers its types with numpy), "
            f"then int8gate's own modules {imports['own imports']:.2f} s."
        )
    loop_ratio = loop["ours"] / loop["bare"]
    figures.append(
        Figure(
            "1 calibration",
            f"calibration in the loop, {label}",
            loop_ratio,
            "bare session + FP32 pass, batch 1, the faster of spinning on/off (wall)",
            f"<= {CALIBRATION_LOOP_TARGET}x",
            loop_ratio <= CALIBRATION_LOOP_TARGET,
        )
    )
    table += [
        f"| in the loop, wall s | {loop['ours']:.2f} | {loop['bare']:.2f} | {loop_ratio:.2f} |",
        f"| in the loop, CPU s | {loop['ours_cpu']:.2f} | {loop['bare_cpu']:.2f} | "
        f"{loop['ours_cpu'] / loop['bare_cpu']:.2f} |",
        f"| in the loop, bare pass with ONNX Runtime's default (spinning) / spinning off, wall s | - | "
        f"{loop['bare_spinning']:.2f} / {loop['bare_no_spin']:.2f} | - |",
    ]
    notes.insert(
        0,
        f"In the loop, int8gate's {loop['ours']:.2f} s: the pass with statistics {loop['pass_wall']:.2f} s "
        f"({loop['workers']} inference(s) side by side of {loop['threads'] or 'auto'} thread(s) each, "
        f"summed over them: inside ONNX Runtime {loop['fp32_pass']:.2f} s, statistics "
        f"{loop['statistics']:.2f} s with the {loop['kernel']} histogram kernel; steps of {loop['step']} "
        f"sample(s), {loop['tensors']} tensors), the rest session build and the four calibrators.",
    )
    notes.append(f"Load average (1 min) before / after this section: {load_before} / {load_average()}.")
    return [*table, "", *(" ".join(notes),), ""], figures


def compile_package() -> bool:
    """Byte-compile int8gate's modules (what ``pip install`` does) when Python would not write the bytecode
    itself; True when it did."""
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return False
    return bool(compileall.compile_dir(str(ROOT / "pytest_int8gate"), quiet=1))


def measure(sizes: Sizes, workdir: Path, model: Path | None = None) -> tuple[list[str], list[Figure]]:
    """Every figure on the ResNet-style network, or on ``model`` (an ONNX file with one image input
    ``[N, 3, H, W]``, fed generated images of ``sizes.size`` px; its width is not varied)."""
    figures: list[Figure] = []
    given = model is not None
    if model is None:
        model = resnet_style(workdir / "resnet.onnx", size=sizes.size, widths=sizes.widths)
        label = f"ResNet-style {sizes.size} px"
        described = f"ResNet-style, {sizes.size} px input, stage widths {'/'.join(map(str, sizes.widths))}"
    else:
        label = f"{model.name} {sizes.size} px"
        described = f"{model} (not in this repository), generated {sizes.size} px images"
        sizes = replace(sizes, width_scales=())
    calib = image_inputs(sizes.samples, sizes.size)
    evaluation = image_inputs(sizes.eval_samples, sizes.size, seed=2)
    data = workdir / "calib.npy"
    np.save(data, calib)
    lines = [
        f"Model: {described}, {sizes.samples} calibration samples, {sizes.eval_samples} evaluation "
        "samples, batch 32 (calibration steps sized by activation memory).",
        "",
    ]
    if sizes.processes and compile_package():
        lines[-1:] = [
            "int8gate's modules were byte-compiled before the process figures, as `pip install` does for "
            "an installed package and as numpy, onnx and onnxruntime are: with `PYTHONDONTWRITEBYTECODE` "
            "set, as on this machine, a checkout would otherwise compile its source at every start "
            "(~0.045 s).",
            "",
        ]

    print("  speed: calibration", file=sys.stderr)
    heading = "### Calibration against a bare FP32 pass over the same data"
    section, found = calibration(model, label, calib, data, sizes, workdir, heading)
    lines += section
    figures += found
    if sizes.realistic_widths and not given:
        print("  speed: calibration, ResNet-18-shaped", file=sys.stderr)
        widths = sizes.realistic_widths
        realistic = resnet_style(workdir / "resnet18.onnx", size=sizes.size, widths=widths)
        heading = (
            f"### Calibration of a ResNet-18-shaped network (stage widths {'/'.join(map(str, widths))}, "
            f"{sizes.size} px, {sizes.samples} samples) against a bare FP32 pass over the same data"
        )
        section, found = calibration(
            realistic, f"ResNet-18-shaped {sizes.size} px", calib, data, sizes, workdir, heading
        )
        lines += section
        figures += found

    print("  speed: growth with samples and width", file=sys.stderr)
    growth = [
        "### How the cost grows",
        "",
        "| case | int8gate s | bare s | ratio (wall) | ratio (CPU) | peak RSS MB int8gate / bare |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for count in sizes.sample_counts:
        subset = workdir / f"calib_{count}.npy"
        np.save(subset, calib[:count])
        run = whole_process(model, subset, workdir, sizes.rounds)
        growth.append(
            f"| whole process, {count} samples | {run['ours']:.2f} | {run['bare']:.2f} | "
            f"{run['ours'] / run['bare']:.2f} | {run['ours_cpu'] / run['bare_cpu']:.2f} | "
            f"{run['ours_peak']:.0f} / {run['bare_peak']:.0f} |"
        )
    count = sizes.sample_counts[0] if sizes.sample_counts else sizes.samples
    for scale in sizes.width_scales:
        widths = tuple(max(4, int(w * scale)) for w in sizes.widths)
        scaled = resnet_style(workdir / f"resnet_{scale}.onnx", size=sizes.size, widths=widths)
        run = in_loop(scaled, calib[:count], sizes.rounds)
        growth.append(
            f"| in the loop, widths {'/'.join(map(str, widths))}, {count} samples | {run['ours']:.2f} | "
            f"{run['bare']:.2f} | {run['ours'] / run['bare']:.2f} | "
            f"{run['ours_cpu'] / run['bare_cpu']:.2f} | - |"
        )
    if sizes.sample_counts or sizes.width_scales:
        lines += [*growth, ""]

    print("  speed: warm rerun", file=sys.stderr)
    rerun = warm_rerun(model, calib, evaluation, workdir)
    warm_ratio = rerun["warm"] / rerun["cold"]
    figures.append(
        Figure(
            "4 warm re-run",
            f"rerun with only the budget changed, {label}",
            warm_ratio,
            "cold run (wall)",
            f"<= {WARM_TARGET}x",
            warm_ratio <= WARM_TARGET,
        )
    )
    lines += [
        "### A rerun that changes only the budget",
        "",
        "| run | wall s | stages (s) |",
        "| --- | ---: | --- |",
        f"| cold (empty cache) | {rerun['cold']:.2f} | {_stages(rerun['cold_timings'])} |",
        f"| budget changed | {rerun['warm']:.2f} | {_stages(rerun['warm_timings'])} |",
        "",
        f"Ratio {warm_ratio:.2f}; reused from the cache: {', '.join(rerun['hits']) or 'nothing'}.",
        "",
    ]

    print("  speed: simulated INT8", file=sys.stderr)
    from pytest_int8gate.backends.simulated import DIFFERENCE_TOLERANCE, ERROR_TOLERANCE

    evaluation_s = simulated_eval(model, calib, evaluation, sizes.rounds)
    sim_ratio = evaluation_s["simulated"] / evaluation_s["fp32"]
    old_ratio = evaluation_s["unoptimised"] / evaluation_s["fp32"]
    figures.append(
        Figure(
            "5 overhead",
            f"simulated INT8 evaluation, {label}",
            sim_ratio,
            "FP32 pass (wall)",
            f"<= {SIMULATED_TARGET}x",
            sim_ratio <= SIMULATED_TARGET,
        )
    )
    lines += [
        "### Simulated INT8 evaluation against the FP32 pass (same batches, best of the rounds)",
        "",
        "| engine | s | x FP32 pass |",
        "| --- | ---: | ---: |",
        f"| FP32 (all graph optimisations) | {evaluation_s['fp32']:.2f} | 1.00 |",
        f"| simulated INT8 (weights folded, all optimisations, Q/DQ transformers off) | "
        f"{evaluation_s['simulated']:.2f} | {sim_ratio:.2f} |",
        f"| simulated INT8 before (weights folded, extended optimisations, Q/DQ transformers off) | "
        f"{evaluation_s['extended']:.2f} | {evaluation_s['extended'] / evaluation_s['fp32']:.2f} |",
        f"| simulated INT8, every optimisation off | {evaluation_s['unoptimised']:.2f} | {old_ratio:.2f} |",
        "",
        "Simulated INT8 now runs the FP32 engine's kernels (NCHWc convolutions), which sum in another order "
        "than the unoptimised Q/DQ model (bit-identical to the engine before); a last-bit difference can "
        "move a QuantizeLinear to the neighbouring step. On the first output, RMS over the evaluation "
        "samples, in units of the unoptimised model's own INT8 error against FP32: simulated INT8 differs "
        "from it by "
        f"{evaluation_s['moved']:.3f}, a one-ulp change of the input moves it by {evaluation_s['ulp']:.3f} "
        f"(float-rounding noise), and simulated INT8's own error is {evaluation_s['simulated_error']:.3f} "
        f"(tolerance, tests/test_simulated.py: at most {DIFFERENCE_TOLERANCE} and 1 +- {ERROR_TOLERANCE}).",
        "",
    ]
    return lines, figures


def _stages(timings: dict[str, float]) -> str:
    return ", ".join(f"{name.removesuffix('_s')} {seconds:.2f}" for name, seconds in timings.items())


def summary(figures: Sequence[Figure]) -> list[str]:
    lines = ["| figure | ratio | against (same run) | target | met |", "| --- | ---: | --- | --- | --- |"]
    for f in figures:
        met = "met" if f.met else "**not met**"
        lines.append(f"| {f.what} | {f.ratio:.2f} | {f.baseline} | {f.target} | {met} |")
    return [*lines, ""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--model", type=Path, help="measure this ONNX model (one [N, 3, H, W] image input) instead"
    )
    parser.add_argument("--size", type=int, help="image size in px of the generated inputs")
    parser.add_argument("--samples", type=int, help="calibration samples (evaluation: half of them)")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.size:
        sizes = replace(sizes, size=args.size)
    if args.samples:
        counts = (*(c for c in sizes.sample_counts if c < args.samples), args.samples)
        sizes = replace(sizes, samples=args.samples, eval_samples=args.samples // 2, sample_counts=counts)
    load_start = load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="int8gate_speed_") as tmp:
        lines, figures = measure(sizes, Path(tmp), args.model)
    command = " ".join(["python benchmarks/bench_speed.py", *(argv if argv is not None else sys.argv[1:])])
    text = [
        "# Speed where users wait",
        "",
        *environment_lines(),
        f"- command: `{command}` ({time.perf_counter() - started:.0f} s)",
        f"- load average (1 min) at start / end: {load_start} / {load_average()}",
        "",
        *summary(figures),
        *lines,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text).rstrip() + "\n")
    print("\n".join(summary(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
