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

One class per cache mode (:func:`runner_for` picks it): :class:`Recompute` (no cache; the reference for caches),
:class:`BlockPrefixCache` (block-causal: the exact block-level cache of Fast-dLLM v2 / BD3-LM, contract 5),
:class:`RefreshPrefixCache` (Fast-dLLM v1's prefix cache, refreshed at each block), :class:`DualCache` (Fast-dLLM
v1: prefix and masked suffix frozen per block, the block replaced in place) and :class:`SubBlockCache` (Fast-dLLM
v2's block cache: the whole block once, then only the current sub-block). The block logits are gathered by
:class:`~relaykit.blocklogits.BlockLogits`.

Example (what ``generate`` does for each block)::

    runner = runner_for("prefix", "block_causal")(relay, attention="block_causal", segments=segs, batch=b)
    runner.prepare(x, canvas_start)                 # relay-free prompt prefill
    runner.begin(x, (s, e))
    logits, window = runner.step(x, (s, e), (s, e), window)   # (b, B, V) aligned with x[:, s:e]
    runner.end(x, (s, e), last=False)               # relay-free commit pass
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from relaykit.blocklogits import BlockLogits, Span
from relaykit.causality import native_attention
from relaykit.kvcache import Attention, CallKind, DecodeCall, cache_length
from relaykit.model import RelayCore
from relaykit.plan import check_fed_positions
from relaykit.state import RelayState, merge, widen

Window = RelayState | None  # a block's (or the canvas's) relay state, None: h = 0
Flags = tuple[bool, ...] | None  # Runner.host_flags read on the host (None: not read yet)
Stepped = tuple[Tensor, Window]  # (logits aligned with the block (b, B, V), the new window)


@dataclass(frozen=True)
class RunnerView:
    """What a runner shows an observer (tests, debugging), read-only: its cache, and what its last call fed."""

    mode: str
    exact: bool
    cache: Any
    fed: Span | None  # positions start..stop-1 fed by the last relay call (None before any)
    refreshed: bool  # Fast-dLLM v1: the active block's refresh has run


class Runner:
    """Base runner: the call plumbing shared by every mode. Subclasses decide which calls a step makes."""

    mode: ClassVar[str] = "none"
    #: True when a cached decode gives the same logits, tokens and states as :class:`Recompute` (contract 5)
    exact: ClassVar[bool] = False

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
        self.attention = attention
        self.segments = segments
        self.batch = batch
        self.block_size = block_size
        self.cache = cache
        self.block_cache: Any = None  # a family's block cache kept apart from self.cache (Fast-dLLM v2)
        self.padding: Tensor | None = None  # (b, T) bool left padding (generate's attention_mask), hidden as keys
        self.explicit_mask = native_attention(relay.backbone) == "causal"  # no mask would mean causal attention
        self.logits = BlockLogits(int(relay.adapter.token_shift), tail)
        self.fed: Span | None = None

    @property
    def view(self) -> RunnerView:
        return RunnerView(self.mode, self.exact, self.cache, self.fed, getattr(self, "refreshed", False))

    @property
    def tail(self) -> Tensor | None:
        """(b, V) logits at the last position the cache holds (predict the next token when token_shift = 1)."""
        return self.logits.tail

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
    ) -> tuple[Tensor, RelayState | None]:
        """Feed ``x[:, start:stop]``; returns the raw logits (b, stop - start, V) and the new state (None when the
        call ran relay-free)."""
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
            block=self.logits.block,
            block_size=self.block_size,
            device=x.device,
            block_cache=self.block_cache,
            padding=self.padding,
            explicit_mask=self.explicit_mask,
        )
        adapter = self.relay.adapter
        backbone_kwargs = adapter.decode_kwargs(self.relay.backbone, call)
        ids = x[:, start:stop]  # (b, q)
        relay_on = relay_on and self.relay.enabled  # generate() inside relay.disabled(): the bare backbone's loop
        if relay_on:
            out = self.relay(ids, state=state, **backbone_kwargs)
            check_fed_positions(out.positions, start, stop, out.span, adapter.name, self.mode, self.relay.debug_checks)
            self.fed = (start, stop)
        else:
            with self.relay.disabled():
                out = self.relay(ids, **backbone_kwargs)
        self.cache = adapter.decode_cache(out.output, call)
        self.block_cache = adapter.decode_block_cache(out.output, call)
        self.logits.record(out.logits, start, stop)
        return out.logits, out.state if relay_on else None  # (b, q, V)

    def window(self, state: RelayState | None, block: Span, total: int) -> RelayState | None:
        """What the relay returned, cut to the extent the runner keeps: the block (block-causal) or the canvas."""
        if state is None:
            return None
        if self.attention == "block_causal":
            return state.extend(block[1]).window(*block)
        return state.extend(total)

    def crop(self, length: int) -> None:
        """Keep only cache positions < ``length``."""
        self.cache = self.relay.adapter.crop_cache(self.cache, length)

    # ------------------------------------------------------------------ the protocol generate() drives
    def prepare(self, x: Tensor, canvas_start: int) -> int:
        """Before the first block; returns the number of backbone passes it made (prompt prefill)."""
        return 0

    def begin(self, x: Tensor, block: Span) -> None:
        """Block ``(s, e)`` becomes active."""
        self.logits.begin(block)

    def host_flags(self, x: Tensor, block: Span, focus: Span) -> Tensor | None:
        """(k,) bool values the next :meth:`step` branches on, computed on the device for the caller to read with
        its own host read and pass back as ``step(..., flags=...)`` (None: the step branches on nothing)."""
        return None

    def step(self, x: Tensor, block: Span, focus: Span, window: Window, flags: Flags = None) -> Stepped:
        """One relay step; returns (logits aligned with ``x[:, s:e]`` (b, B, V), the block's new state window).
        ``flags``: :meth:`host_flags` read on the host (None: the step reads them itself)."""
        raise NotImplementedError

    def end(self, x: Tensor, block: Span, *, last: bool) -> int:
        """Block finished; returns the number of passes made (a relay-free commit pass, or none)."""
        return 0

    # ------------------------------------------------------------------ passes shared by several modes
    def _prefill(self, x: Tensor, canvas_start: int) -> int:
        """Relay-free prompt prefill up to ``canvas_start`` (nothing when the cache already holds it)."""
        held = cache_length(self.cache)
        if canvas_start <= held:
            self.logits.resume_tail(held - 1)
            return 0
        logits, _ = self.call(x, "prefill", held, canvas_start, store=True, relay_on=False)
        self.logits.store_tail(logits, canvas_start)
        return 1

    def _commit(self, x: Tensor, block: Span) -> int:
        """Relay-free pass that stores the finished block in the cache (contract 4)."""
        s, e = block
        self.crop(s)
        logits, _ = self.call(x, "commit", s, e, store=True, relay_on=False)
        self.logits.store_tail(logits, e)
        return 1


class Recompute(Runner):
    """No cache: every step feeds the whole sequence (bidirectional) or everything up to the block's end
    (block-causal, under a block-causal mask). The reference the exact cache is compared with."""

    mode = "none"

    def step(self, x: Tensor, block: Span, focus: Span, window: Window, flags: Flags = None) -> Stepped:
        total = x.shape[1]
        if self.attention == "block_causal":
            _, state = self.call(x, "step", 0, block[1], state=widen(window, block[1]))
        else:
            _, state = self.call(x, "step", 0, total, state=window)
        return self.logits.aligned(), self.window(state, block, total)


class BlockPrefixCache(Runner):
    """Block-level prefix cache of block-causal backbones, exact (contract 5): a relay-free prompt prefill and a
    relay-free commit pass per block; a step feeds only the active block."""

    mode = "prefix"
    exact = True

    def prepare(self, x: Tensor, canvas_start: int) -> int:
        return self._prefill(x, canvas_start)

    def step(self, x: Tensor, block: Span, focus: Span, window: Window, flags: Flags = None) -> Stepped:
        s, e = block
        _, state = self.call(x, "step", s, e, state=window)
        self.crop(s)
        return self.logits.aligned(), self.window(state, block, x.shape[1])

    def end(self, x: Tensor, block: Span, *, last: bool) -> int:
        return 0 if last else self._commit(x, block)


class _Refreshing(Runner):
    """Fast-dLLM v1 caches (bidirectional): each block starts with a full forward that refills the cache and is the
    block's first step."""

    refreshed = False

    def begin(self, x: Tensor, block: Span) -> None:
        super().begin(x, block)
        self.refreshed = False

    def _refresh(self, x: Tensor, window: RelayState | None) -> RelayState | None:
        """The full forward caches every position. It runs relay-free (h = 0 in: bidirectional attention would carry
        relay into every cached key otherwise), so the cached keys and values equal the bare backbone's (contract
        4); it still writes h at the masked positions."""
        self.cache = None
        _, state = self.call(x, "refresh", 0, x.shape[1], state=None, store=True)
        self.refreshed = True
        return merge(window, state, x == self.relay.mask_token_id)


class RefreshPrefixCache(_Refreshing):
    """Fast-dLLM v1 prefix cache: after the block's refresh, steps feed ``s .. T-1`` against the cached prefix."""

    mode = "prefix"

    def step(self, x: Tensor, block: Span, focus: Span, window: Window, flags: Flags = None) -> Stepped:
        s, _ = block
        if not self.refreshed:
            state = self._refresh(x, window)
        else:
            _, state = self.call(x, "step", s, x.shape[1], state=window)
        self.crop(s)
        return self.logits.aligned(), self.window(state, block, x.shape[1])


class DualCache(_Refreshing):
    """Fast-dLLM v1 dual cache: after the block's refresh (prefix AND masked suffix cached), each step feeds only
    the block, replacing its cached keys and values in place."""

    mode = "dual"

    def step(self, x: Tensor, block: Span, focus: Span, window: Window, flags: Flags = None) -> Stepped:
        s, e = block
        if not self.refreshed:
            state = self._refresh(x, window)
        else:
            _, state = self.call(x, "step", s, e, state=window, replaced=(s, e))
            self.crop(x.shape[1])  # drop the appended copy, if any
        return self.logits.aligned(), self.window(state, block, x.shape[1])


class SubBlockCache(Runner):
    """Fast-dLLM v2 block cache (block-causal): the whole block is fed when a sub-block starts (its first token
    still masked), which caches the block; later steps feed only the sub-block, replacing its slots in place."""

    mode = "sub_block"
    block_ready = False

    def prepare(self, x: Tensor, canvas_start: int) -> int:
        return self._prefill(x, canvas_start)

    def begin(self, x: Tensor, block: Span) -> None:
        super().begin(x, block)
        self.block_ready = False

    def host_flags(self, x: Tensor, block: Span, focus: Span) -> Tensor | None:
        """Once the block is cached: (1,) whether the sub-block's first token is still masked in some row (then the
        whole block is fed again, as Fast-dLLM v2's loop does)."""
        return (x[:, focus[0]] == self.relay.mask_token_id).any().view(1) if self.block_ready else None

    def step(self, x: Tensor, block: Span, focus: Span, window: Window, flags: Flags = None) -> Stepped:
        s, e = block
        a, b = focus
        if flags is None:
            need = self.host_flags(x, block, focus)
            flags = () if need is None else tuple(need.tolist())  # one host read (generate reads it with its own)
        if not self.block_ready or flags[0]:
            self.crop(s)
            _, state = self.call(x, "block", s, e, state=window)  # its keys stay: the block cache, cropped at the end
            self.block_ready = True
        else:
            _, state = self.call(x, "sub_block", a, b, state=window, replaced=(a, b))
            self.crop(e)  # drop the appended copy, if any
        return self.logits.aligned(), self.window(state, block, x.shape[1])

    def end(self, x: Tensor, block: Span, *, last: bool) -> int:
        self.crop(block[0])
        return 0 if last else self._commit(x, block)


def runner_for(mode: str | None, attention: Attention) -> type[Runner]:
    """The runner class of a cache mode (None: no cache) under ``attention``."""
    if mode is None or mode == "none":
        return Recompute
    if mode == "prefix":
        return BlockPrefixCache if attention == "block_causal" else RefreshPrefixCache
    if mode == "dual":
        return DualCache
    if mode == "sub_block":
        return SubBlockCache
    raise ValueError(f"unknown cache mode {mode!r}; expected None, 'prefix', 'dual' or 'sub_block'")
