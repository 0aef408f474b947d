"""How :func:`relaykit.generate` runs the backbone for one active block: recomputed, or with a KV cache.

Legend: b batch, T canvas length, B block length, V vocabulary.

A runner owns the backbone's cache and turns "decode inside block s..e-1" into backbone calls built by the
adapter (``Adapter.decode_kwargs``). The relay rules that keep caches valid live here:

* block-causal backbones (Fast-dLLM v2, BD3-LM): the relay rollout runs only inside the active block. The state
  handed in and returned is the block's window (a new block starts from h = 0); earlier blocks never get relay
  and nothing outside the block gets h written (contracts 2, 3);
* bidirectional backbones (LLaDA, MDLM): the state covers the whole canvas, as the backbone's own loop run inside
  ``relay.session()`` would have it: h is written wherever a masked position is fed and carried across blocks;
* every pass that stores context in the cache (prompt prefill, commit pass, Fast-dLLM v1 refresh) runs
  relay-free, so cached keys and values equal the bare backbone's (contract 4); the refresh, which is also the
  block's first step, still records h at the masked positions;
* each call's absolute positions come from the adapter (``Adapter.plan_call``, through the relay hook) and are
  checked against the positions the runner fed.

Runners: :class:`Recompute` (no cache; LLaDA / MDLM loops, and the reference for caches), :class:`PrefixCache`
(block-causal: the exact block-level cache of Fast-dLLM v2 / BD3-LM, contract 5; bidirectional: Fast-dLLM v1's
prefix cache, refreshed at each block), :class:`DualCache` (Fast-dLLM v1: prefix and masked suffix frozen per
block, the block replaced in place) and :class:`SubBlockCache` (Fast-dLLM v2's block cache: the whole block once,
then only the current sub-block).

Example (what ``generate`` does for each block)::

    runner = PrefixCache(relay, attention="block_causal", segments=segs, batch=b)
    runner.prepare(x, canvas_start)                 # relay-free prompt prefill
    runner.begin(x, (s, e))
    logits, window = runner.step(x, (s, e), (s, e), window)   # (b, B, V) aligned with x[:, s:e]
    runner.end(x, (s, e), last=False)               # relay-free commit pass
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from relaykit.causality import native_attention
from relaykit.kvcache import Attention, CallKind, DecodeCall, cache_length
from relaykit.model import RelayCore
from relaykit.shift import align_logits
from relaykit.state import RelayState

Span = tuple[int, int]


class Runner:
    """Base runner: the call plumbing shared by every mode. Subclasses decide which calls a step makes."""

    mode = "none"
    #: True when a cached decode gives the same logits, tokens and states as :class:`Recompute` (contract 5)
    exact = False

    def __init__(
        self,
        relay: RelayCore,
        *,
        attention: Attention,
        segments: tuple[Span, ...],
        batch: int,
        cache: Any = None,
        tail: Tensor | None = None,
        block_size: int | None = None,
    ) -> None:
        self.relay = relay
        self.block_size = block_size
        self.adapter = relay.adapter
        self.attention = attention
        self.segments = segments
        self.batch = batch
        self.shift = int(relay.adapter.token_shift)
        if self.shift not in (0, 1):
            raise ValueError(f"relaykit.generate supports a token shift of 0 or 1, the adapter has {self.shift}")
        self.cache = cache
        self.block_cache: Any = None  # a family's block cache kept apart from self.cache (Fast-dLLM v2)
        self.tail = tail  # (b, V) logits at the last position the cache holds (predicts the next one when shift=1)
        self.block_logits: Tensor | None = None  # (b, B + 1, V) raw logits at positions s-1 .. e-1
        self.block: Span | None = None
        self.last_state: RelayState | None = None
        self.last_fed: Span = (0, 0)  # positions fed by the last relay call
        self.refreshed = False
        self._tail_pos = -1
        self.padding: Tensor | None = None  # (b, T) bool left padding (generate's attention_mask), hidden as keys
        self.explicit_mask = native_attention(relay.backbone) == "causal"  # no mask would mean causal attention

    # ------------------------------------------------------------------ the call plumbing
    def call(
        self,
        x: Tensor,
        kind: CallKind,
        start: int,
        stop: int,
        *,
        state: RelayState | None = None,
        store: bool = False,
        replaced: Span | None = None,
        relay_on: bool = True,
    ) -> Tensor:
        """Feed ``x[:, start:stop]``; returns the raw logits (b, stop - start, V) and keeps the new state."""
        call = DecodeCall(
            kind,
            start,
            stop,
            self.batch,
            cache=self.cache,
            cache_length=cache_length(self.cache),
            store=store,
            replaced=replaced,
            segments=self.segments,
            attention=self.attention,
            block=self.block,
            block_size=self.block_size,
            device=x.device,
            block_cache=self.block_cache,
            padding=self.padding,
            explicit_mask=self.explicit_mask,
        )
        backbone_kwargs = self.adapter.decode_kwargs(self.relay.backbone, call)
        ids = x[:, start:stop]  # (b, q)
        relay_on = relay_on and self.relay.enabled  # generate() inside relay.disabled(): the bare backbone's loop
        if relay_on:
            out = self.relay(ids, state=state, **backbone_kwargs)
            self._check_positions(out.positions, start, stop)
            self.last_fed = (start, stop)
        else:
            with self.relay.disabled():
                out = self.relay(ids, **backbone_kwargs)
        self.last_state = out.state if relay_on else None
        self.cache = self.adapter.decode_cache(out.output, call)
        self.block_cache = self.adapter.decode_block_cache(out.output, call)
        if self.block is not None:
            self._record(out.logits, start, stop)
        return out.logits  # (b, q, V)

    def _record(self, logits: Tensor, start: int, stop: int) -> None:
        """Keep the raw logits of positions s-1 .. e-1 of the active block that this call produced."""
        s, e = self.block  # type: ignore[misc]
        if self.block_logits is None:
            self.block_logits = logits.new_zeros(logits.shape[0], e - s + 1, logits.shape[-1])  # (b, B + 1, V)
            if self.tail is not None and self._tail_pos == s - 1:
                self.block_logits[:, 0] = self.tail
        lo, hi = max(start, s - 1), min(stop, e)
        if lo < hi:
            self.block_logits[:, lo - (s - 1) : hi - (s - 1)] = logits[:, lo - start : hi - start].detach()

    def _check_positions(self, positions: Tensor | None, start: int, stop: int) -> None:
        """The adapter's positions must be the fed ones, or a contiguous part of them (``CallPlan.columns``)."""
        ok = positions is not None and positions.numel() > 0
        if ok:
            first = int(positions[0, 0])
            expected = torch.arange(first, first + positions.shape[-1], device=positions.device)
            ok = start <= first and first + positions.shape[-1] <= stop and bool((positions == expected).all())
        if not ok:
            got = (
                "none"
                if positions is None or not positions.numel()
                else (f"{int(positions.min())}..{int(positions.max())}")
            )
            raise RuntimeError(
                f"adapter {self.adapter.name!r} reports positions {got} for a call that feeds positions "
                f"{start}..{stop - 1}: its plan_call() does not read the arguments its decode_kwargs() passes "
                f"({self.mode} cache); fix one of the two so they agree"
            )

    def aligned(self) -> Tensor:
        """Logits aligned with the active block, (b, B, V): position p is predicted at p - token_shift."""
        assert self.block is not None and self.block_logits is not None
        return align_logits(self.block_logits, self.shift)[:, 1:]  # buffer holds s-1 .. e-1; keep s .. e-1

    def window(self, state: RelayState | None, block: Span, total: int) -> RelayState | None:
        """What the relay returned, cut to the extent the runner keeps: the block (block-causal) or the canvas."""
        if state is None:
            return None
        if self.attention == "block_causal":
            return state.extend(block[1]).window(*block)
        return state.extend(total)

    # ------------------------------------------------------------------ the protocol generate() drives
    def prepare(self, x: Tensor, canvas_start: int) -> int:
        """Before the first block; returns the number of backbone passes it made (prompt prefill)."""
        return 0

    def begin(self, x: Tensor, block: Span) -> None:
        """Block ``(s, e)`` becomes active."""
        self.block = block
        self.block_logits = None

    def step(self, x: Tensor, block: Span, focus: Span, window: RelayState | None) -> tuple[Tensor, RelayState | None]:
        """One relay step; returns (logits aligned with ``x[:, s:e]`` (b, B, V), the block's new state window)."""
        raise NotImplementedError

    def end(self, x: Tensor, block: Span, *, last: bool) -> int:
        """Block finished; returns the number of passes made (a relay-free commit pass, or none)."""
        return 0

    # ------------------------------------------------------------------ helpers for subclasses
    def _store_tail(self, logits: Tensor, stop: int) -> None:
        self.tail, self._tail_pos = logits[:, -1].detach(), stop - 1

    def _prefill(self, x: Tensor, canvas_start: int) -> int:
        held = cache_length(self.cache)
        if canvas_start <= held:
            self._tail_pos = held - 1 if self.tail is not None else -1
            return 0
        logits = self.call(x, "prefill", held, canvas_start, store=True, relay_on=False)
        self._store_tail(logits, canvas_start)
        return 1


def _embed(window: RelayState | None, stop: int) -> RelayState | None:
    """A state covering 0 .. stop-1 that holds h only inside ``window`` (relay lives in the active block)."""
    if window is None:
        return None
    full = RelayState.zeros(window.batch_size, stop, window.hidden_size, dtype=window.dtype, device=window.device)
    return full.write(window.positions, window.hidden, where=window.filled)


def _merge(before: RelayState | None, after: RelayState | None, written: Tensor) -> RelayState | None:
    """``after`` where ``written`` (b, n) is True, ``before`` elsewhere (states covering 0 .. n-1)."""
    if before is None or after is None:
        return after
    n = max(before.end, after.end)
    before, after = before.extend(n), after.extend(n)
    written = written[:, :n]
    hidden = torch.where(written.unsqueeze(-1), after.hidden, before.hidden)  # (b, n, d)
    filled = torch.where(written, after.filled, before.filled)  # (b, n)
    return RelayState(hidden, filled, 0)


class Recompute(Runner):
    """No cache: every step feeds the whole sequence (bidirectional) or everything up to the block's end
    (block-causal, under a block-causal mask). The reference the exact cache is compared with."""

    mode = "none"

    def step(self, x: Tensor, block: Span, focus: Span, window: RelayState | None) -> tuple[Tensor, RelayState | None]:
        total = x.shape[1]
        if self.attention == "block_causal":
            self.call(x, "step", 0, block[1], state=_embed(window, block[1]))
        else:
            self.call(x, "step", 0, total, state=window)
        return self.aligned(), self.window(self.last_state, block, total)


class PrefixCache(Runner):
    """Block-level prefix cache. Block-causal: exact (prompt prefill and per-block commit passes, relay-free; a
    step feeds only the active block). Bidirectional (Fast-dLLM v1 prefix cache): each block starts with a full
    forward that refills the cache and is the block's first step; later steps feed ``s .. T-1``."""

    mode = "prefix"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exact = self.attention == "block_causal"

    def prepare(self, x: Tensor, canvas_start: int) -> int:
        return self._prefill(x, canvas_start) if self.attention == "block_causal" else 0

    def begin(self, x: Tensor, block: Span) -> None:
        super().begin(x, block)
        self.refreshed = False

    def step(self, x: Tensor, block: Span, focus: Span, window: RelayState | None) -> tuple[Tensor, RelayState | None]:
        s, e = block
        if self.attention == "block_causal":
            self.call(x, "step", s, e, state=window)
            self.cache = self.adapter.crop_cache(self.cache, s)
        elif not self.refreshed:
            self._refresh(x, block, window)
            self.cache = self.adapter.crop_cache(self.cache, s)
        else:
            self.call(x, "step", s, x.shape[1], state=window)
            self.cache = self.adapter.crop_cache(self.cache, s)
        return self.aligned(), self.window(self.last_state, block, x.shape[1])

    def _refresh(self, x: Tensor, block: Span, window: RelayState | None) -> None:
        """Fast-dLLM v1: a full forward caches every position and is the block's first step. It runs relay-free
        (h = 0 in, bidirectional attention would carry relay into every cached key otherwise), so the cached
        keys and values equal the bare backbone's (contract 4); it still writes h at the masked positions."""
        self.cache = None
        self.call(x, "refresh", 0, x.shape[1], state=None, store=True)
        self.last_state = _merge(window, self.last_state, x == self.relay.mask_token_id)
        self.refreshed = True

    def end(self, x: Tensor, block: Span, *, last: bool) -> int:
        if self.attention != "block_causal" or last:
            return 0
        s, e = block
        self.cache = self.adapter.crop_cache(self.cache, s)
        logits = self.call(x, "commit", s, e, store=True, relay_on=False)
        self._store_tail(logits, e)
        return 1


class DualCache(PrefixCache):
    """Fast-dLLM v1 dual cache (bidirectional): a full forward per block caches prefix AND masked suffix; each
    later step feeds only the block, replacing its cached keys and values in place."""

    mode = "dual"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exact = False

    def prepare(self, x: Tensor, canvas_start: int) -> int:
        return 0

    def step(self, x: Tensor, block: Span, focus: Span, window: RelayState | None) -> tuple[Tensor, RelayState | None]:
        s, e = block
        if not self.refreshed:
            self._refresh(x, block, window)
        else:
            self.call(x, "step", s, e, state=window, replaced=(s, e))
            self.cache = self.adapter.crop_cache(self.cache, x.shape[1])  # drop the appended copy, if any
        return self.aligned(), self.window(self.last_state, block, x.shape[1])

    def end(self, x: Tensor, block: Span, *, last: bool) -> int:
        return 0


class SubBlockCache(Runner):
    """Fast-dLLM v2 block cache (block-causal): the whole block is fed when a sub-block starts (its first token
    still masked), which caches the block; later steps feed only the sub-block, replacing its slots in place."""

    mode = "sub_block"

    def prepare(self, x: Tensor, canvas_start: int) -> int:
        return self._prefill(x, canvas_start)

    def begin(self, x: Tensor, block: Span) -> None:
        super().begin(x, block)
        self.block_ready = False

    def step(self, x: Tensor, block: Span, focus: Span, window: RelayState | None) -> tuple[Tensor, RelayState | None]:
        s, e = block
        a, b = focus
        mask_id = self.relay.mask_token_id
        if not self.block_ready or bool((x[:, a] == mask_id).any()):
            self.cache = self.adapter.crop_cache(self.cache, s)
            self.call(x, "block", s, e, state=window)  # its keys stay: the block cache (cropped at the block's end)
            self.block_ready = True
        else:
            self.call(x, "sub_block", a, b, state=window, replaced=(a, b))
            self.cache = self.adapter.crop_cache(self.cache, e)  # drop the appended copy, if any
        return self.aligned(), self.window(self.last_state, block, x.shape[1])

    def end(self, x: Tensor, block: Span, *, last: bool) -> int:
        s, e = block
        self.cache = self.adapter.crop_cache(self.cache, s)
        if last:
            return 0
        logits = self.call(x, "commit", s, e, store=True, relay_on=False)
        self._store_tail(logits, e)
        return 1


RUNNERS: dict[str, type[Runner]] = {
    "none": Recompute,
    "prefix": PrefixCache,
    "dual": DualCache,
    "sub_block": SubBlockCache,
}
