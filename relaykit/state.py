"""RelayState: the per-token hidden state h that relay carries from one forward pass to the next.

Legend for shapes: b batch, n state length (positions covered), q positions fed by one call, d hidden width.

A state covers the absolute sequence positions ``offset .. offset + n - 1`` of every row. ``filled[b, i]`` says
whether position ``offset + i`` of row ``b`` holds a state yet; positions without one contribute no relay.
Every update is functional: it returns a new state and leaves the old one untouched, so autograd can flow
through h across denoising steps (truncated BPTT) and callers can keep old states around.

Example::

    >>> import torch
    >>> s = RelayState.zeros(batch=2, length=8, hidden_size=4)
    >>> pos = torch.arange(2, 5).expand(2, 3)                  # (b, q) absolute positions
    >>> s2 = s.write(pos, torch.ones(2, 3, 4), where=torch.tensor([[True, False, True]] * 2))
    >>> s2.filled[0].tolist()
    [False, False, True, False, True, False, False, False]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def _describe(t: Tensor) -> str:
    return f"shape {tuple(t.shape)}, {t.dtype}, {t.device}"


@dataclass(frozen=True, eq=False)
class RelayState:
    """Relay state for a batch: ``hidden`` (b, n, d), ``filled`` (b, n) bool, covering positions from ``offset``.

    Build one with :meth:`zeros`; the model builds and returns them for you (``out.state``).
    """

    hidden: Tensor
    filled: Tensor
    offset: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, Tensor) or self.hidden.dim() != 3:
            got = _describe(self.hidden) if isinstance(self.hidden, Tensor) else type(self.hidden).__name__
            raise ValueError(f"RelayState.hidden must be a (batch, length, hidden) tensor; got {got}")
        if not isinstance(self.filled, Tensor) or self.filled.dtype != torch.bool:
            got = _describe(self.filled) if isinstance(self.filled, Tensor) else type(self.filled).__name__
            raise ValueError(f"RelayState.filled must be a bool tensor of shape (batch, length); got {got}")
        if tuple(self.filled.shape) != tuple(self.hidden.shape[:2]):
            raise ValueError(
                f"RelayState.filled has shape {tuple(self.filled.shape)} but hidden has (batch, length) = "
                f"{tuple(self.hidden.shape[:2])}; they must match"
            )
        if self.filled.device != self.hidden.device:
            raise ValueError(f"RelayState.filled is on {self.filled.device} but hidden is on {self.hidden.device}")
        if int(self.offset) < 0:
            raise ValueError(f"RelayState.offset must be >= 0, got {self.offset}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def zeros(
        cls,
        batch: int,
        length: int,
        hidden_size: int,
        *,
        offset: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> RelayState:
        """An empty state: h = 0 everywhere and no position filled (the method's h_0)."""
        if batch < 1 or length < 0 or hidden_size < 1:
            raise ValueError(
                f"RelayState.zeros needs batch >= 1, length >= 0, hidden_size >= 1; "
                f"got batch={batch}, length={length}, hidden_size={hidden_size}"
            )
        hidden = torch.zeros(batch, length, hidden_size, dtype=dtype, device=device)
        filled = torch.zeros(batch, length, dtype=torch.bool, device=hidden.device)
        return cls(hidden, filled, offset)

    # ------------------------------------------------------------------ checkpoints
    def to_dict(self) -> dict[str, Tensor | int]:
        """``{"hidden", "filled", "offset"}``, detached copies: what a training checkpoint stores."""
        return {"hidden": self.hidden.detach().clone(), "filled": self.filled.detach().clone(), "offset": self.offset}

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any], *, device: torch.device | str | None = None) -> RelayState:
        """The state :meth:`to_dict` wrote, on ``device`` (default: where it was saved)."""
        missing = [k for k in ("hidden", "filled", "offset") if k not in saved]
        if missing:
            raise ValueError(f"a saved RelayState needs 'hidden', 'filled' and 'offset'; {missing} missing")
        return cls(saved["hidden"].to(device), saved["filled"].to(device), int(saved["offset"]))

    # ------------------------------------------------------------------ properties
    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]

    @property
    def length(self) -> int:
        return self.hidden.shape[1]

    @property
    def hidden_size(self) -> int:
        return self.hidden.shape[2]

    @property
    def end(self) -> int:
        """One past the last absolute position covered."""
        return self.offset + self.length

    @property
    def positions(self) -> Tensor:
        """The absolute positions covered, (n,)."""
        return torch.arange(self.offset, self.end, device=self.hidden.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    def __repr__(self) -> str:
        return (
            f"RelayState(batch={self.batch_size}, positions={self.offset}..{self.end - 1}, "
            f"hidden={self.hidden_size}, filled={int(self.filled.sum())}, {self.dtype}, {self.device})"
        )

    # ------------------------------------------------------------------ checks
    def check_batch(self, batch: int, *, what: str = "the input") -> None:
        """Raise if this state was made for another batch size."""
        if batch != self.batch_size:
            raise ValueError(
                f"relay state is for a batch of {self.batch_size} rows but {what} has {batch}; pass the state "
                f"returned for this batch (or state=None to start from h = 0)"
            )

    def check_covers(self, lo: int, hi: int) -> None:
        """Raise unless absolute positions ``lo..hi`` all lie inside this state."""
        if lo < self.offset or hi >= self.end:
            raise ValueError(
                f"relay state covers positions {self.offset}..{self.end - 1} but the call feeds positions "
                f"{lo}..{hi}; slice or extend the state (state.window / state.extend) to cover them"
            )

    def _index(self, positions: Tensor, check: bool = True) -> Tensor:
        """Absolute positions (b, q) or (q,) -> column indices (b, q) into this state, with checks.

        ``check=False`` skips only the range check (a host sync), for callers that validated the range already.
        """
        if positions.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"positions must be an integer tensor, got {positions.dtype}")
        if positions.dim() == 1:
            positions = positions.unsqueeze(0).expand(self.batch_size, -1)
        if positions.dim() != 2:
            raise ValueError(f"positions must have shape (batch, q) or (q,), got {tuple(positions.shape)}")
        self.check_batch(positions.shape[0], what="the positions")
        positions = positions.to(self.device, torch.int64)
        if check and positions.numel():
            lo, hi = (int(v) for v in positions.aminmax())
            self.check_covers(lo, hi)
        return positions - self.offset

    # ------------------------------------------------------------------ reads
    def gather(self, positions: Tensor, *, check: bool = True) -> tuple[Tensor, Tensor]:
        """Read h at absolute ``positions`` (b, q) or (q,): returns (hidden (b, q, d), filled (b, q)).

        ``check=False`` skips the range check, for callers that validated the positions once already.
        """
        idx = self._index(positions, check)  # (b, q)
        hidden = self.hidden.gather(1, idx.unsqueeze(-1).expand(-1, -1, self.hidden_size))  # (b, q, d)
        return hidden, self.filled.gather(1, idx)

    def read(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Read h at the contiguous absolute positions ``start .. stop - 1`` of every row: (hidden (b, q, d),
        filled (b, q)), views, no index tensors. Same values as ``gather`` on those positions."""
        if stop > start:
            self.check_covers(start, stop - 1)
        a, b = start - self.offset, stop - self.offset
        return self.hidden[:, a:b], self.filled[:, a:b]

    # ------------------------------------------------------------------ functional updates
    def write(
        self, positions: Tensor, values: Tensor, where: Tensor | None = None, *, check: bool = True
    ) -> RelayState:
        """New state with ``values`` (b, q, d) written at ``positions`` (b, q) where ``where`` (b, q) is True.

        Everything else is carried over bit for bit. Differentiable w.r.t. both the old hidden and ``values``.
        ``check=False`` skips the range check, for callers that validated the positions once already.
        """
        idx = self._index(positions, check)  # (b, q)
        if values.dim() != 3 or tuple(values.shape[:2]) != tuple(idx.shape) or values.shape[2] != self.hidden_size:
            raise ValueError(
                f"values to write must have shape (batch, q, hidden) = ({idx.shape[0]}, {idx.shape[1]}, "
                f"{self.hidden_size}); got {tuple(values.shape)}"
            )
        if values.dtype != self.dtype:
            raise TypeError(
                f"relay state holds {self.dtype} but the new hidden states are {values.dtype}; keep one dtype per "
                f"state (start a new state, or cast it with state.to(dtype))"
            )
        if values.device != self.device:
            raise ValueError(f"relay state is on {self.device} but the new hidden states are on {values.device}")
        if where is None:
            where = torch.ones_like(idx, dtype=torch.bool)
        if tuple(where.shape) != tuple(idx.shape) or where.dtype != torch.bool:
            raise ValueError(f"where must be a bool tensor of shape {tuple(idx.shape)}, got {_describe(where)}")
        idx_d = idx.unsqueeze(-1).expand(-1, -1, self.hidden_size)  # (b, q, d)
        old = self.hidden.gather(1, idx_d)  # (b, q, d)
        merged = torch.where(where.unsqueeze(-1), values, old)  # (b, q, d)
        hidden = self.hidden.scatter(1, idx_d, merged)  # out of place: autograd-friendly
        filled = self.filled.scatter(1, idx, self.filled.gather(1, idx) | where)
        return RelayState(hidden, filled, self.offset)

    def write_range(self, start: int, values: Tensor, where: Tensor) -> RelayState:
        """``write`` at the contiguous absolute positions ``start .. start + q - 1`` of every row (``values``
        (b, q, d), ``where`` (b, q) bool): slices instead of index tensors, the same new state bit for bit."""
        q = values.shape[1]
        if values.dim() != 3 or values.shape[0] != self.batch_size or values.shape[2] != self.hidden_size:
            raise ValueError(
                f"values to write must have shape (batch, q, hidden) = ({self.batch_size}, q, {self.hidden_size}); "
                f"got {tuple(values.shape)}"
            )
        if values.dtype != self.dtype:
            raise TypeError(
                f"relay state holds {self.dtype} but the new hidden states are {values.dtype}; keep one dtype per "
                f"state (start a new state, or cast it with state.to(dtype))"
            )
        if tuple(where.shape) != tuple(values.shape[:2]) or where.dtype != torch.bool:
            raise ValueError(f"where must be a bool tensor of shape {tuple(values.shape[:2])}, got {_describe(where)}")
        if q:
            self.check_covers(start, start + q - 1)
        a, b = start - self.offset, start - self.offset + q
        merged = torch.where(where.unsqueeze(-1), values, self.hidden[:, a:b])  # (b, q, d)
        marked = self.filled[:, a:b] | where  # (b, q)
        if a == 0 and b == self.length:  # the write covers the state: the merged tensors are the new state
            return RelayState(merged, marked, self.offset)
        hidden = torch.cat([self.hidden[:, :a], merged, self.hidden[:, b:]], 1)  # out of place: autograd-friendly
        filled = torch.cat([self.filled[:, :a], marked, self.filled[:, b:]], 1)
        return RelayState(hidden, filled, self.offset)

    def detach(self) -> RelayState:
        """The same state cut from the autograd graph (the 'Relay (sg)' variant, or the end of a TBPTT window)."""
        return RelayState(self.hidden.detach(), self.filled, self.offset)

    def reset(self, rows: Sequence[int] | Tensor | None = None) -> RelayState:
        """New state with the given rows (all when None) emptied: h = 0 and nothing filled."""
        keep = torch.zeros(self.batch_size, dtype=torch.bool, device=self.device)
        if rows is not None:
            keep = torch.ones_like(keep)
            keep[self._rows(rows)] = False
        hidden = torch.where(keep[:, None, None], self.hidden, torch.zeros_like(self.hidden))  # (b, n, d)
        filled = self.filled & keep[:, None]
        return RelayState(hidden, filled, self.offset)

    def window(self, start: int, stop: int) -> RelayState:
        """The part covering absolute positions ``start .. stop - 1`` (e.g. the active block)."""
        if not (self.offset <= start <= stop <= self.end):
            raise ValueError(
                f"window {start}..{stop - 1} is not inside the state's positions {self.offset}..{self.end - 1}"
            )
        a, b = start - self.offset, stop - self.offset
        return RelayState(self.hidden[:, a:b], self.filled[:, a:b], start)

    def extend(self, end: int) -> RelayState:
        """New state covering up to absolute position ``end - 1``; new positions are empty (h = 0)."""
        if end <= self.end:
            return self
        extra = end - self.end
        pad_h = self.hidden.new_zeros(self.batch_size, extra, self.hidden_size)
        pad_f = self.filled.new_zeros(self.batch_size, extra)
        return RelayState(torch.cat([self.hidden, pad_h], 1), torch.cat([self.filled, pad_f], 1), self.offset)

    def select(self, rows: Tensor | Sequence[int] | Sequence[bool]) -> RelayState:
        """The state of a subset of rows (indices, or a (batch,) bool mask such as ``~finished``)."""
        idx = self._rows(rows)
        return RelayState(self.hidden[idx], self.filled[idx], self.offset)

    def put_rows(self, rows: Tensor | Sequence[int] | Sequence[bool], part: RelayState) -> RelayState:
        """New state with the given rows replaced by ``part`` (the inverse of :meth:`select`; same positions).

        Example::

            >>> s = RelayState.zeros(batch=3, length=2, hidden_size=1)
            >>> part = RelayState(torch.ones(1, 2, 1), torch.ones(1, 2, dtype=torch.bool))
            >>> s.put_rows([2], part).filled[:, 0].tolist()
            [False, False, True]
        """
        idx = self._rows(rows)
        if part.batch_size != idx.numel() or part.offset != self.offset or part.length != self.length:
            raise ValueError(
                f"put_rows: {idx.numel()} row(s) covering positions {self.offset}..{self.end - 1} expected, got a "
                f"state of {part.batch_size} row(s) covering {part.offset}..{part.end - 1}"
            )
        hidden = self.hidden.index_copy(0, idx, part.hidden.to(self.hidden.dtype))  # (b, n, d)
        filled = self.filled.index_copy(0, idx, part.filled)  # (b, n)
        return RelayState(hidden, filled, self.offset)

    def _rows(self, rows: Tensor | Sequence[int] | Sequence[bool]) -> Tensor:
        """Row indices (r,) from indices or a (batch,) bool mask, range-checked."""
        rows_t = torch.as_tensor(rows, device=self.device)
        if rows_t.dtype == torch.bool:
            if tuple(rows_t.shape) != (self.batch_size,):
                raise ValueError(f"a bool row mask must have shape ({self.batch_size},), got {tuple(rows_t.shape)}")
            return rows_t.nonzero().flatten()
        rows_t = rows_t.long().reshape(-1)
        if rows_t.numel() and (int(rows_t.min()) < 0 or int(rows_t.max()) >= self.batch_size):
            raise IndexError(f"rows {rows_t.tolist()} are outside the batch of {self.batch_size}")
        return rows_t

    def to(self, *args: object, **kwargs: object) -> RelayState:
        """Move or cast the hidden tensor like ``Tensor.to`` (filled stays bool)."""
        hidden = self.hidden.to(*args, **kwargs)  # type: ignore[arg-type]
        return RelayState(hidden, self.filled.to(hidden.device), self.offset)


def widen(window: RelayState | None, stop: int) -> RelayState | None:
    """A state covering 0 .. stop-1 that holds h only inside ``window`` (None stays None): a block's relay window
    placed on the canvas for a call that feeds everything up to the block's end."""
    if window is None:
        return None
    full = RelayState.zeros(window.batch_size, stop, window.hidden_size, dtype=window.dtype, device=window.device)
    return full.write_range(window.offset, window.hidden, window.filled)  # contiguous: slices, no host read


def merge(before: RelayState | None, after: RelayState | None, written: Tensor) -> RelayState | None:
    """``after`` where ``written`` (b, n) is True, ``before`` elsewhere (states covering 0 .. n-1; either None:
    ``after``)."""
    if before is None or after is None:
        return after
    n = max(before.end, after.end)
    before, after = before.extend(n), after.extend(n)
    written = written[:, :n]
    hidden = torch.where(written.unsqueeze(-1), after.hidden, before.hidden)  # (b, n, d)
    filled = torch.where(written, after.filled, before.filled)  # (b, n)
    return RelayState(hidden, filled, 0)
