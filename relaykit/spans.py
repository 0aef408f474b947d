"""Spans relaykit knows, in Python ints, for position tensors it built itself: no host read to learn their range.

Legend: b batch, q positions, L cached positions.

Reading a tensor's range on the host is a sync on an accelerator (and a graph break under torch.compile). When
relaykit builds a positions tensor itself (``DecodeCall.position_ids``: ``arange(start, stop)``) or a dual cache's
``replace_position`` (b, L) selecting one contiguous run of columns, it records the range here. An adapter's
``plan_call`` that meets the same tensor object, not written since (its version counter is unchanged), gets the
range from :func:`known_span` and gives its ``CallPlan`` a span; any other tensor, or one modified in place since
it was recorded, gets None and is read as before. Entries go when their tensor is freed.

Example::

    >>> import torch
    >>> t = remember(torch.arange(4, 8).unsqueeze(0), (4, 8))      # (1, 4) positions 4..7
    >>> known_span(t), known_span(torch.arange(4, 8).unsqueeze(0))
    ((4, 8), None)
    >>> _ = t.add_(1)                                               # written in place: the record no longer holds
    >>> known_span(t) is None
    True
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

Span = tuple[int, int]

#: id(tensor) -> (a weak reference to it, its version counter when recorded, its span)
_KNOWN: dict[int, tuple[weakref.ref[Tensor], int, Span]] = {}


def remember(tensor: Tensor, span: Span) -> Tensor:
    """Record that ``tensor`` (positions, or a ``replace_position`` mask) covers exactly the positions
    ``span[0] .. span[1] - 1``; returns ``tensor``. Call it after the last write to the tensor."""
    key = id(tensor)

    def forget(ref: weakref.ref[Tensor], key: int = key) -> None:
        entry = _KNOWN.get(key)
        if entry is not None and entry[0] is ref:
            del _KNOWN[key]

    _KNOWN[key] = (weakref.ref(tensor, forget), tensor._version, (int(span[0]), int(span[1])))
    return tensor


def known_span(tensor: object) -> Span | None:
    """The span :func:`remember` recorded for this very tensor object, if it has not been written since; else None
    (always None while torch.compile traces: the tensors it sees are not the recorded objects)."""
    if not isinstance(tensor, Tensor) or torch.compiler.is_compiling():
        return None
    entry = _KNOWN.get(id(tensor))
    if entry is None:
        return None
    ref, version, span = entry
    if ref() is not tensor or tensor._version != version:
        return None
    return span
