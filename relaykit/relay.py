"""RelayModel: the public relay class, :class:`~relaykit.model.RelayCore` plus saving, loading and sharing.

The hooks and calls live in ``relaykit.model``; the files and the Hub in ``relaykit.io``. This module joins the two,
so that neither imports the other's consumer: the model never imports persistence, persistence builds models
through the adapter registry and ``RelayCore.build`` (never through ``attach``).

Example::

    relay = relaykit.attach(model, embedding="tok", final_hidden="norm", mask_token_id=3)
    relay.save_pretrained("out/relay")                     # + the backbone's weights when training changed them
    relay = relaykit.RelayModel.from_pretrained(model, "out/relay")     # or a Hub repo id
"""

from __future__ import annotations

from os import PathLike
from typing import Any

from torch import nn

from relaykit.config import RelayConfig
from relaykit.io import BackboneMode, changed_backbone_tensors, load_relay, push_relay, relay_config, save_relay
from relaykit.model import RelayCore


class RelayModel(RelayCore):
    """A backbone plus its relay channel. Build with :func:`relaykit.attach` or :meth:`from_pretrained`."""

    @property
    def config(self) -> RelayConfig:
        """The typed settings of this relay (:class:`~relaykit.config.RelayConfig`), as a save records them."""
        return relay_config(self)

    def changed_backbone_tensors(self) -> list[str]:
        """Names of the backbone's parameters / buffers that changed since attach (or ``from_pretrained``)."""
        return changed_backbone_tensors(self)

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable parameters, all parameters) of backbone plus channel, counted once each (PEFT's name)."""
        unique = {id(p): p for p in self.backbone.parameters()}
        trainable = sum(p.numel() for p in unique.values() if p.requires_grad)
        return trainable, sum(p.numel() for p in unique.values())

    def print_trainable_parameters(self) -> None:
        """Print ``trainable params: T || all params: A || trainable%: P`` as PEFT does."""
        trainable, total = self.get_nb_trainable_parameters()
        share = 100 * trainable / total if total else 0.0
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {share:.4f}")

    def save_pretrained(
        self,
        save_directory: str | PathLike[str],
        *,
        backbone: BackboneMode = "auto",
        max_shard_size: int | str = "5GB",
    ) -> None:
        """Save what it takes to restore this model as trained; the folder is replaced as a whole.

        ``relay_config.json``, ``relay_model.safetensors`` (the channel), a model card ``README.md``, and the
        backbone's weights when any of them changed since attach (``backbone="auto"``; ``"always"`` / ``"never"``
        force it; sharded with an index above ``max_shard_size``).
        """
        save_relay(self, save_directory, backbone=backbone, max_shard_size=max_shard_size)

    @classmethod
    def from_pretrained(cls, model: nn.Module, path_or_repo_id: str | PathLike[str], **kwargs: Any) -> RelayModel:
        """Attach a saved relay to ``model`` (local folder or Hub repo id), loading saved backbone weights too.

        Keyword arguments: ``mask_token_id`` (overrides the saved id), ``adapter``, ``revision``, ``cache_dir``,
        ``token``, ``local_files_only``.
        """
        return load_relay(model, path_or_repo_id, relay_class=cls, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Save the folder (model card included) into a temporary folder and upload it to the Hugging Face Hub.

        Keyword arguments: ``private``, ``token``, ``commit_message``, ``revision``, ``backbone``, ``max_shard_size``.
        """
        return push_relay(self, repo_id, **kwargs)
