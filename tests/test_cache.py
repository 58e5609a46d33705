"""Tests for pytest_int8gate.cache: content keys, atomic writes, one build per artefact across workers."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from pytest_int8gate.cache import ArtifactCache, atomic_write_bytes, content_key

BUILD_SECONDS = 0.3


# ---- content_key -------------------------------------------------------------------------------------


def test_content_key_is_stable_and_order_independent() -> None:
    parts = {"model": "abc", "data": "def", "settings": {"bins": 2048, "percentile": 99.99}}
    reordered = {"settings": {"percentile": 99.99, "bins": 2048}, "data": "def", "model": "abc"}
    key = content_key(parts)
    assert key == content_key(parts)
    assert key == content_key(reordered)
    assert len(key) == 24
    assert all(c in "0123456789abcdef" for c in key)


@pytest.mark.parametrize(
    "changed",
    [
        {"model": "abd", "data": "def", "settings": {"bins": 2048, "percentile": 99.99}},
        {"model": "abc", "data": "def", "settings": {"bins": 2048, "percentile": 99.9}},
        {"model": "abc", "data": "def", "settings": {"bins": 2048}},
        {"model": "abc", "data": "def", "settings": {"bins": 2048, "percentile": 99.99}, "v": 1},
        {"model": "abc", "data": ["def"], "settings": {"bins": 2048, "percentile": 99.99}},
    ],
)
def test_content_key_is_sensitive_to_every_part(changed: dict[str, object]) -> None:
    parts = {"model": "abc", "data": "def", "settings": {"bins": 2048, "percentile": 99.99}}
    assert content_key(changed) != content_key(parts)


def test_content_key_accepts_non_json_values_by_their_text(tmp_path: Path) -> None:
    assert content_key({"path": tmp_path}) == content_key({"path": str(tmp_path)})
    assert content_key({"path": tmp_path}) != content_key({"path": str(tmp_path / "x")})


# ---- atomic_write_bytes ------------------------------------------------------------------------------


def test_atomic_write_creates_parents_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "table.json"
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write_bytes(target, b"second, longer content")
    assert target.read_bytes() == b"second, longer content"
    assert [p.name for p in target.parent.iterdir()] == ["table.json"]


def test_failed_atomic_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    atomic_write_bytes(target, b"good")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


# ---- ArtifactCache ------------------------------------------------------------------------------------


def test_get_or_build_builds_once_then_hits(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    builds: list[int] = []

    def build() -> bytes:
        builds.append(1)
        return b"artefact"

    path, hit = cache.get_or_build("calibration", "k1", ".json", build)
    assert (path, hit) == (tmp_path / "cache" / "calibration" / "k1.json", False)
    assert path.read_bytes() == b"artefact"
    again, hit = cache.get_or_build("calibration", "k1", ".json", build)
    assert (again, hit) == (path, True)
    assert builds == [1]

    other, hit = cache.get_or_build("calibration", "k2", ".json", lambda: b"other")
    assert not hit and other.read_bytes() == b"other"
    assert cache.path("qdq", "k1", ".onnx") == tmp_path / "cache" / "qdq" / "k1.onnx"


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)

    def failing() -> bytes:
        raise RuntimeError("calibration crashed")

    with pytest.raises(RuntimeError, match="calibration crashed"):
        cache.get_or_build("calibration", "k", ".json", failing)
    assert not cache.path("calibration", "k", ".json").exists()
    path, hit = cache.get_or_build("calibration", "k", ".json", lambda: b"ok")
    assert not hit and path.read_bytes() == b"ok"


def counted_build(counter: Path, payload: bytes) -> bytes:
    with counter.open("a") as handle:
        handle.write("built\n")
    time.sleep(BUILD_SECONDS)  # long enough that every other worker arrives while this one builds
    return payload


def test_concurrent_threads_build_exactly_once(tmp_path: Path) -> None:
    counter = tmp_path / "builds.txt"
    workers = 6
    barrier = threading.Barrier(workers)
    outcomes: list[tuple[Path, bool, bytes]] = []
    lock = threading.Lock()

    def worker() -> None:
        cache = ArtifactCache(tmp_path / "cache")
        barrier.wait()
        path, hit = cache.get_or_build("qdq", "same", ".onnx", lambda: counted_build(counter, b"qdq"))
        with lock:
            outcomes.append((path, hit, path.read_bytes()))

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert counter.read_text().splitlines() == ["built"]
    assert len(outcomes) == workers
    assert sorted(hit for _, hit, _ in outcomes) == [False] + [True] * (workers - 1)
    assert {(path, content) for path, _, content in outcomes} == {
        (tmp_path / "cache" / "qdq" / "same.onnx", b"qdq")
    }


def build_in_process(root: str, counter: str, start: float, results: multiprocessing.Queue[object]) -> None:
    """Runs in a spawned process: wait for the common start time, then race for the same key."""
    cache = ArtifactCache(root)
    time.sleep(max(0.0, start - time.time()))
    path, hit = cache.get_or_build(
        "calibration", "shared", ".json", lambda: counted_build(Path(counter), b"t")
    )
    results.put((str(path), hit, path.read_bytes()))


def test_concurrent_processes_build_exactly_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")  # fork in a threaded pytest process is unsafe
    results: multiprocessing.Queue[object] = context.Queue()
    counter = tmp_path / "builds.txt"
    start = time.time() + 1.5  # spawned interpreters need a moment to import
    processes = [
        context.Process(target=build_in_process, args=(str(tmp_path / "cache"), str(counter), start, results))
        for _ in range(3)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    results.close()
    results.join_thread()
    assert counter.read_text().splitlines() == ["built"]
    assert sorted(hit for _, hit, _ in outcomes) == [False, True, True]  # type: ignore[misc]
    assert {content for _, _, content in outcomes} == {b"t"}  # type: ignore[misc]
