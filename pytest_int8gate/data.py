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
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import blake3
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
    #: How the samples meet the model: constant inputs and sample axes (the chunks hold samples on axis 0).
    layout: InputLayout = field(default_factory=lambda: InputLayout())

    def batches(self, batch_size: int) -> Iterator[Feeds]:
        """Feeds of ``batch_size`` samples (the last one may be smaller), in the source's order, as the model
        takes them: each input's samples on its sample axis, constant inputs added."""
        for batch in self._sample_batches(batch_size):
            yield self.layout.to_model(batch)

    def _sample_batches(self, batch_size: int) -> Iterator[Feeds]:
        """Batches with every input's samples on axis 0 and no constant inputs (the chunks' layout)."""
        if batch_size < 1:
            raise DataError(f"{self.source}: batch size must be at least 1, not {batch_size}.")
        yield from _regroup(self._verified_chunks(), batch_size)

    def _verified_chunks(self) -> Iterator[Feeds]:
        """The chunks again, each checked against what the first pass saw."""
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
            seen += _chunk_len(chunk)
            if seen > self.num_samples:  # also stops a loader that never ends on a later pass
                raise DataError(f"{self.source}: {_CHANGED_BETWEEN_PASSES}")
            _fold_chunk(digest, chunk, self.input_names)
            yield chunk
        self.layout.digest_update(digest)
        if digest.hexdigest() != self.fingerprint:
            raise DataError(f"{self.source}: {_CHANGED_BETWEEN_PASSES}")

    def head(self, count: int) -> Dataset:
        """The first ``count`` samples, held in memory (a fixed subset for repeated evaluations); rounded
        down to whole batches of a model's fixed batch axis (at least one batch)."""
        count = min(count, self.num_samples)
        if self.batch_multiple > 1:
            count = min(max(count - count % self.batch_multiple, self.batch_multiple), self.num_samples)
        taken = next(self._sample_batches(count))
        return self._subset(taken, f"{self.source}[:{count}]")

    def after(self, count: int) -> Dataset | None:
        """The samples after the first ``count``, held in memory (the samples a search on ``head(count)``
        never saw); rounded down to whole batches of a fixed batch axis; None when nothing is left."""
        count = max(count, 0)
        rest = self.num_samples - count
        if self.batch_multiple > 1:
            rest -= rest % self.batch_multiple
        if rest <= 0:
            return None
        parts = (
            list(self._sample_batches(count)) if count > 0 else [next(self._sample_batches(self.num_samples))]
        )
        kept = _concat(parts[1:] if count > 0 else parts)
        kept = {k: v[:rest] for k, v in kept.items()}
        return self._subset(kept, f"{self.source}[{count}:{count + rest}]")

    def _subset(self, arrays: Feeds, source: str) -> Dataset:
        """A dataset over some of these samples (axis 0), with this one's layout and batch multiple."""
        subset = _scan(lambda: iter([arrays]), source, layout=self.layout)
        return replace(subset, batch_multiple=self.batch_multiple, layout=self.layout)

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
        chunks = _copied_feeds(items, source, max_samples)
        return _scan(lambda: iter(chunks), source)


def _copied_feeds(items: Iterable[Mapping[str, Any]], source: str, max_samples: int) -> list[Feeds]:
    """Feed dicts copied into memory as arrays, at most ``max_samples`` samples."""
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
    return chunks


def check_feeds(
    feeds: Mapping[str, np.ndarray] | Iterable[Mapping[str, Any]],
    model: ModelInfo,
    *,
    role: str = "calibration",
    source: str | None = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    layout: InputLayout | None = None,
) -> Dataset:
    """A dataset over in-memory arrays (one feed dict, or many: copied, at most ``max_samples`` samples) as
    the model takes them, checked against ``model`` as ``layout`` lays its inputs out."""
    layout = layout or InputLayout()
    if isinstance(feeds, Mapping):
        name = source or f"<{role} arrays>"
        chunks = [{str(k): np.asarray(v) for k, v in feeds.items()}]
    else:
        name = source or f"<{role} feed dicts>"
        chunks = _copied_feeds(feeds, name, max_samples)
    return _scan(layout.sample_first(lambda: iter(chunks), name), name, model, role, layout=layout)


_CHANGED_BETWEEN_PASSES = (
    "the data changed between two passes over it (a module:function loader must yield the same arrays "
    "every time it is called; files must not change during the run)."
)


#: The most bytes of an array copied (hashing a strided one) or scanned (for NaN/Inf) at once: memory stays
#: flat in the data's size.
_SCAN_BLOCK_BYTES = 1 << 22


def _byte_blocks(array: np.ndarray) -> Iterator[memoryview]:
    """``array``'s bytes in C order as flat byte views: of the array itself when it is C-contiguous (no
    copy), else of copies of a few rows at a time (at most about :data:`_SCAN_BLOCK_BYTES` each)."""
    if array.flags.c_contiguous or array.ndim == 0:
        yield np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
        return
    row_bytes = max(array.nbytes // max(array.shape[0], 1), 1)
    rows = max(_SCAN_BLOCK_BYTES // row_bytes, 1)
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


def _regroup(chunks: Iterator[Feeds], batch_size: int) -> Iterator[Feeds]:
    """Batches of ``batch_size`` samples (the last one may be smaller) from chunks of any length."""
    pending: list[Feeds] = []
    pending_count = 0
    for chunk in chunks:
        size = _chunk_len(chunk)
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
    layout: InputLayout | None = None,
) -> Dataset:
    """Read the data named by ``spec`` and check it against ``model``'s inputs (as ``layout`` lays them
    out: constant inputs are not in the data; an input's samples lie on its sample axis).

    At most ``max_samples`` samples are read; a ``module:function`` loader that yields no item for
    ``timeout_s`` seconds is abandoned (its thread cannot be stopped and is left to end with the process).
    ``progress`` hears what is read, the samples so far and any wait for a loader.
    """
    return _drain(
        _scanned_source(spec, model, role, search_path, max_samples, timeout_s, progress, layout)
    )


def read_once(
    spec: str | os.PathLike[str],
    model: ModelInfo,
    *,
    role: str = "calibration",
    search_path: str | os.PathLike[str] | None = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    timeout_s: float = DEFAULT_DATA_TIMEOUT_S,
    progress: DataProgress | None = None,
    layout: InputLayout | None = None,
) -> DataRead:
    """The data named by ``spec`` for a consumer that needs one pass over it (``int8gate calibrate``):
    :func:`load_dataset`'s checks and fingerprint are made while the batches are read, not in a pass of
    their own, so the data is read and hashed once instead of twice. A problem is the same
    :class:`DataError`, raised at the chunk that has it (before that chunk reaches the consumer); the
    dataset's summary (fingerprint, sample count) is known once the batches are exhausted."""
    scanning = _scanned_source(
        spec, model, role, search_path, max_samples, timeout_s, progress, layout, shapes_first=True
    )
    return DataRead(scanning, layout or InputLayout())


class DataRead:
    """One pass over data, checked and fingerprinted as it is read (see :func:`read_once`)."""

    def __init__(self, scanning: Generator[Feeds, None, Dataset], layout: InputLayout) -> None:
        self._scanning = scanning
        self._layout = layout
        self._dataset: Dataset | None = None

    def batches(self, batch_size: int) -> Iterator[Feeds]:
        """Feeds of ``batch_size`` samples as the model takes them (like :meth:`Dataset.batches`); one
        call per DataRead."""
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, not {batch_size}.")

        def chunks() -> Iterator[Feeds]:
            self._dataset = yield from self._scanning

        for batch in _regroup(chunks(), batch_size):
            yield self._layout.to_model(batch)

    @property
    def dataset(self) -> Dataset:
        """The checked dataset's summary; only once :meth:`batches` has been read to the end."""
        if self._dataset is None:
            raise DataError("the data was not read to the end, so it has no fingerprint yet.")
        return self._dataset


def _scanned_source(
    spec: str | os.PathLike[str],
    model: ModelInfo,
    role: str,
    search_path: str | os.PathLike[str] | None,
    max_samples: int,
    timeout_s: float,
    progress: DataProgress | None,
    layout: InputLayout | None,
    *,
    shapes_first: bool = False,
) -> Generator[Feeds, None, Dataset]:
    """The chunks of the data named by ``spec``, checked and fingerprinted (:func:`_scanned`)."""
    text = os.fspath(spec)
    report = progress or _silent
    layout = layout or InputLayout()
    if is_loader_spec(text):
        chunks = _loader_chunks(text, model, search_path, timeout_s, report)
    else:
        # samples on axis 0 of the file's array (no sample axes): a .npy can be read a block of rows at once
        chunks = _file_chunks(Path(text), layout.data_view(model), role, max_samples, blocks=layout.trivial)
    report(f"reading {role} data {text}")
    return _scanned(
        layout.sample_first(chunks, text),
        text,
        model,
        role,
        max_samples=max_samples,
        progress=report,
        layout=layout,
        shapes_first=shapes_first,
    )


def _silent(message: str) -> None:
    pass


def _too_many(source: str, what: str, max_samples: int) -> str:
    return (
        f"{source}: {what} more than {max_samples} samples, the cap set by {_MAX_SAMPLES_HINT}; give "
        "fewer samples or raise the cap."
    )


def _file_chunks(
    path: Path, model: ModelInfo, role: str, max_samples: int, *, blocks: bool = False
) -> Callable[[], Iterator[Feeds]]:
    """The arrays of a .npz/.npy file or a folder of them, a file at a time; with ``blocks`` a .npy for a
    model of one input is read :data:`_READ_BLOCK_BYTES` of rows at a time (memory flat in its size)."""
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
            if blocks and file.suffix == ".npy" and len(model.inputs) == 1:
                yield from _npy_row_blocks(file, model.inputs[0].name, max_samples)
            else:
                yield _read_array_file(file, model, max_samples)

    return chunks


#: Bytes of rows read at once from a .npy (at most; batches are regrouped across blocks).
_READ_BLOCK_BYTES = 1 << 25


def _npy_row_blocks(path: Path, name: str, max_rows: int) -> Iterator[Feeds]:
    """A ``.npy``'s array under ``name``, in blocks of rows of about :data:`_READ_BLOCK_BYTES` (read whole
    when it is 0-d, empty or in Fortran order), checked as :func:`read_numpy_file` checks it."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise _numpy_file_error(path, exc) from exc
    with handle:
        try:
            if handle.read(6) != b"\x93NUMPY":
                raise DataError(f"{path}: not a readable numpy file (no .npy header).")
            handle.seek(0)
            shape, fortran, dtype = _check_npy_header(
                handle, os.fstat(handle.fileno()).st_size, path, "", max_rows
            )
            whole = fortran or not shape or shape[0] == 0
            if whole:
                handle.seek(0)
                array = np.lib.format.read_array(handle, allow_pickle=False)
        except DataError:
            raise
        except Exception as exc:
            raise _numpy_file_error(path, exc) from exc
        if whole:
            yield {name: array}
            return
        row_shape = tuple(shape[1:])
        row_bytes = max(math.prod(row_shape) * dtype.itemsize, 1)
        rows = max(_READ_BLOCK_BYTES // row_bytes, 1)
        # whole default batches: they are then views of a block, not copies (a batch spanning two blocks is
        # copied into new memory: measured 0.1-0.2 s per pass over 157 MB of 320 px images)
        if rows > DEFAULT_BATCH_SIZE:
            rows -= rows % DEFAULT_BATCH_SIZE
        elif row_bytes * DEFAULT_BATCH_SIZE <= 4 * _READ_BLOCK_BYTES:
            rows = DEFAULT_BATCH_SIZE
        for start in range(0, shape[0], rows):
            count = min(rows, shape[0] - start)
            try:
                block = np.empty((count, *row_shape), dtype=dtype)
                read = handle.readinto(block.reshape(-1).view(np.uint8).data)
            except Exception as exc:
                raise _numpy_file_error(path, exc) from exc
            if read != block.nbytes:
                raise DataError(
                    f"{path}: the file ended before the data its header declares; it is truncated or "
                    "forged, or it changed while it was read."
                )
            yield {name: block}


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
    except (
        MemoryError,
        ValueError,
        OSError,
        EOFError,
        zipfile.BadZipFile,
        NotImplementedError,  # an unknown compression method
        RuntimeError,  # an encrypted member
    ) as exc:
        raise _numpy_file_error(path, exc) from exc


def _numpy_file_error(path: Path, exc: BaseException) -> DataError:
    """One sentence for what reading a numpy file raised."""
    if isinstance(exc, MemoryError):
        return DataError(f"{path}: does not fit in memory; give fewer samples per file.")
    if isinstance(exc, ValueError) and "Object arrays cannot be loaded" in str(exc):
        return DataError(f"{path}: holds pickled objects, which are refused; save plain arrays.")
    header = re.search(r"Header info length \((\d+)\) is large", str(exc))
    if isinstance(exc, ValueError) and header:
        return DataError(
            f"{path}: not a readable numpy file (its header is {header.group(1)} bytes, more than numpy "
            "reads safely)."
        )
    return DataError(f"{path}: not a readable numpy file ({bounded_text(str(exc))}).")


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


def _check_npy_header(
    stream: IO[bytes], size: int, path: Path, key: str, max_rows: int | None
) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """Read a ``.npy`` header from ``stream`` (``size`` bytes with the header) and refuse what cannot be
    read honestly: pickled objects, a payload larger than the bytes present, more than ``max_rows``.
    Returns the shape, whether the data is in Fortran order, and the dtype; ``stream`` is left at the data."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    else:  # 2.0 and 3.0 share the layout (3.0 only allows utf-8 in the header text)
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
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
    return tuple(shape), bool(fortran), dtype


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
    layout: InputLayout | None = None,
) -> Dataset:
    """One pass: count samples, check chunks (samples on axis 0; against ``model`` as ``layout`` lays its
    inputs out, if given), fingerprint the content."""
    return _drain(
        _scanned(chunks, source, model, role, max_samples=max_samples, progress=progress, layout=layout)
    )


def _drain(scanning: Generator[Feeds, None, Dataset]) -> Dataset:
    """Run a scan to its end; its dataset."""
    while True:
        try:
            next(scanning)
        except StopIteration as done:
            dataset: Dataset = done.value
            return dataset


def _scanned(
    chunks: Callable[[], Iterator[Feeds]],
    source: str,
    model: ModelInfo | None = None,
    role: str = "calibration",
    *,
    max_samples: int | None = None,
    progress: DataProgress = _silent,
    layout: InputLayout | None = None,
    shapes_first: bool = False,
) -> Generator[Feeds, None, Dataset]:
    """Yield each chunk once it is checked and folded into the fingerprint; return the dataset (its count,
    fingerprint and distinct samples) at the end. With ``shapes_first`` the per-sample shapes are checked
    against ``model`` at the first chunk, so that a consumer never receives data of the wrong shape; the
    sample count (a fixed batch axis needs whole batches) is checked at the end, before the generator
    returns."""
    layout = layout or InputLayout()
    if model is not None:
        model = layout.data_view(model)
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
            total += _scan_chunk(chunk, index, source, model, role, total, names, shapes)
            distinct.update(_fold_chunk(digest, chunk, tuple(sorted(chunk))))
            names = names or tuple(sorted(chunk))
            if max_samples is not None and total > max_samples:
                raise DataError(_too_many(source, f"the {role} data holds", max_samples))
            if shapes_first and index == 0 and model is not None:
                for tensor in model.inputs:
                    _check_shape(source, tensor, shapes[tensor.name])
            if time.monotonic() - reported >= PROGRESS_INTERVAL_S:
                progress(f"read {total} samples of {source}")
                reported = time.monotonic()
            yield chunk
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
    layout.digest_update(digest)
    return Dataset(
        source=source,
        num_samples=total,
        fingerprint=digest.hexdigest(),
        input_names=names,
        sample_shapes=shapes,
        chunks=chunks,
        batch_multiple=multiple,
        distinct_samples=len(distinct),
        layout=layout,
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
) -> int:
    """Check one chunk against the ones before (and ``model``); return its length."""
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
    scalar = next((k for k in keys if lengths[k] == -1), None)
    if scalar is not None and len(keys) > 1:
        raise DataError(
            f"{source}: array {bounded_repr(scalar)} is 0-d (one value, no sample axis); give it as a "
            f"constant input instead: {_CONST_HINT.format(name=scalar, value='VALUE')}."
        )
    if scalar is not None:
        raise DataError(
            f"{source}: array {bounded_repr(scalar)} is 0-d (one value, no sample axis); the data must hold "
            "its samples on axis 0."
        )
    if len(set(lengths.values())) != 1 or -1 in lengths.values():
        if model is not None:
            _suggest_sample_axis(source, index, chunk, lengths, model)
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


def _fold_chunk(digest: hashlib._Hash, chunk: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> list[bytes]:
    """Fold a chunk (samples on axis 0) into a dataset's ``digest``: each input's name, dtype and shape,
    then the digest of every sample (:func:`_sample_digests`), which are returned. One hash pass over the
    bytes serves both the fingerprint and the count of distinct samples."""
    for key in keys:
        array = chunk[key]
        digest.update(f"{key}|{array.dtype.str}|{array.shape}".encode())
    samples = _sample_digests(chunk, keys)
    digest.update(b"".join(samples))
    return samples


def _sample_digests(chunk: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> list[bytes]:
    """One 16-byte digest per sample of ``chunk`` over every input's bytes of that sample, in C order."""
    arrays = [chunk[key] for key in keys]
    digests = []
    for index in range(arrays[0].shape[0]):
        # BLAKE3, truncated to 128 bits: cryptographic (a crafted sample cannot alias another in a cache key)
        # and 3.7x faster than SHA-256 with the CPU's SHA instructions (measured on 600 KB samples); every
        # pass over the data hashes it to prove it unchanged, so this is paid on every pass
        sample = blake3.blake3()
        for array in arrays:
            # one sample at a time: never a copy of the whole chunk
            for block in _byte_blocks(np.asarray(array[index])):
                sample.update(block)
        digests.append(sample.digest(16))
    return digests


def check_dataset(
    dataset: Dataset, model: ModelInfo, *, role: str = "calibration", layout: InputLayout | None = None
) -> Dataset:
    """``dataset`` (made by :meth:`Dataset.from_arrays` or :meth:`Dataset.from_feeds`: arrays as the model
    takes them) checked against ``model``'s inputs as ``layout`` lays them out; :class:`DataError` says
    exactly what does not fit."""
    if dataset.layout.trivial and layout is not None and not layout.trivial:
        chunks = layout.sample_first(dataset.chunks, dataset.source)
        return _scan(chunks, dataset.source, model, role, layout=layout)
    return _scan(dataset.chunks, dataset.source, model, role, layout=dataset.layout)


def _check_names(source: str, role: str, given_names: tuple[str, ...], model: ModelInfo) -> None:
    expected, given = {t.name for t in model.inputs}, set(given_names)
    if given == expected:
        return
    missing, extra = sorted(expected - given), sorted(given - expected)
    for name in missing:
        tensor = model.input(name)
        if tensor.shape == ():
            raise DataError(
                f"{source}: input {name!r} is a 0-d {tensor.dtype} the {role} data does not provide; give it "
                f"with {_CONST_HINT.format(name=name, value='VALUE')}."
            )
    if missing and not extra:
        raise DataError(
            f"{source}: {role} data has missing model input(s) {missing}; give them in the data, or "
            f"as constants fed to every batch: {_CONST_HINT.format(name=missing[0], value='VALUE|FILE.npy')}."
        )
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
    if array.dtype.kind == "f" and not _all_finite(array):
        bad = first_sample + int(np.argwhere(~np.isfinite(array.reshape(array.shape[0], -1)))[0][0])
        raise DataError(f"{source}: input {tensor.name!r} holds NaN or Inf (sample {bad}).")


def _all_finite(array: np.ndarray) -> bool:
    """True when no value of ``array`` is NaN or Inf; scanned a few rows at a time, so that the check makes
    no temporary the size of the data."""
    if array.ndim == 0 or array.shape[0] == 0:
        return bool(np.isfinite(array).all())
    rows = max(_SCAN_BLOCK_BYTES // max(array.nbytes // array.shape[0], 1), 1)
    return all(bool(np.isfinite(array[at : at + rows]).all()) for at in range(0, array.shape[0], rows))


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


def fixed_batch_size(model: ModelInfo, layout: InputLayout | None = None) -> int | None:
    """The batch every run of ``model`` must have when its inputs fix their sample axis (often axis 0 at
    1), else None; ``layout`` says which inputs are constants and where the others hold their samples."""
    if layout is not None:
        model = layout.data_view(model)
    fixed = {t.shape[0] for t in model.inputs if t.shape and isinstance(t.shape[0], int) and t.shape[0] > 0}
    if len(fixed) > 1:
        raise DataError(f"{model.source}: inputs have different fixed batch sizes {sorted(fixed)}.")
    return int(fixed.pop()) if fixed else None


def batch_size_for(
    model: ModelInfo, requested: int = DEFAULT_BATCH_SIZE, layout: InputLayout | None = None
) -> int:
    """A model exported with a fixed batch axis (often 1) must be fed exactly that many samples."""
    return fixed_batch_size(model, layout) or requested


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


# ---- how samples meet the model: constant inputs and sample axes -------------------------------------

#: What a constant input may be given as: a number, nested lists of numbers, an array, or a ``.npy`` path.
ConstantSource = int | float | str | os.PathLike[str] | np.ndarray | list[Any]
#: A constant input is fed whole with every batch: a bound on what one may hold.
MAX_CONSTANT_BYTES = 256 * 2**20


def _spelling_hint(name: str) -> str:
    setting = next(s for s in SETTINGS if s.name == name)
    return (
        f"{name_of(setting.option)} {{name}}={{value}} (manifest key {name_of(setting.manifest)}, "
        f"int8gate check {name_of(setting.cli)})"
    )


_CONST_HINT = _spelling_hint("constants")
_AXIS_HINT = _spelling_hint("sample_axes")


@dataclass(frozen=True)
class InputLayout:
    """How a dataset's samples meet the model: inputs fed the same value with every batch (a 0-d sample
    rate, a start state) and the axis that holds the samples of an input or output when it is not axis 0
    (a recurrent state ``[layers, N, hidden]``: axis 1). Datasets keep samples on axis 0 and no constants;
    :meth:`to_model` makes the feeds the model takes."""

    constants: Mapping[str, np.ndarray] = field(default_factory=dict)
    #: input or output name -> its sample axis (only axes other than 0 are kept)
    sample_axes: Mapping[str, int] = field(default_factory=dict)
    #: constants given as one sample (1 on their sample axis) and repeated to each batch's size
    repeated: frozenset[str] = frozenset()

    @property
    def trivial(self) -> bool:
        return not self.constants and not self.sample_axes

    def axis(self, name: str) -> int:
        return self.sample_axes.get(name, 0)

    def data_view(self, model: ModelInfo) -> ModelInfo:
        """``model``'s inputs as a dataset holds them: constants left out, each sample axis moved first."""
        if self.trivial:
            return model
        inputs = []
        for tensor in model.inputs:
            if tensor.name in self.constants:
                continue
            axis = self.axis(tensor.name)
            if axis and tensor.shape is not None:
                dims = list(tensor.shape)
                dims.insert(0, dims.pop(axis))
                tensor = replace(tensor, shape=tuple(dims))
            inputs.append(tensor)
        return replace(model, inputs=tuple(inputs))

    def sample_first(
        self, chunks: Callable[[], Iterator[Feeds]], source: str
    ) -> Callable[[], Iterator[Feeds]]:
        """``chunks`` as the model takes them, turned into a dataset's chunks (samples on axis 0)."""
        if self.trivial:
            return chunks

        def moved() -> Iterator[Feeds]:
            for index, chunk in enumerate(chunks()):
                yield self._sample_first(chunk, source, index)

        return moved

    def _sample_first(self, chunk: Feeds, source: str, index: int) -> Feeds:
        given = sorted(set(chunk) & set(self.constants))
        if given:
            raise DataError(
                f"{source}: input {given[0]!r} is given both as a constant and in the data (chunk {index}); "
                "give it once."
            )
        moved: Feeds = {}
        for name, array in chunk.items():
            axis = self.axis(name)
            if axis and np.ndim(array) <= axis:
                raise DataError(
                    f"{source}: array {bounded_repr(name)} has shape {list(np.shape(array))} in chunk "
                    f"{index}, with no axis {axis}, the sample axis given for it "
                    f"({_AXIS_HINT.format(name=name, value=axis)})."
                )
            moved[name] = np.moveaxis(array, axis, 0) if axis else array
        return moved

    def to_model(self, batch: Feeds) -> Feeds:
        """A dataset's batch (samples on axis 0) as the model takes it: sample axes in place, constants
        added (a repeated constant grown to the batch's size); :func:`sample_count` reads its size."""
        if self.trivial:
            return batch
        count = int(next(iter(batch.values())).shape[0]) if batch else 0
        feeds = ModelFeeds()
        feeds.samples = count
        feeds.layout = self
        # an input with samples on axis 0 first: helpers that read a batch's size from its first feed
        for name in sorted(batch, key=lambda key: self.axis(key) != 0):
            axis = self.axis(name)
            feeds[name] = np.moveaxis(batch[name], 0, axis) if axis else batch[name]
        for name, value in self.constants.items():
            if name in self.repeated:
                value = np.repeat(value, count, axis=self.axis(name))
            feeds[name] = value
        return feeds

    def output(self, name: str, value: np.ndarray, samples: int, precision: str) -> np.ndarray:
        """``value`` of output ``name`` with its samples on axis 0; an output whose sample axis does not
        hold the batch's samples is a :class:`DataError` that names the axis to give."""
        axis = self.axis(name)
        if axis:
            if value.ndim <= axis:
                raise DataError(
                    f"the {precision} model's output {name!r} has shape {list(value.shape)}, with no axis "
                    f"{axis}, the sample axis given for it."
                )
            value = np.moveaxis(value, axis, 0)
        if self.trivial or (value.ndim and value.shape[0] == samples):
            return value
        shape = list(value.shape) if not axis else list(np.moveaxis(value, 0, axis).shape)
        fits = [k for k, size in enumerate(shape) if size == samples]
        way = (
            f"its samples look to be on axis {fits[0]}: give {_AXIS_HINT.format(name=name, value=fits[0])}"
            if len(fits) == 1
            else f"give its sample axis with {_AXIS_HINT.format(name=name, value='AXIS')} or gate another "
            "output (the output setting)"
        )
        raise DataError(
            f"the {precision} model's output {name!r} has shape {shape}, whose axis {axis} does not hold the "
            f"batch's {samples} samples; {way}."
        )

    def digest_update(self, digest: hashlib._Hash) -> None:
        """The layout is part of what a dataset feeds: its fingerprint covers it."""
        if self.trivial:
            return
        for name in sorted(self.constants):
            digest.update(f"const|{name}|{name in self.repeated}".encode())
            _fingerprint_update(digest, name, self.constants[name])
        digest.update(f"axes|{sorted(self.sample_axes.items())}".encode())


class ModelFeeds(dict[str, np.ndarray]):
    """Feeds as the model takes them, which know their sample count (not always axis 0 of the first) and
    the layout that made them (where each output holds its samples)."""

    samples: int = 0
    layout: InputLayout | None = None


def sample_count(feeds: Mapping[str, np.ndarray]) -> int:
    """Samples in one batch of feeds: as recorded by :meth:`InputLayout.to_model`, else axis 0 of the
    first feed (1 for a scalar feed)."""
    if isinstance(feeds, ModelFeeds):
        return feeds.samples
    first = np.asarray(next(iter(feeds.values())))
    return int(first.shape[0]) if first.ndim else 1


def resolve_layout(
    model: ModelInfo,
    constants: Mapping[str, ConstantSource] | None = None,
    sample_axes: Mapping[str, int] | None = None,
) -> InputLayout:
    """The layout the settings give, checked against ``model``: each constant read, converted to its
    input's dtype and shape-checked; each sample axis checked against its input's or output's rank. Output
    sample axes not given follow the inputs' when the shapes name the same batch dimension. Every problem
    is one :class:`DataError` sentence naming the input and the setting."""
    constants = dict(constants or {})
    axes = {str(k): int(v) for k, v in (sample_axes or {}).items()}
    if not constants and not axes:
        return InputLayout()
    inputs = {t.name: t for t in model.inputs}
    outputs = {t.name: t for t in model.outputs}
    for name, axis in axes.items():
        tensor = inputs.get(name) or outputs.get(name)
        if tensor is None:
            raise DataError(
                f"sample axis {bounded_repr(name)}: the model has no input or output of that name; its "
                f"inputs are {sorted(inputs)} and its outputs {sorted(outputs)}."
            )
        if axis < 0 or (tensor.shape is not None and axis >= len(tensor.shape)):
            raise DataError(
                f"sample axis {name}={axis}: {name!r} has shape {tensor.shape_text()}, which has no "
                f"axis {axis}."
            )
    arrays: dict[str, np.ndarray] = {}
    repeated = set()
    for name, source in constants.items():
        tensor = inputs.get(name)
        if tensor is None:
            raise DataError(
                f"constant {bounded_repr(name)}: the model has no input of that name; its inputs are "
                f"{sorted(inputs)}."
            )
        array = _constant_array(name, source, tensor)
        if _check_constant_shape(name, array, tensor, axes.get(name, 0)):
            repeated.add(name)
        arrays[name] = array
    if len(arrays) == len(inputs):
        raise DataError(
            f"constant: every model input ({', '.join(sorted(inputs))}) is given as a constant; the data "
            "must provide at least one input that varies from sample to sample."
        )
    # an output whose declared shape names an input's batch dimension on another axis holds its samples there
    batch_dims = {
        t.shape[axes.get(t.name, 0)]
        for t in model.inputs
        if t.name not in arrays and t.shape and isinstance(t.shape[axes.get(t.name, 0)], str)
    }
    for name, tensor in outputs.items():
        if name in axes or not tensor.shape or not batch_dims or tensor.shape[0] in batch_dims:
            continue
        found = [k for k, dim in enumerate(tensor.shape) if dim in batch_dims]
        if len(found) == 1:
            axes[name] = found[0]
    return InputLayout(
        constants=arrays,
        sample_axes={k: v for k, v in axes.items() if v},
        repeated=frozenset(repeated),
    )


def _constant_array(name: str, source: ConstantSource, tensor: TensorInfo) -> np.ndarray:
    what = f"constant {name!r}"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix != ".npy":
            raise DataError(
                f"{what}: {bounded_repr(str(path))} is not a .npy file; give a number or a .npy file."
            )
        if not path.is_file():
            raise DataError(f"{what}: {path} not found.")
        header_rows = None
        array = read_numpy_file(path, max_rows=header_rows)[""]
        if array.nbytes > MAX_CONSTANT_BYTES:
            raise DataError(
                f"{what}: {path} holds {_bytes_text(array.nbytes)}, more than a constant input may "
                f"({_bytes_text(MAX_CONSTANT_BYTES)})."
            )
        if array.dtype != tensor.dtype:
            raise DataError(
                f"{what}: {path} holds {array.dtype} but input {name!r} is {tensor.dtype}; convert it "
                f"(e.g. .astype(np.{tensor.dtype})) when saving."
            )
    else:
        try:
            given = np.asarray(source)
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"{what}: {bounded_repr(source)} is not a number or an array of numbers."
            ) from exc
        if isinstance(source, int) and given.dtype.hasobject:  # beyond 64 bits
            raise DataError(f"{what}: input is {tensor.dtype}, which cannot hold {bounded_repr(source)}.")
        if given.dtype.kind not in "biuf" or given.dtype.hasobject:
            raise DataError(f"{what}: {bounded_repr(source)} is not a number or an array of numbers.")
        if given.nbytes > MAX_CONSTANT_BYTES:
            raise DataError(f"{what}: holds {_bytes_text(given.nbytes)}, more than a constant input may.")
        array = _converted(what, given, tensor)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"{what}: holds NaN or Inf; a constant input must be finite.")
    return array


def _converted(what: str, given: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """A value written as numbers, in the input's dtype; a value that dtype cannot hold is refused."""
    target = tensor.dtype
    if given.dtype.kind == "f" and not np.isfinite(given).all():
        raise DataError(f"{what}: holds NaN or Inf; a constant input must be finite.")
    if target.kind in "iu":
        if given.dtype.kind == "f" and not np.all(given == np.round(given)):
            raise DataError(f"{what}: input is {target}, which cannot hold {bounded_repr(given.tolist())}.")
        info = np.iinfo(target.type)  # type: ignore[type-var]
        if given.size and (given.min() < info.min or given.max() > info.max):
            raise DataError(f"{what}: input is {target}, which cannot hold {bounded_repr(given.tolist())}.")
    elif target.kind == "b":
        if not np.isin(given, (0, 1)).all():
            raise DataError(f"{what}: input is bool; give 0 or 1 (true or false).")
    elif target.kind != "f":
        raise DataError(f"{what}: input is {target}; give it as a .npy file of that dtype.")
    return given.astype(target)


def _check_constant_shape(name: str, array: np.ndarray, tensor: TensorInfo, axis: int) -> bool:
    """Check ``array`` against the input's declared shape; True when it is one sample to repeat along a
    symbolic sample axis."""
    if tensor.shape is None:
        return False
    what = f"constant {name!r}"
    if array.ndim != len(tensor.shape):
        raise DataError(
            f"{what}: has shape {list(array.shape)} but input {name!r} is {tensor.shape_text()}; give "
            f"{'a number' if not tensor.shape else 'a .npy of that shape'}."
        )
    repeat = False
    for k, (want, have) in enumerate(zip(tensor.shape, array.shape, strict=True)):
        if isinstance(want, int) and want > 0:
            if want != have:
                raise DataError(f"{what}: axis {k} is {have} but input {name!r} is {tensor.shape_text()}.")
        elif k == axis:
            if have != 1:
                raise DataError(
                    f"{what}: holds {have} on its sample axis {k}; a constant gives one sample (1 on that "
                    "axis), repeated to each batch's size."
                )
            repeat = True
    return repeat


def _suggest_sample_axis(
    source: str, index: int, chunk: Feeds, lengths: Mapping[str, int], model: ModelInfo
) -> None:
    """Arrays that disagree on axis 0: when one holds the others' sample count on exactly one other axis,
    name that axis and how to give it."""
    for name, length in lengths.items():
        others = {size for key, size in lengths.items() if key != name}
        if len(others) != 1 or length in others or length < 0:
            continue
        common = others.pop()
        fits = [k for k, size in enumerate(chunk[name].shape) if k and size == common]
        if len(fits) == 1:
            raise DataError(
                f"{source}: array {bounded_repr(name)} has {length} on axis 0 but the other arrays hold "
                f"{common} samples (chunk {index}); if its samples lie on axis {fits[0]}, give "
                f"{_AXIS_HINT.format(name=name, value=fits[0])}."
            )
    del model
