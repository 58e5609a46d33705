"""One gated model end to end: load, calibrate (cached), quantize (cached), build runners, evaluate, judge.

This is the library entry point that the pytest plugin and the command line share; it knows nothing of
pytest. Artefacts are cached by content: a second run of the same gate reuses the calibration table
and the Q/DQ model and says so.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import __version__
from .backends import Backend, Runner, get_backend
from .cache import ArtifactCache, content_key
from .calibrate import CalibrationTable, CalibratorSettings, calibrate
from .data import (
    DEFAULT_BATCH_SIZE,
    Dataset,
    batch_size_for,
    check_dataset,
    check_labels,
    load_dataset,
    load_labels,
)
from .evaluate import Comparison, KpiFunction, compare
from .gate import Budget, GateVerdict, MetricResult, judge
from .graph import LoadedModel, load_model
from .quantize import QuantizedModel, QuantPlan, activation_tensors, quantize_model

#: Data: a path or ``module:function`` spec, in-memory arrays (axis 0 = samples), or a Dataset.
DataSource = str | os.PathLike[str] | Mapping[str, np.ndarray] | Dataset
#: Progress callback: (stage, message) — the plugin and CLI decide how to show it.
Progress = Callable[[str, str], None]


def _silent(stage: str, message: str) -> None:
    del stage, message


@dataclass(frozen=True)
class GateSpec:
    """Everything that defines one gate; every field has a sensible default but the model and data."""

    model: Path
    calib_data: DataSource
    eval_data: DataSource | None = None
    labels: str | np.ndarray | None = None
    budget: Budget = field(default_factory=Budget)
    calibrator: str = "entropy"
    percentile: float = 99.99
    exclude: frozenset[str] = frozenset()
    overrides: Mapping[str, str] = field(default_factory=dict)
    backend: str = "onnxruntime"
    ort_mode: str = "simulated"
    output: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    threads: int = 0
    cache_dir: Path | None = None
    data_search_path: Path | None = None
    name: str | None = None
    bisect: bool = True
    bisect_strategy: str = "binary"
    bisect_subset: int = 200
    bisect_max_evaluations: int = 200

    @property
    def display_name(self) -> str:
        return self.name or self.model.name

    @property
    def plan(self) -> QuantPlan:
        return QuantPlan(calibrator=self.calibrator, exclude=self.exclude, overrides=dict(self.overrides))


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
        self.evaluations = 0
        self.timings: dict[str, float] = {}
        self.quantized_model_path: Path | None = None

    # ---- inputs -------------------------------------------------------------------------------
    @functools.cached_property
    def model(self) -> LoadedModel:
        return load_model(self.spec.model)

    def _dataset(self, source: DataSource, role: str) -> Dataset:
        if isinstance(source, Dataset):
            return check_dataset(source, self.model.info, role=role)
        if isinstance(source, Mapping):
            return check_dataset(
                Dataset.from_arrays(source, source=f"<{role} arrays>"), self.model.info, role=role
            )
        return load_dataset(source, self.model.info, role=role, search_path=self.spec.data_search_path)

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
        if isinstance(self.spec.labels, np.ndarray):
            return check_labels(self.spec.labels, self.eval_data.num_samples, source="<labels array>")
        return load_labels(self.spec.labels, self.eval_data.num_samples)

    @functools.cached_property
    def batch_size(self) -> int:
        return batch_size_for(self.model.info, self.spec.batch_size)

    @functools.cached_property
    def backend(self) -> Backend:
        return get_backend(
            self.spec.backend,
            ort_mode=self.spec.ort_mode,
            threads=self.spec.threads,
            cache_dir=self.spec.cache_dir,
            batch_size=self.batch_size,
        )

    @property
    def budget(self) -> Budget:
        return self.spec.budget.with_defaults(has_labels=self.spec.labels is not None)

    # ---- artefacts ----------------------------------------------------------------------------
    @property
    def _settings(self) -> CalibratorSettings:
        return CalibratorSettings(percentile=self.spec.percentile)

    @functools.cached_property
    def _table_key(self) -> str:
        return content_key(
            {
                "model": self.model.info.model_hash,
                "data": self.calibration_data.fingerprint,
                "tensors": list(activation_tensors(self.model)),
                "settings": self._settings.as_dict(),
                "version": __version__,
            }
        )

    @functools.cached_property
    def table(self) -> CalibrationTable:
        settings = self._settings
        tensors = activation_tensors(self.model)
        data = self.calibration_data
        key = self._table_key

        def build() -> bytes:
            self.progress("calibrate", f"calibrating {len(tensors)} tensors on {data.num_samples} samples")
            table, stats = calibrate(
                self.model.proto,
                tensors,
                data.batches(self.batch_size),
                model_hash=self.model.info.model_hash,
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
            self.cache_hits.append("calibration table")
        return CalibrationTable.load(
            path, model_hash=self.model.info.model_hash, data_fingerprint=data.fingerprint
        )

    def quantized(self, plan: QuantPlan | None = None) -> QuantizedModel:
        """The Q/DQ model for ``plan`` (default: the spec's plan); the spec's plan is made once."""
        if plan is None or plan == self.spec.plan:
            return self.default_quantized
        plan.validate(self.model.info)
        return quantize_model(self.model, self.table, plan)

    @functools.cached_property
    def default_quantized(self) -> QuantizedModel:
        plan = self.spec.plan
        plan.validate(self.model.info)
        quantized = quantize_model(self.model, self.table, plan)
        if self.cache is not None:
            key = content_key({"table": self._table_key, "plan": plan.key(), "version": __version__})
            # quantizing is cheap and pure; the file is the artefact a user deploys or hands to trtexec
            path, _ = self.cache.get_or_build(
                "qdq", key, ".onnx", lambda: quantized.proto.SerializeToString(deterministic=True)
            )
            self.quantized_model_path = path
        return quantized

    @functools.cached_property
    def fp32_runner(self) -> Runner:
        self.progress("build", f"building the FP32 engine ({self.backend.name})")
        return self.backend.fp32_runner(self.model.proto)

    def int8_runner(self, plan: QuantPlan | None = None) -> Runner:
        return self.backend.int8_runner(self.quantized(plan).proto)

    @functools.cached_property
    def default_int8_runner(self) -> Runner:
        quantized = self.default_quantized
        self.progress("build", f"building the INT8 engine ({self.backend.name})")
        return self.backend.int8_runner(quantized.proto)

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, plan: QuantPlan | None = None) -> Comparison:
        """Compare FP32 with INT8 (``plan``, default the spec's) on the full evaluation set."""
        int8 = self.default_int8_runner if plan is None else self.int8_runner(plan)
        self.progress("evaluate", f"evaluating on {self.eval_data.num_samples} samples")
        self.evaluations += 1
        return compare(
            self.fp32_runner,
            int8,
            self.eval_data,
            batch_size=self.batch_size,
            output_name=self.spec.output,
            labels=self.labels,
            kpi=self.kpi,
        )

    def run(self) -> GateVerdict:
        """Evaluate the spec's plan against its budget; on failure, bisect when enabled."""
        started = time.perf_counter()
        comparison = self.evaluate()
        results = judge(self.budget, comparison)
        verdict = self._verdict(comparison, results, started)
        if not verdict.passed and self.spec.bisect:
            from .bisect import bisect_failure

            report = bisect_failure(self, comparison)
            verdict = replace(
                verdict,
                bisection=report,
                evaluations=self.evaluations,
                duration_s=time.perf_counter() - started,
            )
        return verdict

    def _verdict(
        self, comparison: Comparison, results: tuple[MetricResult, ...], started: float
    ) -> GateVerdict:
        quantized = self.quantized()
        notes = list(self.model.info.notes)
        if self.spec.eval_data is None:
            notes.append("evaluation data = calibration data (no held-out set given)")
        for layer, reason in quantized.skipped.items():
            if layer not in self.spec.exclude:
                notes.append(f"{layer} not quantized: {reason}")
        info = self.default_int8_runner.describe()
        return GateVerdict(
            name=self.spec.display_name,
            model=str(self.spec.model),
            backend=info.as_dict(),
            backend_text=str(info),
            calibrator=self.spec.calibrator,
            calibration_samples=self.calibration_data.num_samples,
            eval_samples=comparison.num_samples,
            output_name=comparison.output_name,
            budget=self.budget,
            results=results,
            fp32=dict(comparison.fp32),
            int8=dict(comparison.int8),
            plan=self.spec.plan.to_dict(),
            quantized_layers=len(quantized.quantized_layers),
            total_layers=len(self.model.info.layers),
            evaluations=self.evaluations,
            duration_s=time.perf_counter() - started,
            notes=tuple(notes),
            cache_hits=tuple(self.cache_hits),
        )
