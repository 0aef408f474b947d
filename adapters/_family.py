"""FamilyAdapter: what the published-family adapters share (a mask id argument that overrides the config's).

Example::

    class MyFamily(FamilyAdapter):
        name = "my_family"
        published_mask_id = 50000      # used when the config has no mask id and the vocabulary holds this id
"""

from __future__ import annotations

from typing import Any

from torch import nn

from relaykit.adapter import Adapter
from relaykit.checks import is_int
from relaykit.resolve import config_mask_id


class FamilyAdapter(Adapter):
    """Base of the family adapters: ``mask_token_id`` argument > config (``mask_token_id`` / ``mask_id`` /
    ``mask_index``) > :meth:`default_mask_id` (the family's published id). The argument is saved in
    relay_config.json."""

    #: the mask id of the family's published checkpoints, if any
    published_mask_id: int | None = None

    def __init__(self, mask_token_id: int | None = None) -> None:
        if mask_token_id is not None and not is_int(mask_token_id):
            raise TypeError(f"mask_token_id must be an int or None, got {type(mask_token_id).__name__}")
        self.mask_override = mask_token_id

    def mask_token_id(self, model: nn.Module) -> int:
        if self.mask_override is not None:
            return self.mask_override
        value = config_mask_id(model)
        return value if value is not None else self.default_mask_id(model)

    def default_mask_id(self, model: nn.Module) -> int:
        """The published mask id when the embedding holds it; otherwise an error asking for the argument."""
        vocab = self.vocab_size(model)
        published = self.published_mask_id
        if published is not None and vocab is not None and vocab > published:
            return published
        raise ValueError(
            f"{type(model).__name__}: its config has no mask_token_id and its vocabulary ({vocab}) does not hold "
            f"{self.name}'s published mask id {published}; pass mask_token_id=... to attach()"
        )

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "mask_token_id": self.mask_override}
