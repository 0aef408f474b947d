"""Replace a checkpoint folder as a whole: readers see the old save or the new one, never a mix.

A save is written into a staging folder next to the target (``.<name>.relay-<pid>-<token>.tmp``), every file is
flushed to disk, and the staging folder then takes the target's place in one step: an atomic exchange of the two
directory entries (Linux ``renameat2(RENAME_EXCHANGE)``, macOS ``renamex_np(RENAME_SWAP)``) after which the old
folder, now at the staging name, is deleted. Where no exchange exists, the old folder is first renamed aside
(``.<name>.relay-<pid>-<token>.old``); an interrupted save is rolled back when Python sees the failure, and after a
hard kill :func:`recover` (called by the loader and by the next save) puts the old folder back.

Entries of the old folder that the save does not own (``keep``, e.g. a tokenizer saved beside the relay) are
carried into the new folder as hard links (copies where links are impossible) before the exchange. Files follow the
umask; staging folders left by killed processes are removed by the next save into the same folder.

Every file operation goes through :func:`_op`, so tests can fail or kill the save at each one.

Example::

    def write(stage: Path) -> list[str]:
        write_file(stage / "a.json", b"{}")
        return ["a.json"]

    replace_folder(Path("out/ckpt"), write, keep=lambda name: name not in {"a.json"})
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_STAGE_MARK = ".relay-"


def _op(what: str, fn: Callable[..., T], *args: Any) -> T:
    """Run one file operation of a save (tests replace this to inject failures at every step)."""
    return fn(*args)


# ---------------------------------------------------------------------------------------------------- primitives
def fsync_path(path: Path) -> None:
    """Flush a file or directory to disk (directories where the OS allows opening them)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file (mode 0666 minus the umask) and flush it."""

    def write() -> None:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    _op(f"write {path.name}", write)


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows, else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_with(path: Path, writer: Callable[[str], None]) -> None:
    """Let ``writer(path)`` create the file (e.g. safetensors' save_file), give it the umask's mode, flush it.

    safetensors creates its files 0600 whatever the umask; they get 0666 minus the umask like any other file.
    """
    _op(f"write {path.name}", writer, str(path))
    _op(f"chmod {path.name}", os.chmod, path, 0o666 & ~current_umask())
    _op(f"fsync {path.name}", fsync_path, path)


def _exchange_function() -> Callable[[bytes, bytes], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if hasattr(libc, "renameat2"):  # Linux (glibc >= 2.28, musl)
        fn = libc.renameat2
        return lambda a, b: int(fn(-100, a, -100, b, 2))  # AT_FDCWD, RENAME_EXCHANGE
    if hasattr(libc, "renamex_np"):  # macOS
        fn = libc.renamex_np
        return lambda a, b: int(fn(a, b, 2))  # RENAME_SWAP
    return None


_EXCHANGE = _exchange_function()


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing directory entries; False when the platform or file system cannot."""
    if _EXCHANGE is None:
        return False
    if _EXCHANGE(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, f"cannot exchange {a} and {b}: {os.strerror(code)}")


def _link_tree(src: Path, dst: Path) -> None:
    """Recreate ``src`` at ``dst`` with hard links to its files (copies where a link is impossible)."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        os.mkdir(dst)
        for child in src.iterdir():
            _link_tree(child, dst / child.name)
    else:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


# ---------------------------------------------------------------------------------------------------- the folder
def _siblings(target: Path) -> list[Path]:
    """Staging (``.tmp``) and set-aside (``.old``) folders of earlier saves into ``target``."""
    prefix = f".{target.name}{_STAGE_MARK}"
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.suffix in (".tmp", ".old"))


def _owner_alive(path: Path) -> bool:
    """Whether the process that made this staging folder (pid in its name) still runs."""
    try:
        pid = int(path.name.split(_STAGE_MARK, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(target: Path) -> Path | None:
    """After a hard kill between the two renames of the fallback path: put the old folder back. Returns it."""
    if target.exists():
        return None
    olds = [p for p in _siblings(target) if p.suffix == ".old" and not _owner_alive(p)]
    if not olds:
        return None
    os.rename(olds[-1], target)
    return target


def _clean_stale(target: Path) -> None:
    for p in _siblings(target):
        if not _owner_alive(p):
            _op(f"remove stale {p.name}", shutil.rmtree, p)


def replace_folder(target: Path, write: Callable[[Path], list[str]], *, keep: Callable[[str], bool]) -> list[str]:
    """Write a new save with ``write(stage) -> file names`` and put it in ``target``'s place as a whole.

    ``keep(name)`` says which entries of an existing ``target`` are not part of the previous save and must be
    carried over. Returns the names ``write`` reported.
    """
    target = Path(os.path.abspath(target))
    if target.is_symlink():
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"cannot save into {target}: it is a file, not a folder; choose a folder path")
    _op("mkdir parent", target.parent.mkdir, 0o777, True, True)
    recover(target)
    _clean_stale(target)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage = target.parent / f".{target.name}{_STAGE_MARK}{token}.tmp"
    aside = target.parent / f".{target.name}{_STAGE_MARK}{token}.old"
    _op("mkdir stage", os.mkdir, stage)  # 0777 minus the umask, like any folder the user makes
    try:
        files = write(stage)
        if target.is_dir():
            for entry in sorted(target.iterdir()):
                if keep(entry.name) and entry.name not in files:
                    _op(f"carry {entry.name}", _link_tree, entry, stage / entry.name)
        _op("fsync stage", fsync_path, stage)
        if not target.exists():
            _op("rename stage", os.rename, stage, target)
        elif _op("exchange", exchange, stage, target):
            _op("remove old", shutil.rmtree, stage)  # the stage name now holds the previous save
        else:
            _op("rename old aside", os.rename, target, aside)
            _op("rename stage", os.rename, stage, target)
            _op("remove old", shutil.rmtree, aside)
        _op("fsync parent", fsync_path, target.parent)
    except BaseException:
        if aside.exists() and not target.exists():
            os.rename(aside, target)  # roll back: the previous save stays in place
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    return files
