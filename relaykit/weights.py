"""Backbone weights in a relay folder: safetensors, sharded with an index above a size, as transformers lays them out.

Files: ``model.safetensors``, or ``model-00001-of-0000N.safetensors`` ... plus ``model.safetensors.index.json``
(``{"metadata": {"total_size": bytes}, "weight_map": {tensor name: shard file}}``) when the weights exceed
``max_shard_size``. A Hugging Face backbone also gets its ``config.json`` (with ``architectures``), so
``transformers.AutoModel*.from_pretrained(folder)`` loads the same weights. Tied tensors (one storage under several
names, e.g. a tied LM head) are written once, under their first name, as transformers does; loading fills every
name of a tie group from that one. Shards are written one at a time: only one shard's CPU copy exists at once.

Example::

    files = write_backbone(stage, tensors_of(backbone, skip_prefix="relay_channel"), max_shard_size="5GB")
    load_backbone(backbone, folder, "model.safetensors.index.json", skip_prefix="relay_channel")
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from relaykit.atomic import write_file, write_with
from relaykit.fingerprint import tensors_of

logger = logging.getLogger("relaykit")

SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
HF_CONFIG_NAME = "config.json"
#: the file stem used instead of ``model`` when the folder already holds someone else's ``model.safetensors`` (e.g.
#: the Hugging Face Trainer's weights of the whole RelayModel in a checkpoint folder): never overwrite it
OWN_BASE = "relay_backbone"
_SHARD = re.compile(r"(model|relay_backbone)-\d{5}-of-\d{5}\.safetensors")
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def is_backbone_file(name: str) -> bool:
    """Whether ``name`` is one of the backbone-weight files this module writes."""
    names = (SINGLE_NAME, INDEX_NAME, HF_CONFIG_NAME, f"{OWN_BASE}.safetensors", f"{OWN_BASE}.safetensors.index.json")
    return name in names or bool(_SHARD.fullmatch(name))


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as ``"5GB"``, ``"500MB"``, ``"2GiB"``."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    if isinstance(size, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", size)
        if match and match.group(2).upper() in _UNITS and float(match.group(1)) > 0:
            return int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    raise ValueError(f"max_shard_size must be a positive number of bytes or a string like '5GB', got {size!r}")


def _storage_key(t: Tensor) -> tuple[Any, ...]:
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))


def tie_groups(tensors: dict[str, Tensor]) -> dict[str, str]:
    """{alias: first name} for names that share one tensor (same storage, offset, shape and strides)."""
    first: dict[tuple[Any, ...], str] = {}
    aliases: dict[str, str] = {}
    for name, t in tensors.items():
        if t.is_meta:
            continue
        key = _storage_key(t)
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def _shards(tensors: dict[str, Tensor], limit: int) -> list[list[str]]:
    """Names grouped into consecutive shards of at most ``limit`` bytes (a larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def hf_config_json(backbone: nn.Module) -> bytes | None:
    """The ``config.json`` transformers would write for ``backbone`` (None for a backbone without an HF config)."""
    config = getattr(backbone, "config", None)
    to_json = getattr(config, "to_json_string", None)
    if not callable(to_json):
        return None
    data = json.loads(to_json())
    data["architectures"] = [type(backbone).__name__]
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def write_backbone(
    stage: Path, backbone: nn.Module, *, skip_prefix: str, max_shard_size: int | str, base: str = "model"
) -> list[str]:
    """Write the backbone's tensors (and an HF ``config.json``) into ``stage``; returns the file names written.

    ``base`` is the file stem (``model`` as transformers names it; :data:`OWN_BASE` when that name is taken, then
    without ``config.json``, since the folder is not a transformers checkpoint of the backbone). The entry file
    (single file or index) comes first in the returned list.
    """
    limit = parse_size(max_shard_size)
    tensors = tensors_of(backbone, skip_prefix=skip_prefix)
    if any(t.is_meta for t in tensors.values()):
        meta = [k for k, t in tensors.items() if t.is_meta]
        raise ValueError(f"cannot save backbone tensors that live on the meta device (no values): {meta[:5]}")
    aliases = tie_groups(tensors)
    own = {k: t for k, t in tensors.items() if k not in aliases}
    groups = _shards(own, limit)
    n = len(groups)
    names = [f"{base}.safetensors"] if n == 1 else [f"{base}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    for file, group in zip(names, groups):
        shard = {k: own[k].detach().to("cpu").contiguous() for k in group}  # one shard's copy at a time
        write_with(stage / file, lambda p, shard=shard: save_file(shard, p, metadata={"format": "pt"}))
        del shard
    files = list(names)
    if len(groups) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in own.values())},
            "weight_map": {k: file for file, group in zip(names, groups) for k in group},
        }
        index_name = f"{base}.safetensors.index.json"
        write_file(stage / index_name, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
        files.insert(0, index_name)
    config = hf_config_json(backbone) if base == "model" else None
    if config is not None:
        write_file(stage / HF_CONFIG_NAME, config)
        files.append(HF_CONFIG_NAME)
    return files


def _weight_map(folder: Path, entry: str) -> dict[str, str]:
    """{tensor name: file} from the single file or the index named ``entry``."""
    path = folder / entry
    if not path.is_file():
        raise FileNotFoundError(f"{folder} names backbone weights {entry!r} in relay_config.json but has no such file")
    if not entry.endswith(".index.json"):
        with safe_open(str(path), framework="pt") as f:
            return {k: entry for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    try:
        index = json.loads(path.read_text())
        weight_map = index["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a safetensors index (expected a 'weight_map' object): {e}") from e
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{path}: 'weight_map' must map tensor names to shard file names")
    return weight_map


def load_backbone(
    backbone: nn.Module,
    folder: Path,
    entry: str,
    *,
    skip_prefix: str,
    fetch: Callable[[str], Path] | None = None,
) -> int:
    """Copy the saved backbone tensors into ``backbone`` (checked in full before anything is copied).

    ``fetch(name)`` returns a local path for a file of the folder (Hub downloads); default: ``folder / name``.
    Fails naming missing, unexpected and mismatched tensors. Returns the number of tensors loaded.
    """
    local = fetch or (lambda name: folder / name)
    index_path = local(entry)
    weight_map = _weight_map(index_path.parent, index_path.name)
    own = tensors_of(backbone, skip_prefix=skip_prefix)
    aliases = tie_groups(own)
    saved = set(weight_map)
    missing = sorted(k for k in own if k not in saved and not (k in aliases and aliases[k] in saved))
    unexpected = sorted(saved - set(own))
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in sorted(set(weight_map.values())):
        with safe_open(str(local(file)), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118
                shapes[key] = (tuple(f.get_slice(key).get_shape()), f.get_slice(key).get_dtype())
    mismatched = [
        f"{k}: saved {shapes[k][0]}, model {tuple(own[k].shape)}"
        for k in sorted(saved & set(own))
        if shapes[k][0] != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"the backbone weights in {folder} do not fit this {type(backbone).__name__} (another architecture or "
            f"size?): missing {missing[:10]}{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}, mismatched shapes {mismatched[:10]}"
        )
    cast = sorted({f"{shapes[k][1]} -> {own[k].dtype}" for k in saved if _DTYPES.get(shapes[k][1]) != own[k].dtype})
    loaded = 0
    with torch.no_grad():
        for file in sorted(set(weight_map.values())):
            with safe_open(str(local(file)), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118
                    own[key].copy_(f.get_tensor(key))
                    loaded += 1
    if cast:
        warnings.warn(f"backbone weights from {folder} were cast on load ({', '.join(cast)})", stacklevel=3)
    logger.info("relaykit: loaded %d backbone tensors from %s (%s)", loaded, folder, entry)
    return loaded
