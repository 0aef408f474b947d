"""What an adapter tells the relay hooks: a :class:`Binding` per attachment and a :class:`CallPlan` per call.

Legend: b batch, q columns of the embedding call, q' the columns that take part in relay.

``Adapter.bind(model)`` runs once at attach and returns a Binding: the modules the hooks sit on, plus whatever a
family must read from its modules on each call (BD3-LM keeps its cache length on the first block). The adapter
keeps no per-model or per-call state. ``Adapter.plan_call(binding, ids, args, kwargs, mask_token_id=...)`` runs
once per backbone call, when the embedding fires, and returns a frozen CallPlan: every per-call fact the core
needs, typed.

Example::

    >>> import torch
    >>> ids = torch.tensor([[5, 3, 3], [5, 6, 7]])                 # (b, q), mask id 3
    >>> plan = CallPlan(hf_positions(ids, {}, None), clean_rows(ids, 3), span=hf_span(ids, {}, None))  # no cache
    >>> plan.positions.tolist(), plan.bare.tolist(), plan.span
    ([[0, 1, 2], [0, 1, 2]], [[False, False, False], [True, True, True]], (0, 3))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from relaykit.kvcache import cache_length
from relaykit.resolve import Side
from relaykit.spans import known_span


@dataclass(frozen=True, eq=False)
class Binding:
    """What an adapter resolved on one attached model: the modules the relay hooks are registered on.

    Families subclass it (a frozen dataclass too) to hold per-attachment facts their ``plan_call`` reads.
    """

    embedding: nn.Module  # relay adds R(h) to its output
    final_hidden: nn.Module  # its output (or input, see side) is the new h
    side: Side
    call_module: nn.Module  # its __call__ sees each forward's arguments (caches, positions)


@dataclass(frozen=True, eq=False)
class CallPlan:
    """One backbone call as relay sees it (returned by ``Adapter.plan_call``).

    Attributes:
        positions: (b, q') absolute sequence positions of the relay columns (contract 2: h is written only there).
        bare: (b, q') bool, True where the bare backbone's embedding must be seen: relay-free cache passes, whose
            stored keys and values must equal the bare backbone's (contract 4). h is still written there by the
            masked-only rule.
        columns: the columns of the embedding call that take part in relay (None: all of them), e.g. the noisy
            half of a ``[x_t ; x_0]`` training input; the others are relay-free context.
        cache: the KV cache object passed to the call (None: none passed); its rows are checked against the batch.
        uses_cache: whether a KV cache is read or written by the call (``update="all"`` is refused then; a
            cache held by the modules counts, e.g. BD3-LM's).
        span: ``(lo, end)`` when the adapter knows from Python ints that ``positions`` are exactly ``lo .. end - 1``
            in every row (a full forward, a prefix or block cache: ``cache_len + arange(q)``). The relay hooks then
            size the state and check its range without reading a tensor: no host sync, no graph break. None when
            the positions come from tensors the caller passed (explicit ``position_ids``, a dual cache's
            ``replace_position``): the hooks then read their range once (one host sync).
    """

    positions: Tensor
    bare: Tensor
    columns: slice | None = None
    cache: Any = None
    uses_cache: bool = False
    span: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.positions.shape != self.bare.shape:
            raise ValueError(
                f"CallPlan: positions {tuple(self.positions.shape)} and bare {tuple(self.bare.shape)} must both be "
                f"(b, q') over the relay columns"
            )
        if self.span is not None:
            lo, end = self.span
            ints = (int, torch.SymInt)  # SymInt: sizes under torch.compile's dynamic shapes
            if not (isinstance(lo, ints) and isinstance(end, ints)) or lo < 0 or end - lo != self.positions.shape[-1]:
                raise ValueError(
                    f"CallPlan: span must be Python ints (lo, end) with 0 <= lo and end - lo = "
                    f"{self.positions.shape[-1]} (the relay columns); got {self.span!r}"
                )


def hf_positions(ids: Tensor, kwargs: dict[str, Any], cache: Any) -> Tensor:
    """Absolute positions (b, q) of a call fed ``ids`` (b, q), Hugging Face convention.

    Explicit integer ``position_ids`` (b, q) or (q,) when given, else the cache length + arange(q).
    """
    b, q = ids.shape
    given = kwargs.get("position_ids")
    if isinstance(given, Tensor) and not given.is_floating_point() and given.shape[-1] == q and given.dim() <= 2:
        return given.to(ids.device, torch.long).expand(b, q)
    past = cache_length(cache)
    return torch.arange(past, past + q, device=ids.device).unsqueeze(0).expand(b, q)


def hf_span(ids: Tensor, kwargs: dict[str, Any], cache: Any) -> tuple[int, int] | None:
    """The exact range ``(lo, end)`` of :func:`hf_positions` when Python ints give it: ``(cache_len, cache_len + q)``
    without explicit ``position_ids``, or the span relaykit recorded for ``position_ids`` it built itself
    (:func:`relaykit.spans.known_span`); None for other ``position_ids`` (read from the tensor then)."""
    given = kwargs.get("position_ids")
    if given is not None:
        span = known_span(given)
        ok = span is not None and given.dim() <= 2 and given.shape[-1] == ids.shape[1] == span[1] - span[0]
        return span if ok else None
    past = cache_length(cache)
    return past, past + ids.shape[1]


def clean_rows(ids: Tensor, mask_token_id: int) -> Tensor:
    """(b, q) bool: True over every row of ``ids`` that feeds no mask token (a prefill or commit pass)."""
    clean = (ids != mask_token_id).all(-1, keepdim=True)  # (b, 1)
    return clean.expand_as(ids)


def all_bare(ids: Tensor, bare: bool) -> Tensor:
    """(b, q) bool filled with ``bare``: a call that is relay-free as a whole (True) or not at all (False)."""
    return torch.full_like(ids, bare, dtype=torch.bool)


def relay_ids(plan: CallPlan, fed: Tensor, adapter: str) -> tuple[Tensor, slice | None]:
    """The ids (b, q') of the relay columns of an embedding call fed ``fed`` (b, q), and those columns as a
    normalised slice (None: all); refuses a plan whose positions do not cover exactly those columns."""
    columns = None if plan.columns is None else slice(*plan.columns.indices(fed.shape[1]))
    ids = fed if columns is None else fed[:, columns]  # (b, q')
    if tuple(plan.positions.shape) != tuple(ids.shape):
        raise ValueError(
            f"adapter {adapter!r} planned positions {tuple(plan.positions.shape)} for relay columns "
            f"{tuple(ids.shape)}; plan_call must describe exactly the columns that take part in relay"
        )
    return ids, columns


def fed_span(plan: CallPlan, adapter: str, *, check: bool = False) -> tuple[int, int]:
    """``(lo, end)``: the planned positions lie in ``lo .. end - 1``. From ``plan.span`` when it has one (Python ints:
    no host sync); else read from ``plan.positions`` (one host sync: explicit ``position_ids``, a dual cache).
    ``check=True`` also compares a planned span with the positions tensor (a sync, for tests and debugging)."""
    positions = plan.positions  # (b, q')
    if plan.span is not None and not check:
        return plan.span
    lo, hi = (int(v) for v in positions.aminmax()) if positions.numel() else (0, -1)
    if lo < 0:
        raise ValueError(f"adapter {adapter!r} reports negative positions ({lo}) for this call")
    if plan.span is None:
        return lo, hi + 1
    exact = torch.arange(plan.span[0], plan.span[1], device=positions.device).expand_as(positions)
    if positions.numel() and not torch.equal(positions, exact):
        raise RuntimeError(
            f"adapter {adapter!r} planned positions {plan.span[0]}..{plan.span[1] - 1} (CallPlan.span) but its "
            f"positions tensor holds {lo}..{hi} (or not in order); plan_call must give a span only when every "
            f"row's positions are exactly lo .. end - 1"
        )
    return plan.span


def check_fed_positions(
    positions: Tensor | None, start: int, stop: int, span: tuple[int, int] | None, adapter: str, mode: str, read: bool
) -> None:
    """The positions (b, q') a relay call reported must be the fed ones, ``start .. stop - 1``, or a contiguous part
    of them (``CallPlan.columns``). With the plan's ``span`` (Python ints) nothing is read on the host unless
    ``read`` (``RelayCore.debug_checks``); without one the positions tensor is read. ``mode``: the cache mode, named
    in the error."""
    ok = positions is not None and positions.numel() > 0
    if ok and span is not None and not read:
        lo, end = span
        if start <= lo and end <= stop and end - lo == positions.shape[-1]:
            return
        ok = False
    if ok:
        first = int(positions[0, 0])
        expected = torch.arange(first, first + positions.shape[-1], device=positions.device)
        ok = start <= first and first + positions.shape[-1] <= stop and bool((positions == expected).all())
    if not ok:
        got = (
            "none" if positions is None or not positions.numel() else f"{int(positions.min())}..{int(positions.max())}"
        )
        raise RuntimeError(
            f"adapter {adapter!r} reports positions {got} for a call that feeds positions {start}..{stop - 1}: its "
            f"plan_call() does not read the arguments its decode_kwargs() passes ({mode} cache); fix one of the two "
            f"so they agree"
        )
