"""Content-addressed artefact cache: atomic writes, a checksum verified on every read, one builder per
artefact across processes.

An entry ``<kind>/<key><suffix>`` is valid only with its checksum file ``<key><suffix>.sha256`` (the
``sha256sum`` format), written after the entry. A process killed at any point therefore leaves either no
entry, a temporary file that is never read, or an entry without (or not matching) its checksum — which
the next reader reports and rebuilds. Directories are created without the group/world write bits whatever
the umask, so another user cannot plant an artefact. A cache that cannot be used (a file where a directory
belongs, no permission, a full disk, a file-size limit) is a :class:`CacheError` sentence, not a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from filelock import FileLock

from .errors import CacheError, bounded_text

CHECKSUM_SUFFIX = ".sha256"
#: Suffix of a file a writer is still filling (:meth:`ArtifactCache.partial_file`).
PARTIAL_SUFFIX = ".partial"
#: A partial file untouched this long was abandoned by a writer that was killed.
PARTIAL_MAX_AGE_S = 24 * 3600.0
#: Mode of the directories the cache creates (never group- or world-writable).
DIRECTORY_MODE = 0o755
LOCK_FILE_MODE = 0o644
#: Cache entries are never group- or world-writable either (the umask may take more bits away).
ENTRY_MODE = 0o644

_LOG = logging.getLogger(__name__)


def content_key(parts: Mapping[str, object]) -> str:
    """A short stable hash of the (JSON-serialisable) parts that decide an artefact's content."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def make_directories(path: Path) -> None:
    """Create ``path`` and its missing parents with :data:`DIRECTORY_MODE` (existing ones are left as is).

    ``Path.mkdir(parents=True)`` creates parents with mode 0o777 minus the umask, which is world-writable
    under ``umask 000``; here every directory created gets an explicit ``chmod``.
    """
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIRECTORY_MODE)
        except FileExistsError:
            if not directory.is_dir():
                raise NotADirectoryError(f"{directory} is a file, not a directory") from None
            continue  # another process made it first: its mode is that process's business
        os.chmod(directory, DIRECTORY_MODE)


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, without changing it; else set and reset)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Write to a temporary file beside ``path`` and rename it over: readers never see half a file.

    The file gets ``mode`` minus the umask, like any file the user's tools write (a temporary file alone
    would be 0600).
    """
    make_directories(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checksum_path(entry: Path) -> Path:
    """The checksum file of a cache entry."""
    return entry.with_name(entry.name + CHECKSUM_SUFFIX)


#: Files are hashed this many bytes at a time (a large entry is never read into memory whole).
_HASH_CHUNK_BYTES = 1 << 20


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksum(entry: Path, data: bytes | None = None) -> str:
    """Write ``entry``'s checksum file (``sha256sum`` format) of ``data`` (default: the file's bytes);
    return the hex digest."""
    digest = file_sha256(entry) if data is None else hashlib.sha256(data).hexdigest()
    atomic_write_bytes(checksum_path(entry), f"{digest}  {entry.name}\n".encode(), mode=ENTRY_MODE)
    return digest


def entry_problem(entry: Path) -> str | None:
    """Why ``entry`` is not a valid cache entry ("" when it does not exist, None when it is valid)."""
    if not entry.is_file():
        return ""
    sidecar = checksum_path(entry)
    try:
        recorded = sidecar.read_text(encoding="ascii").split()
    except FileNotFoundError:
        return "has no checksum file (its write was interrupted, or an older version wrote it)"
    except (OSError, UnicodeDecodeError) as exc:
        return f"has an unreadable checksum file ({exc})"
    try:
        actual = file_sha256(entry)
    except OSError as exc:
        return f"cannot be read ({exc})"
    if not recorded or recorded[0] != actual:
        expected = recorded[0][:12] if recorded else "nothing"
        return f"does not match its checksum (sha256 {actual[:12]}..., recorded {expected}...)"
    return None


class ArtifactCache:
    """Files under ``root`` named by content key; concurrent builders of one key build it once.

    ``notes`` collects one sentence per damaged entry that was found and rebuilt, for the verdict.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.notes: list[str] = []

    def path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / f"{key}{suffix}"

    def get_or_build(self, kind: str, key: str, suffix: str, build: Callable[[], bytes]) -> tuple[Path, bool]:
        """The artefact's path and whether it was already cached (built now otherwise).

        A cached entry is returned only after its checksum was verified; a damaged one is reported in
        :attr:`notes` (and logged) and rebuilt. A cache that cannot be used raises :class:`CacheError`.
        """
        target = self.path(kind, key, suffix)
        if self._problem(target) is None:
            return target, True
        with self._locked(target):
            problem = self._problem(target)
            if problem is None:  # another worker built it while this one waited
                return target, True
            if problem:
                note = f"cache entry {target} {problem}; rebuilt it"
                self.notes.append(note)
                _LOG.warning("int8gate: %s", note)
            with self._usable(target, "clear the old"):
                self._remove_leftovers(target)
            data = build()
            with self._usable(target, "write"):
                atomic_write_bytes(target, data, mode=ENTRY_MODE)
                write_checksum(target, data)  # of what was built: a bad write cannot vouch for itself
            _LOG.info("int8gate: built cache entry %s", target)
        return target, False

    def partial_file(self, kind: str, key: str, suffix: str) -> Path:
        """A new empty file beside the entry ``kind/key+suffix``, for a writer that fills it over a while and
        then hands it to :meth:`adopt` (its name never matches an entry; :meth:`adopt` removes abandoned
        ones after :data:`PARTIAL_MAX_AGE_S`)."""
        target = self.path(kind, key, suffix)
        with self._usable(target, "create"):
            make_directories(target.parent)
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX)
            os.fchmod(fd, ENTRY_MODE & ~current_umask())
            os.close(fd)
        return Path(name)

    def adopt(self, kind: str, key: str, suffix: str, partial: Path) -> Path:
        """Make the finished ``partial`` file (from :meth:`partial_file`) the entry ``kind/key+suffix`` with
        its checksum, unless a valid entry is there already (then ``partial`` is dropped)."""
        target = self.path(kind, key, suffix)
        with self._locked(target):
            problem = self._problem(target)
            if problem is None:
                partial.unlink(missing_ok=True)
                return target
            if problem:
                note = f"cache entry {target} {problem}; rebuilt it"
                self.notes.append(note)
                _LOG.warning("int8gate: %s", note)
            with self._usable(target, "write"):
                self._remove_leftovers(target)
                now = time.time()
                for stale in target.parent.glob(f".{target.name}.*{PARTIAL_SUFFIX}"):
                    with contextlib.suppress(OSError):  # another writer's may vanish meanwhile
                        if now - stale.stat().st_mtime > PARTIAL_MAX_AGE_S:
                            stale.unlink()
                os.replace(partial, target)
                write_checksum(target)
        return target

    def _problem(self, target: Path) -> str | None:
        with self._usable(target, "read"):
            if target.exists() and not target.is_file():
                raise CacheError(
                    f"cache entry {target} is a directory or another non-file; remove it (the cache holds "
                    "only files that int8gate writes)."
                )
            return entry_problem(target)

    @contextlib.contextmanager
    def _locked(self, target: Path) -> Iterator[None]:
        with self._usable(target, "create the folder of"):
            make_directories(target.parent)
        lock = FileLock(str(target) + ".lock", mode=LOCK_FILE_MODE)
        with self._usable(target, "lock"):
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def _usable(self, target: Path, action: str) -> Iterator[None]:
        """An OSError of the cache's own file operations becomes one sentence naming the directory."""
        try:
            yield
        except OSError as exc:
            text = str(exc) if isinstance(exc, NotADirectoryError) else exc.strerror or str(exc)
            raise CacheError(
                f"the cache directory {self.root} cannot be used: could not {action} cache entry "
                f"{target.parent.name}/{target.name} "
                f"({bounded_text(text)}); choose another cache directory or fix this one."
            ) from exc

    @staticmethod
    def _remove_leftovers(target: Path) -> None:
        """Under the entry's lock: drop its checksum (readers must not pair it with the new entry) and the
        temporary files of writers that were killed."""
        checksum_path(target).unlink(missing_ok=True)
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # the entry's and its checksum's
            stale.unlink(missing_ok=True)
