"""KV-cache helpers shared by the relay hooks and the decoding loop, and the description of one decoding call.

Legend: b batch, q positions fed by one call, kv key columns (cached + fed), L positions held by a cache.

Caches come in two shapes and relaykit never imports transformers to read them: HF ``Cache`` objects
(``get_seq_length()``, ``crop(-n)``, ``layers[i].keys`` or ``key_cache[i]``) and Fast-dLLM v1 style Python lists
of ``(key, value)`` tensors per layer, keys shaped (b, heads, L, d).

:class:`DecodeCall` is what :func:`relaykit.generate` hands to ``Adapter.decode_kwargs`` so that a family adapter
can turn "feed positions start..stop-1 against this cache" into its backbone's keyword arguments.

Example::

    >>> call = DecodeCall("step", start=4, stop=8, batch=1, segments=((0, 4), (4, 8), (8, 12)),
    ...                   attention="block_causal", cache_length=4)
    >>> call.allowed() is None          # a block attends its cached prefix and itself: nothing hidden
    True
    >>> call.attention_mask(torch.float32, additive=False).shape   # but HF causal LMs need it spelled out
    torch.Size([1, 1, 4, 8])
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from relaykit.spans import remember

CallKind = Literal["prefill", "step", "refresh", "block", "sub_block", "commit"]
Attention = Literal["bidirectional", "block_causal"]
ATTENTIONS = ("bidirectional", "block_causal")


def cache_length(cache: Any) -> int:
    """Number of positions already held by a KV cache: HF Cache objects or a list/tuple of (k, v) per layer."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (list, tuple)):
        if len(cache) == 0:
            return 0
        first = cache[0]
        if isinstance(first, (list, tuple)) and first and isinstance(first[0], Tensor):
            return int(first[0].shape[-2])  # keys: (b, heads, L, d)
    raise TypeError(
        f"cannot read the length of a cache of type {type(cache).__name__}; expected an object with "
        f"get_seq_length() or a list of (key, value) tensors per layer"
    )


def _first_keys(cache: Any) -> Tensor | None:
    layers = getattr(cache, "layers", None)
    if layers:
        keys = getattr(layers[0], "keys", None)
        return keys if isinstance(keys, Tensor) and keys.dim() >= 3 else None
    key_cache = getattr(cache, "key_cache", None)
    if key_cache:
        return key_cache[0] if isinstance(key_cache[0], Tensor) else None
    if isinstance(cache, (list, tuple)) and cache and isinstance(cache[0], (list, tuple)) and cache[0]:
        return cache[0][0] if isinstance(cache[0][0], Tensor) else None
    return None


def cache_batch_size(cache: Any) -> int | None:
    """Rows held by a KV cache (None when empty or unreadable)."""
    if cache is None:
        return None
    keys = _first_keys(cache)
    return int(keys.shape[0]) if keys is not None and keys.numel() else None


def crop_cache(cache: Any, length: int) -> Any:
    """The cache holding only positions < ``length`` (HF caches are cropped in place, lists are sliced)."""
    held = cache_length(cache)
    if cache is None or held <= length:
        return cache
    if hasattr(cache, "crop"):
        cache.crop(length - held)  # negative: drop that many positions (transformers 4.x and 5.x)
        return cache
    if isinstance(cache, (list, tuple)):
        return [(k[..., :length, :], v[..., :length, :]) for k, v in cache]  # (b, h, L, d) -> (b, h, length, d)
    raise TypeError(f"cannot crop a cache of type {type(cache).__name__}; give the adapter a crop_cache method")


def segment_ids(positions: Tensor, segments: tuple[tuple[int, int], ...]) -> Tensor:
    """The index of the segment holding each absolute position (same shape as ``positions``)."""
    starts = torch.tensor([s for s, _ in segments[1:]], dtype=torch.long, device=positions.device)
    return torch.bucketize(positions, starts, right=True)


@dataclass
class DecodeCall:
    """One backbone call of the decoding loop, in family-neutral terms (see ``Adapter.decode_kwargs``).

    Attributes:
        kind: "prefill" (clean context), "step" (relay step in the active block), "refresh" (Fast-dLLM v1:
            full forward that refills the cache and is the block's first step), "block" / "sub_block"
            (Fast-dLLM v2 sub-block cache: the full active block, whose keys and values are kept as the block
            cache (HF convention: appended to the cache, cropped when the block ends; Fast-dLLM v2: its
            ``block_past_key_values``), then one sub-block), "commit" (relay-free pass that stores a finished
            block).
        start, stop: the absolute positions fed, ``start .. stop - 1`` (the input ids are ``x[:, start:stop]``).
        batch: rows in the call.
        cache: the cache passed in (None: no cache); ``cache_length`` positions it holds before the call.
        store: whether the call must leave its keys and values in the cache.
        replaced: cache columns ``(a, b)`` this call supersedes ("replace in place": dual and sub-block caches).
        segments: attention segments covering ``0 .. stop - 1`` (prompt, then blocks), for block-causal masks.
        attention: "bidirectional" or "block_causal" (a position sees segments up to its own).
        block: the active block ``(start, stop)`` (None before the first block: prompt prefill).
        block_size: the decode's block size (the canvas length when decoding without blocks).
        block_cache: the sub-block cache's block cache when the family keeps it apart from ``cache`` (Fast-dLLM v2's
            ``block_past_key_values``): what ``Adapter.decode_block_cache`` returned after the block call.
        padding: (b, T) bool, the left padding of ``generate(attention_mask=...)``: hidden as keys from every
            query (a padding query sees only itself).
        explicit_mask: pass a mask even when every key is allowed (the backbone attends causally without one,
            see ``relaykit.causality``).
    """

    kind: CallKind
    start: int
    stop: int
    batch: int
    cache: Any = None
    cache_length: int = 0
    store: bool = False
    replaced: tuple[int, int] | None = None
    segments: tuple[tuple[int, int], ...] = ()
    attention: Attention = "bidirectional"
    block: tuple[int, int] | None = None
    block_size: int | None = None
    device: torch.device | None = None
    block_cache: Any = None
    padding: Tensor | None = None  # (b, T) bool: left-padding positions of the canvas, hidden as keys
    explicit_mask: bool = False  # always pass a mask: the backbone attends causally when given none

    @property
    def length(self) -> int:
        return self.stop - self.start

    def position_ids(self) -> Tensor:
        """Absolute positions of the fed tokens, (b, q), with their span recorded (``relaykit.spans``): the relay
        hooks learn their range without reading them."""
        positions = torch.arange(self.start, self.stop, device=self.device).unsqueeze(0).expand(self.batch, -1)
        return remember(positions, (self.start, self.stop))

    def key_positions(self) -> Tensor:
        """Absolute position of every key column the call attends: cached ones (0 .. L-1) then the fed ones."""
        cached = torch.arange(self.cache_length, device=self.device)
        return torch.cat([cached, torch.arange(self.start, self.stop, device=self.device)])  # (kv,)

    def allowed(self, *, explicit: bool = False) -> Tensor | None:
        """Which key columns each fed position may attend, (b, 1, q, kv) bool.

        None when every column is allowed, unless ``explicit`` (HF causal-LM classes fall back to a causal mask
        when given none, so block-causal calls always pass one).
        """
        padded = self.padding is not None and bool(self.padding.any())
        if not padded and not explicit and self._allows_all():
            return None
        keys = self.key_positions()  # (kv,)
        queries = torch.arange(self.start, self.stop, device=self.device)  # (q,)
        ok = torch.ones(queries.numel(), keys.numel(), dtype=torch.bool, device=self.device)  # (q, kv)
        if self.attention == "block_causal":
            if not self.segments:
                raise ValueError("a block-causal call needs its attention segments")
            ok &= segment_ids(keys, self.segments)[None, :] <= segment_ids(queries, self.segments)[:, None]
        if self.replaced is not None:
            a, b = self.replaced
            stale = torch.zeros(keys.numel(), dtype=torch.bool, device=self.device)
            stale[a : min(b, self.cache_length)] = True  # superseded cached columns; the fresh ones follow
            ok &= ~stale[None, :]
        if padded:
            hidden = self.padding[:, keys]  # (b, kv): padding keys
            own = keys[None, :] == queries[:, None]  # (q, kv): a padding query still sees itself (no empty row)
            return ok[None, None] & (~hidden[:, None, None, :] | own[None, None])  # (b, 1, q, kv)
        return ok[None, None].expand(self.batch, 1, -1, -1)  # (b, 1, q, kv)

    def _allows_all(self) -> bool:
        """Whether :meth:`allowed` (without padding) lets every query see every key, from Python ints (no read):
        no replaced cached column is hidden, and under block-causal attention no key sits in a later segment than
        the first query (segment indices only grow with the position)."""
        if self.stop <= self.start:
            return True  # no query
        columns = range(self.cache_length + self.length)  # the key columns, as key_positions() lays them out
        if self.replaced is not None and columns[self.replaced[0] : min(self.replaced[1], self.cache_length)]:
            return False  # superseded cached columns are hidden
        if self.attention != "block_causal":
            return True
        if not self.segments:
            raise ValueError("a block-causal call needs its attention segments")
        starts = [s for s, _ in self.segments[1:]]  # segment_ids = bisect_right(starts, position)
        last_key = max(self.cache_length, self.stop) - 1
        return bisect.bisect_right(starts, last_key) <= bisect.bisect_right(starts, self.start)

    def attention_mask(self, dtype: torch.dtype, *, additive: bool) -> Tensor | None:
        """:meth:`allowed` as an HF 4D mask: bool (sdpa) or additive float in ``dtype`` (eager).

        Always given for block-causal calls; for bidirectional ones only when some columns are hidden.
        """
        ok = self.allowed(explicit=self.attention == "block_causal" or self.explicit_mask)
        if ok is None or not additive:
            return ok
        return torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill(~ok, torch.finfo(dtype).min)
