"""What the relay hooks read and write while a call or a session is open: slots, calls, sessions, outputs.

Legend: b batch, q positions fed by one call, V vocabulary.

A *slot* holds the state h the hooks read and write while it is open: one explicit ``relay(ids, state=...)``
call opens one for that call, ``relay.session()`` opens one for a whole third-party decoding loop (the handle it
yields is a :class:`RelaySession`). A *call* is what the hooks learn about the backbone forward in flight: its
arguments, then the adapter's :class:`~relaykit.plan.CallPlan` for it.

Example::

    with relay.session() as s:       # s: RelaySession over an open slot
        model(x); model(x2)
        print(s.nfe, s.state)         # 2, RelayState(...)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from relaykit.kvcache import cache_batch_size
from relaykit.plan import CallPlan
from relaykit.state import RelayState

Update = Literal["masked", "all"]
Empty = Literal["skip", "zero"]


@dataclass
class RelayOutput:
    """What a relay forward returns: logits (b, q, V), the new state, the raw backbone output, the positions."""

    logits: Tensor
    state: RelayState | None
    output: Any
    positions: Tensor | None = None
    span: tuple[int, int] | None = None  # (lo, end): positions are lo .. end - 1 in every row, when the plan said so


@dataclass
class Slot:
    """Where the hooks read and write h while it is active (one explicit call, or a whole session)."""

    state: RelayState | None
    update: Update
    nfe: int = 0
    last_positions: Tensor | None = None
    last_span: tuple[int, int] | None = None


@dataclass
class Call:
    """What the hooks learn about the forward in flight: its arguments, then the adapter's plan for it."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    ids: Tensor | None = None  # (b, q') the relay columns' ids
    plan: CallPlan | None = None
    end: int = 0  # one past the largest fed position


def embedding_ids(args: tuple[Any, ...]) -> Tensor:
    """The token ids (b, q) the embedding module was called with."""
    ids = args[0] if args else None
    if not isinstance(ids, Tensor) or ids.dim() != 2:
        raise TypeError(
            f"relay expected the embedding to be called with token ids of shape (batch, length); got "
            f"{tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__}"
        )
    return ids


def check_cache_batch(cache: Any, batch: int) -> None:
    rows = cache_batch_size(cache)
    if rows is not None and rows != batch:
        raise ValueError(
            f"the KV cache passed to this call holds {rows} rows but the input has {batch}: it comes from another "
            f"batch; build the cache from this batch (or select its rows) before calling"
        )


def check_cache_modes(uses_cache: bool, *, update: Update, empty: Empty) -> None:
    """Refuse the two modes that would make a KV cache stale when a call has a cache in play."""
    if update == "all" and uses_cache:
        raise ValueError(
            "update='all' writes h at committed positions, which would make a KV cache stale; use "
            "update='masked' (the default) whenever the backbone is called with a cache"
        )
    if empty == "zero" and uses_cache:
        raise ValueError(
            "empty='zero' adds R(0) at positions without a state, committed ones included, which would make a "
            "KV cache stale; attach with empty='skip' (the default) to decode with a cache"
        )


def read_state(slot: Slot, plan: CallPlan, lo: int, end: int) -> tuple[Tensor, Tensor] | None:
    """h (b, q', d) at the planned positions and where a state exists there (b, q'), for a call whose positions lie
    in ``lo .. end - 1``; the slot's state is first extended to ``end`` (new positions on the right start empty, h =
    0). None when the slot holds no state at all. A state windowed past the positions is an error."""
    state = slot.state
    if state is None:
        return None
    state.check_batch(plan.positions.shape[0])
    state = slot.state = state.extend(end)
    if end > lo:
        state.check_covers(lo, end - 1)
    if plan.span is not None:  # the same contiguous positions in every row: slices, no index tensors
        return state.read(lo, end)
    return state.gather(plan.positions, check=False)


def capture(slot: Slot, call: Call, hidden: Tensor, mask_token_id: int) -> None:
    """Write the final hidden state ``hidden`` (b, q, d) of the call in flight into the slot's state: at the relay
    columns' planned positions, where the input is the mask token (``update="masked"``) or everywhere (``"all"``);
    count the forward (NFE). A call the embedding hook did not plan is ignored."""
    if call.plan is None or call.ids is None:
        return
    positions, ids, columns = call.plan.positions, call.ids, call.plan.columns
    if columns is not None and hidden.dim() == 3:
        hidden = hidden[:, columns]  # (b, q', d)
    if hidden.dim() != 3 or tuple(hidden.shape[:2]) != tuple(ids.shape):
        raise ValueError(
            f"relay expected the final hidden state to cover the {ids.shape[1]} fed positions, shape "
            f"({ids.shape[0]}, {ids.shape[1]}, d); got {tuple(hidden.shape)} (is the LM head applied to a "
            f"subset of positions, e.g. logits_to_keep? relay needs all of them)"
        )
    where = ids == mask_token_id if slot.update == "masked" else torch.ones_like(ids, dtype=torch.bool)  # (b, q')
    state = slot.state
    if state is None:
        state = RelayState.zeros(ids.shape[0], call.end, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
    if call.plan.span is not None:  # contiguous positions in every row: slices, no index tensors
        slot.state = state.write_range(call.plan.span[0], hidden, where)
    else:
        slot.state = state.write(positions, hidden, where, check=False)  # range checked in the embedding hook
    slot.nfe += 1
    slot.last_positions, slot.last_span = positions, call.plan.span


def check_update(update: str) -> Update:
    if update not in ("masked", "all"):
        raise ValueError(f"update must be 'masked' (default; required with KV caches) or 'all', got {update!r}")
    return update  # type: ignore[return-value]


def check_empty(empty: str) -> Empty:
    if empty not in ("skip", "zero"):
        raise ValueError(
            f"empty must be 'skip' (default: no relay term where no state exists) or 'zero' (add R(0) there, "
            f"Algorithm 1 as printed), got {empty!r}"
        )
    return empty  # type: ignore[return-value]


class RelaySession:
    """Handle returned by ``relay.session()``: the implicit state, the number of forwards (NFE), resets."""

    def __init__(self, slot: Slot) -> None:
        self._slot = slot

    @property
    def state(self) -> RelayState | None:
        return self._slot.state

    @state.setter
    def state(self, value: RelayState | None) -> None:
        self._slot.state = value

    @property
    def nfe(self) -> int:
        """Forward passes seen in this session (each backbone call counts once)."""
        return self._slot.nfe

    def reset(self, rows: Any = None) -> None:
        """Forget h for some rows (all when None), e.g. when a loop starts a new prompt in a batch slot."""
        if self._slot.state is not None:
            self._slot.state = None if rows is None else self._slot.state.reset(rows)

    def detach_state(self) -> None:
        """Cut the autograd graph through h (end of a truncated-BPTT window)."""
        if self._slot.state is not None:
            self._slot.state = self._slot.state.detach()

    def __repr__(self) -> str:
        return f"RelaySession(nfe={self.nfe}, state={self.state!r})"
