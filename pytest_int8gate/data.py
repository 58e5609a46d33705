"""Calibration and evaluation data: read it, check it against the model, fingerprint it, batch it.

Sources: a ``.npz`` (keys = model input names, axis 0 = samples), a ``.npy`` (single-input models),
a folder of ``.npz``/``.npy`` files (read in name order), ``module:function`` naming a callable
that yields feed dicts, or feed dicts in memory. Arrays are read with ``allow_pickle=False``, and only after
their declared size was checked against the file. Hostile sources end in one :class:`DataError` sentence:
no source gives more than ``max_samples`` samples (a loader that never ends stops there), and a loader
that blocks for ``data_timeout`` seconds without yielding is abandoned.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import math
import os
import queue
import re
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import DataError, bounded_repr, bounded_text
from .graph import ModelInfo, TensorInfo

# the settings' defaults (their home is the settings table); these import paths stay
from .settings import DEFAULT_BATCH_SIZE as DEFAULT_BATCH_SIZE
from .settings import DEFAULT_DATA_TIMEOUT_S as DEFAULT_DATA_TIMEOUT_S
from .settings import DEFAULT_MAX_SAMPLES as DEFAULT_MAX_SAMPLES
from .settings import SETTINGS, name_of
from .settings import is_loader_spec as is_loader_spec

Feeds = dict[str, np.ndarray]
#: Receives one line about reading data (what is read, how many samples so far, what it waits for).
DataProgress = Callable[[str], None]
#: How often a wait for a loader item is reported, and samples read at most (seconds).
PROGRESS_INTERVAL_S = 5.0
#: Deflate expands at most ~1032x: a .npz member that claims more than this is forged (a zip bomb).
_DEFLATE_MAX_RATIO = 1100


def _setting_hint(name: str) -> str:
    option = next(setting.option for setting in SETTINGS if setting.name == name)
    return f"the {name} setting ({name_of(option)})"


_MAX_SAMPLES_HINT = _setting_hint("max_samples")
_TIMEOUT_HINT = _setting_hint("data_timeout")


@dataclass(frozen=True)
class Dataset:
    """Validated feeds for one model: re-iterable, fingerprinted, batched on demand."""

    source: str
    num_samples: int
    fingerprint: str
    input_names: tuple[str, ...]
    sample_shapes: Mapping[str, tuple[int, ...]]
    chunks: Callable[[], Iterator[Feeds]] = field(repr=False, compare=False)
    #: A model with a fixed batch axis runs whole batches only: subsets keep a multiple of it.
    batch_multiple: int = 1
    #: Samples that differ from every other one (all inputs' bytes compared); 0 when not counted.
    distinct_samples: int = 0

    def batches(self, batch_size: int) -> Iterator[Feeds]:
        """Feeds of ``batch_size`` samples (the last one may be smaller), in the source's order."""
        if batch_size < 1:
            raise DataError(f"{self.source}: batch size must be at least 1, not {batch_size}.")
        pending: list[Feeds] = []
        pending_count = 0
        seen = 0
        # The fingerprint names this content in cache keys and reports: a source that yields anything
        # else on a later pass (a loader with random or one-shot data, a file rewritten mid-run) is an
        # error, never a silent mismatch between what was calibrated, evaluated and cached.
        digest = hashlib.sha256()
        for chunk in self.chunks():
            if tuple(sorted(chunk)) != self.input_names or any(
                tuple(chunk[k].shape[1:]) != self.sample_shapes[k] for k in self.input_names
            ):
                raise DataError(f"{self.source}: {_CHANGED_BETWEEN_PASSES}")
            size = _chunk_len(chunk)
            seen += size
            if seen > self.num_samples:  # also stops a loader that never ends on a later pass
                raise DataError(f"{self.source}: {_CHANGED_BETWEEN_PASSES}")
            for key in self.input_names:
                _fingerprint_update(digest, key, chunk[key])
            start = 0
            while start < size:
                take = min(batch_size - pending_count, size - start)
                pending.append({k: v[start : start + take] for k, v in chunk.items()})
                pending_count += take
                start += take
                if pending_count == batch_size:
                    yield _concat(pending)
                    pending, pending_count = [], 0
        if pending:
            yield _concat(pending)
        if digest.hexdigest() != self.fingerprint:
            raise DataError(f"{self.source}: {_CHANGED_BETWEEN_PASSES}")

    def head(self, count: int) -> Dataset:
        """The first ``count`` samples, held in memory (a fixed subset for repeated evaluations); rounded
        down to whole batches of a model's fixed batch axis (at least one batch)."""
        count = min(count, self.num_samples)
        if self.batch_multiple > 1:
            count = min(max(count - count % self.batch_multiple, self.batch_multiple), self.num_samples)
        taken = next(self.batches(count))
        subset = Dataset.from_arrays(taken, source=f"{self.source}[:{count}]")
        return replace(subset, batch_multiple=self.batch_multiple)

    def after(self, count: int) -> Dataset | None:
        """The samples after the first ``count``, held in memory (the samples a search on ``head(count)``
        never saw); rounded down to whole batches of a fixed batch axis; None when nothing is left."""
        count = max(count, 0)
        rest = self.num_samples - count
        if self.batch_multiple > 1:
            rest -= rest % self.batch_multiple
        if rest <= 0:
            return None
        parts = list(self.batches(count)) if count > 0 else [next(self.batches(self.num_samples))]
        kept = _concat(parts[1:] if count > 0 else parts)
        kept = {k: v[:rest] for k, v in kept.items()}
        subset = Dataset.from_arrays(kept, source=f"{self.source}[{count}:{count + rest}]")
        return replace(subset, batch_multiple=self.batch_multiple)

    @staticmethod
    def from_arrays(feeds: Mapping[str, np.ndarray], *, source: str = "<arrays>") -> Dataset:
        """A dataset over in-memory arrays (axis 0 = samples), not yet checked against a model."""
        arrays = {k: np.asarray(v) for k, v in feeds.items()}
        return _scan(lambda: iter([arrays]), source)

    @staticmethod
    def from_feeds(
        items: Iterable[Mapping[str, Any]],
        *,
        source: str = "<feed dicts>",
        max_samples: int = DEFAULT_MAX_SAMPLES,
    ) -> Dataset:
        """A dataset over feed dicts (a list, or a generator that can be read only once: its items are
        copied into memory, at most ``max_samples`` samples), not yet checked against a model."""
        chunks: list[Feeds] = []
        total = 0
        for index, feeds in enumerate(items):
            if not isinstance(feeds, Mapping):
                raise DataError(f"{source}: item {index} is a {type(feeds).__name__}, not a dict of arrays.")
            try:
                arrays = {str(k): np.array(v) for k, v in feeds.items()}
            except Exception as exc:  # ragged lists and the like
                raise DataError(
                    f"{source}: item {index} is not a dict of arrays ({type(exc).__name__}: "
                    f"{bounded_text(str(exc))})."
                ) from exc
            chunks.append(arrays)
            total += max((a.shape[0] for a in arrays.values() if a.ndim), default=0)
            if total > max_samples:
                raise DataError(_too_many(source, "the feed dicts hold", max_samples))
        return _scan(lambda: iter(chunks), source)


_CHANGED_BETWEEN_PASSES = (
    "the data changed between two passes over it (a module:function loader must yield the same arrays "
    "every time it is called; files must not change during the run)."
)


#: The most bytes of a non-contiguous array copied at once while hashing it (memory flat in the data's size).
_HASH_BLOCK_BYTES = 1 << 22


def _byte_blocks(array: np.ndarray) -> Iterator[memoryview]:
    """``array``'s bytes in C order as flat byte views: of the array itself when it is C-contiguous (no
    copy), else of copies of a few rows at a time (at most about :data:`_HASH_BLOCK_BYTES` each)."""
    if array.flags.c_contiguous or array.ndim == 0:
        yield np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
        return
    row_bytes = max(array.nbytes // max(array.shape[0], 1), 1)
    rows = max(_HASH_BLOCK_BYTES // row_bytes, 1)
    for start in range(0, array.shape[0], rows):
        yield np.ascontiguousarray(array[start : start + rows]).reshape(-1).view(np.uint8).data


def _fingerprint_update(digest: hashlib._Hash, key: str, array: np.ndarray) -> None:
    """Hash ``array``'s name, dtype, shape and bytes (the same digest as of its C-order ``tobytes()``),
    without copying a contiguous array and in bounded blocks otherwise."""
    digest.update(f"{key}|{array.dtype.str}|{array.shape}".encode())
    for block in _byte_blocks(array):
        digest.update(block)


def _chunk_len(chunk: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(chunk.values())).shape[0])


def _concat(parts: list[Feeds]) -> Feeds:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


def load_dataset(
    spec: str | os.PathLike[str],
    model: ModelInfo,
    *,
    role: str = "calibration",
    search_path: str | os.PathLike[str] | None = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    timeout_s: float = DEFAULT_DATA_TIMEOUT_S,
    progress: DataProgress | None = None,
) -> Dataset:
    """Read the data named by ``spec`` and check it against ``model``'s inputs.

    At most ``max_samples`` samples are read; a ``module:function`` loader that yields no item for
    ``timeout_s`` seconds is abandoned (its thread cannot be stopped and is left to end with the process).
    ``progress`` hears what is read, the samples so far and any wait for a loader.
    """
    text = os.fspath(spec)
    report = progress or _silent
    if is_loader_spec(text):
        chunks = _loader_chunks(text, model, search_path, timeout_s, report)
    else:
        chunks = _file_chunks(Path(text), model, role, max_samples)
    report(f"reading {role} data {text}")
    return _scan(chunks, text, model, role, max_samples=max_samples, progress=report)


def _silent(message: str) -> None:
    pass


def _too_many(source: str, what: str, max_samples: int) -> str:
    return (
        f"{source}: {what} more than {max_samples} samples, the cap set by {_MAX_SAMPLES_HINT}; give "
        "fewer samples or raise the cap."
    )


def _file_chunks(path: Path, model: ModelInfo, role: str, max_samples: int) -> Callable[[], Iterator[Feeds]]:
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy") and p.is_file())
            if not files:
                raise DataError(f"{path}: the {role} data folder holds no .npz or .npy files.")
        elif path.is_file():
            if path.suffix not in (".npz", ".npy"):
                raise DataError(
                    f"{path}: {role} data must be .npz, .npy, a folder of them, or module:function."
                )
            files = [path]
        else:
            raise DataError(f"{path}: {role} data not found.")
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long, a folder that cannot be listed
        raise DataError(
            f"{bounded_repr(str(path))}: cannot read the {role} data ({bounded_text(str(exc))})."
        ) from exc

    def chunks() -> Iterator[Feeds]:
        for file in files:
            yield _read_array_file(file, model, max_samples)

    return chunks


def read_numpy_file(path: Path, *, max_rows: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` by name, or a ``.npy``'s array under the key ``""``; never unpickles.

    Each array's header is read first: an array that declares more bytes than the file can hold (a
    forged header), or more than ``max_rows`` samples, is refused before anything is allocated.
    """
    try:
        with path.open("rb") as handle:
            magic = handle.read(6)
            handle.seek(0)
            if path.suffix == ".npy":
                if magic != b"\x93NUMPY":
                    raise DataError(f"{path}: not a readable numpy file (no .npy header).")
                _check_npy_header(handle, os.fstat(handle.fileno()).st_size, path, "", max_rows)
                handle.seek(0)
                return {"": np.lib.format.read_array(handle, allow_pickle=False)}
            if not magic.startswith(b"PK"):
                raise DataError(f"{path}: not a readable numpy file (a .npz must be a zip archive).")
            with zipfile.ZipFile(handle) as archive:
                return _read_npz(archive, path, os.fstat(handle.fileno()).st_size, max_rows)
    except DataError:
        raise
    except MemoryError as exc:
        raise DataError(f"{path}: does not fit in memory; give fewer samples per file.") from exc
    except ValueError as exc:
        if "Object arrays cannot be loaded" in str(exc):
            raise DataError(f"{path}: holds pickled objects, which are refused; save plain arrays.") from exc
        header = re.search(r"Header info length \((\d+)\) is large", str(exc))
        if header:
            raise DataError(
                f"{path}: not a readable numpy file (its header is {header.group(1)} bytes, more than numpy "
                "reads safely)."
            ) from exc
        raise DataError(f"{path}: not a readable numpy file ({bounded_text(str(exc))}).") from exc
    except (OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression method
        raise DataError(f"{path}: not a readable numpy file ({bounded_text(str(exc))}).") from exc


def _read_npz(
    archive: zipfile.ZipFile, path: Path, archive_size: int, max_rows: int | None
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for info in archive.infolist():
        if info.is_dir():
            continue
        if not info.filename.endswith(".npy"):
            raise DataError(
                f"{path}: member {bounded_repr(info.filename)} is not a .npy array; a .npz holds only "
                "arrays saved by numpy (np.savez)."
            )
        key = info.filename[: -len(".npy")]
        if key in arrays:
            raise DataError(f"{path}: array {bounded_repr(key)} appears twice in the archive.")
        # the sizes come from the archive's directory: bound them by the bytes the archive really has
        if info.compress_size > archive_size or (
            info.compress_type == zipfile.ZIP_STORED and info.file_size > info.compress_size
        ):
            raise DataError(
                f"{path}: member {bounded_repr(info.filename)} claims more bytes than the file has."
            )
        if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > (
            info.compress_size * _DEFLATE_MAX_RATIO + 4096
        ):
            raise DataError(
                f"{path}: member {bounded_repr(info.filename)} claims to expand {info.file_size} bytes from "
                f"{info.compress_size}, more than deflate can; the archive is forged."
            )
        with archive.open(info) as member:
            _check_npy_header(member, info.file_size, path, key, max_rows)
        with archive.open(info) as member:
            arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
    return arrays


def _check_npy_header(stream: IO[bytes], size: int, path: Path, key: str, max_rows: int | None) -> None:
    """Read a ``.npy`` header from ``stream`` (``size`` bytes with the header) and refuse what cannot be
    read honestly: pickled objects, a payload larger than the bytes present, more than ``max_rows``."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    else:  # 2.0 and 3.0 share the layout (3.0 only allows utf-8 in the header text)
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    array = f"array {bounded_repr(key)}" if key else "the array"
    if dtype.hasobject:
        raise DataError(f"{path}: holds pickled objects, which are refused; save plain arrays.")
    declared = math.prod(shape) * dtype.itemsize
    available = size - stream.tell()
    if declared > available:
        raise DataError(
            f"{path}: {array} declares shape {list(shape)} of {dtype} ({_bytes_text(declared)}) but the "
            f"file holds only {_bytes_text(max(available, 0))} of it; the file is truncated or forged."
        )
    if max_rows is not None and shape and shape[0] > max_rows:
        raise DataError(_too_many(str(path), f"{array} holds {shape[0]} samples,", max_rows))


def _bytes_text(count: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("kB", 1000)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count} bytes"


def _read_array_file(path: Path, model: ModelInfo, max_samples: int) -> Feeds:
    arrays = read_numpy_file(path, max_rows=max_samples)
    if path.suffix != ".npy":
        return arrays
    if len(model.inputs) != 1:
        names = ", ".join(t.name for t in model.inputs)
        raise DataError(f"{path}: a .npy holds one array but the model has inputs {names}; use .npz.")
    return {model.inputs[0].name: arrays[""]}


def _loader_chunks(
    spec: str,
    model: ModelInfo,
    search_path: str | os.PathLike[str] | None,
    timeout_s: float,
    progress: DataProgress,
) -> Callable[[], Iterator[Feeds]]:
    module_name, _, func_name = spec.partition(":")
    if search_path is not None and os.fspath(search_path) not in sys.path:
        sys.path.insert(0, os.fspath(search_path))
    try:
        module = importlib.import_module(module_name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too: importing the user's module must not end the run
        raise DataError(
            f"{spec}: cannot import module {module_name!r} ({type(exc).__name__}: {bounded_text(str(exc))})."
        ) from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise DataError(f"{spec}: module {module_name!r} has no callable {func_name!r}.")

    def chunks() -> Iterator[Feeds]:
        return _loader_items(spec, func, timeout_s, progress)

    return chunks


def _loader_items(
    spec: str, func: Callable[[], object], timeout_s: float, progress: DataProgress
) -> Iterator[Feeds]:
    """The loader's items, produced in a daemon thread so that a loader that blocks can be abandoned
    after ``timeout_s`` seconds; at most one item is made ahead of the consumer."""
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()
    worker = threading.Thread(
        target=_run_loader, args=(spec, func, handoff, stop), name=f"int8gate loader {spec}", daemon=True
    )
    worker.start()
    index = 0
    try:
        while True:
            kind, payload = _next_from_loader(handoff, spec, index, timeout_s, progress)
            if kind == "end":
                return
            if kind == "raise":
                raise payload
            yield payload
            index += 1
    finally:
        stop.set()  # the worker closes the loader's generator when it next gets control


def _next_from_loader(
    handoff: queue.Queue[tuple[str, Any]], spec: str, index: int, timeout_s: float, progress: DataProgress
) -> tuple[str, Any]:
    started = time.monotonic()
    while True:
        waited = time.monotonic() - started
        if waited >= timeout_s:
            raise DataError(
                f"{spec}: the data loader yielded no item for {timeout_s:g} s (waiting for item {index}), "
                f"the limit set by {_TIMEOUT_HINT}; it was abandoned."
            )
        try:
            return handoff.get(timeout=min(PROGRESS_INTERVAL_S, timeout_s - waited))
        except queue.Empty:
            waited = time.monotonic() - started
            if waited < timeout_s:
                progress(
                    f"waiting for {spec} to yield item {index}: {waited:.0f} s of at most {timeout_s:g} s"
                )


def _run_loader(
    spec: str, func: Callable[[], object], handoff: queue.Queue[tuple[str, Any]], stop: threading.Event
) -> None:
    """The worker: call the loader, copy each item's arrays, hand them over; every failure (SystemExit
    too) becomes a message for the consumer."""

    def hand_over(kind: str, payload: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put((kind, payload), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    produced: object = None
    index: int | None = None
    try:
        produced = func()
        if isinstance(produced, Mapping):
            produced = [produced]
        if not isinstance(produced, Iterable) or isinstance(produced, (str, bytes)):
            hand_over("raise", DataError(f"{spec}: must return or yield dicts of input name -> array."))
            return
        items = iter(produced)
        index = 0
        while not stop.is_set():
            try:
                feeds = next(items)
            except StopIteration:
                hand_over("end", None)
                return
            if not isinstance(feeds, Mapping):
                raise DataError(f"{spec}: item {index} is a {type(feeds).__name__}, not a dict of arrays.")
            # copies: a loader may refill one buffer for every item, and a batch can span items
            arrays = {str(k): np.array(v) for k, v in feeds.items()}
            if not hand_over("item", arrays):
                return
            index += 1
    except DataError as exc:
        hand_over("raise", exc)
    except BaseException as exc:  # the user's code: its failure is a data error naming the loader
        hand_over("raise", _loader_failure(spec, exc, index))
    finally:
        close = getattr(produced, "close", None)
        if stop.is_set() and callable(close):  # abandoned mid-way: let the generator's cleanup run
            with contextlib.suppress(BaseException):
                close()


def _loader_failure(spec: str, exc: BaseException, index: int | None) -> BaseException:
    if isinstance(exc, KeyboardInterrupt):
        return exc  # raised again by the consumer: an interrupt still stops the run
    at = "" if index is None else f" at item {index}"
    if isinstance(exc, SystemExit):
        error = DataError(
            f"{spec}: the data loader called sys.exit({bounded_repr(exc.code)}){at}; a loader must return "
            "or raise, not end the process."
        )
    else:
        error = DataError(
            f"{spec}: the data loader raised {type(exc).__name__}{at}: {bounded_text(str(exc))}"
        )
    error.__cause__ = exc
    return error


def _scan(
    chunks: Callable[[], Iterator[Feeds]],
    source: str,
    model: ModelInfo | None = None,
    role: str = "calibration",
    *,
    max_samples: int | None = None,
    progress: DataProgress = _silent,
) -> Dataset:
    """One pass: count samples, check chunks (against ``model`` if given), fingerprint the content."""
    digest = hashlib.sha256()
    total = 0
    names: tuple[str, ...] | None = None
    shapes: dict[str, tuple[int, ...]] = {}
    # one 16-byte digest per distinct sample: a set bounded by the sample count, never by the data's size
    distinct: set[bytes] = set()
    reported = time.monotonic()
    stream = chunks()
    try:
        for index, chunk in enumerate(stream):
            total += _scan_chunk(chunk, index, source, model, role, total, names, shapes, digest)
            distinct.update(_sample_digests(chunk, tuple(sorted(chunk))))
            names = names or tuple(sorted(chunk))
            if max_samples is not None and total > max_samples:
                raise DataError(_too_many(source, f"the {role} data holds", max_samples))
            if time.monotonic() - reported >= PROGRESS_INTERVAL_S:
                progress(f"read {total} samples of {source}")
                reported = time.monotonic()
    finally:
        close = getattr(stream, "close", None)
        if callable(close):  # a loader stopped at the cap or at an error stops producing now
            close()
    if names is None or total == 0:
        raise DataError(f"{source}: the data holds no samples.")
    multiple = 1
    if model is not None:
        for tensor in model.inputs:
            _check_shape(source, tensor, shapes[tensor.name])
        multiple = _whole_batches(source, role, model, total)
    return Dataset(
        source=source,
        num_samples=total,
        fingerprint=digest.hexdigest(),
        input_names=names,
        sample_shapes=shapes,
        chunks=chunks,
        batch_multiple=multiple,
        distinct_samples=len(distinct),
    )


def _scan_chunk(
    chunk: Feeds,
    index: int,
    source: str,
    model: ModelInfo | None,
    role: str,
    first_sample: int,
    names: tuple[str, ...] | None,
    shapes: dict[str, tuple[int, ...]],
    digest: hashlib._Hash,
) -> int:
    """Check one chunk against the ones before (and ``model``); fingerprint it; return its length."""
    keys = tuple(sorted(chunk))
    if not keys:
        raise DataError(f"{source}: chunk {index} holds no arrays.")
    if names is None:
        if model is not None:
            _check_names(source, role, keys, model)
    elif keys != names:
        raise DataError(
            f"{source}: chunk {index} has arrays {bounded_repr(list(keys))}, earlier chunks "
            f"{bounded_repr(list(names))}."
        )
    lengths = {k: (chunk[k].shape[0] if chunk[k].ndim else -1) for k in keys}
    if len(set(lengths.values())) != 1 or -1 in lengths.values():
        raise DataError(
            f"{source}: arrays must share axis 0 (samples); chunk {index} has lengths "
            f"{bounded_repr(lengths)}."
        )
    for key in keys:
        array = chunk[key]
        if array.dtype.hasobject:
            raise DataError(f"{source}: array {bounded_repr(key)} has dtype object; save numeric arrays.")
        shape = tuple(int(d) for d in array.shape[1:])
        if shapes.setdefault(key, shape) != shape:
            raise DataError(
                f"{source}: array {bounded_repr(key)} has per-sample shape {list(shape)} in chunk {index} "
                f"but {list(shapes[key])} before; shapes must not vary."
            )
        if model is not None:
            _check_values(source, first_sample, model.input(key), array)
        _fingerprint_update(digest, key, array)
    return lengths[keys[0]]


def _whole_batches(source: str, role: str, model: ModelInfo, total: int) -> int:
    """A model exported with a fixed batch axis runs whole batches only: refuse a sample count that
    would leave a partial batch (padding it would put invented samples into calibration statistics)."""
    fixed = fixed_batch_size(model)
    if fixed is None or total % fixed == 0:
        return fixed or 1
    tensor = next(t for t in model.inputs if t.shape and t.shape[0] == fixed)
    usable = total - total % fixed
    example = f"e.g. {usable}" if usable else f"at least {fixed}"
    raise DataError(
        f"{source}: {total} {role} samples do not fill whole batches of {fixed}, the fixed batch axis of "
        f"model input {tensor.name!r} {tensor.shape_text()}; give a multiple of {fixed} samples ({example}) "
        "or export the model with a dynamic batch axis."
    )


def _sample_digests(chunk: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> list[bytes]:
    """One digest per sample of ``chunk`` over every input's bytes of that sample."""
    arrays = [chunk[key] for key in keys]
    digests = []
    for index in range(arrays[0].shape[0]):
        sample = hashlib.blake2b(digest_size=16)
        for array in arrays:
            # one sample at a time: never a copy of the whole chunk
            for block in _byte_blocks(np.asarray(array[index])):
                sample.update(block)
        digests.append(sample.digest())
    return digests


def check_dataset(dataset: Dataset, model: ModelInfo, *, role: str = "calibration") -> Dataset:
    """``dataset`` checked against ``model``'s inputs; :class:`DataError` says exactly what does not fit."""
    return _scan(dataset.chunks, dataset.source, model, role)


def _check_names(source: str, role: str, given_names: tuple[str, ...], model: ModelInfo) -> None:
    expected, given = {t.name for t in model.inputs}, set(given_names)
    if given == expected:
        return
    missing, extra = sorted(expected - given), sorted(given - expected)
    parts = []
    if missing:
        parts.append(f"missing model input(s) {missing}")
    if extra:
        parts.append(f"unknown name(s) {extra} (the model's inputs are {sorted(expected)})")
    raise DataError(f"{source}: {role} data has " + " and ".join(parts) + ".")


def _check_values(source: str, first_sample: int, tensor: TensorInfo, array: np.ndarray) -> None:
    if array.dtype != tensor.dtype:
        raise DataError(
            f"{source}: input {tensor.name!r} has dtype {array.dtype} but the model expects "
            f"{tensor.dtype}; convert it (e.g. .astype(np.{tensor.dtype})) when saving."
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = first_sample + int(np.argwhere(~np.isfinite(array.reshape(array.shape[0], -1)))[0][0])
        raise DataError(f"{source}: input {tensor.name!r} holds NaN or Inf (sample {bad}).")


def _check_shape(source: str, tensor: TensorInfo, sample_shape: tuple[int, ...]) -> None:
    if tensor.shape is None:
        return
    model_dims = tensor.shape[1:]
    if len(model_dims) != len(sample_shape):
        raise DataError(
            f"{source}: input {tensor.name!r} has per-sample shape {list(sample_shape)} but the model "
            f"expects {tensor.shape_text()} (axis 0 = samples)."
        )
    for axis, (want, have) in enumerate(zip(model_dims, sample_shape, strict=True), start=1):
        if isinstance(want, int) and want > 0 and want != have:
            raise DataError(
                f"{source}: input {tensor.name!r} axis {axis} is {have} but the model expects {want} "
                f"(model shape {tensor.shape_text()}, data per-sample shape {list(sample_shape)})."
            )


def fixed_batch_size(model: ModelInfo) -> int | None:
    """The batch every run of ``model`` must have when its inputs fix axis 0 (often 1), else None."""
    fixed = {t.shape[0] for t in model.inputs if t.shape and isinstance(t.shape[0], int) and t.shape[0] > 0}
    if len(fixed) > 1:
        raise DataError(f"{model.source}: inputs have different fixed batch sizes {sorted(fixed)}.")
    return int(fixed.pop()) if fixed else None


def batch_size_for(model: ModelInfo, requested: int = DEFAULT_BATCH_SIZE) -> int:
    """A model exported with a fixed batch axis (often 1) must be fed exactly that many samples."""
    return fixed_batch_size(model) or requested


def load_labels(path: str | os.PathLike[str], num_samples: int, *, classes: int | None = None) -> np.ndarray:
    """Integer class labels, one per evaluation sample (``.npy``, or a ``.npz`` with one array)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: labels file not found.")
    if file.suffix not in (".npy", ".npz"):
        raise DataError(f"{file}: labels must be a .npy (or a .npz holding one array).")
    arrays = read_numpy_file(file)
    if len(arrays) != 1:
        raise DataError(f"{file}: a labels .npz must hold exactly one array, not {sorted(arrays)}.")
    labels = next(iter(arrays.values()))
    return check_labels(labels, num_samples, source=str(file), classes=classes)


def check_labels(
    labels: np.ndarray, num_samples: int, *, source: str = "labels", classes: int | None = None
) -> np.ndarray:
    """One integer class per evaluation sample, as int64, each in ``0..classes-1`` when ``classes`` is
    known (a label no output can match would make top-1 0 for FP32 and INT8 alike: a drop of 0)."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{source}: labels must be a 1-D integer array (one class per sample), got {labels.dtype} "
            f"{list(labels.shape)}."
        )
    if labels.shape[0] != num_samples:
        raise DataError(f"{source}: {labels.shape[0]} labels for {num_samples} evaluation samples.")
    outside = (labels < 0) if classes is None else (labels < 0) | (labels >= classes)
    if outside.any():
        sample = int(np.argmax(outside))
        known = (
            "a class index is never negative"
            if classes is None
            else f"the output has classes 0..{classes - 1}"
        )
        raise DataError(f"{source}: label {int(labels[sample])} of sample {sample} is not a class; {known}.")
    return labels.astype(np.int64)
