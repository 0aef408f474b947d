"""The per-call adapter API of relaykit 0.1, deprecated: kept for one release (removed in relaykit 0.2).

Legend: b batch, q columns of the embedding call, q' the columns that take part in relay.

The relay hooks used to ask an adapter six things per call; they now ask one, :meth:`Adapter.plan_call`, which
returns a frozen :class:`~relaykit.plan.CallPlan`. Until 0.2:

* the old methods still answer on every adapter, with a ``DeprecationWarning`` naming the replacement:
  ``cache_of(kwargs)`` -> ``plan_call(...).cache``, ``call_positions(input_ids, args, kwargs)`` ->
  ``.positions``, ``relay_columns(input_ids, args, kwargs)`` -> ``.columns``, ``bare_positions(input_ids,
  positions, args, kwargs, mask_token_id=)`` -> ``.bare``, ``uses_cache(kwargs)`` -> ``.uses_cache``, and
  ``embedding_input_ids(args, kwargs)`` -> nothing (the hooks read the embedding's first argument themselves).
  ``model=`` (the backbone) lets the answer use the adapter's :class:`~relaykit.plan.Binding` (needed by families
  whose plan reads their modules, e.g. MDLM); ``call_positions`` now answers over the relay columns (q'), which is
  what 0.1 used after slicing (the same as before whenever ``relay_columns`` is None).
* a subclass that overrides some of them and inherits ``Adapter.plan_call`` keeps working: that ``plan_call``
  builds the plan from the overrides as the 0.1 hooks did, and defining the class warns (``DeprecationWarning``);
* an override that would be silently ignored is refused when the class is defined (``TypeError``): one below a
  family's own ``plan_call`` (e.g. a subclass of ``LLaDAAdapter`` overriding ``call_positions``), and any
  ``embedding_input_ids`` (the hooks no longer ask it);
* ``bind(model)`` returning None (0.1 kept per-model state on the adapter) warns and uses the default Binding.

Example::

    class Old(Adapter):                                   # DeprecationWarning: override plan_call instead
        def relay_columns(self, input_ids, args, kwargs):
            return slice(0, input_ids.shape[1] // 2)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from relaykit.cachearg import cache_argument
from relaykit.plan import Binding, CallPlan, clean_rows, hf_positions, hf_span

__all__ = ["OLD_METHODS", "DeprecatedCallAPI", "bridges_legacy", "checked_bind", "legacy_plan"]

#: the per-call methods of relaykit 0.1
OLD_METHODS = ("embedding_input_ids", "cache_of", "call_positions", "relay_columns", "bare_positions", "uses_cache")
_REMOVED = "relaykit 0.2"
_HOWTO = (
    "override plan_call(binding, ids, args, kwargs, *, mask_token_id) and return a relaykit.plan.CallPlan "
    "(start from super().plan_call(...) and dataclasses.replace the fields you change; docs/design.md section 5)"
)
F = TypeVar("F", bound=Callable[..., Any])


def bridges_legacy(plan_call: F) -> F:
    """Mark ``Adapter.plan_call``: the one ``plan_call`` that honours 0.1-style overrides."""
    plan_call.__relaykit_legacy_bridge__ = True  # type: ignore[attr-defined]
    return plan_call


def _owner(cls: type, name: str) -> type | None:
    return next((k for k in cls.__mro__ if name in vars(k)), None)


class DeprecatedCallAPI:
    """Base of :class:`relaykit.Adapter` holding the 0.1 per-call methods (deprecated aliases, see the module)."""

    #: the 0.1 methods this class overrides and ``Adapter.plan_call`` builds the plan from (deprecated)
    _legacy_overrides: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        plan_owner = _owner(cls, "plan_call")
        overrides = [n for n in OLD_METHODS if _owner(cls, n) not in (None, DeprecatedCallAPI)]
        # a class that defines plan_call at or below its old methods answers through plan_call: nothing to bridge
        live = [n for n in overrides if plan_owner is None or not issubclass(plan_owner, _owner(cls, n))]
        bridged = plan_owner is not None and getattr(vars(plan_owner)["plan_call"], "__relaykit_legacy_bridge__", 0)
        if "embedding_input_ids" in live:
            raise TypeError(
                f"{cls.__qualname__} overrides embedding_input_ids, which relaykit no longer calls: the relay hooks "
                f"read the token ids (b, q) from the embedding's first positional argument (as 0.1 did by default); "
                f"remove the override, or hook an embedding module that takes the ids first"
            )
        if live and not bridged:
            raise TypeError(
                f"{cls.__qualname__} overrides {', '.join(live)}, which relaykit no longer calls: "
                f"{plan_owner.__qualname__ if plan_owner else '?'}.plan_call describes each call, so the override "
                f"would be silently ignored; {_HOWTO}"
            )
        cls._legacy_overrides = tuple(live) if bridged else ()
        if live:
            warnings.warn(
                f"{cls.__qualname__} overrides {', '.join(live)}: relaykit 0.1's per-call adapter methods are "
                f"deprecated and stop being called in {_REMOVED} (Adapter.plan_call builds the CallPlan from them "
                f"until then); {_HOWTO}",
                DeprecationWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------ the 0.1 methods, deprecated
    def embedding_input_ids(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        """Deprecated: the token ids (b, q) an embedding call received (the hooks read them themselves now)."""
        _warn("embedding_input_ids(args, kwargs)", "nothing: the relay hooks read the embedding's first argument")
        ids = args[0] if args else kwargs.get("input", kwargs.get("input_ids"))
        if not isinstance(ids, Tensor) or ids.dim() != 2:
            got = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
            raise TypeError(f"expected the embedding to be called with token ids of shape (batch, length); got {got}")
        return ids

    def cache_of(
        self, kwargs: dict[str, Any], *, model: nn.Module | None = None, input_ids: Tensor | None = None
    ) -> Any:
        """Deprecated: the KV cache passed to a call; ``plan_call(...).cache``. ``input_ids`` (b, q): the call's ids
        when the family's plan needs them (a dual cache's ``replace_position``); default ``kwargs["input_ids"]``."""
        _warn("cache_of(kwargs)", "plan_call(binding, ids, args, kwargs, mask_token_id=...).cache")
        if self._legacy_overrides:  # a 0.1-style class (its overrides may call this): 0.1's default
            return cache_argument(_binding(self, model).call_module, (), kwargs)
        return self._alias_plan(_ids(kwargs, input_ids), (), kwargs, model, -1).cache

    def uses_cache(
        self, kwargs: dict[str, Any], *, model: nn.Module | None = None, input_ids: Tensor | None = None
    ) -> bool:
        """Deprecated: whether a KV cache is in play; ``plan_call(...).uses_cache`` (``input_ids`` as in cache_of)."""
        _warn("uses_cache(kwargs)", "plan_call(binding, ids, args, kwargs, mask_token_id=...).uses_cache")
        if self._legacy_overrides:
            return _bridge_cache(self, _binding(self, model), (), kwargs) is not None
        return self._alias_plan(_ids(kwargs, input_ids), (), kwargs, model, -1).uses_cache

    def call_positions(
        self, input_ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], *, model: nn.Module | None = None
    ) -> Tensor:
        """Deprecated: (b, q') absolute positions of the relay columns; ``plan_call(...).positions``."""
        _warn("call_positions(input_ids, args, kwargs)", "plan_call(binding, ids, args, kwargs, ...).positions")
        if self._legacy_overrides:
            return hf_positions(input_ids, kwargs, _bridge_cache(self, _binding(self, model), args, kwargs))
        return self._alias_plan(input_ids, args, kwargs, model, -1).positions

    def relay_columns(
        self, input_ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], *, model: nn.Module | None = None
    ) -> slice | None:
        """Deprecated: the columns that take part in relay (None: all); ``plan_call(...).columns``."""
        _warn("relay_columns(input_ids, args, kwargs)", "plan_call(binding, ids, args, kwargs, ...).columns")
        if self._legacy_overrides:
            return None
        return self._alias_plan(input_ids, args, kwargs, model, -1).columns

    def bare_positions(
        self,
        input_ids: Tensor,
        positions: Tensor,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        mask_token_id: int,
        model: nn.Module | None = None,
    ) -> Tensor:
        """Deprecated: (b, q') bool, where the bare backbone's embedding must be seen; ``plan_call(...).bare``."""
        _warn("bare_positions(...)", "plan_call(binding, ids, args, kwargs, mask_token_id=...).bare")
        if self._legacy_overrides:  # 0.1's default: rows feeding no mask token (input_ids are the relay columns)
            return clean_rows(input_ids, mask_token_id)
        return self._alias_plan(input_ids, args, kwargs, model, mask_token_id).bare

    def _alias_plan(
        self, ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], model: nn.Module | None, mask: int
    ) -> CallPlan:
        plan_call = self.plan_call  # type: ignore[attr-defined]
        return plan_call(_binding(self, model), ids, args, kwargs, mask_token_id=mask)


def legacy_plan(
    adapter: DeprecatedCallAPI,
    binding: Binding,
    ids: Tensor,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    mask_token_id: int,
) -> CallPlan:
    """The CallPlan of a 0.1-style adapter: its overrides where it has them, the defaults elsewhere, combined as
    the 0.1 hooks did (positions over all q columns, then sliced to the relay columns; bare over those)."""
    over = adapter._legacy_overrides
    cache = _bridge_cache(adapter, binding, args, kwargs)
    old: Any = adapter  # the overrides are called with 0.1's signatures
    positions = old.call_positions(ids, args, kwargs) if "call_positions" in over else hf_positions(ids, kwargs, cache)
    columns = old.relay_columns(ids, args, kwargs) if "relay_columns" in over else None
    relay_ids = ids
    if columns is not None:
        columns = slice(*columns.indices(ids.shape[1]))
        relay_ids, positions = ids[:, columns], positions[:, columns]  # (b, q')
    if "bare_positions" in over:
        bare = old.bare_positions(relay_ids, positions, args, kwargs, mask_token_id=mask_token_id)
    else:
        bare = clean_rows(relay_ids, mask_token_id)  # (b, q')
    uses = bool(old.uses_cache(kwargs)) if "uses_cache" in over else cache is not None
    exact = "call_positions" not in over and columns is None  # the HF rule over every column: Python-int span
    span = hf_span(ids, kwargs, cache) if exact else None
    return CallPlan(positions, bare, columns=columns, cache=cache, uses_cache=uses, span=span)


def checked_bind(adapter: Any, model: nn.Module) -> Binding:
    """``adapter.bind(model)``, refusing anything but a Binding; a 0.1-style ``bind`` returning None is deprecated
    and gets the default Binding."""
    binding = adapter.bind(model)
    if isinstance(binding, Binding):
        return binding
    if binding is not None:
        raise TypeError(
            f"{type(adapter).__qualname__}.bind(model) must return a relaykit.plan.Binding, got "
            f"{type(binding).__name__}"
        )
    warnings.warn(
        f"{type(adapter).__qualname__}.bind(model) returned None (relaykit 0.1's bind kept per-model state on the "
        f"adapter); it must return the Binding the relay hooks use, e.g. super().bind(model) or a Binding subclass "
        f"holding your per-model facts. The default Binding is used until {_REMOVED}.",
        DeprecationWarning,
        stacklevel=3,
    )
    final, side = adapter.final_hidden(model)
    return Binding(adapter.embedding(model), final, side, adapter.call_module(model))


# ---------------------------------------------------------------------------------------------------- helpers
def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"Adapter.{old} is deprecated and will be removed in {_REMOVED}; use {new}", DeprecationWarning, stacklevel=3
    )


def _bridge_cache(adapter: Any, binding: Binding, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if "cache_of" in adapter._legacy_overrides:
        return adapter.cache_of(kwargs)
    return cache_argument(binding.call_module, args, kwargs)


def _binding(adapter: Any, model: nn.Module | None) -> Binding:
    """The adapter's Binding on ``model``; without a model, one whose modules take no cache argument positionally
    (only keyword caches are seen, as in 0.1)."""
    if model is not None:
        return checked_bind(adapter, model)
    return Binding(_NO_MODULE, _NO_MODULE, "output", _NO_MODULE)


def _ids(kwargs: dict[str, Any], input_ids: Tensor | None) -> Tensor:
    """The ids a kwargs-only alias plans with: ``input_ids``, else ``kwargs["input_ids"]``, else an empty call."""
    if input_ids is None:
        given = kwargs.get("input_ids")
        input_ids = given if isinstance(given, Tensor) and given.dim() == 2 else torch.zeros(1, 0, dtype=torch.long)
    return input_ids


_NO_MODULE = nn.Identity()
