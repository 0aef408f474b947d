"""RelayModel: the public relay class, :class:`~relaykit.model.RelayCore` plus saving, loading and sharing.

The hooks and calls live in ``relaykit.model``; the files and the Hub in ``relaykit.io``. This module joins the two,
so that neither imports the other's consumer: the model never imports persistence, persistence builds models
through the adapter registry and ``RelayCore.build`` (never through ``attach``).

Example::

    relay = relaykit.attach(model, embedding="tok", final_hidden="norm", mask_token_id=3)
    relay.save_pretrained("out/relay")
    relay = relaykit.RelayModel.from_pretrained(model, "out/relay")     # or a Hub repo id
    res = relay.generate(prompt, max_new_tokens=32, block_size=8)      # relaykit.generate as a method
"""

from __future__ import annotations

from os import PathLike
from typing import Any

from torch import Tensor, nn

from relaykit.decoding import GenerateResult, generate
from relaykit.io import load_relay, push_relay, save_relay
from relaykit.model import RelayCore


class RelayModel(RelayCore):
    """A backbone plus its relay channel. Build with :func:`relaykit.attach` or :meth:`from_pretrained`."""

    def save_pretrained(self, save_directory: str | PathLike[str]) -> None:
        """Write ``relay_config.json`` and ``relay_model.safetensors`` (the channel only), atomically."""
        save_relay(self, save_directory)

    @classmethod
    def from_pretrained(cls, model: nn.Module, path_or_repo_id: str | PathLike[str], **kwargs: Any) -> RelayModel:
        """Attach a saved relay to ``model`` from a local folder or a Hugging Face Hub repo id."""
        return load_relay(model, path_or_repo_id, relay_class=cls, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload the relay folder and a model card to the Hugging Face Hub."""
        return push_relay(self, repo_id, **kwargs)

    def generate(self, input_ids: Tensor, **options: Any) -> GenerateResult:
        """:func:`relaykit.generate` on this relay: ``relay.generate(prompt, max_new_tokens=32, do_sample=True)``.

        ``options`` are generate's keyword arguments (or ``generation_config=GenerationConfig(...)``).
        """
        return generate(self, input_ids, **options)
