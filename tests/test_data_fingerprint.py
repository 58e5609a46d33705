"""Data fingerprints (data.py): a dataset's digest covers each chunk's names, dtypes and shapes and the digest
of every sample's C-order bytes (the same pass counts the distinct samples), made without a copy of the
data (a transposed or strided chunk is hashed a few rows at a time): memory stays flat in the sample count."""

from __future__ import annotations

import hashlib
import tracemalloc

import blake3
import numpy as np
import pytest

from pytest_int8gate import data
from pytest_int8gate.data import Dataset, _fingerprint_update, _fold_chunk, _sample_digests


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


def reference_fingerprint(chunk: dict[str, np.ndarray]) -> str:
    """The definition: names, dtypes and shapes, then each sample's BLAKE3 (16 bytes) over its inputs."""
    digest = hashlib.sha256()
    keys = sorted(chunk)
    for key in keys:
        digest.update(f"{key}|{chunk[key].dtype.str}|{chunk[key].shape}".encode())
    for index in range(len(chunk[keys[0]])):
        sample = b"".join(np.ascontiguousarray(chunk[key][index]).tobytes() for key in keys)
        digest.update(blake3.blake3(sample).digest(16))
    return digest.hexdigest()


def test_dataset_fingerprint_is_one_digest_per_sample_over_all_inputs() -> None:
    rng = np.random.default_rng(2)
    chunk = {"b": rng.standard_normal((12, 3, 5)).transpose(0, 2, 1), "a": rng.integers(0, 9, (12, 4))}
    chunk["a"][7] = chunk["a"][3]
    chunk["b"][7] = chunk["b"][3]  # a duplicate sample over both inputs
    digest = hashlib.sha256()
    samples = _fold_chunk(digest, chunk, ("a", "b"))
    assert digest.hexdigest() == reference_fingerprint(chunk)
    assert len(samples) == 12 and len(set(samples)) == 11
    dataset = Dataset.from_arrays(chunk)
    assert dataset.fingerprint == reference_fingerprint(chunk) and dataset.distinct_samples == 11
    changed = {**chunk, "a": chunk["a"].copy()}
    changed["a"][0, 0] += 1
    assert Dataset.from_arrays(changed).fingerprint != dataset.fingerprint


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
