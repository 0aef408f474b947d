"""Decode only the rows still being decoded: ``generate(..., drop_finished_rows=True)``.

In a batch decoded without a cache, a row with no blank left still costs a full forward pass at every step until
the slowest row is done; on a Sudoku batch that doubles the work. Without a cache the rows of a forward pass are
independent, so a step can feed only the rows that still have a blank (anywhere: a row done with the active block
still gets h written at its later blanks) and put their logits and relay state back in place: the tokens, NFE and
states of every row are those of the full-batch step (in float64 bit for bit; in float32 up to the rounding of a
matmul over another batch size). Which rows are left is read with the loop's one host read per step
(:mod:`relaykit.hostread`); it is an option, and only for the no-cache runner.

Legend: b batch, r rows still decoding, B block length, V vocabulary.

Example::

    out = relaykit.generate(relay, boards, max_new_tokens=0, drop_finished_rows=True)
"""

from __future__ import annotations

from torch import Tensor

from relaykit.blockrun import Recompute, Runner, Span
from relaykit.state import RelayState


def check_row_dropping(mode: str | None) -> None:
    """Row dropping needs rows that do not share a cache: refuse it with one."""
    if mode is not None:
        raise ValueError(
            f"drop_finished_rows=True decodes without a cache only (rows of a KV cache cannot be left out of a "
            f"step); got use_cache={mode!r}: pass use_cache=False, or drop_finished_rows=False"
        )


def step_rows(
    runner: Runner, x: Tensor, block: Span, focus: Span, window: RelayState | None, rows: Tensor
) -> tuple[Tensor, RelayState | None]:
    """One no-cache step over ``x[rows]`` only (rows (r,) indices): logits (b, B, V) with zeros in the other rows
    (they have nothing to commit) and the window with the fed rows' states replaced."""
    b = x.shape[0]
    part = Recompute(
        runner.relay,
        attention=runner.attention,
        segments=runner.segments,
        batch=int(rows.numel()),
        block_size=runner.block_size,
    )
    part.padding = None if runner.padding is None else runner.padding[rows]
    sub = x[rows]  # (r, T)
    part.begin(sub, block)
    logits, new = part.step(sub, block, focus, None if window is None else window.select(rows))  # (r, B, V)
    full = logits.new_zeros((b, *logits.shape[1:]))  # (b, B, V)
    full[rows] = logits
    if new is None:  # relay off (relay.disabled()): no state
        return full, window
    if window is None:
        base = RelayState.zeros(b, new.length, new.hidden_size, offset=new.offset, dtype=new.dtype, device=new.device)
    else:
        base = window.extend(new.end)
    return full, base.put_rows(rows, new)
