"""Every setting of a gate and of a run, declared once: type, default, validation, help, and how each
surface spells it (``--int8-*`` option, ini key, ``int8gate.yaml`` key, ``int8gate check`` flag).

The pytest options and ini keys, the manifest's keys and the command line's flags are generated from
:data:`SETTINGS`; ``GateSpec`` is checked against it by the tests. Light (the standard library, the names
in ``choices`` and the budget keys): the pytest plugin imports this module in every pytest run, gating or not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .budget import valid_keys_text
from .choices import (
    BACKEND_NAMES,
    CALIBRATORS,
    DEFAULT_MIN_CALIB_SAMPLES,
    DEFAULT_PLACEMENT,
    DEFAULT_STRATEGY,
    ORT_MODES,
    PLACEMENTS,
    REPAIRS,
)
from .choices import STRATEGIES as BISECT_STRATEGIES
from .errors import bounded_repr

# ---- defaults several layers share (their one home; the names users choose among are choices.py's) ---

#: On the command line and in the ini file, "none" as the only rung: straight to float.
NO_REPAIR = "none"
DEFAULT_BATCH_SIZE = 32
DEFAULT_PERCENTILE = 99.99
#: Samples one data source may hold at most: a bound on memory and time (a loader that never ends stops).
DEFAULT_MAX_SAMPLES = 100_000
#: Seconds the bisection may take before it stops and reports the best plan found so far.
DEFAULT_BISECT_MAX_SECONDS = 1800.0
#: Seconds a ``module:function`` loader may take to yield one item before it is abandoned.
DEFAULT_DATA_TIMEOUT_S = 300.0
MANIFEST_NAME = "int8gate.yaml"

_LOADER_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_loader_spec(spec: str) -> bool:
    """True for ``package.module:function`` (and not an existing path)."""
    return bool(_LOADER_SPEC.match(spec)) and not Path(spec).exists()


# ---- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Absent:
    """A surface a setting is deliberately not on, and why."""

    reason: str


Spelling = str | Absent

#: What a setting's value is; decides parsing, validation and the type ``GateSpec`` receives.
Kind = Literal[
    "text",  # a string
    "path",  # a file or folder, relative to where it was written
    "paths",  # repeatable path
    "data",  # a path, or ``module:function`` returning the data
    "int",
    "float",
    "choice",  # one of ``choices``
    "flag",  # true/false
    "budget",  # metric limits: KEY=VALUE items, a mapping in the manifest
    "tolerances",  # KEY=VALUE items (the baseline comparison's)
    "layers",  # layer names
    "layer_calibrators",  # layer name -> calibrator
    "layers_or_all",  # layer names, or true for every layer that can be
    "repairs",  # rungs of the repair ladder
    "constants",  # model input name -> a number, a list of numbers or a .npy file, fed with every batch
    "axes",  # tensor name -> the axis that holds its samples
    "layer_alphas",  # layer name -> SmoothQuant migration strength in (0, 1)
]

#: Kinds a surface gives as a list (repeatable option, ini line list, YAML list, nargs on the command line).
LIST_KINDS = (
    "paths",
    "budget",
    "tolerances",
    "layers",
    "layers_or_all",
    "repairs",
    "constants",
    "axes",
    "layer_alphas",
)


class SettingError(ValueError):
    """A value breaks a setting's rule; the message is what is wrong ("must be at least 1")."""


@dataclass(frozen=True)
class Setting:
    """One setting: what it is, its default, its rule, and its spelling on each surface."""

    name: str  # the GateSpec field (scope "gate") or the run option's attribute (scope "run")
    kind: Kind
    default: object
    help: str
    option: Spelling  # pytest's --int8-* (its ini twin below)
    ini: Spelling
    manifest: Spelling
    cli: Spelling  # a flag of ``int8gate check``
    #: "gate": a field of GateSpec; "run": one per pytest run (reports, the manifest, the list of models).
    scope: Literal["gate", "run"] = "gate"
    choices: tuple[str, ...] = ()
    minimum: float | None = None  # int and float kinds: the smallest value allowed ...
    maximum: float | None = None  # ... and the largest (float kinds: the minimum is excluded)
    metavar: str | None = None
    #: How the default reads in help text, when not the value itself.
    default_text: str | None = None
    #: What a manifest value must be (the noun phrase after "must be"), when not derived from the kind.
    meaning: str | None = None
    #: GateSpec keeps this path as a string (paths are ``Path`` otherwise).
    path_as_str: bool = False
    #: A valid value different from the default, as the manifest writes it: the surface tests use it.
    example: object = None

    @property
    def describe(self) -> str:
        """What a valid value is, e.g. "a positive integer" or "one of binary, linear"."""
        if self.meaning is not None:
            return self.meaning
        if self.kind == "int":
            return "a positive integer" if self.minimum == 1 else f"an integer >= {self.minimum:g}"
        if self.kind == "float":
            return f"a number in ({self.minimum:g}, {self.maximum:g}]"
        if self.kind == "choice":
            return f"one of {', '.join(self.choices)}"
        return _KIND_MEANING[self.kind]

    @property
    def help_text(self) -> str:
        """The help line: what it does, the values it takes when they are a list of names, its default."""
        notes = [f"one of {', '.join(self.text_choices)}"] if self.text_choices else []
        if self.default_text is not None:
            notes.append(f"default: {self.default_text}")
        elif self.default in (None, False, (), frozenset(), {}):
            pass
        elif self.kind == "flag":
            notes.append("default: on")
        elif isinstance(self.default, tuple):
            notes.append(f"default: {', '.join(str(v) for v in self.default)}")
        elif isinstance(self.default, float):
            notes.append(f"default: {self.default:g}")
        else:
            notes.append(f"default: {self.default}")
        return f"{self.help} ({'; '.join(notes)})" if notes else self.help

    @property
    def repeatable(self) -> bool:
        return self.kind in LIST_KINDS

    @property
    def text_choices(self) -> tuple[str, ...] | None:
        """The values a command line or ini file may give (repairs also take "none")."""
        if self.kind == "choice":
            return self.choices
        if self.kind == "repairs":
            return (*REPAIRS, NO_REPAIR)
        return None


_KIND_MEANING: dict[str, str] = {
    "text": "a string",
    "path": "a path",
    "paths": "a list of paths",
    "data": "a path or module:function",
    "flag": "true or false",
    "budget": "a mapping of metric: limit",
    "tolerances": "a mapping of metric: tolerance",
    "layers": "a list of layer names (strings)",
    "layer_calibrators": "a mapping of layer name: calibrator",
    "layers_or_all": "true, false or a list of layer names (strings)",
    "repairs": f"a list of repairs from {', '.join(REPAIRS)}",
    "constants": "a mapping of input name: a number, a list of numbers or a .npy path",
    "axes": "a mapping of input or output name: sample axis (an integer >= 0)",
    "layer_alphas": "a mapping of layer name: SmoothQuant alpha in (0, 1)",
}

_PER_MODEL = "layer names belong to one model: set them per model in the manifest or int8_gate.check(...)"
_RUN_LEVEL = "one per pytest run, not per model"
_ONE_MODEL = "int8gate check gates one model and prints its verdict (--json writes it)"
_DERIVED = (
    "derived: the folder relative data names are read from (the ini file's, the manifest's, the "
    "working directory)"
)

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "models",
        "paths",
        (),
        "ONNX model to gate; one test item each",
        "--int8-model",
        "int8_models",
        Absent("each manifest entry names its model with 'model'"),
        Absent("the positional MODEL argument"),
        scope="run",
        metavar="PATH",
        example=["model.onnx"],
    ),
    Setting(
        "name",
        "text",
        None,
        "the gate's name in reports and node ids (default: the model's file stem)",
        Absent("a zero-code item is named after its model file"),
        Absent("a zero-code item is named after its model file"),
        "name",
        Absent("the verdict is named after the model file"),
        example="renamed",
    ),
    Setting(
        "model",
        "path",
        None,
        "the FP32 ONNX model",
        Absent("--int8-model names the models, one test item each"),
        Absent("int8_models names the models, one test item each"),
        "model",
        Absent("the positional MODEL argument"),
        example="model.onnx",
    ),
    Setting(
        "qdq_model",
        "path",
        None,
        "a Q/DQ model made elsewhere (ModelOpt, ONNX Runtime, a QAT export) to gate against the FP32 model "
        "as given: nothing is calibrated or quantized (a Q/DQ model given alone as the model is gated "
        "against the FP32 model derived from it)",
        "--int8-qdq-model",
        "int8_qdq_model",
        "qdq_model",
        "--qdq-model",
        metavar="PATH",
        example="model.qdq.onnx",
    ),
    Setting(
        "calib_data",
        "data",
        None,
        "calibration data: .npz/.npy/folder/module:function",
        "--int8-calib-data",
        "int8_calib_data",
        "calib_data",
        "--calib-data",
        metavar="PATH",
        path_as_str=True,
        example="calib.npz",
    ),
    Setting(
        "eval_data",
        "data",
        None,
        "evaluation data",
        "--int8-eval-data",
        "int8_eval_data",
        "eval_data",
        "--eval-data",
        metavar="PATH",
        default_text="the calibration data",
        path_as_str=True,
        example="eval.npz",
    ),
    Setting(
        "labels",
        "path",
        None,
        "labels .npy, one integer class per evaluation sample",
        "--int8-labels",
        "int8_labels",
        "labels",
        "--labels",
        metavar="PATH",
        path_as_str=True,
        example="labels.npy",
    ),
    Setting(
        "budget",
        "budget",
        {},
        f"budget, e.g. top1_drop=0.01; keys: {valid_keys_text()}",
        "--int8-budget",
        "int8_budget",
        "budget",
        "--budget",
        metavar="KEY=VALUE",
        default_text="by output kind, see Budgets; keys merge one by one across ini, command line, manifest, "
        "marker",
        example={"cosine": 0.9},
    ),
    Setting(
        "calibrator",
        "choice",
        "entropy",
        "activation calibrator",
        "--int8-calibrator",
        "int8_calibrator",
        "calibrator",
        "--calibrator",
        choices=CALIBRATORS,
        metavar="NAME",
        example="percentile",
    ),
    Setting(
        "placement",
        "choice",
        DEFAULT_PLACEMENT,
        "where Q/DQ pairs go: minimal (weighted layers' inputs) or tensorrt (TensorRT's fusion-aware "
        "placement, as NVIDIA ModelOpt places it); docs/placement.md",
        "--int8-placement",
        "int8_placement",
        "placement",
        "--placement",
        choices=PLACEMENTS,
        example="tensorrt",
    ),
    Setting(
        "percentile",
        "float",
        DEFAULT_PERCENTILE,
        "the percentile calibrator's percentile",
        "--int8-percentile",
        "int8_percentile",
        "percentile",
        "--percentile",
        minimum=0.0,
        maximum=100.0,
        metavar="P",
        example=99.9,
    ),
    Setting(
        "exclude",
        "layers",
        frozenset(),
        "layers (ONNX node names) to keep in float",
        Absent(_PER_MODEL),
        Absent(_PER_MODEL),
        "exclude",
        "--exclude",
        metavar="NODE",
        example=["/conv2/Conv"],
    ),
    Setting(
        "overrides",
        "layer_calibrators",
        {},
        "per-layer calibrator, e.g. /conv2/Conv=percentile",
        Absent(_PER_MODEL),
        Absent(_PER_MODEL),
        "calibrator_overrides",
        "--override",
        metavar="NODE=CALIB",
        example={"/conv2/Conv": "percentile"},
    ),
    Setting(
        "backend",
        "choice",
        "onnxruntime",
        "backend (auto: TensorRT when it and a GPU are present)",
        "--int8-backend",
        "int8_backend",
        "backend",
        "--backend",
        choices=BACKEND_NAMES,
        metavar="NAME",
        example="auto",
    ),
    Setting(
        "ort_mode",
        "choice",
        "simulated",
        "ONNX Runtime INT8: simulated Q/DQ in float (TensorRT's arithmetic) or fused int8 kernels",
        "--int8-ort-mode",
        "int8_ort_mode",
        "ort_mode",
        "--ort-mode",
        choices=ORT_MODES,
        metavar="MODE",
        example="fused",
    ),
    Setting(
        "output",
        "text",
        None,
        "the one model output to compare",
        "--int8-output",
        "int8_output",
        "output",
        "--output",
        metavar="NAME",
        default_text="every output",
        meaning="an output name",
        example="logits",
    ),
    Setting(
        "batch_size",
        "int",
        DEFAULT_BATCH_SIZE,
        "samples per inference at most (evaluation takes fewer when their activations would pass 512 MiB; "
        "a model's fixed batch axis wins)",
        "--int8-batch-size",
        "int8_batch_size",
        "batch_size",
        "--batch-size",
        minimum=1,
        metavar="N",
        example=16,
    ),
    Setting(
        "max_samples",
        "int",
        DEFAULT_MAX_SAMPLES,
        "samples one data source may hold at most (a loader that never ends stops there)",
        "--int8-max-samples",
        "int8_max_samples",
        "max_samples",
        "--max-samples",
        minimum=1,
        metavar="N",
        example=5000,
    ),
    Setting(
        "data_timeout",
        "float",
        DEFAULT_DATA_TIMEOUT_S,
        "seconds a module:function loader may take to yield one item before it is abandoned",
        "--int8-data-timeout",
        "int8_data_timeout",
        "data_timeout",
        "--data-timeout",
        minimum=0.0,
        maximum=86_400.0,
        metavar="SECONDS",
        example=60.0,
    ),
    Setting(
        "constants",
        "constants",
        {},
        "an input fed the same value with every batch (a 0-d sample rate, a start state), as NAME=NUMBER or "
        "NAME=FILE.npy; the data then leaves it out",
        "--int8-const",
        "int8_const",
        "const",
        "--const",
        metavar="NAME=VALUE",
        example={"sr": 16000},
    ),
    Setting(
        "sample_axes",
        "axes",
        {},
        "the axis that holds an input's or output's samples when it is not 0, as NAME=AXIS (a recurrent "
        "state [2, N, 128]: state=1); data gives that input with its samples there",
        "--int8-sample-axis",
        "int8_sample_axis",
        "sample_axis",
        "--sample-axis",
        metavar="NAME=AXIS",
        example={"state": 1},
    ),
    Setting(
        "threads",
        "int",
        0,
        "ONNX Runtime intra-op threads (0: its choice); the calibration pass spreads them over up to 4 "
        "inferences side by side (0: over the usable CPUs)",
        Absent("under pytest ONNX Runtime picks its thread count; parallel gates come from pytest-xdist"),
        Absent("under pytest ONNX Runtime picks its thread count; parallel gates come from pytest-xdist"),
        Absent("a tuning knob of the machine running the gate, not of the model"),
        "--threads",
        minimum=0,
        metavar="N",
        example=2,
    ),
    Setting(
        "cache_dir",
        "path",
        None,
        "cache of calibration tables, Q/DQ models and engines",
        "--int8-cache-dir",
        "int8_cache_dir",
        Absent("one cache per pytest run"),
        "--cache-dir",
        metavar="PATH",
        default_text="pytest: .pytest_cache/d/int8gate; int8gate check: none",
        example="cache",
    ),
    Setting(
        "data_search_path",
        "path",
        None,
        "where module:function data is imported from",
        Absent(_DERIVED),
        Absent(_DERIVED),
        Absent(_DERIVED),
        Absent(_DERIVED),
        example="data",
    ),
    Setting(
        "bisect",
        "flag",
        True,
        "find the offending layers when a gate fails",
        "--int8-bisect",
        "int8_bisect",
        "bisect",
        "--no-bisect",
        example=False,
    ),
    Setting(
        "bisect_strategy",
        "choice",
        DEFAULT_STRATEGY,
        "culprit search (adaptive: by layer sensitivity; binary: prefix bisection; linear: the seed method)",
        "--int8-bisect-strategy",
        "int8_bisect_strategy",
        "bisect_strategy",
        "--bisect-strategy",
        choices=BISECT_STRATEGIES,
        metavar="NAME",
        example="linear",
    ),
    Setting(
        "bisect_subset",
        "int",
        200,
        "evaluation samples the culprit search uses",
        "--int8-bisect-subset",
        "int8_bisect_subset",
        "bisect_subset",
        "--bisect-subset",
        minimum=1,
        metavar="N",
        example=64,
    ),
    Setting(
        "bisect_max_evaluations",
        "int",
        200,
        "cap on INT8 evaluations during bisection",
        "--int8-bisect-max-evals",
        "int8_bisect_max_evals",
        "bisect_max_evaluations",
        "--bisect-max-evals",
        minimum=1,
        metavar="N",
        example=9,
    ),
    Setting(
        "bisect_max_seconds",
        "float",
        DEFAULT_BISECT_MAX_SECONDS,
        "wall-time budget of the bisection (seconds); the best plan so far is reported when it runs out",
        "--int8-bisect-max-seconds",
        "int8_bisect_max_seconds",
        "bisect_max_seconds",
        "--bisect-max-seconds",
        minimum=0.0,
        maximum=7 * 86_400.0,
        metavar="SECONDS",
        example=120.0,
    ),
    Setting(
        "equalize",
        "layers_or_all",
        frozenset(),
        "layers equalized with their producers before calibration (true / no NODE: every pair)",
        Absent(_PER_MODEL),
        Absent(_PER_MODEL),
        "equalize",
        "--equalize",
        metavar="NODE",
        example=["/conv2/Conv"],
    ),
    Setting(
        "bias_correction",
        "layers",
        frozenset(),
        "layers whose bias is corrected after quantization",
        Absent(_PER_MODEL),
        Absent(_PER_MODEL),
        "bias_correction",
        "--bias-correction",
        metavar="NODE",
        example=["/fc2/Gemm"],
    ),
    Setting(
        "smoothquant",
        "layer_alphas",
        {},
        "MatMul/Gemm layers smoothed (SmoothQuant) before calibration, with the migration strength alpha",
        Absent(_PER_MODEL),
        Absent(_PER_MODEL),
        "smoothquant",
        "--smoothquant",
        metavar="NODE=ALPHA",
        example={"/fc1/Gemm": 0.5},
    ),
    Setting(
        "repairs",
        "repairs",
        REPAIRS,
        f"a repair the bisection tries on an offender before keeping it in float ({NO_REPAIR}: straight "
        "to float)",
        "--int8-repair",
        "int8_repair",
        "repairs",
        "--repair",
        metavar="RUNG",
        example=["calibrator", "bias_correction"],
    ),
    Setting(
        "fp32_reference",
        "path",
        None,
        "FP32 reference outputs the FP32 engine must match (.npz: output name -> [samples, ...])",
        "--int8-fp32-reference",
        "int8_fp32_reference",
        "fp32_reference",
        "--fp32-reference",
        metavar="PATH",
        meaning="a path to a .npz of FP32 reference outputs",
        path_as_str=True,
        example="reference.npz",
    ),
    Setting(
        "min_calib_samples",
        "int",
        DEFAULT_MIN_CALIB_SAMPLES,
        "warn below this many calibration samples (0: no check)",
        "--int8-min-calib-samples",
        "int8_min_calib_samples",
        "min_calib_samples",
        "--min-calib-samples",
        minimum=0,
        metavar="N",
        example=100,
    ),
    Setting(
        "strict_ci",
        "flag",
        False,
        "pass an accuracy budget only when its whole 95 percent confidence interval is within the limit",
        "--int8-strict-ci",
        "int8_strict_ci",
        "strict_ci",
        "--strict-ci",
        example=True,
    ),
    Setting(
        "check_determinism",
        "flag",
        False,
        "run the INT8 engine twice on a subset and report whether it is bit-exact",
        "--int8-check-determinism",
        "int8_check_determinism",
        "check_determinism",
        "--check-determinism",
        example=True,
    ),
    Setting(
        "report_json",
        "path",
        None,
        "write a JSON report of every gate in the run",
        "--int8-report-json",
        "int8_report_json",
        Absent(_RUN_LEVEL),
        Absent(_ONE_MODEL),
        scope="run",
        metavar="PATH",
        example="report.json",
    ),
    Setting(
        "report_md",
        "path",
        None,
        "write a Markdown report (also to $GITHUB_STEP_SUMMARY)",
        "--int8-report-md",
        "int8_report_md",
        Absent(_RUN_LEVEL),
        Absent(_ONE_MODEL),
        scope="run",
        metavar="PATH",
        example="report.md",
    ),
    Setting(
        "report_html",
        "path",
        None,
        "write a self-contained HTML report",
        "--int8-report-html",
        "int8_report_html",
        Absent(_RUN_LEVEL),
        Absent(_ONE_MODEL),
        scope="run",
        metavar="PATH",
        example="report.html",
    ),
    Setting(
        "baseline",
        "path",
        None,
        "compare each gate's metrics with this stored JSON report",
        "--int8-baseline",
        "int8_baseline",
        Absent(_RUN_LEVEL),
        Absent(_ONE_MODEL),
        scope="run",
        metavar="PATH",
        example="baseline.json",
    ),
    Setting(
        "baseline_tolerance",
        "tolerances",
        {},
        "fail the run when a metric gets worse than the baseline by more, e.g. top1_drop=0.005",
        "--int8-baseline-tolerance",
        "int8_baseline_tolerance",
        Absent(_RUN_LEVEL),
        Absent(_ONE_MODEL),
        scope="run",
        metavar="KEY=VALUE",
        example={"top1_drop": 0.005},
    ),
    Setting(
        "manifest",
        "path",
        None,
        "YAML manifest of models to gate",
        "--int8-manifest",
        "int8_manifest",
        Absent("the manifest itself"),
        Absent(_ONE_MODEL),
        scope="run",
        metavar="PATH",
        default_text=f"{MANIFEST_NAME} in the rootdir",
        example="gates.yaml",
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def on(spelling: Spelling) -> bool:
    """Whether a setting is on a surface (its spelling is a name, not an :class:`Absent` reason)."""
    return isinstance(spelling, str)


def name_of(spelling: Spelling) -> str:
    if isinstance(spelling, Absent):
        raise ValueError(f"not on this surface: {spelling.reason}")
    return spelling


def negative_flag(flag: str) -> str:
    """``--int8-bisect`` -> ``--int8-no-bisect``: the off switch of a flag that is on by default."""
    prefix = "--int8-" if flag.startswith("--int8-") else "--"
    return prefix + "no-" + flag[len(prefix) :]


# ---- values: from text (command lines, ini files) and from YAML, checked against the rule -------------


def check(setting: Setting, value: object) -> None:
    """Raise :class:`SettingError` when a typed ``value`` breaks ``setting``'s rule."""
    if setting.kind == "int":
        assert isinstance(value, int)
        if setting.minimum is not None and value < setting.minimum:
            raise SettingError(f"must be at least {setting.minimum:g}")
    elif setting.kind == "float":
        assert isinstance(value, (int, float))
        low = -math.inf if setting.minimum is None else setting.minimum
        high = math.inf if setting.maximum is None else setting.maximum
        if not (math.isfinite(value) and low < value <= high):
            raise SettingError(f"must be in ({low:g}, {high:g}]")
    elif setting.kind == "choice" and value not in setting.choices:
        raise SettingError(f"is not one of {', '.join(setting.choices)}")


def from_text(setting: Setting, text: str) -> object:
    """One value written as text (an option's argument, an ini value), converted and checked."""
    value: object = text
    if setting.kind in ("int", "float"):
        try:
            value = int(text) if setting.kind == "int" else float(text)
        except ValueError:
            raise SettingError("is not a number") from None
    elif setting.kind == "flag":
        lowered = text.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise SettingError("is not true or false")
        value = lowered in ("true", "1", "yes", "on")
    elif setting.kind == "repairs" and text not in (*REPAIRS, NO_REPAIR):
        raise SettingError(f"is not one of {', '.join((*REPAIRS, NO_REPAIR))}")
    check(setting, value)
    return value


def from_yaml(setting: Setting, value: object) -> object:
    """A manifest value checked against ``setting``; :class:`SettingError` says what it must be."""
    wrong = SettingError(f"must be {setting.describe}")
    kind = setting.kind
    if kind in ("text", "path", "data", "choice"):
        ok = isinstance(value, str)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "flag":
        ok = isinstance(value, bool)
    elif kind in ("budget", "tolerances", "layer_calibrators"):
        ok = isinstance(value, dict)
    elif kind in ("constants", "axes", "layer_alphas"):
        if not isinstance(value, dict):
            raise wrong
        for name, item in value.items():
            problem = _item_problem(kind, item) if isinstance(name, str) else "must have a string name"
            if problem:
                raise SettingError(f"[{bounded_repr(name)}] {problem}, not {bounded_repr(item)}")
        ok = True
    elif kind == "layers_or_all" and isinstance(value, bool):
        ok = True
    elif kind in ("paths", "layers", "layers_or_all", "repairs"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong
        if kind == "repairs" and not all(v in REPAIRS for v in value):
            raise wrong
        ok = True
    else:  # pragma: no cover - every kind is handled above
        raise AssertionError(kind)
    if not ok:
        raise wrong
    if kind in ("int", "float", "choice"):
        try:
            check(setting, value)
        except SettingError:
            raise wrong from None
    if kind == "layer_calibrators":
        assert isinstance(value, dict)
        for layer, calibrator in value.items():
            if not isinstance(layer, str) or calibrator not in CALIBRATORS:
                raise SettingError(
                    f"[{bounded_repr(layer)}] must be one of {', '.join(CALIBRATORS)}, not "
                    f"{bounded_repr(calibrator)}"
                )
    return value


def _item_problem(kind: str, item: object) -> str | None:
    """What is wrong with one manifest value of a ``constants`` or ``axes`` mapping (None: nothing)."""
    if kind == "axes":
        ok = isinstance(item, int) and not isinstance(item, bool) and item >= 0
        return None if ok else "must be a sample axis (an integer >= 0)"
    if kind == "layer_alphas":
        ok = isinstance(item, (int, float)) and not isinstance(item, bool) and 0 < item < 1
        return None if ok else "must be a SmoothQuant alpha in (0, 1)"
    if isinstance(item, str):
        return None if item.endswith(".npy") else "must be a number, a list of numbers or a .npy path"
    if _numbers(item, depth=0):
        return None
    return "must be a number, a list of numbers or a .npy path (finite numbers only)"


def _numbers(item: object, depth: int) -> bool:
    """A finite number, or nested lists of them (bounded depth: a constant is small and written by hand)."""
    if isinstance(item, (int, float)):
        return math.isfinite(item)
    if isinstance(item, list) and depth < 8:
        return all(_numbers(v, depth + 1) for v in item)
    return False


def parse_items(setting: Setting, items: Sequence[str]) -> dict[str, object]:
    """``NAME=VALUE`` items of a ``constants`` or ``axes`` setting as written on a command line or in an ini
    file: a constant's value is a number or a ``.npy`` path (kept as written), an axis an integer >= 0."""
    parsed: dict[str, object] = {}
    for item in items:
        # layer names may hold '=', input names and values do not
        name, sep, text = item.rpartition("=") if setting.kind == "layer_alphas" else item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise SettingError(f"{bounded_repr(item)} is not {setting.metavar}")
        if name in parsed:
            raise SettingError(f"gives {bounded_repr(name)} twice")
        value: object
        if setting.kind == "axes":
            try:
                value = int(text)
            except ValueError:
                raise SettingError(f"{bounded_repr(item)}: the axis is not an integer") from None
            if value < 0:
                raise SettingError(f"{bounded_repr(item)}: the axis must be >= 0")
        elif setting.kind == "layer_alphas":
            try:
                value = float(text)
            except ValueError:
                raise SettingError(f"{bounded_repr(item)}: alpha is not a number") from None
            if not 0 < value < 1:
                raise SettingError(f"{bounded_repr(item)}: alpha must be in (0, 1)")
        else:
            value = _constant_text(item, text)
        parsed[name] = value
    return parsed


def _constant_text(item: str, text: str) -> object:
    for convert in (int, float):
        try:
            number = convert(text)
        except ValueError:
            continue
        if not math.isfinite(number):
            raise SettingError(f"{bounded_repr(item)}: the value is not finite")
        return number
    if text.endswith(".npy"):
        return text
    raise SettingError(f"{bounded_repr(item)}: the value is neither a number nor a .npy file")


def ordered_repairs(rungs: Sequence[str]) -> tuple[str, ...]:
    """The given rungs in ladder order ("none" alone: no rung, straight to float)."""
    return tuple(r for r in REPAIRS if r in rungs)


def spec_value(setting: Setting, value: object) -> object:
    """A surface's plain value (strings, lists, numbers) as ``GateSpec`` types it (budget aside)."""
    kind = setting.kind
    if value is None:
        return None
    if kind == "path" and not setting.path_as_str:
        return Path(str(value))
    if kind == "layers":
        assert isinstance(value, (list, tuple, frozenset, set))
        return frozenset(str(v) for v in value)
    if kind == "layers_or_all":
        if isinstance(value, bool):
            return value
        assert isinstance(value, (list, tuple, frozenset, set))
        return frozenset(str(v) for v in value)
    if kind == "layer_calibrators":
        assert isinstance(value, Mapping)
        return {str(k): str(v) for k, v in value.items()}
    if kind == "repairs":
        assert isinstance(value, (list, tuple))
        return ordered_repairs([str(v) for v in value])
    if kind in ("constants", "axes"):
        assert isinstance(value, Mapping)
        return {str(k): v for k, v in value.items()}
    if kind == "layer_alphas":
        assert isinstance(value, Mapping)
        return {str(k): float(v) for k, v in value.items()}
    return value


def surface(name: Literal["option", "ini", "manifest", "cli"]) -> tuple[Setting, ...]:
    """The settings on one surface, in table order."""
    return tuple(s for s in SETTINGS if on(getattr(s, name)))


def gate_settings() -> tuple[Setting, ...]:
    """The settings that are fields of ``GateSpec``."""
    return tuple(s for s in SETTINGS if s.scope == "gate")


def markdown_table() -> str:
    """The README's table of every setting and its spellings (a test keeps the README in step)."""

    def cell(spelling: Spelling, setting: Setting, *, flag: bool) -> str:
        if isinstance(spelling, Absent):
            return "-"
        if not flag:
            return f"`{spelling}`"
        if setting.kind == "flag" and setting.default is True and spelling.startswith("--int8-"):
            return f"`{spelling}` / `{negative_flag(spelling)}`"
        text = f"`{spelling} {setting.metavar}`" if setting.metavar else f"`{spelling}`"
        return text + (" (repeatable)" if setting.repeatable and spelling.startswith("--int8-") else "")

    rows = [
        "| option | ini key | manifest key | `int8gate check` | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in SETTINGS:
        if not any(on(sp) for sp in (s.option, s.ini, s.manifest, s.cli)):
            continue
        rows.append(
            f"| {cell(s.option, s, flag=True)} | {cell(s.ini, s, flag=False)} "
            f"| {cell(s.manifest, s, flag=False)} | {cell(s.cli, s, flag=True)} "
            f"| {s.help_text.replace('|', '/')} |"
        )
    return "\n".join(rows) + "\n"
