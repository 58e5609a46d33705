"""Content-addressed artefact cache: atomic writes, one builder per artefact across processes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from filelock import FileLock


def content_key(parts: Mapping[str, object]) -> str:
    """A short stable hash of the (JSON-serialisable) parts that decide an artefact's content."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it over: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ArtifactCache:
    """Files under ``root`` named by content key; concurrent builders of one key build it once."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / f"{key}{suffix}"

    def get_or_build(self, kind: str, key: str, suffix: str, build: Callable[[], bytes]) -> tuple[Path, bool]:
        """The artefact's path and whether it was already cached (built now otherwise)."""
        target = self.path(kind, key, suffix)
        if target.is_file():
            return target, True
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with FileLock(str(target) + ".lock"):
            if target.is_file():  # another worker built it while this one waited
                return target, True
            atomic_write_bytes(target, build())
        return target, False
