"""Files written whole: a reader, or a process killed at any moment, finds the old file or the
new one, never a part (the winner files a sweep writes, the MNIST files a run installs)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, data: str | bytes, before_rename: Callable[[Path], None] | None = None) -> None:
    """Write ``data`` to a temporary file of a unique name beside ``path`` (several processes may
    write at once), then rename it; ``before_rename(tmp)`` may check the complete file first, and
    whatever it raises leaves ``path`` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # on disk before it takes the name: a crash leaves the old file, not an empty one
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600: shared data and config folders are read by all
        if before_rename is not None:
            before_rename(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
