"""inspect(): print what an adapter resolves on a model, before or after attaching.

Example::

    >>> relaykit.inspect(model, embedding="tok", final_hidden="norm")
    adapter          generic
    embedding        tok (Embedding)
    ...
"""

from __future__ import annotations

from typing import Any

from torch import nn

from relaykit.adapter import Adapter
from relaykit.adapters import resolve_adapter
from relaykit.causality import native_attention
from relaykit.model import RelayCore


class InspectReport(dict):  # type: ignore[type-arg]
    """A dict of what was resolved, printed as an aligned two-column table."""

    def __str__(self) -> str:
        width = max(len(k) for k in self)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in self.items())


def inspect(
    model: nn.Module,
    adapter: str | Adapter | None = None,
    *,
    embedding: str | None = None,
    final_hidden: str | None = None,
    mask_token_id: int | None = None,
    quiet: bool = False,
) -> InspectReport:
    """Resolve the adapter on ``model`` (a backbone or a RelayModel), print the report and return it.

    ``mask_token_id`` is the id you would pass to ``attach`` (checked against the vocabulary). ``attention`` is
    how the model attends without a mask (``relaykit.causality``): a family's own, or read from an HF model.
    """
    if isinstance(model, RelayCore):
        info: dict[str, Any] = model.adapter.describe(model.backbone)
        info["mask_token_id"] = model.mask_token_id
        info["channel"] = model.channel.extra_repr()
        info["update"] = model.update
        info["attached"] = model.attached
    else:
        resolved = resolve_adapter(model, adapter, embedding=embedding, final_hidden=final_hidden)
        info = resolved.describe(model)
        if mask_token_id is not None:
            info["mask_token_id"] = _checked_mask_id(mask_token_id, info.get("vocab_size"))
    backbone = model.backbone if isinstance(model, RelayCore) else model
    native = native_attention(backbone)
    if info.get("adapter") == "generic" and native is not None:
        info["attention"] = native  # the HF model's own kind (causal unless it says otherwise)
    report = InspectReport(info)
    if not quiet:
        print(report)
    return report


def _checked_mask_id(value: int, vocab: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"mask_token_id must be a token id (int >= 0), got {value!r}")
    if isinstance(vocab, int) and value >= vocab:
        raise ValueError(f"mask_token_id {value} is outside the embedding's vocabulary of {vocab} ids")
    return value
