"""The KV-cache argument of a backbone call, whatever its spelling: ``cache=`` (transformers 5.x),
``past_key_values=`` (4.x and most remote code) or positional, chosen from the backbone's forward signature.

Every place in relaykit that reads a cache from a call (the relay hooks, through the adapters' ``plan_call``) or
passes one (``relaykit.generate``, through ``Adapter.decode_kwargs``) goes through here, so the refusals that
depend on a cache (``update="all"``, a cache from another batch) hold for every spelling, and relaykit passes
the name the backbone declares (no deprecation warning on transformers 5.x).

Example::

    >>> name = cache_parameter(model)              # "cache" on transformers 5.x, "past_key_values" on 4.x
    >>> kwargs = {name: cache, "use_cache": True}
    >>> cache_argument(model, args, kwargs)        # the cache a call passed, in any spelling
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any

from torch import nn

#: keyword spellings of the KV-cache argument, newest first
CACHE_NAMES = ("cache", "past_key_values")


#: forward function -> its parameters as seen through a bound method (the hooks ask on every call)
_SIGNATURES: weakref.WeakKeyDictionary[Any, dict[str, inspect.Parameter]] = weakref.WeakKeyDictionary()


def forward_parameters(module: nn.Module) -> dict[str, inspect.Parameter]:
    """The parameters of ``module.forward`` as seen through the bound method (cached by its function; {} when
    they cannot be read)."""

    def read() -> dict[str, inspect.Parameter]:
        try:
            return dict(inspect.signature(module.forward).parameters)
        except (TypeError, ValueError):
            return {}

    return _per_function(_SIGNATURES, module, read)


def _per_function(table: weakref.WeakKeyDictionary[Any, Any], module: nn.Module, compute: Callable[[], Any]) -> Any:
    """``compute()`` worked out once per forward function (a bound method's ``__func__``) and kept in ``table``;
    a forward that is no bound method, or not weak-referenceable, is computed every time."""
    function = getattr(module.forward, "__func__", None)
    if function is not None and function in table:
        return table[function]
    value = compute()
    if function is not None:
        try:
            table[function] = value
        except TypeError:  # not weak-referenceable: just not cached
            pass
    return value


def cache_parameter(module: nn.Module) -> str | None:
    """The name ``module.forward`` takes its KV cache under: ``"cache"`` when declared, else
    ``"past_key_values"`` when declared or when it takes ``**kwargs``; None when it takes no cache."""
    params = forward_parameters(module)
    for name in CACHE_NAMES:
        if name in params:
            return name
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return "past_key_values"
    return None


def cache_argument(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The KV cache a call of ``module`` passed: ``cache=``, ``past_key_values=`` or positionally at the index its
    forward declares; None when none was passed. Two spellings at once are refused (as transformers does)."""
    given = [name for name in CACHE_NAMES if kwargs.get(name) is not None]
    if len(given) > 1:
        raise ValueError(
            f"the call passes a KV cache twice ({' and '.join(given)}); pass it once, as "
            f"{cache_parameter(module) or 'past_key_values'}="
        )
    params = forward_parameters(module)
    if given == ["cache"] and "past_key_values" in params and "cache" not in params:
        raise ValueError(
            f"{type(module).__name__}.forward takes its KV cache as past_key_values= (transformers 4.x or remote "
            f"code), but the call passed cache=, which it would ignore; pass past_key_values="
        )
    if given:
        return kwargs[given[0]]
    if not args:
        return None
    index = _cache_position(module)
    return args[index] if index is not None and index < len(args) else None


#: forward function -> the index of its cache parameter among the positional ones (None: none)
_POSITIONS: weakref.WeakKeyDictionary[Any, int | None] = weakref.WeakKeyDictionary()


def _cache_position(module: nn.Module) -> int | None:
    """Where ``module.forward`` takes its cache positionally (None: not at all), worked out once per forward
    function: a call with positional arguments asks on every forward."""

    def find() -> int | None:
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        positional = [p.name for p in forward_parameters(module).values() if p.kind in kinds]
        return next((positional.index(name) for name in CACHE_NAMES if name in positional), None)

    return _per_function(_POSITIONS, module, find)


def output_cache(output: Any) -> Any:
    """The KV cache a backbone returned: ``output.cache`` (transformers 5.x outputs) or
    ``output.past_key_values`` (4.x and remote code), read without touching a deprecated alias."""
    fields = getattr(type(output), "__dataclass_fields__", None) or {}
    if "cache" in fields:
        return getattr(output, "cache", None)
    if isinstance(output, dict) and "cache" in output:
        return output["cache"]
    return getattr(output, "past_key_values", None)
