"""Content-addressed reuse of evaluation outputs: the FP32 reference outputs and the INT8 outputs of an
unchanged plan over the evaluation set, kept in the artefact cache like the calibration table, so that a
rerun that changes only a budget or a report option runs no model.

An entry holds one engine's gated outputs over a whole evaluation set (each ``[samples, ...]`` in the set's
order, computed batch by batch with the gate's batch size) and the engine's description. Its key names
everything the values depend on: the model's content (the FP32 model's hash, or the digest of the Q/DQ
model's bytes), the data's fingerprint, the gated outputs, the batch size, the backend's description (name,
version, device, mode, options) and this package's version. An entry whose checksum, layout, outputs or
sample count do not match is computed again, never trusted.

Memory stays flat in the number of samples: outputs are written to the entry's file batch by batch while
the evaluation streams, and read back one batch at a time. Outputs above :data:`OUTPUT_CACHE_LIMIT_BYTES`
per engine are not kept.

An entry's file: :data:`_MAGIC`, the header's length (8 bytes, little-endian), a JSON header (the engine's
description, the sample count, where the values start and, per output, its name, dtype, per-sample shape
and offset), then each output's values in C order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path

import numpy as np
import onnx

from . import __version__
from .backends.base import BackendInfo, Runner
from .cache import ArtifactCache, checksum_path, content_key, entry_problem
from .data import Dataset, Feeds, sample_count
from .evaluate import GateAccumulator, KpiFunction, ReferenceOutputs, checked_output, run_outputs
from .results import Comparison

#: The most bytes of one engine's outputs over an evaluation set that are kept in the cache.
OUTPUT_CACHE_LIMIT_BYTES = 1 << 30
_KIND = "outputs"
_SUFFIX = ".bin"
_MAGIC = b"INT8GATE-OUTPUTS-1\n"
_HEADER_LIMIT = 1 << 20
_ALIGN = 64


def _aligned(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN


@dataclass(frozen=True)
class OutputLayout:
    """Where one output's values sit in an entry: ``[samples, *shape]`` of ``dtype`` from ``offset`` on
    (counted from the entry's data offset)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int

    @property
    def row_bytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize) * int(np.prod(self.shape, dtype=np.int64))


def _header(layouts: tuple[OutputLayout, ...], samples: int, info: BackendInfo) -> tuple[bytes, int]:
    """An entry's header and where its values start."""

    def text(start: int) -> bytes:
        outputs = [
            {"name": lay.name, "dtype": lay.dtype, "shape": list(lay.shape), "offset": lay.offset}
            for lay in layouts
        ]
        meta = {"samples": samples, "data": start, "info": info.as_dict(), "outputs": outputs}
        return json.dumps(meta).encode()

    start = _aligned(len(_MAGIC) + 8 + len(text(0)) + 16)  # room for the start's own digits
    meta = text(start)
    return _MAGIC + len(meta).to_bytes(8, "little") + meta, start


@dataclass(frozen=True)
class StoredOutputs:
    """One engine's gated outputs over a whole evaluation set, in an entry's file, read a batch at a time."""

    path: Path
    info: BackendInfo
    samples: int
    layouts: tuple[OutputLayout, ...]
    #: Byte offset of the values in the file (the layouts' offsets count from here).
    data_offset: int

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(layout.name for layout in self.layouts)

    @classmethod
    def open(cls, path: Path) -> StoredOutputs:
        """The entry at ``path``; ValueError when its header or sizes do not hold together."""
        size = path.stat().st_size
        with open(path, "rb") as handle:
            if handle.read(len(_MAGIC)) != _MAGIC:
                raise ValueError("it is not an outputs entry")
            length = int.from_bytes(handle.read(8), "little")
            if length > _HEADER_LIMIT:
                raise ValueError("its header is too long")
            meta = json.loads(handle.read(length))
        samples, data_offset = int(meta["samples"]), int(meta["data"])
        if samples < 1 or not meta["outputs"] or data_offset < len(_MAGIC) + 8 + length:
            raise ValueError("its header does not hold together")
        layouts = []
        for entry in meta["outputs"]:
            dtype = np.dtype(str(entry["dtype"]))
            shape = tuple(int(d) for d in entry["shape"])
            layout = OutputLayout(str(entry["name"]), dtype.str, shape, int(entry["offset"]))
            if dtype.hasobject or min(shape, default=0) < 0 or layout.offset < 0:
                raise ValueError(f"output {layout.name!r} has no valid layout")
            if data_offset + layout.offset + layout.row_bytes * samples > size:
                raise ValueError("it is shorter than its header says")
            layouts.append(layout)
        return cls(path, BackendInfo(**meta["info"]), samples, tuple(layouts), data_offset)

    def fits(self, outputs: tuple[str, ...], samples: int) -> bool:
        """True when these are ``outputs`` over ``samples`` samples (an entry that is not is never used)."""
        return self.outputs == outputs and self.samples == samples

    def batch(self, start: int, count: int, *, precision: str) -> dict[str, np.ndarray]:
        """The outputs of samples ``start`` to ``start + count``, read now and checked like computed ones."""
        values = {}
        with open(self.path, "rb") as handle:
            for layout in self.layouts:
                values[layout.name] = checked_output(
                    self._read(handle, layout, start, count),
                    layout.name,
                    precision=precision,
                    first_sample=start,
                )
        return values

    def _read(self, handle: BufferedReader, layout: OutputLayout, start: int, count: int) -> np.ndarray:
        count = max(min(count, self.samples - start), 0)
        handle.seek(self.data_offset + layout.offset + layout.row_bytes * start)
        array: np.ndarray = np.empty((count, *layout.shape), dtype=np.dtype(layout.dtype))
        if handle.readinto(array.reshape(-1).view(np.uint8).data) != array.nbytes:
            raise ValueError(f"{self.path} is shorter than its header says")
        return array

    def read_all(self) -> dict[str, np.ndarray]:
        """Every output over every sample (for small sets and tests)."""
        return self.batch(0, self.samples, precision="stored")


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
            stored = StoredOutputs.open(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._discard(path, f"cannot be read ({exc})")
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

    def recorder(self, key: str, samples: int, info: BackendInfo) -> OutputRecorder:
        """A writer of the entry ``key``, filled batch by batch."""
        return OutputRecorder(self, key, samples, info)

    def put(self, key: str, values: Mapping[str, np.ndarray], info: BackendInfo) -> StoredOutputs | None:
        """Store whole outputs (each ``[samples, ...]``) at once."""
        recorder = self.recorder(key, next(iter(values.values())).shape[0], info)
        recorder.add(values)
        return recorder.finish()


class OutputRecorder:
    """Writes one engine's outputs into a new entry of the store batch by batch as they stream by. Keeps
    nothing when they would exceed the store's limit, change shape between batches, or cannot be written
    (then a note in the cache's notes says so)."""

    def __init__(self, store: OutputStore, key: str, samples: int, info: BackendInfo) -> None:
        self.store = store
        self.key = key
        self.samples = samples
        self.info = info
        self.seen = 0
        self.dead = False
        self._path: Path | None = None
        self._layouts: tuple[OutputLayout, ...] = ()
        self._data_offset = 0

    def add(self, values: Mapping[str, np.ndarray]) -> None:
        if self.dead:
            return
        count = int(next(iter(values.values())).shape[0])
        try:
            if self._path is None and not self._start(values):
                return
            assert self._path is not None
            given = tuple((name, v.dtype.str, tuple(v.shape[1:])) for name, v in values.items())
            expected = tuple((lay.name, lay.dtype, lay.shape) for lay in self._layouts)
            if given != expected or self.seen + count > self.samples:
                self.abandon()  # e.g. a detection output whose size differs from batch to batch
                return
            with open(self._path, "r+b") as handle:
                for layout in self._layouts:
                    handle.seek(self._data_offset + layout.offset + layout.row_bytes * self.seen)
                    handle.write(np.ascontiguousarray(values[layout.name]).data)
            self.seen += count
        except OSError as exc:
            self._refused(exc)

    def _start(self, values: Mapping[str, np.ndarray]) -> bool:
        """Lay the entry out from the first batch and create its file; False when it is not kept."""
        layouts = []
        offset = 0
        for name, value in values.items():
            layout = OutputLayout(name, value.dtype.str, tuple(int(d) for d in value.shape[1:]), offset)
            layouts.append(layout)
            offset += _aligned(layout.row_bytes * self.samples)
        if offset > self.store.limit or any(np.dtype(lay.dtype).hasobject for lay in layouts):
            self.dead = True
            return False
        self._layouts = tuple(layouts)
        header, self._data_offset = _header(self._layouts, self.samples, self.info)
        self._path = self.store.cache.partial_file(_KIND, self.key, _SUFFIX)
        with open(self._path, "r+b") as handle:
            handle.write(header)
            handle.truncate(self._data_offset + offset)
        return True

    def _refused(self, exc: OSError) -> None:
        self.store.cache.notes.append(
            f"the evaluation outputs could not be kept in the cache ({exc.strerror or exc}); "
            "a rerun computes them again"
        )
        self.abandon()

    def abandon(self) -> None:
        """Keep nothing (the partial file is removed); idempotent."""
        self.dead = True
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None

    def finish(self) -> StoredOutputs | None:
        """The stored entry when every sample was written; else None (and nothing is kept)."""
        if self.dead or self._path is None or self.seen != self.samples:
            self.abandon()
            return None
        try:
            path = self.store.cache.adopt(_KIND, self.key, _SUFFIX, self._path)
            self._path = None
            return StoredOutputs.open(path)
        except OSError as exc:
            self._refused(exc)
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
        count = sample_count(feeds)
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

    def int8_values(self, model: onnx.ModelProto) -> StoredOutputs | None:
        """The stored INT8 outputs of the Q/DQ model ``model`` over the whole evaluation set, if kept."""
        key = self._key("int8", self.int8_digest(model))
        return self.store.get(key, self.outputs, self.dataset.num_samples)

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
        recorders = (
            None
            if isinstance(fp32_source, StoredOutputs)
            else self.store.recorder(self.fp32_key, samples, fp32_source.describe()),
            None
            if int8_key is None or isinstance(int8_source, StoredOutputs)
            else self.store.recorder(int8_key, samples, int8_source.describe()),
        )
        try:
            comparison = compare_sources(
                fp32_source,
                int8_source,
                self.dataset,
                outputs=self.outputs,
                batch_size=self.batch_size,
                labels=labels,
                kpi=kpi,
                recorders=recorders,
            )
        except BaseException:
            for recorder in recorders:
                if recorder is not None:
                    recorder.abandon()
            raise
        fp32_recorder, int8_recorder = recorders
        if self._fp32 is not None:
            if self._fp32_unreported:  # read from the store: reported once, at the first comparison
                self.hits.append("FP32 outputs")
                self._fp32_unreported = False
        elif fp32_recorder is not None:
            self._fp32 = fp32_recorder.finish()
        if int8_stored is not None:
            self.hits.append("INT8 outputs")
            self.int8_info = int8_stored.info
        elif int8_recorder is not None:
            int8_recorder.finish()
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
