"""Save, load and share a relay: ``relay_config.json`` + ``relay_model.safetensors`` (the channel only).

The config records a format version, the library version, the adapter and its options, the channel design, the
mask id, the update rule, the backbone's name and the SHA-256 of the weights file (so a half-written pair is
caught). Files are written to a temporary name and renamed into place, so a crash never leaves a torn file.

Persistence builds relays through the adapter registry and ``RelayCore.build`` and never imports ``attach``; the
model never imports persistence (``relaykit.RelayModel`` in relay.py joins the two).

Example::

    relay.save_pretrained("out/relay")
    relay = RelayModel.from_pretrained(backbone, "out/relay")          # or a Hub repo id
    relay.push_to_hub("me/llada-relay")
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from relaykit._version import __version__
from relaykit.adapter import Adapter
from relaykit.adapters import adapter_from_config
from relaykit.channel import ChannelConfig
from relaykit.model import RelayCore
from relaykit.resolve import readable_width, resolve_mask_token_id

R = TypeVar("R", bound=RelayCore)

CONFIG_NAME = "relay_config.json"
WEIGHTS_NAME = "relay_model.safetensors"
FORMAT_VERSION = 1
_REQUIRED = ("format_version", "adapter", "channel", "mask_token_id")
_KNOWN = (*_REQUIRED, "relaykit_version", "update", "backbone", "weights_sha256")


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (same directory, atomic rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def backbone_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    return str(name) if name else type(model).__name__


def relay_config(relay: RelayCore) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "relaykit_version": __version__,
        "adapter": relay.adapter.to_config(),
        "channel": relay.channel.config.to_dict(),
        "mask_token_id": relay.mask_token_id,
        "update": relay.update,
        "backbone": backbone_name(relay.backbone),
    }


def save_relay(relay: RelayCore, save_directory: str | os.PathLike[str]) -> Path:
    """Write the two relay files into ``save_directory`` (created if needed); returns the folder."""
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in relay.channel.state_dict().items()}
    weights = folder / WEIGHTS_NAME
    _atomic_write(weights, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    config = relay_config(relay) | {"weights_sha256": _sha256(weights)}
    _atomic_write(folder / CONFIG_NAME, lambda p: p.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))
    return folder


def _resolve_files(
    path_or_repo_id: str | os.PathLike[str],
    *,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    token: str | bool | None,
    local_files_only: bool,
) -> tuple[Path, Path]:
    local = Path(path_or_repo_id)
    if local.is_dir():
        config, weights = local / CONFIG_NAME, local / WEIGHTS_NAME
        missing = [p.name for p in (config, weights) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{local} is not a relay folder: missing {missing}")
        return config, weights
    repo_id = str(path_or_repo_id)
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id):
        raise FileNotFoundError(f"no relay folder at {repo_id!r}, and it is not a Hub repo id of the form 'owner/name'")
    from huggingface_hub import hf_hub_download

    kwargs: dict[str, Any] = {"revision": revision, "cache_dir": cache_dir, "token": token}
    if local_files_only:
        kwargs["local_files_only"] = True
    config = hf_hub_download(repo_id, CONFIG_NAME, **kwargs)
    weights = hf_hub_download(repo_id, WEIGHTS_NAME, **kwargs)
    return Path(config), Path(weights)


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ValueError(f"{path} lacks required keys {missing}")
    if config["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{path} has relay format {config['format_version']} but this relaykit ({__version__}) reads up to "
            f"{FORMAT_VERSION}; upgrade relaykit"
        )
    unknown = sorted(set(config) - set(_KNOWN))
    if unknown:
        warnings.warn(f"{path}: ignoring unknown keys {unknown}", stacklevel=3)
    return config


def load_relay(
    model: nn.Module,
    path_or_repo_id: str | os.PathLike[str],
    *,
    adapter: Adapter | None = None,
    relay_class: type[R] = RelayCore,  # type: ignore[assignment]
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> R:
    """Attach the saved relay to ``model`` as a ``relay_class``; fails naming both shapes when they differ."""
    config_path, weights_path = _resolve_files(
        path_or_repo_id, revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only
    )
    config = read_config(config_path)
    expected_sha = config.get("weights_sha256")
    if expected_sha is not None and _sha256(weights_path) != expected_sha:
        raise ValueError(
            f"{weights_path} does not match the checksum recorded in {config_path.name}: the pair was not written "
            f"together (interrupted save?); save the relay again"
        )
    chosen = adapter if adapter is not None else adapter_from_config(config["adapter"])
    saved = ChannelConfig(**config["channel"])
    saved_shape = (saved.hidden_size, saved.embedding_size)
    readable = readable_width(lambda: chosen.hidden_size(model))
    hidden = saved.hidden_size if readable is None else readable  # unreadable: the one given at attach stands
    actual_shape = (hidden, chosen.embedding_size(model))
    if saved_shape != actual_shape:
        raise ValueError(
            f"relay checkpoint {path_or_repo_id} was made for (hidden, embedding) = {saved_shape} but "
            f"{type(model).__name__} has (hidden, embedding) = {actual_shape}"
        )
    mask = resolve_mask_token_id(config["mask_token_id"], lambda: chosen.mask_token_id(model), chosen.vocab_size(model))
    relay = relay_class.build(model, chosen, saved, mask_token_id=mask, update=config.get("update", "masked"))
    try:
        _load_channel_weights(relay, weights_path)
    except Exception:
        relay.detach()
        raise
    return relay


def _load_channel_weights(relay: RelayCore, weights_path: Path) -> None:
    tensors = load_file(str(weights_path))
    own = relay.channel.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise KeyError(f"{weights_path.name}: missing keys {missing}, unexpected keys {unexpected}")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(
                f"{weights_path.name}: {key} has shape {tuple(value.shape)} in the checkpoint but "
                f"{tuple(own[key].shape)} in the attached channel"
            )
    with torch.no_grad():
        relay.channel.load_state_dict(tensors, strict=True)


def model_card(relay: RelayCore, repo_id: str) -> str:
    config = relay_config(relay)
    return (
        f"---\nlibrary_name: relaykit\ntags:\n- relaykit\n- masked-diffusion\n---\n\n"
        f"# {repo_id}\n\nA learned relay channel (relaykit {__version__}) for `{config['backbone']}`, "
        f"adapter `{config['adapter']['name']}`, channel `{relay.channel.extra_repr()}`.\n\n"
        f"```python\nimport relaykit\nrelay = relaykit.RelayModel.from_pretrained(backbone, {repo_id!r})\n```\n"
    )


def push_relay(
    relay: RelayCore,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload relay channel",
    revision: str | None = None,
) -> Any:
    """Save the relay and a model card into a temporary folder and upload it with huggingface_hub."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_relay(relay, tmp)
        (Path(tmp) / "README.md").write_text(model_card(relay, repo_id))
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message, revision=revision)
