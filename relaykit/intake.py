"""Where samples enter the persistent driver's rows: allocation at the first step, then refills.

Legend: B rows (the driver's batch size), n sequence length, r rows taking a new sample.

At the first step the rows are allocated once n is known (from the first refill batch or the first data item).
At every step the rows that need a sample (empty or finished; every row for a non-persistent method) take the
next ones from the :class:`~relaykit.samples.SampleStream`, masked by the method's ``init``, with h = 0 there.

Example::

    rows = allocate(stream, None, batch_size=None, mask_token_id=mask, device=device)   # B from the first item
    need = rows.needing(persistent=True, mask_token_id=mask)                             # (B,)
    finished_now = refill(rows, need, stream, None, relay=core, init="full", generator=g)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from relaykit.carry import CarriedRows
from relaykit.methods import InitKind
from relaykit.model import RelayCore
from relaykit.rollout import check_batch, initial_z
from relaykit.samples import SampleStream, as_batch

__all__ = ["allocate", "refill"]


def allocate(
    stream: SampleStream, refill: Any, *, batch_size: int | None, mask_token_id: int, device: torch.device
) -> CarriedRows:
    """B empty rows of the length of the first samples (``refill`` if given, else the stream's next item, which
    stays unread); B = ``batch_size``, or the first batch's size when None."""
    stream.needs_batch_size = batch_size is None
    first = as_batch(refill) if refill is not None else stream.peek()
    stream.needs_batch_size = False
    batch = int(first["x0"].shape[0]) if batch_size is None else batch_size
    return CarriedRows.allocate(batch=batch, length=first["x0"].shape[1], mask_token_id=mask_token_id, device=device)


def refill(
    rows: CarriedRows,
    need: Tensor,
    stream: SampleStream,
    refill: Any,
    *,
    relay: RelayCore,
    init: InitKind,
    generator: torch.Generator,
) -> int:
    """Give every row where ``need`` (B,) is True the next sample (``refill``'s first, then the stream's) and
    return how many rows held a finished sample before (the driver's ``completed`` count). When no row needs one,
    a ``refill`` batch is counted as discarded."""
    index = need.nonzero().flatten()  # (r,)
    if not index.numel():
        if refill is not None:
            stream.discarded += int(as_batch(refill)["x0"].shape[0])
        return 0
    finished = rows.finished(relay.mask_token_id)  # (B,) before the new samples replace them
    first_id = stream.samples_drawn
    new = stream.take(int(index.numel()), refill, device=rows.x0.device)
    if new["x0"].shape[1] != rows.length:
        raise ValueError(
            f"samples must all have the same length: this driver holds length {rows.length}, the data "
            f"gave {new['x0'].shape[1]}; pad to a fixed length and mark the padding not maskable"
        )
    check_batch(relay, new["x0"], new["maskable"])
    done = int((rows.has & finished).sum())
    z = initial_z(new["x0"], new["maskable"], relay.mask_token_id, init=init, generator=generator)  # (r, n)
    rows.fill(index, new, z, first_id)
    return done
