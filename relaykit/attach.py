"""attach(): wrap any masked diffusion model with a zero-initialised relay channel in one call.

Example::

    >>> relay = relaykit.attach(model, embedding="encoder.tok_emb", final_hidden="encoder.norm", mask_token_id=3)
    >>> relay = relaykit.attach(llada_model)                       # family picked from the class / config
    >>> relay = relaykit.attach(model, adapter="generic", kind="mlp", mask_token_id=0)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from relaykit.adapter import Adapter
from relaykit.adapters import resolve_adapter
from relaykit.channel import ChannelConfig
from relaykit.model import Empty, RelayCore, Update
from relaykit.relay import RelayModel
from relaykit.resolve import resolve_hidden_size, resolve_mask_token_id

__all__ = ["attach", "resolve_adapter"]


def attach(
    model: nn.Module,
    adapter: str | Adapter | None = None,
    *,
    embedding: str | None = None,
    final_hidden: str | None = None,
    mask_token_id: int | None = None,
    hidden_size: int | None = None,
    update: Update = "masked",
    empty: Empty = "skip",
    **channel_options: Any,
) -> RelayModel:
    """Attach a zero-initialised relay channel to ``model`` and return the :class:`RelayModel` wrapping it.

    Args:
        model: the masked diffusion backbone (any nn.Module).
        adapter: a registered family name ("generic", ...), an Adapter object, or None to auto-detect.
        embedding, final_hidden: dotted module paths for the generic adapter (``"path:input"`` reads a module's
            input); default to the HF getters ``get_input_embeddings()`` / input of ``get_output_embeddings()``.
        mask_token_id: overrides the adapter's (config) mask id.
        hidden_size: width of the final hidden state when it cannot be read from the modules or config.
        update: ``"masked"`` (write h only where the input is the mask token; default, needed with caches) or
            ``"all"`` (Algorithm 1 as printed; cache-free full-sequence use).
        empty: what positions without a state receive: ``"skip"`` (nothing, the bare embedding; default) or
            ``"zero"`` (h = 0 there, so R(0) is added everywhere from the first step, as Algorithm 1 as printed;
            still the identity at attach because R is zero-initialised; cache-free use only).
        **channel_options: ChannelConfig fields: ``kind`` ("linear" | "mlp" | "gated"), ``norm``, ``mlp_ratio``,
            ``bias``, ``embedding_size``.
    """
    if isinstance(model, RelayCore):
        raise TypeError("attach() got a RelayModel; attach to its backbone (relay.backbone) after relay.detach()")
    if not isinstance(model, nn.Module):
        raise TypeError(f"attach() expects a torch nn.Module, got {type(model).__name__}")
    unknown = sorted(set(channel_options) - set(ChannelConfig.option_names()))
    if unknown:
        raise TypeError(
            f"attach() got unknown option(s) {unknown}; channel options are {list(ChannelConfig.option_names())}"
        )
    chosen = resolve_adapter(model, adapter, embedding=embedding, final_hidden=final_hidden)
    mask = resolve_mask_token_id(mask_token_id, lambda: chosen.mask_token_id(model), chosen.vocab_size(model))
    d = resolve_hidden_size(lambda: chosen.hidden_size(model), hidden_size)
    config = ChannelConfig(hidden_size=d, embedding_size=chosen.embedding_size(model), **channel_options)
    return RelayModel.build(model, chosen, config, mask_token_id=mask, update=update, empty=empty)
