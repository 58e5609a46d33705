"""Calibration and evaluation data: read it, check it against the model, fingerprint it, batch it.

Sources: a ``.npz`` (keys = model input names, axis 0 = samples), a ``.npy`` (single-input models),
a folder of ``.npz``/``.npy`` files (read in name order), or ``module:function`` naming a callable
that yields feed dicts. Arrays are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError
from .graph import ModelInfo, TensorInfo

Feeds = dict[str, np.ndarray]
_LOADER_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class Dataset:
    """Validated feeds for one model: re-iterable, fingerprinted, batched on demand."""

    source: str
    num_samples: int
    fingerprint: str
    input_names: tuple[str, ...]
    sample_shapes: Mapping[str, tuple[int, ...]]
    chunks: Callable[[], Iterator[Feeds]] = field(repr=False, compare=False)

    def batches(self, batch_size: int) -> Iterator[Feeds]:
        """Feeds of ``batch_size`` samples (the last one may be smaller), in the source's order."""
        if batch_size < 1:
            raise DataError(f"{self.source}: batch size must be at least 1, not {batch_size}.")
        pending: list[Feeds] = []
        pending_count = 0
        # The fingerprint names this content in cache keys and reports: a source that yields anything
        # else on a later pass (a loader with random or one-shot data, a file rewritten mid-run) is an
        # error, never a silent mismatch between what was calibrated, evaluated and cached.
        digest = hashlib.sha256()
        for chunk in self.chunks():
            if tuple(sorted(chunk)) != self.input_names or any(
                tuple(chunk[k].shape[1:]) != self.sample_shapes[k] for k in self.input_names
            ):
                raise DataError(f"{self.source}: {_CHANGED_BETWEEN_PASSES}")
            for key in self.input_names:
                _fingerprint_update(digest, key, chunk[key])
            start = 0
            size = _chunk_len(chunk)
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
        """The first ``count`` samples, held in memory (a fixed subset for repeated evaluations)."""
        count = min(count, self.num_samples)
        taken = next(self.batches(count))
        return Dataset.from_arrays(taken, source=f"{self.source}[:{count}]")

    @staticmethod
    def from_arrays(feeds: Mapping[str, np.ndarray], *, source: str = "<arrays>") -> Dataset:
        """A dataset over in-memory arrays (axis 0 = samples), not yet checked against a model."""
        arrays = {k: np.asarray(v) for k, v in feeds.items()}
        return _scan(lambda: iter([arrays]), source)


_CHANGED_BETWEEN_PASSES = (
    "the data changed between two passes over it (a module:function loader must yield the same arrays "
    "every time it is called; files must not change during the run)."
)


def _fingerprint_update(digest: hashlib._Hash, key: str, array: np.ndarray) -> None:
    digest.update(f"{key}|{array.dtype.str}|{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())


def _chunk_len(chunk: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(chunk.values())).shape[0])


def _concat(parts: list[Feeds]) -> Feeds:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


def is_loader_spec(spec: str) -> bool:
    """True for ``package.module:function`` (and not an existing path)."""
    return bool(_LOADER_SPEC.match(spec)) and not Path(spec).exists()


def load_dataset(
    spec: str | os.PathLike[str],
    model: ModelInfo,
    *,
    role: str = "calibration",
    search_path: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Read the data named by ``spec`` and check it against ``model``'s inputs."""
    text = os.fspath(spec)
    if is_loader_spec(text):
        chunks = _loader_chunks(text, model, search_path)
    else:
        chunks = _file_chunks(Path(text), model, role)
    return _scan(chunks, text, model, role)


def _file_chunks(path: Path, model: ModelInfo, role: str) -> Callable[[], Iterator[Feeds]]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy") and p.is_file())
        if not files:
            raise DataError(f"{path}: the {role} data folder holds no .npz or .npy files.")
    elif path.is_file():
        if path.suffix not in (".npz", ".npy"):
            raise DataError(f"{path}: {role} data must be .npz, .npy, a folder of them, or module:function.")
        files = [path]
    else:
        raise DataError(f"{path}: {role} data not found.")

    def chunks() -> Iterator[Feeds]:
        for file in files:
            yield _read_array_file(file, model)

    return chunks


def read_numpy_file(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` by name, or a ``.npy``'s array under the key ``""``; never unpickles."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(6)
            handle.seek(0)
            if path.suffix == ".npy":
                if magic != b"\x93NUMPY":
                    raise DataError(f"{path}: not a readable numpy file (no .npy header).")
                return {"": np.load(handle, allow_pickle=False)}
            if not magic.startswith(b"PK"):
                raise DataError(f"{path}: not a readable numpy file (a .npz must be a zip archive).")
            with np.load(handle, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
    except DataError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"{path}: holds pickled objects, which are refused; save plain arrays.") from exc
        raise DataError(f"{path}: not a readable numpy file ({exc}).") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable numpy file ({exc}).") from exc


def _read_array_file(path: Path, model: ModelInfo) -> Feeds:
    arrays = read_numpy_file(path)
    if path.suffix != ".npy":
        return arrays
    if len(model.inputs) != 1:
        names = ", ".join(t.name for t in model.inputs)
        raise DataError(f"{path}: a .npy holds one array but the model has inputs {names}; use .npz.")
    return {model.inputs[0].name: arrays[""]}


def _loader_chunks(
    spec: str, model: ModelInfo, search_path: str | os.PathLike[str] | None
) -> Callable[[], Iterator[Feeds]]:
    module_name, _, func_name = spec.partition(":")
    if search_path is not None and os.fspath(search_path) not in sys.path:
        sys.path.insert(0, os.fspath(search_path))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise DataError(
            f"{spec}: cannot import module {module_name!r} ({type(exc).__name__}: {exc})."
        ) from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise DataError(f"{spec}: module {module_name!r} has no callable {func_name!r}.")

    def chunks() -> Iterator[Feeds]:
        try:
            produced = func()
        except Exception as exc:  # the user's code: its failure is a data error naming the loader
            raise DataError(f"{spec}: the data loader raised {type(exc).__name__}: {exc}") from exc
        if isinstance(produced, Mapping):
            produced = [produced]
        if not isinstance(produced, Iterable):
            raise DataError(f"{spec}: must return or yield dicts of input name -> array.")
        items = iter(produced)
        index = 0
        while True:
            try:  # only the loader's own code runs in here; the consumer's errors never pass through
                feeds = next(items)
                if not isinstance(feeds, Mapping):
                    raise DataError(
                        f"{spec}: item {index} is a {type(feeds).__name__}, not a dict of arrays."
                    )
                # copies: a loader may refill one buffer for every item, and a batch can span items
                arrays = {str(k): np.array(v) for k, v in feeds.items()}
            except StopIteration:
                return
            except DataError:
                raise
            except Exception as exc:
                raise DataError(
                    f"{spec}: the data loader raised {type(exc).__name__} at item {index}: {exc}"
                ) from exc
            yield arrays
            index += 1

    return chunks


def _scan(
    chunks: Callable[[], Iterator[Feeds]],
    source: str,
    model: ModelInfo | None = None,
    role: str = "calibration",
) -> Dataset:
    """One pass: count samples, check chunks (against ``model`` if given), fingerprint the content."""
    digest = hashlib.sha256()
    total = 0
    names: tuple[str, ...] | None = None
    shapes: dict[str, tuple[int, ...]] = {}
    for index, chunk in enumerate(chunks()):
        keys = tuple(sorted(chunk))
        if not keys:
            raise DataError(f"{source}: chunk {index} holds no arrays.")
        if names is None:
            names = keys
            if model is not None:
                _check_names(source, role, keys, model)
        elif keys != names:
            raise DataError(f"{source}: chunk {index} has arrays {list(keys)}, earlier chunks {list(names)}.")
        lengths = {k: (chunk[k].shape[0] if chunk[k].ndim else -1) for k in keys}
        if len(set(lengths.values())) != 1 or -1 in lengths.values():
            raise DataError(
                f"{source}: arrays must share axis 0 (samples); chunk {index} has lengths {lengths}."
            )
        for key in keys:
            array = chunk[key]
            if array.dtype.hasobject:
                raise DataError(f"{source}: array {key!r} has dtype object; save numeric arrays.")
            shape = tuple(int(d) for d in array.shape[1:])
            if shapes.setdefault(key, shape) != shape:
                raise DataError(
                    f"{source}: array {key!r} has per-sample shape {list(shape)} in chunk {index} "
                    f"but {list(shapes[key])} before; shapes must not vary."
                )
            if model is not None:
                _check_values(source, total, model.input(key), array)
            _fingerprint_update(digest, key, array)
        total += lengths[keys[0]]
    if names is None or total == 0:
        raise DataError(f"{source}: the data holds no samples.")
    if model is not None:
        for tensor in model.inputs:
            _check_shape(source, tensor, shapes[tensor.name])
    return Dataset(
        source=source,
        num_samples=total,
        fingerprint=digest.hexdigest(),
        input_names=names,
        sample_shapes=shapes,
        chunks=chunks,
    )


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


def batch_size_for(model: ModelInfo, requested: int = DEFAULT_BATCH_SIZE) -> int:
    """A model exported with a fixed batch axis (often 1) must be fed exactly that many samples."""
    fixed = {t.shape[0] for t in model.inputs if t.shape and isinstance(t.shape[0], int) and t.shape[0] > 0}
    if len(fixed) > 1:
        raise DataError(f"{model.source}: inputs have different fixed batch sizes {sorted(fixed)}.")
    return int(fixed.pop()) if fixed else requested


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
