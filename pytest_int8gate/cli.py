"""The ``int8gate`` command line: calibrate, quantize and gate a model outside pytest.

Each subcommand is a thin shell over the library stages (graph, data, calibrate, quantize, pipeline);
any :class:`Int8GateError` becomes one ``int8gate: error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from . import __version__
from .calibrate import CALIBRATORS as TABLE_CALIBRATORS
from .calibrate import (
    HISTOGRAM_KERNEL,
    CalibrationTable,
    CalibratorSettings,
    calibrate,
    trt_version_number,
)
from .choices import EQUALIZATION_RULES, FP32_TOLERANCE, SMOOTHQUANT_ALPHAS
from .data import InputLayout, batch_size_for, load_dataset, read_once, resolve_layout
from .errors import Int8GateError, bounded_text
from .graph import ModelInfo, load_model
from .placement import with_placement
from .quantize import QuantPlan, activation_tensors, quantize_model
from .settings import BY_NAME, Setting, SettingError, from_text, name_of, parse_items, spec_value, surface

if TYPE_CHECKING:
    from .pipeline import GateSpec

PROG = "int8gate"
#: How many tensors' amax ``calibrate`` prints (the table file has them all).
AMAX_PREVIEW = 8

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
#: Set to show the traceback of an internal error instead of its one line.
TRACEBACK_VARIABLE = "INT8GATE_TRACEBACK"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else (EXIT_PASS if exc.code is None else EXIT_ERROR)
    command: Callable[[argparse.Namespace], int] = args.run
    try:
        code = command(args)
        sys.stdout.flush()  # a reader that went away shows here, in the handler below, not at exit
        return code
    except Int8GateError as exc:
        print(f"{PROG}: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # whoever read the output went away (`| head`): stop quietly, as a command ended by SIGPIPE; Python
        # would otherwise report the same error again when it flushes stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:  # a defect, not the user's input: still one line, and an error
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        print(
            f"{PROG}: internal error: {type(exc).__name__}: {bounded_text(str(exc))} (a bug in {PROG}; "
            f"{TRACEBACK_VARIABLE}=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Calibrate, quantize (explicit Q/DQ, TensorRT's INT8 scheme) and gate ONNX models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    calib = commands.add_parser(
        "calibrate",
        help="one FP32 pass -> a calibration table (amax of every calibrator for every activation)",
        description="Run the model once in FP32 over the calibration data and write the calibration table "
        "(JSON; optionally also TensorRT's text calibration cache).",
    )
    calib.add_argument("model", metavar="MODEL", help="the FP32 ONNX model")
    calib.add_argument(
        "--data", required=True, metavar="CALIB", help=".npz, .npy, a folder of them, or module:function"
    )
    calib.add_argument(
        "--method",
        default="entropy",
        choices=TABLE_CALIBRATORS,
        help="calibrator shown in the summary and written to --trt-cache (default: entropy)",
    )
    add_settings(calib, "percentile")
    calib.add_argument("--out", required=True, metavar="TABLE.json", help="where to write the table")
    calib.add_argument("--trt-cache", metavar="FILE", help="also write TensorRT's text calibration cache")
    calib.add_argument(
        "--trt-version", default="10.13", help="TensorRT version in the cache header (default: 10.13)"
    )
    add_settings(calib, "placement")  # which activations the table measures
    add_settings(calib, *_INPUT_OPTIONS)
    _add_run_options(calib)
    calib.set_defaults(run=run_calibrate)

    quant = commands.add_parser(
        "quantize",
        help="calibration table + plan -> Q/DQ ONNX model",
        description="Insert Q/DQ pairs (activations per tensor, weights per output channel) using a "
        "calibration table made for this model.",
    )
    quant.add_argument("model", metavar="MODEL", help="the FP32 ONNX model the table was made for")
    quant.add_argument("--table", required=True, metavar="TABLE.json", help="from `int8gate calibrate`")
    _add_plan_options(quant)
    quant.add_argument(
        "--allow-stale", action="store_true", help="accept a table made for a different model file"
    )
    quant.add_argument("--out", required=True, metavar="MODEL.int8.onnx", help="where to write the model")
    quant.set_defaults(run=run_quantize)

    check = commands.add_parser(
        "check",
        help="calibrate, quantize, evaluate against a budget; bisect on failure (exit 0 pass, 1 fail)",
        description="Gate one model: FP32 vs INT8 on the evaluation data, judged against the budget. "
        "On failure the offending layers are found and a fix is verified.",
    )
    check.add_argument("model", metavar="MODEL", help="the FP32 ONNX model")
    add_settings(
        check, *(s.name for s in surface("cli") if s.name not in _RUN_OPTIONS), required=("calib_data",)
    )
    check.add_argument("--json", type=Path, metavar="OUT", help="also write the verdict as JSON")
    check.add_argument("-v", "--verbose", action="store_true", help="print progress on stderr")
    _add_run_options(check)
    check.set_defaults(run=run_check)

    eq = commands.add_parser(
        "equalize",
        help="cross-layer equalization: a rewritten FP32 model with the same function, easier to quantize",
        description="Rescale producer -> consumer layer pairs (Nagel et al. 2019) so that their channels "
        "have balanced ranges; prints each pair and each refusal, and with --data the largest FP32 output "
        "difference from the original.",
    )
    eq.add_argument("model", metavar="MODEL", help="the FP32 ONNX model")
    eq.add_argument("--out", required=True, metavar="MODEL.eq.onnx", help="where to write the new model")
    eq.add_argument(
        "--layers", nargs="+", metavar="NODE", help="consumer layers to equalize (default: every pair)"
    )
    eq.add_argument(
        "--rule",
        default="weights",
        choices=EQUALIZATION_RULES,
        help="weights: the paper's data-free rule (default); activations: input ranges measured on --data",
    )
    eq.add_argument("--data", metavar="CALIB", help="data to check that the FP32 outputs are unchanged")
    add_settings(eq, *_INPUT_OPTIONS)
    _add_run_options(eq)
    eq.set_defaults(run=run_equalize)

    sq = commands.add_parser(
        "smoothquant",
        help="SmoothQuant: a rewritten FP32 model whose MatMul/Gemm input outliers move into the weights",
        description="Migrate per-channel activation outliers of MatMul/Gemm layers into their weights "
        "(Xiao et al. 2023), folding 1/s into the producing LayerNorm or MatMul where possible, else "
        "inserting a Mul. Without --alpha, each alpha of a small grid is quantized and evaluated as the "
        "gate evaluates (FP32 vs INT8 on --eval-data, else --data) and the best is written.",
    )
    sq.add_argument("model", metavar="MODEL", help="the FP32 ONNX model")
    sq.add_argument(
        "--data", required=True, metavar="CALIB", help="calibration data (measures the activations)"
    )
    sq.add_argument("--eval-data", metavar="EVAL", help="data the alphas are judged on (default: --data)")
    sq.add_argument("--out", required=True, metavar="MODEL.sq.onnx", help="where to write the new model")
    sq.add_argument(
        "--layers",
        nargs="+",
        metavar="NODE",
        help="MatMul/Gemm layers to smooth (default: every one that can be)",
    )
    sq.add_argument(
        "--alpha",
        type=_alpha,
        metavar="A",
        help="migration strength in (0, 1) (default: the best of "
        f"{', '.join(f'{a:g}' for a in SMOOTHQUANT_ALPHAS)})",
    )
    add_settings(sq, "calibrator", "placement", "budget", *_INPUT_OPTIONS)
    _add_run_options(sq)
    sq.set_defaults(run=run_smoothquant)
    return parser


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text!r}")
    return value


#: Settings every subcommand that runs the model takes.
_RUN_OPTIONS = ("batch_size", "threads")
#: How data meets the model's inputs: every subcommand that reads data takes them.
_INPUT_OPTIONS = ("constants", "sample_axes")


def _add_plan_options(parser: argparse.ArgumentParser) -> None:
    add_settings(parser, "calibrator", "placement", "exclude", "overrides")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    add_settings(parser, *_RUN_OPTIONS)


def add_settings(parser: argparse.ArgumentParser, *names: str, required: Sequence[str] = ()) -> None:
    """The flags of these settings, as the settings table spells and checks them (dest: the name)."""
    for name in names:
        setting = BY_NAME[name]
        kwargs: dict[str, Any] = {"dest": setting.name, "help": setting.help_text}
        if setting.kind == "flag":
            kwargs.update(action="store_false" if setting.default is True else "store_true")
        elif setting.kind == "layers_or_all":  # the flag alone: every layer
            kwargs.update(nargs="*", metavar=setting.metavar)
        elif setting.repeatable or setting.kind == "layer_calibrators":
            kwargs.update(action="extend", nargs="+", metavar=setting.metavar, choices=setting.text_choices)
        elif setting.kind == "choice":
            kwargs.update(default=setting.default, choices=setting.choices, metavar=setting.metavar)
        else:
            kwargs.update(default=setting.default, type=_setting_type(setting), metavar=setting.metavar)
        if name in required:
            kwargs["required"] = True
        parser.add_argument(name_of(setting.cli), **kwargs)


def _setting_type(setting: Setting) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return from_text(setting, text)
        except SettingError as exc:
            problem = str(exc)
            raise argparse.ArgumentTypeError(
                f"{problem}, got {text!r}" if problem.startswith("must") else f"{text!r} {problem}"
            ) from None

    convert.__name__ = setting.kind  # argparse names the type in some messages
    return convert


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``["/conv2/Conv=percentile"]`` -> ``{"/conv2/Conv": "percentile"}`` (node names may hold '=')."""
    overrides: dict[str, str] = {}
    for item in items:
        node, sep, method = item.rpartition("=")
        if not sep or not node or not method:
            raise Int8GateError(f"--override {item!r} is not NODE=CALIBRATOR (e.g. /conv2/Conv=percentile).")
        overrides[node] = method
    return overrides


def parse_cli_items(setting: Setting, items: Sequence[str]) -> dict[str, Any]:
    """``NAME=VALUE`` items of --const / --sample-axis; a bad one is one error line naming the flag."""
    try:
        return parse_items(setting, items)
    except SettingError as exc:
        raise Int8GateError(f"{name_of(setting.cli)}: {exc}.") from None


def _layout(args: argparse.Namespace, model: ModelInfo) -> InputLayout:
    """The constant inputs and sample axes a subcommand was given, checked against ``model``."""
    return resolve_layout(
        model,
        parse_cli_items(BY_NAME["constants"], args.constants or ()),
        parse_cli_items(BY_NAME["sample_axes"], args.sample_axes or ()),
    )


# ---- calibrate ------------------------------------------------------------------------------------
def run_calibrate(args: argparse.Namespace) -> int:
    settings = CalibratorSettings(percentile=args.percentile)
    trt_version_number(args.trt_version)  # a bad version fails before the FP32 pass, not after
    loaded = load_model(args.model)
    # A console script's sys.path does not hold the working directory; module:function data lives there.
    layout = _layout(args, loaded.info)
    # one pass over the data: it is checked and fingerprinted as the calibration pass reads it
    data = read_once(args.data, loaded.info, role="calibration", search_path=Path.cwd(), layout=layout)
    tensors = activation_tensors(loaded, args.placement)
    batch_size = batch_size_for(loaded.info, args.batch_size, layout)

    started = time.perf_counter()
    table, stats = calibrate(
        loaded.proto,
        tensors,
        data.batches(batch_size),
        model_hash=loaded.info.model_hash,
        data_fingerprint="",
        settings=settings,
        threads=args.threads,
    )
    table = replace(table, data_fingerprint=data.dataset.fingerprint)
    total_s = time.perf_counter() - started
    other_s = max(total_s - stats.pass_wall_s, 0.0)

    # written before anything is printed: output piped into `head` must not cost the table
    try:
        table.save(args.out)
    except OSError as exc:
        raise Int8GateError(f"{args.out}: cannot write the calibration table ({exc}).") from exc
    cache = table.to_trt_cache(args.method, args.trt_version) if args.trt_cache else None
    if cache is not None:
        _write(args.trt_cache, cache, what="TensorRT calibration cache")
    print(
        f"calibrated {len(tensors)} activation tensor(s) of {Path(args.model).name} on "
        f"{stats.num_samples} samples (batch {batch_size})"
    )
    steps = f"; steps of {stats.step_samples} sample(s)" if stats.step_samples else ""
    if stats.workers > 1:
        side_by_side = (
            f", summed over {stats.workers} inferences side by side"
            f" of {stats.threads_per_worker} thread(s) each"
        )
        kernel = f"summed over the same; {HISTOGRAM_KERNEL} histograms"
    else:
        side_by_side, kernel = "", f"{HISTOGRAM_KERNEL} histograms"
    print(f"  fp32 pass     {stats.fp32_pass_s:8.3f} s  (time inside ONNX Runtime{side_by_side}{steps})")
    print(f"  statistics    {stats.statistics_s:8.3f} s  ({kernel})")
    print(f"  pass in all   {stats.pass_wall_s:8.3f} s  (reading, checking, fingerprinting the data)")
    print(f"  other         {other_s:8.3f} s  (session build, calibrators)")
    print(f"  total         {total_s:8.3f} s")
    if table.amax:
        shown = list(table.amax)[:AMAX_PREVIEW]
        width = max(len(name) for name in shown)
        more = f" (first {len(shown)} of {len(table.amax)})" if len(table.amax) > len(shown) else ""
        print(f"{args.method} amax{more}:")
        for name in shown:
            print(f"  {name:<{width}}  {table.amax[name][args.method]:.6g}")
    for name, reason in table.skipped.items():
        print(f"skipped {name}: {reason}")

    print(f"wrote {args.out}")
    if cache is not None:
        print(f"wrote {args.trt_cache} ({cache.splitlines()[0]}, {args.method} scales)")
    return EXIT_PASS


# ---- quantize -------------------------------------------------------------------------------------
def run_quantize(args: argparse.Namespace) -> int:
    loaded = load_model(args.model)
    table = CalibrationTable.load(args.table, model_hash=loaded.info.model_hash, allow_stale=args.allow_stale)
    if table.model_hash != loaded.info.model_hash:
        print(
            f"{PROG}: warning: {args.table} was made for another model ({table.model_hash[:12]}, this "
            f"model {loaded.info.model_hash[:12]}); using it because of --allow-stale",
            file=sys.stderr,
        )
    plan = QuantPlan(
        calibrator=args.calibrator,
        exclude=frozenset(args.exclude or ()),
        overrides=parse_overrides(args.overrides or ()),
        placement=args.placement,
    )
    loaded = with_placement(loaded, plan.placement)
    plan.validate(loaded.info)
    quantized = quantize_model(loaded, table, plan)
    _save_model(quantized.proto, args.out)

    total = len(loaded.info.layers)
    overrides = "".join(f", {layer} with {method}" for layer, method in plan.overrides.items())
    print(
        f"quantized {len(quantized.quantized_layers)} of {total} layer(s) of {Path(args.model).name} "
        f"with the {plan.calibrator} calibrator{overrides}"
    )
    if quantized.skipped:
        print(f"kept in float ({len(quantized.skipped)}):")
        width = max(len(name) for name in quantized.skipped)
        for name, reason in quantized.skipped.items():
            print(f"  {name:<{width}}  {reason}")
    for name, note in quantized.notes.items():
        print(f"note: {name}: {note}")
    print(f"wrote {args.out}")
    return EXIT_PASS


def _save_model(model: onnx.ModelProto, path: str) -> None:
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(target))
    except (OSError, ValueError) as exc:
        raise Int8GateError(f"{target}: cannot write the quantized model ({exc}).") from exc


def _write(path: str, text: str, *, what: str) -> None:
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise Int8GateError(f"{target}: cannot write the {what} ({exc}).") from exc


# ---- equalize -------------------------------------------------------------------------------------
def run_equalize(args: argparse.Namespace) -> int:
    from .equalize import activation_channel_ranges, equalize, fp32_difference, select_pairs

    loaded = load_model(args.model)
    if args.rule == "activations" and not args.data:
        raise Int8GateError("--rule activations measures the activation ranges on --data; give it.")
    dataset = None
    layout = _layout(args, loaded.info)
    if args.data:
        dataset = load_dataset(
            args.data, loaded.info, role="calibration", search_path=Path.cwd(), layout=layout
        )
    batch_size = batch_size_for(loaded.info, args.batch_size, layout)
    pairs, refusals = select_pairs(loaded, args.layers)
    ranges = None
    if args.rule == "activations" and dataset is not None:
        ranges = activation_channel_ranges(
            loaded.proto, pairs, dataset.batches(batch_size), threads=args.threads
        )
    proto, report = equalize(loaded.proto, pairs, rule=args.rule, activation_ranges=ranges)
    weighted = sum(1 for layer in loaded.info.layers if layer.op_type != "Add")
    print(
        f"equalized {len(report.pairs)} of {weighted} weighted layer(s) of {Path(args.model).name} with "
        f"their producers ({args.rule} rule, {report.sweeps} sweep(s))"
    )
    for pair in report.pairs:
        print(
            f"  {pair.pair.describe()}: scales {min(pair.scales):.3g}..{max(pair.scales):.3g}; channel range "
            f"spread producer {pair.producer_spread[0]:.3g} -> {pair.producer_spread[1]:.3g}, consumer "
            f"{pair.consumer_spread[0]:.3g} -> {pair.consumer_spread[1]:.3g}"
        )
    for refusal in refusals:
        print(f"  refused {refusal.consumer}: {refusal.reason}")
    status = EXIT_PASS
    if dataset is not None:
        difference = fp32_difference(loaded.proto, proto, dataset.batches(batch_size), threads=args.threads)
        print(
            f"FP32 outputs on {difference.samples} samples of {args.data}: max abs difference "
            f"{difference.max_abs:.3g} from the original (largest output {difference.reference_max_abs:.3g})"
        )
        if difference.relative > FP32_TOLERANCE:
            print(f"{PROG}: the rewritten model is not function-preserving on this data", file=sys.stderr)
            status = EXIT_FAIL
    data = proto.SerializeToString(deterministic=True)
    try:
        target = Path(args.out)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    except OSError as exc:
        raise Int8GateError(f"{args.out}: cannot write the equalized model ({exc}).") from exc
    print(f"wrote {args.out} (sha256 {hashlib.sha256(data).hexdigest()})")
    return status


# ---- smoothquant ----------------------------------------------------------------------------------
def run_smoothquant(args: argparse.Namespace) -> int:
    from .gate import Budget
    from .pipeline import GatePipeline, GateSpec
    from .smoothquant import select_targets

    spec = GateSpec(
        model=Path(args.model),
        calib_data=args.data,
        eval_data=args.eval_data,
        calibrator=args.calibrator,
        placement=args.placement,
        budget=Budget.parse(args.budget or [], source=name_of(BY_NAME["budget"].cli)),
        constants=parse_cli_items(BY_NAME["constants"], args.constants or ()),
        sample_axes=parse_cli_items(BY_NAME["sample_axes"], args.sample_axes or ()),
        batch_size=args.batch_size,
        threads=args.threads,
        data_search_path=Path.cwd(),
        bisect=False,
    )
    with GatePipeline(spec) as pipeline:
        targets, refusals = select_targets(pipeline.model, args.layers)
        name = Path(args.model).name
        for refusal in refusals:
            print(f"  refused {refusal.layer}: {refusal.reason}")
        if not targets:
            raise Int8GateError(f"{args.model}: no MatMul or Gemm layer that SmoothQuant can apply to.")
        layers = [t.layer for t in targets]
        alphas = (args.alpha,) if args.alpha is not None else SMOOTHQUANT_ALPHAS
        base = replace(pipeline.plan, smoothquant={})
        print(f"INT8 ({spec.calibrator}) of {name} on {pipeline.eval_data.num_samples} samples:")
        best: tuple[tuple[int, float], QuantPlan] | None = None
        for alpha in (None, *alphas):
            plan = base if alpha is None else replace(base, smoothquant={layer: alpha for layer in layers})
            results = pipeline.evaluator.judge(pipeline.evaluate(plan))
            passed = sum(r.passed for r in results)
            sqnr = pipeline.evaluator.compare(plan).primary.int8.get("sqnr_db", 0.0)
            label = "without SmoothQuant" if alpha is None else f"alpha {alpha:g}"
            metrics = ", ".join(f"{r.key} {r.observed:.4g} {'PASS' if r.passed else 'FAIL'}" for r in results)
            print(f"  {label:<20} {metrics}; sqnr {sqnr:.1f} dB")
            if alpha is not None and (best is None or (passed, sqnr) > best[0]):
                best = ((passed, sqnr), plan)
        assert best is not None
        chosen = pipeline.smoothed(best[1])
        print(f"smoothed {len(chosen.report.layers)} layer(s) of {name}:")
        for layer in chosen.report.layers:
            print(f"  {layer.describe()}")
        data = chosen.model.proto.SerializeToString(deterministic=True)
    try:
        target = Path(args.out)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    except OSError as exc:
        raise Int8GateError(f"{args.out}: cannot write the smoothed model ({exc}).") from exc
    difference = chosen.fp32_difference
    print(
        f"FP32 outputs on {difference.samples} samples: max abs difference {difference.max_abs:.3g} from the "
        f"original (largest output {difference.reference_max_abs:.3g})"
    )
    print(f"wrote {args.out} (sha256 {hashlib.sha256(data).hexdigest()})")
    return EXIT_PASS


# ---- check ----------------------------------------------------------------------------------------
def check_spec(args: argparse.Namespace) -> GateSpec:
    """The gate spec ``int8gate check`` runs: every setting on the command line's surface."""
    # The gate's modules (pipeline, search, reports) are imported by the commands that run a gate only:
    # ``calibrate`` and ``quantize`` start faster without them.
    from .gate import Budget
    from .pipeline import GateSpec

    values: dict[str, Any] = {}
    for setting in surface("cli"):
        value = getattr(args, setting.name)
        if value is None:
            continue
        if setting.kind == "budget":
            value = Budget.parse(value, source=name_of(setting.cli))
        elif setting.kind == "layer_calibrators":
            value = parse_overrides(value)
        elif setting.kind == "layers_or_all" and not value:
            value = True  # --equalize without NODE: every pair
        elif setting.kind in ("constants", "axes", "layer_alphas"):
            value = parse_cli_items(setting, value)
        else:
            value = spec_value(setting, value)
        values[setting.name] = value
    return GateSpec(model=Path(args.model), data_search_path=Path.cwd(), **values)


def run_check(args: argparse.Namespace) -> int:
    from .pipeline import GatePipeline
    from .report import dumps, verdict_record, verdict_text

    spec = check_spec(args)

    def progress(stage: str, message: str) -> None:
        print(f"{PROG}: {stage}: {message}", file=sys.stderr)

    with GatePipeline(spec, progress=progress if args.verbose else None) as pipeline:
        verdict = pipeline.run()
    print(verdict_text(verdict))
    if args.json is not None:
        record = verdict_record(verdict, nodeid=f"{PROG} check {args.model}")
        _write(str(args.json), dumps(record), what="verdict JSON")  # the report's gate record
    return EXIT_PASS if verdict.passed else EXIT_FAIL


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.splitlines() if part.strip()) or "unknown error"


if __name__ == "__main__":
    sys.exit(main())
