"""attach(): wrap any masked diffusion model with a zero-initialised relay channel in one call.

Example::

    >>> relay = relaykit.attach(model, embedding="encoder.tok_emb", final_hidden="encoder.norm", mask_token_id=3)
    >>> relay = relaykit.attach(llada_model)                       # family picked from the class / config
    >>> relay = relaykit.attach(model, adapter="generic", kind="mlp", mask_token_id=0)
"""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor, nn

from relaykit.adapter import Adapter
from relaykit.channel import ChannelConfig, RelayChannel
from relaykit.model import Empty, RelayModel, Update

logger = logging.getLogger("relaykit")


def resolve_adapter(
    model: nn.Module,
    adapter: str | Adapter | None = None,
    *,
    embedding: str | None = None,
    final_hidden: str | None = None,
) -> Adapter:
    """The adapter ``attach`` would use: an Adapter object, a registered name, explicit paths, or auto-detection."""
    from relaykit import adapters as registry

    paths = {k: v for k, v in (("embedding", embedding), ("final_hidden", final_hidden)) if v is not None}
    if isinstance(adapter, Adapter):
        if paths:
            raise ValueError(f"{sorted(paths)} are generic-adapter options; they cannot override an Adapter object")
        return adapter
    if adapter is None:
        if paths:
            return registry.get_adapter("generic", **paths)
        name = registry.detect_adapter(model)
        logger.info("relaykit: detected adapter %r for %s", name, type(model).__name__)
        return registry.get_adapter(name)
    if isinstance(adapter, str):
        if paths and adapter != "generic":
            raise ValueError(f"{sorted(paths)} are options of the generic adapter, not of adapter {adapter!r}")
        return registry.get_adapter(adapter, **paths)
    raise TypeError(f"adapter must be None, a registered name or an Adapter object, got {type(adapter).__name__}")


def resolve_mask_token_id(model: nn.Module, adapter: Adapter, mask_token_id: int | None) -> int:
    """The mask id (argument first, else the adapter's), checked against the embedding's vocabulary."""
    mask = adapter.mask_token_id(model) if mask_token_id is None else mask_token_id
    if not isinstance(mask, int) or isinstance(mask, bool):
        raise TypeError(f"mask_token_id must be an int, got {type(mask).__name__}")
    vocab = adapter.vocab_size(model)
    if mask < 0 or (vocab is not None and mask >= vocab):
        valid = f"0..{vocab - 1}" if vocab is not None else ">= 0"
        raise ValueError(f"mask_token_id {mask} is outside the embedding's vocabulary of {vocab} tokens ({valid})")
    return mask


def resolve_hidden_size(model: nn.Module, adapter: Adapter, hidden_size: int | None) -> int:
    """The final hidden width: read from the backbone, else ``hidden_size``; both given must agree."""
    try:
        readable: int | None = adapter.hidden_size(model)
    except TypeError:
        if hidden_size is None:
            raise
        readable = None
    if hidden_size is None:
        assert readable is not None
        return readable
    if not isinstance(hidden_size, int) or isinstance(hidden_size, bool) or hidden_size < 1:
        raise ValueError(f"hidden_size must be a positive int, got {hidden_size!r}")
    if readable is not None and readable != hidden_size:
        raise ValueError(f"hidden_size={hidden_size} but the backbone's final hidden state has width {readable}")
    return hidden_size


def _reference_dtype_device(module: nn.Module) -> tuple[Any, Any]:
    for p in module.parameters():
        if isinstance(p, Tensor) and p.is_floating_point():
            return p.dtype, p.device
    return None, None


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
    if isinstance(model, RelayModel):
        raise TypeError("attach() got a RelayModel; attach to its backbone (relay.backbone) after relay.detach()")
    if not isinstance(model, nn.Module):
        raise TypeError(f"attach() expects a torch nn.Module, got {type(model).__name__}")
    unknown = sorted(set(channel_options) - set(ChannelConfig.option_names()))
    if unknown:
        raise TypeError(
            f"attach() got unknown option(s) {unknown}; channel options are {list(ChannelConfig.option_names())}"
        )
    chosen = resolve_adapter(model, adapter, embedding=embedding, final_hidden=final_hidden)
    mask = resolve_mask_token_id(model, chosen, mask_token_id)
    d = resolve_hidden_size(model, chosen, hidden_size)
    e = chosen.embedding_size(model)
    channel = RelayChannel(ChannelConfig(hidden_size=d, embedding_size=e, **channel_options))
    dtype, device = _reference_dtype_device(chosen.embedding(model))
    if dtype is not None:
        channel = channel.to(dtype=dtype, device=device)
    return RelayModel(model, chosen, channel, mask_token_id=mask, update=update, empty=empty)
