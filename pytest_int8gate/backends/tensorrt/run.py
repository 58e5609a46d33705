"""Running one TensorRT engine: feeds checked and copied to the GPU, outputs on the device, on the host or of
data-dependent shape brought back, batches above the profile split, every buffer freed on close."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import BackendError
from ..base import BackendInfo, ClosingRunner
from .api import TensorRTLog, TensorRTModule, dims_tuple
from .cuda import CudaCalls, CudaStream, cuda_check, first_line
from .shapes import join_outputs, prepare_feed, split_feeds

if TYPE_CHECKING:
    import tensorrt as trt  # type: ignore[import-not-found,import-untyped,unused-ignore]

#: Never allocate zero bytes: TensorRT wants a valid address even for an empty tensor.
MIN_ALLOCATION = 256


class OutputRecord:
    """What the output allocator learned during one execution: the shapes TensorRT reported, any failure."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.errors: list[str] = []

    def clear(self) -> None:
        self.shapes.clear()
        self.errors.clear()


def make_output_allocator(
    tensorrt: TensorRTModule, device_buffer: Callable[[str, int], int], record: OutputRecord
) -> trt.IOutputAllocator:
    """A ``tensorrt.IOutputAllocator`` (as Polygraphy's runner uses) for outputs whose shape is known only
    after the engine ran: TensorRT asks it for memory of the final size, then reports the shape."""
    base: Any = tensorrt.IOutputAllocator

    class OutputAllocator(base):  # type: ignore[misc]
        def __init__(self) -> None:
            base.__init__(self)

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
            # TensorRT only prints an exception raised here and sees a null address: keep it for the message.
            try:
                pointer = device_buffer(tensor_name, int(size))
            except Exception as exc:
                reason = first_line(exc).rstrip(".")
                record.errors.append(f"allocating output {tensor_name!r} failed: {reason}")
                return 0
            if alignment > 0 and pointer % alignment:
                record.errors.append(f"the buffer of output {tensor_name!r} is not {alignment}-byte aligned")
                return 0
            return pointer

        def reallocate_output_async(
            self, tensor_name: str, memory: int, size: int, alignment: int, stream: int
        ) -> int:
            # cudaMalloc is synchronous, so the stream does not matter here.
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: trt.Dims) -> None:
            record.shapes[tensor_name] = dims_tuple(shape)

    allocator: trt.IOutputAllocator = OutputAllocator()
    return allocator


class TensorRTRunner(ClosingRunner):
    """One engine with its execution context, CUDA stream and device buffers (grown on demand).

    Feeds larger than the engine's optimisation profile run in pieces that are joined on the batch axis.
    ``close()`` (or leaving a ``with`` block) frees every device buffer and the stream.
    """

    def __init__(
        self,
        engine: trt.ICudaEngine,
        *,
        tensorrt: TensorRTModule,
        cuda: CudaCalls,
        output_names: tuple[str, ...],
        info: BackendInfo,
        log: TensorRTLog,
        keep_alive: tuple[object, ...] = (),
    ) -> None:
        self._buffers: dict[str, tuple[int, int]] = {}
        self._stream: CudaStream | None = None
        self._context: trt.IExecutionContext | None = None
        self._cuda = cuda
        self._engine = engine
        self._keep_alive = keep_alive
        self._info = info
        self._log = log
        self._what = f"TensorRT {info.precision} engine"
        context: trt.IExecutionContext | None = engine.create_execution_context()
        if context is None:
            raise BackendError(
                f"TensorRT could not create an execution context for the {info.precision} engine: "
                f"{log.summary()}."
            )
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        input_mode, output_mode = tensorrt.TensorIOMode.INPUT, tensorrt.TensorIOMode.OUTPUT
        self._input_names = tuple(name for name in names if engine.get_tensor_mode(name) == input_mode)
        self._engine_outputs = tuple(name for name in names if engine.get_tensor_mode(name) == output_mode)
        missing = [name for name in output_names if name not in self._engine_outputs]
        if missing:
            raise BackendError(f"the {self._what} lacks the model output(s) {', '.join(missing)}.")
        self._output_names = output_names
        self._dtypes: dict[str, np.dtype[Any]] = {}
        for name in names:
            trt_dtype = engine.get_tensor_dtype(name)
            try:
                self._dtypes[name] = np.dtype(tensorrt.nptype(trt_dtype))
            except TypeError as exc:
                raise BackendError(
                    f"tensor {name!r} of the {self._what} has type {trt_dtype}, which numpy cannot hold."
                ) from exc
        host = tensorrt.TensorLocation.HOST
        self._host_located = frozenset(name for name in names if engine.get_tensor_location(name) == host)
        engine_shapes = {name: dims_tuple(engine.get_tensor_shape(name)) for name in names}
        # Dynamic inputs take the (min, max) shapes of profile 0, the only profile this backend builds.
        self._accepted: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._max_batch: dict[str, int] = {}
        for name in self._input_names:
            shape = engine_shapes[name]
            if any(size < 0 for size in shape):
                low, _, high = (dims_tuple(dims) for dims in engine.get_tensor_profile_shape(name, 0))
                self._accepted[name] = (low, high)
                if shape[0] < 0:
                    self._max_batch[name] = high[0]
            else:
                self._accepted[name] = (shape, shape)
        self._batched_outputs = frozenset(
            name for name in self._engine_outputs if engine_shapes[name][:1] == (-1,)
        )
        self._record = OutputRecord()
        self._allocator = make_output_allocator(tensorrt, self._device_buffer, self._record)
        self._context = context
        runtime = cuda.runtime
        self._stream = cuda_check(runtime, runtime.cudaStreamCreate(), "cudaStreamCreate")
        try:
            self._stream_handle = int(cuda.native_handle(self._stream))
        except Exception as exc:
            self.close()
            raise BackendError(f"cuda-python could not give the address of a CUDA stream: {exc}") from exc

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._output_names

    def describe(self) -> BackendInfo:
        return self._info

    @property
    def max_batch(self) -> int | None:
        """The largest batch one execution takes (None without a dynamic batch axis); more is split."""
        return min(self._max_batch.values()) if self._max_batch else None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        context = self._context
        if context is None or self._stream is None:
            raise BackendError(f"the TensorRT {self._info.precision} runner was closed.")
        missing = [name for name in self._input_names if name not in feeds]
        if missing:
            raise BackendError(f"the {self._what} needs input(s) {', '.join(missing)}.")
        unknown = sorted(set(feeds) - set(self._input_names))
        if unknown:
            raise BackendError(f"{', '.join(unknown)} are not inputs of the {self._what}.")
        prepared = {
            name: prepare_feed(name, feeds[name], self._dtypes[name], what=self._what)
            for name in self._input_names
        }
        pieces = split_feeds(prepared, self._max_batch, what=self._what)
        if len(pieces) == 1:
            outputs, _ = self._run_once(context, prepared)
            return {name: outputs[name] for name in self._output_names}
        unbatched = [name for name in self._output_names if name not in self._batched_outputs]
        if unbatched:
            raise BackendError(
                f"the {self._what} takes at most {self.max_batch} samples at a time, and its output(s) "
                f"{', '.join(map(repr, unbatched))} have no batch axis to join pieces on; pass at most "
                f"{self.max_batch} samples at a time."
            )
        results = []
        for piece in pieces:
            outputs, data_dependent = self._run_once(context, piece)
            unjoinable = [name for name in data_dependent if name in self._output_names]
            if unjoinable:
                raise BackendError(
                    f"the {self._what} takes at most {self.max_batch} samples at a time, and the shape of "
                    f"its output(s) {', '.join(map(repr, unjoinable))} depends on the data, so pieces cannot "
                    f"be joined; pass at most {self.max_batch} samples at a time."
                )
            results.append(outputs)
        first = next(iter(self._max_batch))
        batches = [piece[first].shape[0] for piece in pieces]
        return join_outputs(results, batches, self._output_names, what=self._what)

    def _run_once(
        self, context: trt.IExecutionContext, feeds: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """One execution; the outputs and the names of those whose shape depended on the data."""
        assert self._stream is not None
        runtime = self._cuda.runtime
        self._log.clear()
        self._record.clear()
        try:
            for name in self._input_names:
                host = feeds[name]
                self._set_input_shape(context, name, host.shape)
                if name in self._host_located:
                    self._set_address(context, name, host.ctypes.data)
                    continue
                pointer = self._device_buffer(name, host.nbytes)
                self._set_address(context, name, pointer)
                if host.nbytes:
                    kind = runtime.cudaMemcpyKind.cudaMemcpyHostToDevice
                    result = runtime.cudaMemcpyAsync(
                        pointer, host.ctypes.data, host.nbytes, kind, self._stream
                    )
                    cuda_check(runtime, result, "cudaMemcpyAsync")
            outputs: dict[str, np.ndarray] = {}
            copies: list[tuple[np.ndarray, int]] = []
            data_dependent: list[str] = []
            for name in self._engine_outputs:
                shape = dims_tuple(context.get_tensor_shape(name))
                if any(size < 0 for size in shape):
                    if name in self._host_located:
                        raise BackendError(
                            f"TensorRT cannot size the host output {name!r} of the {self._what} before "
                            f"running it (shape {list(shape)})."
                        )
                    if not context.set_output_allocator(name, self._allocator):
                        raise BackendError(f"TensorRT rejected the output allocator of output {name!r}.")
                    data_dependent.append(name)
                    continue
                array = np.empty(shape, dtype=self._dtypes[name])
                if name in self._host_located:
                    # TensorRT writes a host output (a shape computation) straight into host memory.
                    self._set_address(context, name, array.ctypes.data)
                else:
                    pointer = self._device_buffer(name, array.nbytes)
                    self._set_address(context, name, pointer)
                    copies.append((array, pointer))
                outputs[name] = array
            if not context.execute_async_v3(self._stream_handle) or self._record.errors:
                detail = "; ".join([*self._record.errors, self._log.summary()])
                raise BackendError(f"TensorRT failed to run the {self._what}: {detail}.")
            for name in data_dependent:
                shape = self._record.shapes.get(name, ())
                if name not in self._record.shapes or any(size < 0 for size in shape):
                    raise BackendError(
                        f"TensorRT ran the {self._what} but reported no shape for output {name!r}, whose "
                        "shape depends on the data."
                    )
                array = np.empty(shape, dtype=self._dtypes[name])
                if array.nbytes:
                    pointer, capacity = self._buffers.get(name, (0, 0))
                    if capacity < array.nbytes:
                        raise BackendError(
                            f"TensorRT reported shape {list(shape)} for output {name!r} of the {self._what} "
                            f"but asked for only {capacity} bytes of memory for it."
                        )
                    copies.append((array, pointer))
                outputs[name] = array
            for array, pointer in copies:
                if array.nbytes:
                    kind = runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost
                    result = runtime.cudaMemcpyAsync(
                        array.ctypes.data, pointer, array.nbytes, kind, self._stream
                    )
                    cuda_check(runtime, result, "cudaMemcpyAsync")
            cuda_check(runtime, runtime.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        except BaseException:
            # Copies may still be queued: host arrays must outlive them, so wait before they can be freed.
            with contextlib.suppress(Exception):
                runtime.cudaStreamSynchronize(self._stream)
            raise
        return outputs, data_dependent

    def _set_input_shape(self, context: trt.IExecutionContext, name: str, shape: tuple[int, ...]) -> None:
        detail = ""
        try:
            accepted = bool(context.set_input_shape(name, shape))
        except (
            RuntimeError,
            TypeError,
            ValueError,
        ) as exc:  # the bindings raise on a shape they cannot convert
            accepted, detail = False, f" ({first_line(exc)})"
        if accepted:
            return
        low, high = self._accepted.get(name, ((), ()))
        takes = f"shape {list(low)}" if low == high else f"shapes from {list(low)} to {list(high)}"
        raise BackendError(
            f"TensorRT rejected shape {list(shape)} for input {name!r}{detail}; the {self._what} takes "
            f"{takes} (TensorRTBackend(batch_sizes=...) sets the batch range)."
        )

    def _set_address(self, context: trt.IExecutionContext, name: str, pointer: int) -> None:
        if not context.set_tensor_address(name, pointer):
            raise BackendError(f"TensorRT rejected the address of tensor {name!r} of the {self._what}.")

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for tensor ``name``, reused while it is large enough."""
        runtime = self._cuda.runtime
        pointer, capacity = self._buffers.get(name, (0, 0))
        if pointer and nbytes <= capacity:
            return pointer
        if pointer:
            del self._buffers[name]  # forgotten first: a failed free must not be retried by close()
            cuda_check(runtime, runtime.cudaFree(pointer), "cudaFree")
        capacity = max(nbytes, MIN_ALLOCATION)
        pointer = int(cuda_check(runtime, runtime.cudaMalloc(capacity), "cudaMalloc"))
        self._buffers[name] = (pointer, capacity)
        return pointer

    def close(self) -> None:
        """Free every device buffer and the stream; the runner cannot run afterwards. Calling it again does
        nothing. When a CUDA call fails, the rest are still made and one BackendError names every failure."""
        buffers, self._buffers = self._buffers, {}
        stream, self._stream = self._stream, None
        self._context = None
        runtime = self._cuda.runtime
        failures: list[str] = []

        def attempt(call: str, run: Callable[[], tuple[Any, ...]]) -> None:
            try:
                cuda_check(runtime, run(), call)
            except BackendError as exc:
                failures.append(str(exc).rstrip("."))
            except Exception as exc:  # cuda-python itself failing (e.g. at interpreter exit)
                failures.append(f"CUDA call {call} raised {first_line(exc)}")

        if stream is not None and buffers:
            attempt("cudaStreamSynchronize", lambda: runtime.cudaStreamSynchronize(stream))
        for name, (pointer, _) in buffers.items():
            attempt(f"cudaFree (tensor {name!r})", functools.partial(runtime.cudaFree, pointer))
        if stream is not None:
            attempt("cudaStreamDestroy", lambda: runtime.cudaStreamDestroy(stream))
        if failures:
            raise BackendError(f"closing the TensorRT {self._info.precision} runner: {'; '.join(failures)}.")

    def __del__(self) -> None:
        # Best effort only: at interpreter exit CUDA may already be torn down.
        with contextlib.suppress(Exception):
            if getattr(self, "_cuda", None) is not None:
                self.close()
