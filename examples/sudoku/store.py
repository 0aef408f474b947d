"""The study's small JSON files (config.json, evaluation caches, summaries): written whole or not at all, read back
with a clear error when damaged.

A write goes to a temporary file in the same folder, is flushed, then renamed over the target, so an interrupted run
never leaves a truncated file. A file that is damaged anyway (a disk full, a hand edit) is reported with its path
and what to do; a damaged cache is simply recomputed.

Example::

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.json"
    >>> write_json(path, {"a": 1})
    >>> read_json(path, what="a test file")
    {'a': 1}
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any, *, indent: int | None = 1) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temporary file, flush, rename); NaN is refused."""
    text = json.dumps(data, indent=indent, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_json(path: Path, *, what: str) -> Any:
    """The JSON in ``path``; a damaged file raises ValueError naming it, ``what`` it is and what to do."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path} ({what}) is damaged, e.g. truncated by an interrupted write ({e}); delete it and run again"
        ) from e


def read_cache(path: Path, *, what: str) -> Any | None:
    """A cached result, or None when there is none or it is damaged (warned about; the caller recomputes it)."""
    if not path.exists():
        return None
    try:
        return read_json(path, what=what)
    except ValueError as e:
        warnings.warn(f"{e}; recomputing it", stacklevel=2)
        return None


def check_run_folder(out: Path) -> None:
    """Refuse an ``--out`` that exists but is not a folder, with a message instead of FileExistsError."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out} is a file, not a folder; pass a folder path (it is created when missing)")
