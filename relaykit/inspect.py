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
    quiet: bool = False,
) -> InspectReport:
    """Resolve the adapter on ``model`` (a backbone or a RelayModel), print the report and return it."""
    if isinstance(model, RelayCore):
        info: dict[str, Any] = model.adapter.describe(model.backbone)
        info["mask_token_id"] = model.mask_token_id
        info["channel"] = model.channel.extra_repr()
        info["update"] = model.update
        info["attached"] = model.attached
    else:
        info = resolve_adapter(model, adapter, embedding=embedding, final_hidden=final_hidden).describe(model)
    report = InspectReport(info)
    if not quiet:
        print(report)
    return report
