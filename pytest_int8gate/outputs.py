"""Content-addressed reuse of evaluation outputs: the FP32 reference outputs and the INT8 outputs of an
unchanged plan over the evaluation set, kept in the artefact cache like the calibration table, so that a
rerun that changes only a budget or a report option runs no model.

An entry holds one engine's gated outputs over a whole evaluation set (each ``[samples, ...]`` in the set's
order, computed batch by batch with the gate's batch size) and the engine's description. Its key names
everything the values depend on: the model's content (the FP32 model's hash, or the digest of the Q/DQ
model's bytes), the data's fingerprint, the gated outputs, the batch size, the backend's description (name,
version, device, mode, options) and this package's version. An entry whose checksum, outputs or sample
count do not match is computed again, never trusted. Outputs above :data:`OUTPUT_CACHE_LIMIT_BYTES` are
not kept (the gate then streams as it always did, holding one batch at a time).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import __version__
from .backends.base import BackendInfo, Runner
from .cache import ArtifactCache, checksum_path, content_key, entry_problem
from .data import Dataset, Feeds
from .evaluate import GateAccumulator, KpiFunction, ReferenceOutputs, checked_output, run_outputs
from .results import Comparison

#: The most bytes of one engine's outputs over an evaluation set that are kept (and held while recording).
OUTPUT_CACHE_LIMIT_BYTES = 256 << 20
_KIND = "outputs"
_SUFFIX = ".npz"


@dataclass(frozen=True)
class StoredOutputs:
    """One engine's gated outputs over a whole evaluation set (by output name), and what computed them."""

    values: Mapping[str, np.ndarray]
    info: BackendInfo

    @property
    def samples(self) -> int:
        return int(next(iter(self.values.values())).shape[0])

    def batch(self, start: int, count: int, *, precision: str) -> dict[str, np.ndarray]:
        """The outputs of samples ``start`` to ``start + count``, checked like computed ones."""
        return {
            name: checked_output(values[start : start + count], name, precision=precision, first_sample=start)
            for name, values in self.values.items()
        }

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        meta = {"outputs": list(self.values), "info": self.info.as_dict()}
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
        arrays.update({f"output_{i}": values for i, values in enumerate(self.values.values())})
        np.savez(buffer, allow_pickle=False, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> StoredOutputs:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            values = {str(name): archive[f"output_{i}"] for i, name in enumerate(meta["outputs"])}
        return cls(values=values, info=BackendInfo(**meta["info"]))

    def fits(self, outputs: tuple[str, ...], samples: int) -> bool:
        """True when these are ``outputs`` over ``samples`` samples (an entry that is not is never used)."""
        return tuple(self.values) == outputs and all(
            values.ndim >= 1 and values.shape[0] == samples for values in self.values.values()
        )


def outputs_key(
    *,
    precision: str,
    model_digest: str,
    data_fingerprint: str,
    outputs: tuple[str, ...],
    batch_size: int,
    backend: Mapping[str, object],
) -> str:
    return content_key(
        {
            "precision": precision,
            "model": model_digest,
            "data": data_fingerprint,
            "outputs": list(outputs),
            "batch_size": batch_size,
            "backend": dict(backend),
            "version": __version__,
        }
    )


def model_digest(serialized: bytes) -> str:
    """The content digest of a serialized model (the Q/DQ model's identity in an outputs key)."""
    return hashlib.sha256(serialized).hexdigest()


def file_digest(path: Path) -> str:
    """The content digest of a file ("missing" when it cannot be read: the check itself reports that)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


class OutputStore:
    """Stored outputs by key in an :class:`ArtifactCache` (checksums verified on every read)."""

    def __init__(self, cache: ArtifactCache, *, limit: int = OUTPUT_CACHE_LIMIT_BYTES) -> None:
        self.cache = cache
        self.limit = limit

    def get(self, key: str, outputs: tuple[str, ...], samples: int) -> StoredOutputs | None:
        """The entry of ``key`` when it is intact and holds ``outputs`` over ``samples`` samples; else None
        (a damaged entry is reported and rewritten when the outputs are computed again)."""
        path = self.cache.path(_KIND, key, _SUFFIX)
        if entry_problem(path) is not None:  # missing or damaged: computed again (and rewritten)
            return None
        try:
            stored = StoredOutputs.from_bytes(path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._discard(path, f"cannot be read ({type(exc).__name__})")
            return None
        if not stored.fits(outputs, samples):
            self._discard(path, f"does not hold the outputs {list(outputs)} over {samples} samples")
            return None
        return stored

    def _discard(self, path: Path, problem: str) -> None:
        """Drop an entry that passed its checksum but cannot be used, so that it is written again."""
        self.cache.notes.append(f"cache entry {path} {problem}; computed the outputs again")
        checksum_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def put(self, key: str, stored: StoredOutputs) -> None:
        self.cache.get_or_build(_KIND, key, _SUFFIX, stored.to_bytes)


class OutputRecorder:
    """Keeps the batches of one engine's outputs while they stream by, until they would exceed ``limit``
    bytes over ``samples`` samples (then keeps nothing: such outputs are not stored)."""

    def __init__(self, samples: int, limit: int) -> None:
        self.samples = samples
        self.limit = limit
        self.parts: dict[str, list[np.ndarray]] | None = {}
        self.seen = 0

    def add(self, values: Mapping[str, np.ndarray]) -> None:
        if self.parts is None:
            return
        count = next(iter(values.values())).shape[0]
        self.seen += count
        projected = sum(v.nbytes for v in values.values()) * self.samples / max(count, 1)
        if projected > self.limit:
            self.parts = None
            return
        for name, value in values.items():
            self.parts.setdefault(name, []).append(value.copy())

    def values(self) -> dict[str, np.ndarray] | None:
        """The outputs over the whole set; None when they were not kept (too big, shapes that differ
        between batches, or not every sample seen)."""
        if self.parts is None or not self.parts or self.seen != self.samples:
            return None
        try:
            return {name: np.concatenate(parts) for name, parts in self.parts.items()}
        except ValueError:  # e.g. a detection output whose size differs from batch to batch
            return None


#: An engine's outputs: stored values over the whole set, or a runner to compute them.
Source = StoredOutputs | Runner


def compare_sources(
    fp32: Source,
    int8: Source,
    dataset: Dataset,
    *,
    outputs: tuple[str, ...],
    batch_size: int,
    labels: np.ndarray | None = None,
    kpi: KpiFunction | None = None,
    recorders: tuple[OutputRecorder | None, OutputRecorder | None] = (None, None),
) -> Comparison:
    """The comparison :func:`evaluate.compare` makes, batch for batch, with either engine's outputs read
    from stored values instead of computed; ``recorders`` keep the computed ones."""
    accumulator = GateAccumulator(outputs, labels=labels is not None, kpi=kpi is not None)
    stored = isinstance(fp32, StoredOutputs) and isinstance(int8, StoredOutputs)
    for start, feeds, count in _batches(dataset, batch_size, stored):
        values = []
        for source, precision, recorder in zip((fp32, int8), ("FP32", "INT8"), recorders, strict=True):
            if isinstance(source, StoredOutputs):
                values.append(source.batch(start, count, precision=precision))
                continue
            assert feeds is not None
            computed = run_outputs(source, feeds, outputs, precision=precision, first_sample=start)
            if recorder is not None:
                recorder.add(computed)
            values.append(computed)
        accumulator.add(values[0], values[1], None if labels is None else labels[start : start + count])
    return accumulator.result(kpi)


def _batches(dataset: Dataset, batch_size: int, all_stored: bool) -> Iterator[tuple[int, Feeds | None, int]]:
    """(first sample, feeds or None when every source is stored, samples) per batch, in the set's order."""
    if all_stored:
        total = dataset.num_samples
        for start in range(0, total, batch_size):
            yield start, None, min(batch_size, total - start)
        return
    start = 0
    for feeds in dataset.batches(batch_size):
        count = next(iter(feeds.values())).shape[0]
        yield start, feeds, count
        start += count


class EvaluationOutputs:
    """The gate's evaluation outputs, read from the store when their key is there and stored when made.

    ``fp32_key`` says what the FP32 outputs depend on; ``int8_info`` is the INT8 engine's description when
    its outputs came from the store (no engine was built).
    """

    def __init__(
        self,
        store: OutputStore,
        *,
        fp32_model_hash: str,
        dataset: Dataset,
        outputs: tuple[str, ...],
        batch_size: int,
        backend: Mapping[str, object],
        hits: list[str] | None = None,
    ) -> None:
        self.store = store
        self.dataset = dataset
        self.outputs = outputs
        self.batch_size = batch_size
        self._backend = dict(backend)
        self.fp32_key = self._key("fp32", fp32_model_hash)
        self._fp32: StoredOutputs | None = store.get(self.fp32_key, outputs, dataset.num_samples)
        self._fp32_unreported = self._fp32 is not None
        self.int8_info: BackendInfo | None = None
        #: What was read from the store ("FP32 outputs", "INT8 outputs"), appended to the caller's list.
        self.hits: list[str] = [] if hits is None else hits
        self._digests: dict[int, tuple[onnx.ModelProto, str]] = {}

    def _key(self, precision: str, digest: str) -> str:
        return outputs_key(
            precision=precision,
            model_digest=digest,
            data_fingerprint=self.dataset.fingerprint,
            outputs=self.outputs,
            batch_size=self.batch_size,
            backend=self._backend,
        )

    def int8_digest(self, model: onnx.ModelProto) -> str:
        """The content digest of a Q/DQ model (serialized deterministically; remembered per model object)."""
        if self._digests.get(id(model), (None, ""))[0] is not model:
            self._digests[id(model)] = (model, model_digest(model.SerializeToString(deterministic=True)))
        return self._digests[id(model)][1]

    @property
    def fp32_values(self) -> StoredOutputs | None:
        """The stored FP32 outputs over the whole evaluation set, if they are known."""
        return self._fp32

    def compare(
        self,
        fp32_runner: Callable[[], Runner],
        int8_runner: Callable[[], Runner],
        *,
        int8_model: onnx.ModelProto | None,
        labels: np.ndarray | None,
        kpi: KpiFunction | None,
    ) -> Comparison:
        """FP32 against INT8 on the whole evaluation set. With ``int8_model`` (the Q/DQ model) the INT8
        outputs are looked up and stored too; without it they are computed (another plan's probe)."""
        samples = self.dataset.num_samples
        int8_key = None if int8_model is None else self._key("int8", self.int8_digest(int8_model))
        int8_stored = None if int8_key is None else self.store.get(int8_key, self.outputs, samples)
        # the INT8 engine first: its build errors come before anything else
        int8_source: Source = int8_stored if int8_stored is not None else int8_runner()
        fp32_source: Source = self._fp32 if self._fp32 is not None else fp32_runner()
        limit = self.store.limit
        fp32_recorder = None if self._fp32 is not None else OutputRecorder(samples, limit)
        int8_recorder = (
            None if int8_stored is not None or int8_key is None else OutputRecorder(samples, limit)
        )
        comparison = compare_sources(
            fp32_source,
            int8_source,
            self.dataset,
            outputs=self.outputs,
            batch_size=self.batch_size,
            labels=labels,
            kpi=kpi,
            recorders=(fp32_recorder, int8_recorder),
        )
        if self._fp32 is not None:
            if self._fp32_unreported:  # read from the store: reported once, at the first comparison
                self.hits.append("FP32 outputs")
                self._fp32_unreported = False
        elif fp32_recorder is not None and (values := fp32_recorder.values()) is not None:
            assert not isinstance(fp32_source, StoredOutputs)
            self._fp32 = StoredOutputs(values, fp32_source.describe())
            self.store.put(self.fp32_key, self._fp32)
        if int8_stored is not None:
            self.hits.append("INT8 outputs")
            self.int8_info = int8_stored.info
        elif (
            int8_key is not None
            and int8_recorder is not None
            and (values := int8_recorder.values()) is not None
        ):
            assert not isinstance(int8_source, StoredOutputs)
            self.store.put(int8_key, StoredOutputs(values, int8_source.describe()))
        return comparison


def reference_from_stored(
    stored: StoredOutputs,
    fp32_runner: Callable[[], Runner],
    subset: Dataset,
    first: int,
    *,
    outputs: tuple[str, ...],
    batch_size: int,
    labels: np.ndarray | None,
) -> ReferenceOutputs:
    """The FP32 reference of the evaluation samples ``first`` to ``first + subset.num_samples`` (``subset``),
    cut from the stored outputs of the whole set. A batch of the subset that is not a batch of the whole set
    (other samples, or fewer) is computed again, so that each reference value is what the FP32 engine gives
    for that very batch."""
    kept = []
    total = stored.samples
    for start, feeds, count in _batches(subset, batch_size, False):
        assert feeds is not None
        at = first + start
        if at % batch_size == 0 and count == min(batch_size, total - at):
            kept.append((feeds, stored.batch(at, count, precision="FP32")))
        else:
            computed = run_outputs(fp32_runner(), feeds, outputs, precision="FP32", first_sample=at)
            kept.append((feeds, computed))
    return ReferenceOutputs(outputs, tuple(kept), labels)
