"""Data fingerprints (data.py): the digest of an array's C-order bytes, made without a copy of the data (a
transposed or strided chunk is hashed a few rows at a time), so memory stays flat in the number of samples."""

from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pytest

from pytest_int8gate import data
from pytest_int8gate.data import Dataset, _fingerprint_update, _sample_digests


def reference_digest(key: str, array: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(f"{key}|{array.dtype.str}|{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def test_fingerprints_are_those_of_the_c_order_bytes_whatever_the_layout() -> None:
    rng = np.random.default_rng(0)
    images = rng.standard_normal((40, 8, 8, 3)).astype(np.float32)
    for array in (images, images.transpose(0, 3, 1, 2), images[:, ::2], np.arange(9.0)[::3], np.array(2.0)):
        digest = hashlib.sha256()
        _fingerprint_update(digest, "x", array)
        assert digest.hexdigest() == reference_digest("x", array)
    same = Dataset.from_arrays({"x": np.ascontiguousarray(images.transpose(0, 3, 1, 2))})
    strided = Dataset.from_arrays({"x": images.transpose(0, 3, 1, 2)})
    assert same.fingerprint == strided.fingerprint and same.distinct_samples == strided.distinct_samples == 40


def test_fingerprinting_copies_no_whole_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_SCAN_BLOCK_BYTES", 1 << 20)  # a strided chunk is copied 1 MiB at a time
    images = np.random.default_rng(1).standard_normal((256, 32, 32, 16)).astype(np.float32)  # 16 MiB
    for array in (images, images.transpose(0, 3, 1, 2)):
        tracemalloc.start()
        digest = hashlib.sha256()
        _fingerprint_update(digest, "x", array)
        _sample_digests({"x": array}, ("x",))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < array.nbytes / 4, (array.flags.c_contiguous, peak)


def test_the_nan_check_scans_in_blocks_and_finds_the_last_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_SCAN_BLOCK_BYTES", 1 << 20)
    images = np.zeros((256, 16, 32, 32), np.float32)  # 16 MiB
    tracemalloc.start()
    assert data._all_finite(images)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < images.nbytes / 16, peak  # a boolean block, not a boolean copy of the data
    images[-1, -1, -1, -1] = np.inf
    assert not data._all_finite(images) and not data._all_finite(images[:, 1::2][:, :, ::-1])
    assert data._all_finite(np.float32(1.0)) and not data._all_finite(np.array(np.nan))
