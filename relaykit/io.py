"""Save, load and share a relay: a folder that restores the model as trained, replaced as a whole on every save.

A folder holds ``relay_config.json`` (a :class:`~relaykit.config.RelayConfig`), ``relay_model.safetensors`` (the
channel), a model card ``README.md`` and, when the backbone's weights changed since attach (training them is the
common case), the backbone in safetensors as transformers lays it out (``model.safetensors`` or shards plus
``model.safetensors.index.json``, and ``config.json`` for a Hugging Face backbone). ``backbone="auto"`` decides by a
cheap fingerprint taken at attach / ``from_pretrained``; ``"always"`` and ``"never"`` force it.

The whole folder is written beside the target and swapped in at once (:mod:`relaykit.atomic`): an interrupted or
killed save leaves the previous save loadable, never a mix of the two. Loading finds the folder (local or on the
Hub) through :mod:`relaykit.locate`.

Example::

    relay.save_pretrained("out/relay")                                  # + backbone weights if they changed
    relay = RelayModel.from_pretrained(fresh_backbone, "out/relay")     # or a Hub repo id; restores both
    relay.push_to_hub("me/llada-relay")
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from relaykit import atomic
from relaykit.adapter import Adapter
from relaykit.adapters import adapter_from_config
from relaykit.card import relay_card
from relaykit.config import FORMAT_VERSION, RelayConfig
from relaykit.fingerprint import changed_tensors
from relaykit.locate import locate
from relaykit.model import CHANNEL_ATTR, RelayCore
from relaykit.resolve import readable_width
from relaykit.weights import (
    HF_CONFIG_NAME,
    OWN_BASE,
    is_backbone_file,
    load_backbone,
    write_backbone,
)

R = TypeVar("R", bound=RelayCore)

logger = logging.getLogger("relaykit")

CONFIG_NAME = "relay_config.json"
WEIGHTS_NAME = "relay_model.safetensors"
CARD_NAME = "README.md"
CHANNEL_PREFIX = CHANNEL_ATTR  # backbone tensors under it are the channel's, saved apart
BackboneMode = Literal["auto", "always", "never"]
__all__ = ["CONFIG_NAME", "FORMAT_VERSION", "WEIGHTS_NAME", "load_relay", "push_relay", "read_config", "save_relay"]


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


def relay_config(relay: RelayCore) -> RelayConfig:
    """The typed config of a live relay (what ``relay.config`` returns; a save adds the file fields)."""
    return RelayConfig(
        adapter=relay.adapter.to_config(),
        channel=relay.channel.config,
        mask_token_id=relay.mask_token_id,
        update=relay.update,
        empty=relay.empty,
        backbone=backbone_name(relay.backbone),
        vocab_size=relay.adapter.vocab_size(relay.backbone),
    )


def changed_backbone_tensors(relay: RelayCore) -> list[str]:
    """Names of the backbone tensors that changed since attach / ``from_pretrained`` (all when unknown)."""
    return changed_tensors(relay.backbone, relay._backbone_reference, skip_prefix=CHANNEL_PREFIX)


# -------------------------------------------------------------------------------------------------------- save
def _previous_files(folder: Path) -> set[str]:
    """The files an earlier save wrote into ``folder``: its manifest (the two relay files when it has none).

    Anything else is someone else's and is kept, e.g. the Hugging Face Trainer's weights in a checkpoint folder.
    """
    ours = {CONFIG_NAME, WEIGHTS_NAME}
    try:
        saved = json.loads((folder / CONFIG_NAME).read_text())
        files = saved.get("files") if isinstance(saved, dict) else None
        if isinstance(files, list):
            return ours | {f for f in files if isinstance(f, str)}
    except (OSError, ValueError):
        pass
    return ours


def save_relay(
    relay: RelayCore,
    save_directory: str | os.PathLike[str],
    *,
    backbone: BackboneMode = "auto",
    max_shard_size: int | str = "5GB",
    repo_id: str | None = None,
) -> Path:
    """Write the relay folder (and the backbone's weights when they changed) and swap it in as a whole.

    Args:
        backbone: ``"auto"`` saves the backbone's weights when any parameter or buffer changed since attach (or
            since ``from_pretrained``); ``"always"`` / ``"never"`` force it (``"never"`` warns when they changed).
        max_shard_size: backbone weights above this size are split into shards with an index file.
        repo_id: the Hub id named in the model card's loading snippet.
    """
    if backbone not in ("auto", "always", "never"):
        raise ValueError(f"backbone must be 'auto', 'always' or 'never', got {backbone!r}")
    if isinstance(save_directory, str) and not save_directory:
        raise ValueError("save_directory is empty; pass a folder path")
    changed = changed_backbone_tensors(relay) if backbone != "always" else []
    save_backbone = backbone == "always" or (backbone == "auto" and bool(changed))
    if backbone == "never" and changed:
        warnings.warn(
            f"{len(changed)} backbone tensor(s) changed since attach (e.g. {changed[:3]}) but backbone='never': "
            f"they are not saved, and loading this folder onto the original backbone will not restore them",
            stacklevel=3,
        )
    target = Path(save_directory)
    previous = _previous_files(target) if target.is_dir() else set()
    others = {p.name for p in target.iterdir()} - previous if target.is_dir() else set()
    stem = OWN_BASE if any(is_backbone_file(name) for name in others) else "model"  # never overwrite theirs
    base = relay_config(relay)

    def write(stage: Path) -> list[str]:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in relay.channel.state_dict().items()}
        atomic.write_with(stage / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        files = [WEIGHTS_NAME]
        entry = None
        if save_backbone:
            written = write_backbone(
                stage, relay.backbone, skip_prefix=CHANNEL_PREFIX, max_shard_size=max_shard_size, base=stem
            )
            entry = written[0]  # the single file or the index
            files += written
        files += [CARD_NAME, CONFIG_NAME]
        config = RelayConfig(
            **{**base.__dict__, "backbone_weights": entry, "weights_sha256": _sha256(stage / WEIGHTS_NAME)},
        )
        config.files = sorted(files)
        hf_class = type(relay.backbone).__name__ if HF_CONFIG_NAME in files else None
        card = relay_card(config, repo_id=repo_id, hf_class=hf_class)
        atomic.write_file(stage / CARD_NAME, str(card).encode())
        atomic.write_file(stage / CONFIG_NAME, config.to_json_string().encode())
        return files

    atomic.replace_folder(target, write, keep=lambda name: name not in previous)
    if save_backbone:
        logger.info(
            "relaykit: saved the relay and the backbone's weights (%d changed tensors) to %s", len(changed), target
        )
    return target


# -------------------------------------------------------------------------------------------------------- load
def read_config(path: Path) -> RelayConfig:
    """The validated config in ``path`` (errors name the file, the field, what was expected and what came)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the file is damaged: save the relay again") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); it is not a relay config") from e
    return RelayConfig.from_dict(data, source=str(path))


def _mask_id(config: RelayConfig, model: nn.Module, adapter: Any, override: int | None, where: str) -> int:
    vocab = adapter.vocab_size(model)
    if override is not None:
        if not isinstance(override, int) or isinstance(override, bool):
            raise TypeError(f"mask_token_id must be an int, got {type(override).__name__} {override!r}")
        if override < 0 or (vocab is not None and override >= vocab):
            raise ValueError(f"mask_token_id={override} is outside this backbone's vocabulary of {vocab} tokens")
        return override
    mask = config.mask_token_id
    if vocab is not None and mask >= vocab:
        raise ValueError(
            f"{where}: the saved mask_token_id {mask} is outside this backbone's vocabulary of {vocab} tokens "
            f"(0..{vocab - 1}); pass mask_token_id=... to from_pretrained for this backbone"
        )
    try:
        own: int | None = adapter.mask_token_id(model)
    except ValueError:
        own = None
    if (own is not None and own != mask) or (None not in (vocab, config.vocab_size) and vocab != config.vocab_size):
        says = "" if own is None else f" and its config says mask id {own}"
        warnings.warn(
            f"{where}: the relay was saved with mask_token_id {mask} for a vocabulary of {config.vocab_size} tokens; "
            f"this backbone has {vocab} tokens{says}; keeping {mask} (pass mask_token_id=... to from_pretrained to "
            f"override)",
            stacklevel=4,
        )
    return mask


def load_relay(
    model: nn.Module,
    path_or_repo_id: str | os.PathLike[str],
    *,
    adapter: Adapter | None = None,
    relay_class: type[R] = RelayCore,  # type: ignore[assignment]
    mask_token_id: int | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> R:
    """Attach the saved relay to ``model`` as a ``relay_class``; load saved backbone weights into it (logged).

    Fails naming both shapes when the channel does not fit, and naming the tensors when the backbone weights are
    for another architecture; ``model`` is left untouched by a failed load.
    """
    folder, fetch = locate(
        path_or_repo_id,
        marker=CONFIG_NAME,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
    )
    config_path = fetch(CONFIG_NAME)
    config = read_config(config_path)
    weights_path = fetch(WEIGHTS_NAME)
    if config.weights_sha256 is not None and _sha256(weights_path) != config.weights_sha256:
        raise ValueError(
            f"{weights_path} does not match the checksum recorded in {config_path.name}: the files come from "
            f"different saves (copied in by hand?); save the relay again"
        )
    chosen = adapter if adapter is not None else adapter_from_config(config.adapter)
    saved = config.channel
    saved_shape = (saved.hidden_size, saved.embedding_size)
    readable = readable_width(lambda: chosen.hidden_size(model))
    hidden = saved.hidden_size if readable is None else readable  # unreadable: the one given at attach stands
    actual_shape = (hidden, chosen.embedding_size(model))
    if saved_shape != actual_shape:
        raise ValueError(
            f"relay checkpoint {path_or_repo_id} was made for (hidden, embedding) = {saved_shape} but "
            f"{type(model).__name__} has (hidden, embedding) = {actual_shape}"
        )
    mask = _mask_id(config, model, chosen, mask_token_id, str(config_path))
    relay = relay_class.build(model, chosen, saved, mask_token_id=mask, update=config.update, empty=config.empty)
    try:
        if config.backbone_weights is not None:
            load_backbone(model, folder, config.backbone_weights, skip_prefix=CHANNEL_PREFIX, fetch=fetch)
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


# -------------------------------------------------------------------------------------------------------- hub
def model_card(relay: RelayCore, repo_id: str) -> str:
    """The README.md text a save writes (huggingface_hub ModelCard), naming ``repo_id`` in its snippet."""
    return str(relay_card(relay_config(relay), repo_id=repo_id))


def push_relay(
    relay: RelayCore,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload relay",
    revision: str | None = None,
    backbone: BackboneMode = "auto",
    max_shard_size: int | str = "5GB",
) -> Any:
    """Save the relay folder (model card included) into a temporary folder and upload it with huggingface_hub."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_relay(
            relay, Path(tmp) / "relay", backbone=backbone, max_shard_size=max_shard_size, repo_id=repo_id
        )
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision)
