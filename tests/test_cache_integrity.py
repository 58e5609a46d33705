"""The artefact cache under crashes and damage: a process killed while it builds or writes an entry, and an
entry corrupted on disk, never leave anything that a later run reads as valid; damage is reported and
rebuilt. Directories the cache creates are never group- or world-writable, whatever the umask.

Crashes are real: a child Python process runs ``ArtifactCache.get_or_build`` and is killed with SIGKILL.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from filelock import FileLock

from pytest_int8gate.cache import (
    CHECKSUM_SUFFIX,
    ArtifactCache,
    checksum_path,
    entry_problem,
    make_directories,
    write_checksum,
)

REPO = Path(__file__).resolve().parent.parent
needs_sigkill = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")


def payload(key: str, size: int = 1 << 20) -> bytes:
    """Deterministic content of entry ``key``: what a correct build always returns."""
    block = hashlib.sha256(key.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def start_child(script: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], env=env)


def wait_for(path: Path, child: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert child.poll() is None, f"child exited with {child.returncode} before {path.name}"
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.005)


def kill(child: subprocess.Popen[bytes]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL


def assert_lock_is_free(entry: Path) -> None:
    with FileLock(str(entry) + ".lock", timeout=5):  # a dead holder's lock is released by the kernel
        pass


# ---- killed processes -----------------------------------------------------------------------------------

SLOW_BUILD = """
import sys, time
from pathlib import Path
from pytest_int8gate.cache import ArtifactCache

root, marker = sys.argv[1], Path(sys.argv[2])

def build():
    marker.write_text("building")
    time.sleep(60)
    return b"never written"

ArtifactCache(root).get_or_build("calibration", "k", ".json", build)
"""


@needs_sigkill
def test_a_process_killed_while_building_leaves_no_entry_and_no_held_lock(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    entry = cache.path("calibration", "k", ".json")
    child = start_child(SLOW_BUILD, str(cache.root), str(tmp_path / "building"))
    wait_for(tmp_path / "building", child)

    kill(child)

    assert not entry.exists() and not checksum_path(entry).exists()
    assert_lock_is_free(entry)
    path, hit = cache.get_or_build("calibration", "k", ".json", lambda: b"rebuilt")
    assert (hit, path.read_bytes(), cache.notes) == (False, b"rebuilt", [])


KILLED_BEFORE_CHECKSUM = """
import sys, time
from pathlib import Path
import pytest_int8gate.cache as cache_module

root, marker = sys.argv[1], Path(sys.argv[2])

def stalled_checksum(entry, data=None):
    # the entry has been renamed into place; die before its checksum is written
    marker.write_text("entry written")
    time.sleep(60)

cache_module.write_checksum = stalled_checksum
cache_module.ArtifactCache(root).get_or_build("qdq", "k", ".onnx", lambda: b"complete content")
"""


@needs_sigkill
def test_a_process_killed_between_the_entry_and_its_checksum_leaves_an_entry_that_is_rebuilt(
    tmp_path: Path,
) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    entry = cache.path("qdq", "k", ".onnx")
    child = start_child(KILLED_BEFORE_CHECKSUM, str(cache.root), str(tmp_path / "written"))
    wait_for(tmp_path / "written", child)

    kill(child)

    assert entry.read_bytes() == b"complete content"  # complete, yet not trusted: nothing vouches for it
    assert entry_problem(entry) == (
        "has no checksum file (its write was interrupted, or an older version wrote it)"
    )
    builds: list[int] = []
    path, hit = cache.get_or_build("qdq", "k", ".onnx", lambda: builds.append(1) or b"complete content")
    assert (hit, builds, path.read_bytes()) == (False, [1], b"complete content")
    assert cache.notes == [
        f"cache entry {entry} has no checksum file (its write was interrupted, or an older version wrote "
        "it); rebuilt it"
    ]
    assert entry_problem(entry) is None
    assert cache.get_or_build("qdq", "k", ".onnx", lambda: b"unused") == (entry, True)


KEEP_BUILDING = """
import hashlib, sys
from pathlib import Path
from pytest_int8gate.cache import ArtifactCache

root, keys, marker = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])

def payload(key, size=1 << 20):
    block = hashlib.sha256(key.encode()).digest()
    return (block * (size // len(block) + 1))[:size]

cache = ArtifactCache(root)
marker.write_text("started")
for index in range(keys):
    key = f"k{index}"
    cache.get_or_build("blob", key, ".bin", lambda key=key: payload(key))
"""


@needs_sigkill
def test_processes_killed_at_random_moments_never_leave_an_entry_read_as_valid_with_wrong_content(
    tmp_path: Path,
) -> None:
    """Kill a writer of 1 MB entries at random moments, over and over, on the same cache: after every kill
    each entry is either rejected (and so rebuilt) or exactly what a correct build gives."""
    root, keys = tmp_path / "cache", 60
    rng = random.Random(7)
    interrupted = 0
    for attempt in range(6):
        marker = tmp_path / f"started{attempt}"
        child = start_child(KEEP_BUILDING, str(root), str(keys), str(marker))
        wait_for(marker, child)
        time.sleep(rng.uniform(0.0, 0.08))
        if child.poll() is None:
            kill(child)
            interrupted += 1
        for entry in (root / "blob").glob("*.bin"):
            if entry_problem(entry) is None:
                assert entry.read_bytes() == payload(entry.stem), entry
    assert interrupted >= 3  # the test really killed writers mid-run
    cache = ArtifactCache(root)
    for index in range(keys):
        path, _ = cache.get_or_build("blob", f"k{index}", ".bin", lambda index=index: payload(f"k{index}"))
        assert path.read_bytes() == payload(f"k{index}")
        assert entry_problem(path) is None
    leftovers = [p.name for p in (root / "blob").iterdir() if p.suffix == ".tmp"]
    assert leftovers == []  # temporary files of killed writers were removed under the entry's lock


# ---- damage on disk ---------------------------------------------------------------------------------------


def _flip_a_byte(entry: Path) -> None:
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0x01
    entry.write_bytes(bytes(data))


DAMAGE = {
    "flipped_byte": (_flip_a_byte, "does not match its checksum"),
    "truncated": (lambda e: e.write_bytes(e.read_bytes()[:100]), "does not match its checksum"),
    "emptied": (lambda e: e.write_bytes(b""), "does not match its checksum"),
    "checksum_deleted": (lambda e: checksum_path(e).unlink(), "has no checksum file"),
    "checksum_garbage": (lambda e: checksum_path(e).write_bytes(b"\xff\xfe"), "unreadable checksum file"),
    "checksum_empty": (lambda e: checksum_path(e).write_text(""), "recorded nothing"),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_entry_is_reported_and_rebuilt(tmp_path: Path, damage: tuple[object, str]) -> None:
    damage_entry, expected = damage
    cache = ArtifactCache(tmp_path)
    entry, _ = cache.get_or_build("calibration", "k", ".json", lambda: payload("k"))
    damage_entry(entry)  # type: ignore[operator]

    problem = entry_problem(entry)
    assert problem is not None and expected in problem
    path, hit = cache.get_or_build("calibration", "k", ".json", lambda: payload("k"))

    assert (path, hit) == (entry, False)
    assert path.read_bytes() == payload("k")
    assert len(cache.notes) == 1 and cache.notes[0].startswith(f"cache entry {entry} ")
    assert expected in cache.notes[0] and cache.notes[0].endswith("; rebuilt it")
    assert entry_problem(entry) is None


def test_the_checksum_file_is_in_sha256sum_format(tmp_path: Path) -> None:
    entry, _ = ArtifactCache(tmp_path).get_or_build("qdq", "abc", ".onnx", lambda: b"model bytes")
    assert checksum_path(entry) == entry.with_name("abc.onnx" + CHECKSUM_SUFFIX)
    assert checksum_path(entry).read_text() == f"{hashlib.sha256(b'model bytes').hexdigest()}  abc.onnx\n"
    assert write_checksum(entry) == hashlib.sha256(b"model bytes").hexdigest()


def test_an_absent_entry_is_not_a_problem_and_a_missing_entry_with_a_checksum_is_just_built(
    tmp_path: Path,
) -> None:
    cache = ArtifactCache(tmp_path)
    entry = cache.path("qdq", "k", ".onnx")
    assert entry_problem(entry) == ""
    make_directories(entry.parent)
    checksum_path(entry).write_text("0" * 64 + "  k.onnx\n")  # the entry itself was deleted by hand
    path, hit = cache.get_or_build("qdq", "k", ".onnx", lambda: b"fresh")
    assert (hit, path.read_bytes(), cache.notes) == (False, b"fresh", [])
    assert entry_problem(path) is None


# ---- permissions ------------------------------------------------------------------------------------------

UNDER_UMASK_ZERO = """
import os, sys
os.umask(0)
from pytest_int8gate.cache import ArtifactCache
ArtifactCache(sys.argv[1]).get_or_build("calibration", "k", ".json", lambda: b"{}")
"""


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_directories_the_cache_creates_are_not_group_or_world_writable_even_under_umask_zero(
    tmp_path: Path,
) -> None:
    root = tmp_path / "deep" / "cache"
    child = start_child(UNDER_UMASK_ZERO, str(root))  # the umask is per process: not this one's
    assert child.wait(timeout=60) == 0

    for directory in (tmp_path / "deep", root, root / "calibration"):
        mode = stat.S_IMODE(directory.stat().st_mode)
        assert mode & (stat.S_IWGRP | stat.S_IWOTH) == 0, (directory, oct(mode))
    for file in (root / "calibration").iterdir():
        mode = stat.S_IMODE(file.stat().st_mode)
        assert mode & stat.S_IWOTH == 0, (file, oct(mode))
