"""Where a relay folder is: a local path or a Hugging Face Hub repo id, told apart with errors that help.

``locate`` returns the folder as messages name it and a ``fetch(file name) -> local path`` function: a local
folder's files directly, a Hub repo's through ``huggingface_hub`` (downloaded once into its cache, or read from the
cache alone with ``local_files_only``). A path that can only be local (absolute, ``./``, ``~`` ...) never goes to
the Hub: a missing one is an error naming similar folders. A save killed mid-way is recovered first
(:mod:`relaykit.atomic`).

Example::

    folder, fetch = locate("out/relay", marker="relay_config.json", revision=None, cache_dir=None, token=None,
                           local_files_only=False)
    config_path = fetch("relay_config.json")
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relaykit import atomic

__all__ = ["locate", "looks_local", "missing_folder_error"]


def looks_local(text: str) -> bool:
    """A path that can only mean a local folder (never a Hub id): absolute, ./ ../ ~, or under an existing dir."""
    if text.startswith(("/", "./", "../", "~", ".\\")) or os.path.isabs(text) or "\\" in text:
        return True
    head = text.split("/", 1)[0]
    return text.count("/") > 1 or ("/" in text and os.path.isdir(head))


def missing_folder_error(path: Path) -> FileNotFoundError:
    """The error for a local path where nothing exists, naming folders with a similar name nearby."""
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    near = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir() if p.is_dir()], n=3)
    hint = f"; folders with a similar name in {parent}: {near}" if near else ""
    return FileNotFoundError(f"no relay folder at {str(path)!r} (nothing exists there){hint}")


def locate(
    path_or_repo_id: str | os.PathLike[str],
    *,
    marker: str,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    token: str | bool | None,
    local_files_only: bool,
) -> tuple[Path, Callable[[str], Path]]:
    """(the folder as named in messages, fetch(file name) -> local path) for a local folder holding ``marker`` or a
    Hub repo id (files are downloaded, or read from the Hub cache, when fetched)."""
    text = os.fspath(path_or_repo_id)
    if not isinstance(text, str) or not text:
        raise ValueError(f"path_or_repo_id must be a folder path or a Hub repo id, got {path_or_repo_id!r}")
    local = Path(text).expanduser()
    if not local.exists() and atomic.recover(local.absolute()) is not None:
        warnings.warn(f"{local}: a save was killed mid-way; restored the previous save from beside it", stacklevel=4)
    if local.is_dir():
        if not (local / marker).is_file():
            present = sorted(p.name for p in local.iterdir())[:10]
            raise FileNotFoundError(f"{local} is not a relay folder: no {marker} (it holds {present})")
        return local, lambda name: local / name
    if local.exists():
        raise NotADirectoryError(f"{local} is a file; from_pretrained expects a relay folder or a Hub repo id")
    if isinstance(path_or_repo_id, os.PathLike) or looks_local(text):
        raise missing_folder_error(local)
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text):
        raise FileNotFoundError(f"no relay folder at {text!r}, and it is not a Hub repo id of the form 'owner/name'")
    from huggingface_hub import hf_hub_download

    kwargs: dict[str, Any] = {"revision": revision, "cache_dir": cache_dir, "token": token}
    if local_files_only:
        kwargs["local_files_only"] = True
    return Path(text), lambda name: Path(hf_hub_download(text, name, **kwargs))
