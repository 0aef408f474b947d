"""BlockLogits: the active block's logits gathered across the calls of a decoding step, aligned with its tokens.

Legend: b batch, B block length, V vocabulary.

A decoding step may feed the active block in one call or in pieces (a sub-block, a refresh of the whole canvas);
with a token shift of 1 the prediction for the block's first token sits at the position before it, which may
come from an earlier call (the cache's *tail*). This buffer keeps the raw logits of positions s-1 .. e-1 of the
active block s..e-1 as calls produce them, and hands them back aligned with the block's tokens.

Example::

    >>> import torch
    >>> buf = BlockLogits(token_shift=1)
    >>> buf.begin((2, 4))
    >>> buf.record(torch.arange(4.0).view(1, 4, 1), 0, 4)      # a call fed positions 0..3
    >>> buf.aligned()[0, :, 0].tolist()                        # token 2 is predicted at 1, token 3 at 2
    [1.0, 2.0]
"""

from __future__ import annotations

from torch import Tensor

from relaykit.shift import align_logits, check_token_shift

Span = tuple[int, int]


class BlockLogits:
    """Raw logits (b, B + 1, V) of positions s-1 .. e-1 of the active block, and the tail before the first block."""

    def __init__(self, token_shift: int, tail: Tensor | None = None) -> None:
        self.shift = check_token_shift(token_shift)
        self.tail = tail  # (b, V) logits at the last position the cache holds
        self.tail_pos = -1  # the position of tail (-1: none usable)
        self.block: Span | None = None
        self.buffer: Tensor | None = None  # (b, B + 1, V)

    def begin(self, block: Span) -> None:
        """Block ``(s, e)`` becomes active: forget the previous block's logits."""
        self.block, self.buffer = block, None

    def record(self, logits: Tensor, start: int, stop: int) -> None:
        """Keep the part of ``logits`` (b, stop - start, V), fed at start..stop-1, that falls in s-1 .. e-1."""
        if self.block is None:
            return
        s, e = self.block
        if self.buffer is None:
            self.buffer = logits.new_zeros(logits.shape[0], e - s + 1, logits.shape[-1])  # (b, B + 1, V)
            if self.tail is not None and self.tail_pos == s - 1:
                self.buffer[:, 0] = self.tail
        lo, hi = max(start, s - 1), min(stop, e)
        if lo < hi:
            self.buffer[:, lo - (s - 1) : hi - (s - 1)] = logits[:, lo - start : hi - start].detach()

    def store_tail(self, logits: Tensor, stop: int) -> None:
        """A cache pass fed positions up to ``stop`` - 1: its last logits predict the next block's first token."""
        self.tail, self.tail_pos = logits[:, -1].detach(), stop - 1

    def resume_tail(self, position: int) -> None:
        """The cache already holds positions up to ``position``: a tail handed in sits there."""
        self.tail_pos = position if self.tail is not None else -1

    def aligned(self) -> Tensor:
        """Logits aligned with the active block, (b, B, V): position p is predicted at p - token_shift."""
        if self.block is None or self.buffer is None:
            raise RuntimeError("no logits recorded for an active block; call begin() and feed the block first")
        return align_logits(self.buffer, self.shift)[:, 1:]  # buffer holds s-1 .. e-1; keep s .. e-1
