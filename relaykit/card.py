"""The model card (``README.md``) of a relay folder, built with huggingface_hub's ModelCard.

Its metadata holds ``base_model`` (the backbone's Hub id, when it has one), ``library_name: relaykit`` and tags; the
text lists the relay settings, what the folder holds and how to load it with and without relaykit.

Example::

    card = relay_card(config, repo_id="me/llada-relay")
    card.save("out/relay/README.md")
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from relaykit.config import RelayConfig

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_base_model(name: str) -> str | None:
    """``name`` when it reads as a Hub repo id (``owner/name``) and is not a local folder, else None."""
    if _HUB_ID.fullmatch(name) and not os.path.exists(name):
        return name
    return None


def relay_card(config: RelayConfig, *, repo_id: str | None = None, hf_class: str | None = None) -> ModelCard:
    """A ModelCard describing the relay saved with ``config`` (``repo_id`` names it in the loading snippet).

    ``hf_class``: the transformers class of a Hugging Face backbone whose weights and ``config.json`` the folder
    holds (the card then shows how to load them without relaykit).
    """
    from huggingface_hub import ModelCard, ModelCardData  # imported on use: `import relaykit` stays light

    base = hub_base_model(config.backbone)
    data = ModelCardData(
        base_model=base,
        library_name="relaykit",
        tags=["relaykit", "masked-diffusion", "relay"],
    )
    where = repo_id or "path/to/this/folder"
    channel = config.channel
    options = {k: v for k, v in config.adapter.items() if k != "name" and v is not None}
    settings = [
        f"- adapter: `{config.adapter['name']}`" + (f" (options {options})" if options else ""),
        f"- channel: `{channel.kind}`, norm `{channel.norm}`, hidden {channel.hidden_size} -> embedding "
        f"{channel.embedding_size}" + (f", mlp_ratio {channel.mlp_ratio}" if channel.kind == "mlp" else ""),
        f"- mask token id: {config.mask_token_id}; state update rule: `{config.update}`",
        f"- backbone: `{config.backbone}`" + (f", vocabulary {config.vocab_size}" if config.vocab_size else ""),
        f"- relaykit version: {config.relaykit_version} (folder format {config.format_version})",
    ]
    if config.backbone_weights is not None:
        holds = (
            f"the relay channel (`relay_model.safetensors`) and the backbone's trained weights "
            f"(`{config.backbone_weights}`)"
        )
    else:
        holds = "the relay channel only (`relay_model.safetensors`); the backbone was not changed by training"
    without = ""
    if config.backbone_weights is not None and hf_class is not None:
        without = (
            "\nThe trained backbone also loads without relaykit (the relay channel is then left out; for a model "
            "with remote code, use its Auto class with `trust_remote_code=True`):\n\n"
            f"```python\nfrom transformers import {hf_class}\nmodel = {hf_class}.from_pretrained({where!r})\n```\n"
        )
    text = (
        f"---\n{data.to_yaml()}\n---\n\n"
        f"# {repo_id or 'Relay checkpoint'}\n\n"
        "A learned relay channel (Learned Relay Representations, arXiv:2605.22967) for a masked diffusion "
        "language model, saved with [relaykit](https://github.com/relaykit/relaykit).\n\n"
        f"This folder holds {holds}.\n\n"
        "## Settings\n\n" + "\n".join(settings) + "\n\n"
        "## Use\n\n"
        f"```python\nimport relaykit\nrelay = relaykit.RelayModel.from_pretrained(backbone, {where!r})\n```\n"
        f"{without}"
    )
    return ModelCard(text)
