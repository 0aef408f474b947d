"""Backbone adapters, shipped inside the wheel as ``relaykit.adapters``.

``get_adapter("generic", ...)`` builds one by name; ``register_adapter`` adds a family; ``detect_adapter(model)``
picks the family of a model from its class or config and falls back to the generic adapter. Families: ``llada``
(LLaDA, Fast-dLLM v1 caches), ``mdlm`` (MDLM DiT, HF MDLM, BD3-LM), ``fast_dllm_v2``, ``dream``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch import nn

from relaykit.adapter import Adapter
from relaykit.adapters.dream import DreamAdapter, is_dream
from relaykit.adapters.fast_dllm_v2 import FastDLLMv2Adapter, is_fast_dllm_v2
from relaykit.adapters.generic import GenericAdapter
from relaykit.adapters.llada import LLaDAAdapter, is_llada
from relaykit.adapters.mdlm import MDLMAdapter, ddpm_cache_valid, is_mdlm

logger = logging.getLogger("relaykit")

_REGISTRY: dict[str, type[Adapter]] = {"generic": GenericAdapter}
#: (predicate on the model, adapter name), tried in order by detect_adapter
_DETECTORS: list[tuple[Callable[[nn.Module], bool], str]] = []


def register_adapter(cls: type[Adapter], *, detect: Callable[[nn.Module], bool] | None = None) -> type[Adapter]:
    """Register an adapter class under ``cls.name``; ``detect`` lets ``attach(model)`` pick it automatically."""
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise TypeError(f"register_adapter expects an Adapter subclass, got {cls!r}")
    _REGISTRY[cls.name] = cls
    if detect is not None:
        _DETECTORS.append((detect, cls.name))
    return cls


register_adapter(LLaDAAdapter, detect=is_llada)
register_adapter(MDLMAdapter, detect=is_mdlm)
register_adapter(FastDLLMv2Adapter, detect=is_fast_dllm_v2)
register_adapter(DreamAdapter, detect=is_dream)


def available_adapters() -> list[str]:
    return sorted(_REGISTRY)


def get_adapter(name: str, **options: Any) -> Adapter:
    """Build the adapter registered as ``name`` with its options."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown adapter {name!r}; available: {', '.join(available_adapters())}")
    return _REGISTRY[name](**options)


def detect_adapter(model: nn.Module) -> str:
    """The name of the first registered family whose detector accepts ``model``; 'generic' otherwise."""
    for predicate, name in _DETECTORS:
        if predicate(model):
            return name
    return "generic"


def resolve_adapter(
    model: nn.Module,
    adapter: str | Adapter | None = None,
    *,
    embedding: str | None = None,
    final_hidden: str | None = None,
) -> Adapter:
    """The adapter ``attach`` would use: an Adapter object, a registered name, explicit paths, or auto-detection.

    Example::

        resolve_adapter(model)                                          # detected family, else generic
        resolve_adapter(model, embedding="tok", final_hidden="norm")    # the generic adapter on these paths
    """
    paths = {k: v for k, v in (("embedding", embedding), ("final_hidden", final_hidden)) if v is not None}
    if isinstance(adapter, Adapter):
        if paths:
            raise ValueError(f"{sorted(paths)} are generic-adapter options; they cannot override an Adapter object")
        return adapter
    if adapter is None:
        if paths:
            return get_adapter("generic", **paths)
        name = detect_adapter(model)
        logger.info("relaykit: detected adapter %r for %s", name, type(model).__name__)
        return get_adapter(name)
    if isinstance(adapter, str):
        if paths and adapter != "generic":
            raise ValueError(f"{sorted(paths)} are options of the generic adapter, not of adapter {adapter!r}")
        return get_adapter(adapter, **paths)
    raise TypeError(f"adapter must be None, a registered name or an Adapter object, got {type(adapter).__name__}")


def adapter_from_config(config: dict[str, Any]) -> Adapter:
    """Rebuild an adapter from the ``adapter`` entry of relay_config.json."""
    options = dict(config)
    name = options.pop("name", None)
    if not isinstance(name, str):
        raise ValueError(f"relay_config.json: adapter entry has no 'name': {config!r}")
    return get_adapter(name, **options)


__all__ = [
    "Adapter",
    "DreamAdapter",
    "FastDLLMv2Adapter",
    "GenericAdapter",
    "LLaDAAdapter",
    "MDLMAdapter",
    "adapter_from_config",
    "available_adapters",
    "ddpm_cache_valid",
    "detect_adapter",
    "get_adapter",
    "register_adapter",
    "resolve_adapter",
]
