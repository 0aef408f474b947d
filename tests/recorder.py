"""Record every backbone call an unchanged decoding loop makes inside a relay session, and check contracts 2 and 3.

A ``Recorder`` adds its own hooks after relay's (so it sees the state before and after each call) on the adapter's
call module and embedding. Each ``Call`` keeps the fed ids, the call's keyword arguments, the states around it and
the call's output. The checks take the positions the upstream loop feeds, derived in the test from the call's
arguments as the upstream code documents them, independently of the adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from relaykit import RelayModel, RelayState
from relaykit.kvcache import cache_length
from relaykit.model import RelaySession


@dataclass
class Call:
    ids: Tensor  # (b, q') as fed to the embedding
    kwargs: dict[str, Any]
    before: RelayState | None
    after: RelayState | None = None
    output: Any = None
    cache_len: int = 0  # positions held by past_key_values when the call was made (caches grow in place)
    extra: Any = None  # what the recorder's ``snapshot()`` returned before the call (e.g. BD3-LM's cache_idx)


class Recorder:
    """Context manager recording the calls of ``relay``'s backbone made while ``session`` is open."""

    def __init__(self, relay: RelayModel, session: RelaySession, snapshot: Callable[[], Any] | None = None) -> None:
        self.relay, self.session, self.snapshot = relay, session, snapshot
        self.calls: list[Call] = []
        self._pending: dict[str, Any] = {}

    def __enter__(self) -> Recorder:
        backbone, adapter = self.relay.backbone, self.relay.adapter
        call_module, embedding = adapter.call_module(backbone), adapter.embedding(backbone)
        self._handles = [
            call_module.register_forward_pre_hook(self._pre, with_kwargs=True),
            embedding.register_forward_hook(self._embedding),
            call_module.register_forward_hook(self._post),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _pre(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        held = cache_length(kwargs.get("cache", kwargs.get("past_key_values")))
        extra = self.snapshot() if self.snapshot is not None else None
        self._pending = {"kwargs": dict(kwargs), "before": self.session.state, "cache_len": held, "extra": extra}

    def _embedding(self, module: Any, args: tuple[Any, ...], output: Tensor) -> None:
        self._pending["ids"] = args[0].clone()

    def _post(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        p = self._pending
        after = self.session.state
        self.calls.append(Call(p["ids"], p["kwargs"], p["before"], after, output, p["cache_len"], p["extra"]))


def _dense(state: RelayState | None, b: int, n: int, d: int) -> tuple[Tensor, Tensor]:
    """(hidden (b, n, d), filled (b, n)) of a state from position 0, zero-padded; zeros for None."""
    hidden = torch.zeros(b, n, d, dtype=torch.float64)
    filled = torch.zeros(b, n, dtype=torch.bool)
    if state is not None:
        a, e = state.offset, min(state.end, n)
        hidden[:, a:e] = state.hidden[:, : e - a].detach().double()
        filled[:, a:e] = state.filled[:, : e - a]
    return hidden, filled


def check_locality(
    calls: list[Call],
    positions_of: Callable[[Call], Tensor],
    *,
    mask_id: int,
    unwritable_of: Callable[[Call], Tensor] | None = None,
) -> int:
    """Contract 2 for every call: h changes only at fed, still-masked positions, and is written at all of them.

    ``positions_of(call)`` gives the absolute positions (b, q') of the fed ids per the upstream loop's semantics;
    ``unwritable_of(call)`` the fed positions that take no part in relay (outside the adapter's relay columns, e.g.
    BD3-LM's committed blocks in a cache-free call). Returns the number of positions written, so callers can
    assert the check was not vacuous.
    """
    written = 0
    for call in calls:
        if call.after is None:
            continue
        pos = positions_of(call)  # (b, q')
        b = call.ids.shape[0]
        n = max(int(pos.max()) + 1, call.after.end, call.before.end if call.before is not None else 0)
        d = call.after.hidden_size
        h0, f0 = _dense(call.before, b, n, d)
        h1, f1 = _dense(call.after, b, n, d)
        may = torch.zeros(b, n, dtype=torch.bool)
        writable = call.ids == mask_id
        if unwritable_of is not None:
            writable &= ~unwritable_of(call)
        may.scatter_(1, pos, writable)
        assert torch.equal(h0[~may], h1[~may]) and torch.equal(f0[~may], f1[~may]), "h changed outside the call"
        assert bool(f1[may].all()), "a fed masked position was not written"
        written += int(may.sum())
    return written


def check_committed_frozen(
    calls: list[Call], positions_of: Callable[[Call], Tensor], final: RelayState, *, mask_id: int
) -> int:
    """Contract 3: once a position is fed unmasked after having been masked, its h never changes again."""
    checked = 0
    seen_masked: set[tuple[int, int]] = set()
    frozen_at: dict[tuple[int, int], Tensor] = {}
    for call in calls:
        pos = positions_of(call)
        for r, c in (call.ids == mask_id).nonzero().tolist():
            seen_masked.add((r, int(pos[r, c])))
        for r, c in (call.ids != mask_id).nonzero().tolist():
            key = (r, int(pos[r, c]))
            if key in seen_masked and key not in frozen_at and call.before is not None:
                frozen_at[key] = call.before.hidden[r, key[1] - call.before.offset].detach().clone()
    for (r, p), value in frozen_at.items():
        assert torch.equal(final.hidden[r, p - final.offset].detach(), value), f"h of committed ({r}, {p}) changed"
        checked += 1
    return checked
