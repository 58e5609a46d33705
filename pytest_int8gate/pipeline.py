"""One gated model end to end: load, calibrate (cached), quantize (cached), build runners, evaluate, judge.

This is the library entry point that the pytest plugin and the command line share; it knows nothing of
pytest. Artefacts are cached by content: a second run of the same gate reuses the calibration table
and says so; the Q/DQ model (and an equalized FP32 model) are written to the cache as the files a
user deploys. Diagnostics and the search receive the pipeline's read-only :class:`GateContext` and its
:class:`PlanEvaluator` (context.py), never the pipeline; :meth:`GatePipeline.run` assembles the verdict once.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from . import __version__
from .backends import Backend, Runner, get_backend
from .bisect import bisect_failure
from .budget import Budget
from .cache import ArtifactCache, content_key
from .calibrate import CalibrationTable, CalibratorSettings, calibrate
from .choices import DEFAULT_MIN_CALIB_SAMPLES, DEFAULT_PLACEMENT, DEFAULT_STRATEGY, REPAIRS
from .context import GateContext, PlanEvaluator, Progress, SearchSettings
from .data import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DATA_TIMEOUT_S,
    DEFAULT_MAX_SAMPLES,
    ConstantSource,
    Dataset,
    InputLayout,
    batch_size_for,
    check_dataset,
    check_feeds,
    check_labels,
    fixed_batch_size,
    load_dataset,
    load_labels,
    resolve_layout,
)
from .diagnostics import (
    check_calibration_table,
    diagnose_nonfinite,
    model_diagnostics,
    result_diagnostics,
)
from .errors import ModelError, NonFiniteOutputError
from .evaluate import KpiFunction, evaluation_batch_size
from .external_qdq import GivenQdq, contains_qdq, read_given_qdq
from .gate import default_budget_text
from .graph import LoadedModel, activation_bytes, load_model
from .outputs import EvaluationOutputs, OutputStore, StoredOutputs, file_digest
from .placement import with_placement
from .progress import counted_batches
from .quantize import QuantizedModel, QuantPlan, activation_tensors, quantize_model
from .repair import RewrittenModel, SmoothedVariant, bias_corrected, equalized_variant, smoothed_variant
from .results import BisectionReport, Comparison, Finding, GateVerdict, MetricResult, sort_findings
from .settings import DEFAULT_BISECT_MAX_SECONDS, DEFAULT_PERCENTILE
from .soundness import (
    check_coverage,
    check_labels_fit,
    check_outputs_vary,
    check_samples,
    output_summary,
    soundness_findings,
)
from .timings import StageTimer, TimedRunner

#: Data: a path or ``module:function`` spec, in-memory arrays (axis 0 = samples), a Dataset, or feed
#: dicts (a list, or a generator: read once, into memory).
DataSource = str | os.PathLike[str] | Mapping[str, np.ndarray] | Dataset | Iterable[Mapping[str, Any]]


def _silent(stage: str, message: str) -> None:
    del stage, message


@dataclass(frozen=True)
class GateSpec:
    """Everything that defines one gate; every field has a sensible default but the model and data.

    Each field is a setting of ``settings.SETTINGS`` (its type, default, rule and spellings; a test keeps
    the two in step).
    """

    model: Path
    calib_data: DataSource
    eval_data: DataSource | None = None
    labels: str | np.ndarray | None = None
    budget: Budget = field(default_factory=Budget)
    calibrator: str = "entropy"
    #: Where Q/DQ pairs go (placement.py): ``minimal`` or ``tensorrt``.
    placement: str = DEFAULT_PLACEMENT
    percentile: float = DEFAULT_PERCENTILE
    exclude: frozenset[str] = frozenset()
    overrides: Mapping[str, str] = field(default_factory=dict)
    backend: str = "onnxruntime"
    ort_mode: str = "simulated"
    output: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    #: Samples one data source may hold at most (a loader that never ends stops there).
    max_samples: int = DEFAULT_MAX_SAMPLES
    #: Seconds a ``module:function`` loader may take to yield one item.
    data_timeout: float = DEFAULT_DATA_TIMEOUT_S
    threads: int = 0
    cache_dir: Path | None = None
    data_search_path: Path | None = None
    name: str | None = None
    bisect: bool = True
    bisect_strategy: str = DEFAULT_STRATEGY
    bisect_subset: int = 200
    bisect_max_evaluations: int = 200
    #: Wall-time budget of the bisection (seconds).
    bisect_max_seconds: float = DEFAULT_BISECT_MAX_SECONDS
    #: Layers equalized with their producer before calibration; True: every pair that can be.
    equalize: bool | frozenset[str] = frozenset()
    #: Quantized layers whose bias is corrected after quantization.
    bias_correction: frozenset[str] = frozenset()
    #: The bisection's repair ladder rungs tried on an offender before keeping it in float.
    repairs: tuple[str, ...] = REPAIRS
    #: User FP32 reference outputs (.npz of output name -> [samples, ...]) the FP32 engine must match.
    fp32_reference: str | os.PathLike[str] | None = None
    #: Fewer calibration samples than this is a warning (0: no check).
    min_calib_samples: int = DEFAULT_MIN_CALIB_SAMPLES
    #: A metric with a confidence interval passes only when the whole 95 % interval is within the limit.
    strict_ci: bool = False
    #: Run the INT8 engine twice on a subset and report whether it is bit-exact.
    check_determinism: bool = False
    #: Inputs fed the same value with every batch (a number, a list of numbers, an array or a .npy path).
    constants: Mapping[str, ConstantSource] = field(default_factory=dict)
    #: Input or output name -> the axis holding its samples, when not 0 (a recurrent state: 1).
    sample_axes: Mapping[str, int] = field(default_factory=dict)
    #: A Q/DQ model made elsewhere to gate against ``model`` (nothing is calibrated or quantized here);
    #: ``model`` itself may be a Q/DQ model, whose FP32 reference is then derived from it (external_qdq.py).
    qdq_model: Path | None = None
    #: MatMul/Gemm layers smoothed (SmoothQuant) before calibration: layer -> migration strength alpha.
    smoothquant: Mapping[str, float] = field(default_factory=dict)

    @property
    def display_name(self) -> str:
        return self.name or self.model.name

    @property
    def plan(self) -> QuantPlan:
        """The spec's plan; ``equalize=True`` needs the model and is resolved by :attr:`GatePipeline.plan`."""
        return QuantPlan(
            calibrator=self.calibrator,
            exclude=self.exclude,
            overrides=dict(self.overrides),
            equalize=frozenset() if isinstance(self.equalize, bool) else self.equalize,
            bias_correction=self.bias_correction,
            smoothquant=dict(self.smoothquant),
            placement=self.placement,
        )


class GatePipeline:
    """Lazily prepared stages for one :class:`GateSpec`; each artefact is made once and cached."""

    def __init__(
        self, spec: GateSpec, *, progress: Progress | None = None, kpi: KpiFunction | None = None
    ) -> None:
        self.spec = spec
        self.progress = progress or _silent
        self.kpi = kpi
        self.cache = ArtifactCache(spec.cache_dir) if spec.cache_dir is not None else None
        self.cache_hits: list[str] = []
        self.timings: dict[str, float] = {}
        #: Seconds per stage of this gate (the verdict's ``timings``).
        self.timer = StageTimer()
        self.quantized_model_path: Path | None = None
        #: Findings made while preparing artefacts (a stale cached table); run() adds the diagnostics'.
        self.findings: list[Finding] = []
        self._tables: dict[str, CalibrationTable] = {}  # by model hash: the spec's and rewritten models
        self._rewritten: dict[frozenset[str], RewrittenModel] = {}
        self._smoothed: dict[tuple[frozenset[str], tuple[tuple[str, float], ...]], SmoothedVariant] = {}

    # ---- inputs -------------------------------------------------------------------------------
    @functools.cached_property
    def _loaded_model(self) -> LoadedModel:
        return load_model(self.spec.model)

    @functools.cached_property
    def given_qdq(self) -> GivenQdq | None:
        """The Q/DQ model made elsewhere that this gate judges: ``qdq_model``, or ``model`` when it holds
        Q/DQ nodes (its FP32 reference then derived from it); None when this tool quantizes."""
        spec = self.spec
        if spec.qdq_model is not None:
            given = read_given_qdq(load_model(spec.qdq_model), self._loaded_model)
        elif contains_qdq(self._loaded_model.proto):
            given = read_given_qdq(self._loaded_model, None)
        else:
            return None
        if spec.equalize or spec.bias_correction:
            raise ModelError(
                f"{given.qdq.info.source}: equalize and bias_correction rewrite the model before and while "
                "this tool quantizes it; a given Q/DQ model is already quantized, so neither applies."
            )
        return given

    @functools.cached_property
    def model(self) -> LoadedModel:
        """The FP32 model INT8 is made from, whose layers plans name: the spec's model, or the FP32 model
        derived from a given Q/DQ model (same node names)."""
        given = self.given_qdq
        if given is not None:
            return given.fp32
        return with_placement(self._loaded_model, self.spec.plan.placement)

    @property
    def reference_model(self) -> LoadedModel:
        """The model the FP32 engine runs: :attr:`model`, or the FP32 model given beside a Q/DQ model."""
        given = self.given_qdq
        return given.reference if given is not None else self.model

    @functools.cached_property
    def layout(self) -> InputLayout:
        """Constant inputs and sample axes, checked against the model."""
        return resolve_layout(self.model.info, self.spec.constants, self.spec.sample_axes)

    def _dataset(self, source: DataSource, role: str) -> Dataset:
        layout = self.layout
        if isinstance(source, Dataset):
            return check_dataset(source, self.model.info, role=role, layout=layout)
        if isinstance(source, Mapping):
            return check_feeds(source, self.model.info, role=role, layout=layout)
        if isinstance(source, (str, os.PathLike)):
            return load_dataset(
                source,
                self.model.info,
                role=role,
                search_path=self.spec.data_search_path,
                max_samples=self.spec.max_samples,
                timeout_s=self.spec.data_timeout,
                progress=lambda message: self.progress("data", message),
                layout=layout,
            )
        return check_feeds(
            source, self.model.info, role=role, max_samples=self.spec.max_samples, layout=layout
        )

    @functools.cached_property
    def calibration_data(self) -> Dataset:
        return self._dataset(self.spec.calib_data, "calibration")

    @functools.cached_property
    def eval_data(self) -> Dataset:
        if self.spec.eval_data is None:
            return self.calibration_data
        return self._dataset(self.spec.eval_data, "evaluation")

    @functools.cached_property
    def labels(self) -> np.ndarray | None:
        if self.spec.labels is None:
            return None
        classes = self._output_classes()
        if isinstance(self.spec.labels, np.ndarray):
            return check_labels(
                self.spec.labels, self.eval_data.num_samples, source="<labels array>", classes=classes
            )
        return load_labels(self.spec.labels, self.eval_data.num_samples, classes=classes)

    def _output_classes(self) -> int | None:
        """The class count of the output labels belong to: the one ``output`` names, else the first declared
        ``[N, C]`` with C >= 2 (labels are checked against it)."""
        outputs = self.model.info.outputs
        chosen = [t for t in outputs if t.name == self.spec.output] if self.spec.output else outputs
        for tensor in chosen:
            shape = tensor.shape
            if shape is not None and len(shape) == 2 and isinstance(shape[1], int) and shape[1] >= 2:
                return shape[1]
        return None

    @property
    def held_out(self) -> bool:
        """True when evaluation data was given and is not the calibration data again (same content)."""
        return (
            self.spec.eval_data is not None
            and self.eval_data.fingerprint != self.calibration_data.fingerprint
        )

    @functools.cached_property
    def batch_size(self) -> int:
        """Samples per batch the calibration data is read in (a model's fixed batch axis wins)."""
        return batch_size_for(self.model.info, self.spec.batch_size, self.layout)

    @functools.cached_property
    def activation_bytes_per_sample(self) -> int | None:
        """Bytes of the tensors the FP32 engine's model produces for one evaluation sample (an estimate)."""
        first = next(iter(self.eval_data.batches(1)), None)
        if first is None:
            return None
        shapes = {name: np.shape(value) for name, value in first.items()}
        return activation_bytes(self.reference_model.proto, shapes)

    @functools.cached_property
    def eval_batch_size(self) -> int:
        """Samples per inference of the engines: :attr:`batch_size`, fewer when that many samples'
        activations would take more memory than evaluate.EVALUATION_ACTIVATION_BUDGET (a fixed batch axis
        is never changed)."""
        if fixed_batch_size(self.model.info, self.layout) is not None:
            return self.batch_size
        return evaluation_batch_size(self.batch_size, self.activation_bytes_per_sample)

    @functools.cached_property
    def backend(self) -> Backend:
        return get_backend(
            self.spec.backend,
            ort_mode=self.spec.ort_mode,
            threads=self.spec.threads,
            cache_dir=self.spec.cache_dir,
            batch_size=self.eval_batch_size,
        )

    @property
    def budget(self) -> Budget:
        return self.spec.budget

    # ---- artefacts ----------------------------------------------------------------------------
    @property
    def _settings(self) -> CalibratorSettings:
        return CalibratorSettings(percentile=self.spec.percentile)

    @functools.cached_property
    def _table_key(self) -> str:
        return self._table_key_for(self.model)

    def _table_key_for(self, model: LoadedModel) -> str:
        return content_key(
            {
                "model": model.info.model_hash,
                "data": self.calibration_data.fingerprint,
                "tensors": list(activation_tensors(model, self.plan.placement)),
                "settings": self._settings.as_dict(),
                "version": __version__,
            }
        )

    @functools.cached_property
    def table(self) -> CalibrationTable:
        return self.table_for(self.model)

    def table_for(self, model: LoadedModel) -> CalibrationTable:
        """The calibration table of ``model`` (the spec's model or a rewritten one), made once."""
        if model.info.model_hash not in self._tables:
            with self.timer.stage("calibrate"):
                self._tables[model.info.model_hash] = self._calibrated(model)
        return self._tables[model.info.model_hash]

    def _calibrated(self, model: LoadedModel) -> CalibrationTable:
        settings = self._settings
        tensors = activation_tensors(model, self.plan.placement)
        data = self.calibration_data
        key = self._table_key_for(model)
        rewritten = model is not self.model

        def build() -> bytes:
            self.progress("calibrate", f"calibrating {len(tensors)} tensors on {data.num_samples} samples")
            table, stats = calibrate(
                model.proto,
                tensors,
                counted_batches(
                    data.batches(self.batch_size),
                    data.num_samples,
                    lambda done, total: self.progress("calibrate", f"{done}/{total} samples"),
                ),
                model_hash=model.info.model_hash,
                data_fingerprint=data.fingerprint,
                settings=settings,
                threads=self.spec.threads,
            )
            self.timings["calibration_fp32_pass_s"] = stats.fp32_pass_s
            self.timings["calibration_statistics_s"] = stats.statistics_s
            return table.to_json().encode()

        if self.cache is None:
            return CalibrationTable.from_json(build().decode(), source="calibration")
        path, hit = self.cache.get_or_build("calibration", key, ".json", build)
        if hit:
            self.cache_hits.append("calibration table" + (" (equalized model)" if rewritten else ""))
        table = CalibrationTable.load(path, allow_stale=True)
        stale = check_calibration_table(
            table, model_hash=model.info.model_hash, data_fingerprint=data.fingerprint, source=str(path)
        )
        if stale is None:
            return table
        # never reuse a stale table: the finding fails the gate, which is judged with a table made now
        self.findings.append(stale)
        if hit:
            self.cache_hits.pop()
        return CalibrationTable.from_json(build().decode(), source="calibration")

    @functools.cached_property
    def plan(self) -> QuantPlan:
        """The spec's plan, with ``equalize: true`` resolved to every layer that can be equalized."""
        plan = self.spec.plan
        if self.spec.equalize is True:
            from .equalize import select_pairs

            pairs, _ = select_pairs(self.model)
            plan = replace(plan, equalize=frozenset(pair.consumer for pair in pairs))
        return plan

    def rewritten(self, equalize: frozenset[str]) -> RewrittenModel:
        """The spec's model with the pairs of the layers ``equalize`` equalized (written to the cache)."""
        if equalize not in self._rewritten:
            whose = "its producer" if len(equalize) == 1 else "their producers"
            self.progress("equalize", f"equalizing {', '.join(sorted(equalize))} with {whose}")
            self._rewritten[equalize] = equalized_variant(self.model, equalize, self.cache)
        return self._rewritten[equalize]

    def fp32_model(self, equalize: frozenset[str] = frozenset()) -> LoadedModel:
        """The FP32 model INT8 is made from: the spec's, or with ``equalize``'s pairs equalized."""
        return self.rewritten(equalize).model if equalize else self.model

    def _quantize(self, plan: QuantPlan) -> QuantizedModel:
        with self.timer.stage("quantize"):
            return self._quantize_now(plan)

    def smoothed(self, plan: QuantPlan) -> SmoothedVariant:
        """The FP32 model of ``plan``'s equalization with its SmoothQuant layers smoothed (measured on the
        calibration data, checked to compute what the spec's model computes, written to the cache)."""
        key = (plan.equalize, tuple(plan.smoothquant.items()))
        if key not in self._smoothed:
            layers = ", ".join(f"{name} (alpha {alpha:g})" for name, alpha in plan.smoothquant.items())
            self.progress("smoothquant", f"smoothing {layers}")
            self._smoothed[key] = smoothed_variant(
                self.model,
                self.fp32_model(plan.equalize),
                plan.smoothquant,
                lambda: self.calibration_data.batches(self.batch_size),
                self.cache,
                threads=self.spec.threads,
            )
        return self._smoothed[key]

    def source_model(self, plan: QuantPlan) -> LoadedModel:
        """The FP32 model ``plan``'s INT8 model is made from: equalized, then smoothed, as it asks."""
        if plan.smoothquant:
            return self.smoothed(plan).model
        return self.fp32_model(plan.equalize)

    def _quantize_now(self, plan: QuantPlan) -> QuantizedModel:
        plan.validate(self.model.info)
        if self.given_qdq is not None:
            return self._given_quantized(self.given_qdq, plan)
        source = self.source_model(plan)
        quantized = quantize_model(source, self.table_for(source), plan)
        if plan.bias_correction:
            self.progress("bias", f"correcting the bias of {', '.join(sorted(plan.bias_correction))}")
            quantized = bias_corrected(
                source,
                quantized,
                plan.bias_correction,
                lambda: self.calibration_data.batches(self.batch_size),
                threads=self.spec.threads,
            )
        return quantized

    def _given_quantized(self, given: GivenQdq, plan: QuantPlan) -> QuantizedModel:
        """The given Q/DQ model with the pairs of the layers ``plan`` does not quantize removed."""
        allowed = {layer.name for layer in plan.quantized_layers(self.model.info)}
        proto, quantized, floated = given.keeping(allowed)
        floated = {
            name: "excluded by the plan" if name in plan.exclude else reason
            for name, reason in floated.items()
        }
        layer_scales = given.activation_scales(proto, quantized)
        return QuantizedModel(
            proto=proto,
            quantized_layers=quantized,
            skipped=floated,
            activation_scales={t: s for scales in layer_scales.values() for t, s in scales.items()},
            layer_scales=layer_scales,
            coverage=given.coverage(quantized, floated),
        )

    def quantized(self, plan: QuantPlan | None = None) -> QuantizedModel:
        """The Q/DQ model for ``plan`` (default: the spec's plan); the spec's plan is made once."""
        if plan is None or plan == self.plan:
            return self.default_quantized
        return self._quantize(plan)

    @functools.cached_property
    def default_quantized(self) -> QuantizedModel:
        plan = self.plan
        quantized = self._quantize(plan)
        if self.given_qdq is not None:
            self.quantized_model_path = Path(self.given_qdq.qdq.info.source)
        elif self.cache is not None:
            table_key = self._table_key_for(self.source_model(plan))
            key = content_key({"table": table_key, "plan": plan.key(), "version": __version__})
            # quantizing is cheap and pure; the file is the artefact a user deploys or hands to trtexec
            path, _ = self.cache.get_or_build(
                "qdq", key, ".onnx", lambda: quantized.proto.SerializeToString(deterministic=True)
            )
            self.quantized_model_path = path
        return quantized

    @functools.cached_property
    def fp32_runner(self) -> Runner:
        self.progress("build", f"building the FP32 engine ({self.backend.name})")
        with self.timer.stage("fp32_eval"):
            return TimedRunner(
                self.backend.fp32_runner(self.reference_model.proto), self.timer, "fp32_eval"
            )

    def int8_runner(self, plan: QuantPlan | None = None) -> Runner:
        return self.backend.int8_runner(self.quantized(plan).proto)

    @functools.cached_property
    def default_int8_runner(self) -> Runner:
        quantized = self.default_quantized
        self.progress("build", f"building the INT8 engine ({self.backend.name})")
        with self.timer.stage("int8_eval"):
            return TimedRunner(self.backend.int8_runner(quantized.proto), self.timer, "int8_eval")

    def close(self) -> None:
        """Release the engines this pipeline built (the FP32 and the spec's INT8 engine); idempotent.
        Engines handed out (e.g. as session fixtures) must not be used afterwards."""
        for name in ("default_int8_runner", "fp32_runner"):
            runner = self.__dict__.get(name)
            if runner is not None:
                runner.close()

    def __enter__(self) -> GatePipeline:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ---- what diagnostics and the search see ----------------------------------------------------
    @functools.cached_property
    def context(self) -> GateContext:
        """The gate as diagnostics and the search see it (read-only; artefacts still built lazily)."""
        spec = self.spec
        return GateContext(
            name=spec.display_name,
            model=self.model,
            plan=self.plan,
            budget=self.budget,
            calibration_data=self.calibration_data,
            eval_data=self.eval_data,
            held_out=self.held_out,
            labels=self.labels,
            batch_size=self.eval_batch_size,
            threads=spec.threads,
            output=spec.output,
            backend=self.backend,
            ort_mode=spec.ort_mode,
            # a given Q/DQ model is not calibrated here: the data only feeds it
            min_calib_samples=spec.min_calib_samples if self.given_qdq is None else 0,
            fp32_reference=spec.fp32_reference,
            check_determinism=spec.check_determinism,
            search=SearchSettings(
                strategy=spec.bisect_strategy,
                subset=spec.bisect_subset,
                max_evaluations=spec.bisect_max_evaluations,
                # the rungs re-calibrate or rewrite what this tool quantized; a given model keeps its
                # scales, so the search keeps a layer in float or leaves its Q/DQ
                repairs=spec.repairs if self.given_qdq is None else (),
                max_seconds=spec.bisect_max_seconds,
            ),
            progress=self.progress,
            fp32_runner=lambda: self.fp32_runner,
            int8_runner=lambda: self.default_int8_runner,
            quantized=self.quantized,
            fp32_model=self.fp32_model,
            rewritten=self.rewritten,
            evaluation_outputs=self._stored_evaluation,
        )

    def _stored_evaluation(self) -> tuple[StoredOutputs | None, StoredOutputs | None]:
        """The FP32 and the spec's plan's INT8 outputs the evaluation kept in the cache (None: not kept)."""
        outputs = self.stored_outputs
        if outputs is None:
            return None, None
        return outputs.fp32_values, outputs.int8_values(self.default_quantized.proto)

    @functools.cached_property
    def evaluator(self) -> PlanEvaluator:
        """Every INT8 evaluation of this gate goes through it, and it counts them."""
        return PlanEvaluator(
            self.context, kpi=self.kpi, strict_ci=self.spec.strict_ci, outputs=self.stored_outputs
        )

    @functools.cached_property
    def stored_outputs(self) -> EvaluationOutputs | None:
        """The evaluation outputs kept in the cache: every output of the model, or the one the gate's
        ``output`` names (None without a cache, or for an unknown output name, which the evaluation
        itself reports)."""
        names = tuple(self.model.info.output_names)
        outputs = names if self.spec.output is None else (self.spec.output,)
        if self.cache is None or not outputs or not set(outputs) <= set(names):
            return None
        return EvaluationOutputs(
            OutputStore(self.cache),
            fp32_model_hash=self.reference_model.info.model_hash,  # the model the FP32 engine runs
            dataset=self.eval_data,
            outputs=outputs,
            batch_size=self.eval_batch_size,
            backend=self.backend.describe().as_dict(),
            hits=self.cache_hits,
        )

    def _model_diagnostics(self) -> tuple[Finding, ...]:
        """The model-running diagnostics, reused from the cache when nothing they depend on changed."""
        outputs = self.stored_outputs
        if self.cache is None or outputs is None or self.spec.check_determinism:
            return model_diagnostics(self.context)  # a determinism check is only worth running again
        reference = self.spec.fp32_reference
        key = content_key(
            {
                "fp32": outputs.fp32_key,
                "qdq": outputs.int8_digest(self.default_quantized.proto),
                "plan": self.plan.key(),
                "calibration_data": self.calibration_data.fingerprint,
                "held_out": self.spec.eval_data is not None,
                "threads": self.spec.threads,
                "ort_mode": self.spec.ort_mode,
                "fp32_reference": None if reference is None else file_digest(Path(reference)),
                "version": __version__,
            }
        )
        made: list[tuple[Finding, ...]] = []

        def build() -> bytes:
            made.append(model_diagnostics(self.context))
            return json.dumps([finding.as_dict() for finding in made[0]]).encode()

        path, _ = self.cache.get_or_build("diagnostics", key, ".json", build)
        if made:
            return made[0]
        try:
            findings = tuple(Finding(**entry) for entry in json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return model_diagnostics(self.context)
        self.cache_hits.append("diagnostics")
        return findings

    @property
    def evaluations(self) -> int:
        return self.evaluator.evaluations if "evaluator" in self.__dict__ else 0

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, plan: QuantPlan | None = None) -> Comparison:
        """Compare FP32 with INT8 (``plan``, default the spec's) on the full evaluation set."""
        if plan is None and self.stored_outputs is None:
            self.default_int8_runner  # noqa: B018 - the gate's own engine first: its errors come first
        return self.evaluator.compare(plan)

    def run(self) -> GateVerdict:
        """Evaluate the spec's plan against its budget, run the diagnostics (a failure among them fails the
        gate), bisect when a budget metric failed and bisection is enabled, and assemble the verdict."""
        started = time.perf_counter()
        timer = self.timer
        with timer.stage("load"):  # the model, the data and the backend: what every stage reads
            self.context  # noqa: B018
        check_samples(self.calibration_data, "calibration")
        check_samples(self.eval_data, "evaluation")
        check_coverage(self.model, self.quantized())
        try:
            with timer.stage("compare"):  # engine builds and runs are charged to fp32_eval / int8_eval
                comparison = self.evaluate()
        except NonFiniteOutputError as exc:
            raise diagnose_nonfinite(self.context, exc) from exc
        check_outputs_vary(comparison)
        check_labels_fit(comparison, self.spec.labels)
        results = self.evaluator.judge(comparison)
        diagnosed = time.perf_counter()
        soundness = soundness_findings(
            self.budget, comparison, results, self.calibration_data, self.eval_data, self.quantized()
        )
        with timer.stage("diagnostics"):
            # findings made while preparing artefacts (a stale cached table) come first within a severity
            findings = sort_findings(
                [
                    *self.findings,
                    *soundness,
                    *result_diagnostics(self.context, comparison, results),
                    *self._model_diagnostics(),
                ]
            )
        self.timings["diagnostics_s"] = time.perf_counter() - diagnosed
        bisection = None
        if any(not r.passed for r in results) and self.spec.bisect:
            with timer.stage("search"):
                bisection = self._given_outside_layers(started) if self.given_qdq is not None else None
                if bisection is None:
                    bisection = bisect_failure(self.context, self.evaluator, comparison)
        return self._verdict(comparison, results, findings, bisection, started)

    def _given_outside_layers(self, started: float) -> BisectionReport | None:
        """A given Q/DQ model that misses the budget even with every layer's pairs removed loses its accuracy
        in pairs on other nodes, which no plan removes: the search would blame every layer, so it is not run
        and the report says where the remaining pairs are. None when that plan passes (search as usual)."""
        assert self.given_qdq is not None
        plan = replace(self.plan, include=frozenset())
        self.progress("bisect", "checking the given model with every layer's Q/DQ removed")
        results = self.evaluator.judge(self.evaluator.compare(plan))
        if all(r.passed for r in results):
            return None
        remaining = [
            node.name
            for node in self.quantized(plan).proto.graph.node
            if node.op_type == "QuantizeLinear"
        ]
        shown = ", ".join(remaining[:5]) + (f" and {len(remaining) - 5} more" if len(remaining) > 5 else "")
        measured = ", ".join(f"{r.name} {r.observed:.4g}" for r in results)
        removed = f"with the Q/DQ of all {len(self.model.info.layers)} layers removed"
        if remaining:
            note = (
                f"{removed}, the given model still misses the budget ({measured}): the loss comes from the "
                f"Q/DQ pairs before the first layer ({shown}), which no layer's plan removes; the search was "
                "not run"
            )
        else:
            float16 = self.given_qdq.float16_initializers
            held = f" (it holds {float16} float16 initializers)" if float16 else ""
            note = (
                f"{removed} no Q/DQ pair is left, yet the given model still misses the budget ({measured}): "
                f"the difference is not INT8 but its float graph, which differs from the FP32 model's{held}; "
                "the search was not run (give the Q/DQ model alone to measure it against its own float graph)"
            )
        return BisectionReport(
            strategy=self.spec.bisect_strategy,
            total_layers=len(self.model.info.layers),
            subset_size=self.eval_data.num_samples,
            search_evaluations=0,
            repair_evaluations=0,
            baseline_evaluations=1,
            verification_evaluations=0,
            offenders=(),
            sensitivity=(),
            fix=None,
            notes=(note,),
            duration_s=time.perf_counter() - started,
        )

    def _verdict(
        self,
        comparison: Comparison,
        results: tuple[MetricResult, ...],
        findings: tuple[Finding, ...],
        bisection: BisectionReport | None,
        started: float,
    ) -> GateVerdict:
        quantized = self.quantized()
        notes = list(self.model.info.notes)
        given = self.given_qdq
        if given is not None:
            notes.extend(given.notes())
            fix = bisection.fix if bisection is not None else None
            if fix is not None and fix.passed and fix.exclude:
                notes.append(given.fix_note(fix.exclude))
        elif self.spec.eval_data is None:  # (a given model is not calibrated: no held-out note for it)
            notes.append("evaluation data = calibration data (no held-out set given)")
        elif not self.held_out:
            notes.append("evaluation data = calibration data (the same content was given for both)")
        for layer, reason in quantized.skipped.items():
            if layer not in self.spec.exclude:
                notes.append(f"{layer} not quantized: {reason}")
        for entry in quantized.coverage.not_covered:
            if entry.layer not in quantized.skipped:  # recurrent, control-flow bodies, profile choices
                notes.append(f"{entry.layer} ({entry.op}) stays in float: {entry.reason}")
        if self.plan.equalize:
            notes.append(self.rewritten(self.plan.equalize).deploy_note())
        if self.plan.smoothquant:
            notes.append(self.smoothed(self.plan).deploy_note())
        if self.eval_batch_size < self.batch_size and self.activation_bytes_per_sample:
            megabytes = self.activation_bytes_per_sample / 2**20
            samples = f"{self.eval_batch_size} sample{'' if self.eval_batch_size == 1 else 's'}"
            notes.append(
                f"evaluated in batches of {samples}, not {self.batch_size}: the model's tensors take "
                f"~{megabytes:.0f} MB per sample"
            )
        if self.cache is not None:
            notes.extend(self.cache.notes)  # damaged cache entries that were found and rebuilt
        outputs = self.stored_outputs
        stored_info = outputs.int8_info if outputs is not None else None
        # with the INT8 outputs from the cache no engine was built: the stored description says what ran
        info = stored_info if stored_info is not None else self.default_int8_runner.describe()
        return GateVerdict(
            name=self.spec.display_name,
            model=str(self.spec.model),
            backend=info.as_dict(),
            backend_text=str(info),
            calibrator=self.spec.calibrator if given is None else given.header(),
            calibration_samples=self.calibration_data.num_samples,
            eval_samples=comparison.num_samples,
            output_name=comparison.output_name,
            budget=self.budget,
            default_budget="" if self.budget.limits else default_budget_text(comparison),
            outputs=tuple(output_summary(output) for output in comparison.outputs),
            coverage=quantized.coverage.as_dict(),
            results=results,
            fp32=dict(comparison.fp32),
            int8=dict(comparison.int8),
            plan=self.plan.to_dict(),
            quantized_layers=len(quantized.quantized_layers),
            total_layers=len(self.model.info.layers),
            evaluations=self.evaluations,
            duration_s=time.perf_counter() - started,
            notes=tuple(notes),
            cache_hits=tuple(self.cache_hits),
            bisection=bisection,
            diagnostics=findings,
            timings=self.timer.as_dict(),
        )
