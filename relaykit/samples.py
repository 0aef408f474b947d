"""The sample stream of the persistent driver: data items in, exactly the samples asked for out, resumable.

Legend: b' samples in one data item, n sequence length.

Data items may be a pair ``(x0, maskable)``, a triple ``(x0, maskable, order)`` or a dict with ``"x0"`` (or
``"input_ids"``), ``"maskable"`` and optionally ``"order"`` (a per-position unmasking order for
:class:`~relaykit.policies.Oracle`), each tensor either one sample (n,) or a batch (b', n) of any size. The stream
cuts and joins items so a caller gets exactly the number of samples it asks for; the unread rest of an item waits
for the next request. It counts what it read, so a resumed run re-reads the data from its start and skips that.

Example::

    >>> import torch
    >>> stream = SampleStream([(torch.ones(3, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.bool))])
    >>> stream.take(2, None, device=torch.device("cpu"))["x0"].shape, stream.items_drawn
    (torch.Size([2, 4]), 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

Samples = dict[str, Tensor]  # "x0" (b', n) long, "maskable" (b', n) bool, optionally "order" (b', n)


class DataExhausted(RuntimeError):
    """The data ran out while rows needed new samples (wrap the data in ``itertools.cycle`` for endless runs)."""


def as_batch(item: Any) -> Samples:
    """A data item -> samples {"x0": (b', n), "maskable": (b', n)[, "order": (b', n)]}.

    Accepts ``(x0, maskable)``, ``(x0, maskable, order)`` or a dict with ``"x0"`` (or ``"input_ids"``),
    ``"maskable"`` and optionally ``"order"``, each tensor either one sample (n,) or a batch (b', n).
    """
    if isinstance(item, Mapping):
        x0, maskable, order = item.get("x0", item.get("input_ids")), item.get("maskable"), item.get("order")
    elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
        x0, maskable, order = item[0], item[1], item[2] if len(item) == 3 else None
    else:
        raise TypeError(
            f"a data item must be (x0, maskable), (x0, maskable, order) or a dict with 'x0' (or 'input_ids') and "
            f"'maskable'; got {type(item).__name__}"
        )
    if not isinstance(x0, Tensor) or not isinstance(maskable, Tensor):
        raise TypeError(
            f"x0 and maskable must be tensors; got {type(x0).__name__} and {type(maskable).__name__} (a dict needs "
            f"both 'x0' and 'maskable')"
        )
    out = {"x0": x0.long(), "maskable": maskable.bool()}
    if order is not None:
        out["order"] = torch.as_tensor(order).float()
    if x0.dim() == 1:
        out = {key: t.unsqueeze(0) for key, t in out.items()}
    shape = out["x0"].shape
    if len(shape) != 2 or any(t.shape != shape for t in out.values()):
        shapes = ", ".join(f"{key} {tuple(t.shape)}" for key, t in out.items())
        raise ValueError(f"x0 must be (n,) or (b, n) and maskable (and order) the same shape; got {shapes}")
    return out


def _cut(samples: Samples, start: int, stop: int | None = None) -> Samples:
    return {key: t[start:stop] for key, t in samples.items()}


def _cat(parts: list[Samples]) -> Samples:
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        raise ValueError("either every sample carries an 'order' or none does; the data mixes both")
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def _single(item: Any) -> bool:
    x0 = item.get("x0", item.get("input_ids")) if isinstance(item, Mapping) else item[0]
    return isinstance(x0, Tensor) and x0.dim() == 1


class SampleStream:
    """Samples read in order from ``data`` (re-iterable for resumes), cut to the counts asked for.

    ``needs_batch_size``: refuse single-sample items (n,) while the number of rows is still unknown.
    """

    def __init__(self, data: Iterable[Any] | None) -> None:
        if data is not None and not isinstance(data, Iterable):
            raise TypeError(f"data must be an iterable of samples or batches, got {type(data).__name__}")
        self.data = data
        self.needs_batch_size = False
        self.items_drawn = 0
        self.samples_drawn = 0  # samples handed out by take(), refills included
        self.discarded = 0  # samples of a refill batch that no row needed
        self._iter: Iterator[Any] | None = None
        self._skip = 0  # items to skip when the data is next iterated (resume)
        self._pending: Samples | None = None  # unread rest of the last data item

    def _next_item(self) -> Samples:
        if self.data is None:
            raise DataExhausted("this driver has no data iterable; pass data=... or step(refill=batch)")
        if self._iter is None:
            self._iter = iter(self.data)
            for i in range(self._skip):
                try:
                    next(self._iter)
                except StopIteration:
                    raise DataExhausted(
                        f"resuming needs to skip {self._skip} data items already read, but the data has only {i}"
                    ) from None
            self._skip = 0
        try:
            item = next(self._iter)
        except StopIteration:
            raise DataExhausted(
                f"the data ran out after {self.items_drawn} items ({self.samples_drawn} samples); wrap it in "
                f"itertools.cycle(...) or stop the loop (iterating the driver stops there by itself)"
            ) from None
        self.items_drawn += 1
        samples = as_batch(item)
        if self.needs_batch_size and _single(item):
            raise ValueError("the data yields single samples (n,); pass batch_size=... (the number of rows to keep)")
        return samples

    def peek(self) -> Samples:
        """The samples the next :meth:`take` starts with (read from the data if needed, not consumed)."""
        if self._pending is None:
            self._pending = self._next_item()
        return self._pending

    def take(self, count: int, refill: Any, *, device: torch.device) -> Samples:
        """The next ``count`` samples: from ``refill`` first (rest discarded), then the unread rest, then data."""
        parts: list[Samples] = []
        from_data: list[Samples] = []
        have = 0
        if refill is not None:
            pool = as_batch(refill)
            size = pool["x0"].shape[0]
            parts.append(_cut(pool, 0, count))
            have += min(count, size)
            self.discarded += max(0, size - count)
        while have < count:
            if self._pending is None:
                try:
                    self._pending = self._next_item()
                except DataExhausted:
                    if from_data:  # put back what was read: nothing is lost, the call can be retried
                        self._pending = _cat(from_data)
                    raise
            pending = self._pending
            size = pending["x0"].shape[0]
            use = min(count - have, size)
            parts.append(_cut(pending, 0, use))
            from_data.append(parts[-1])
            have += use
            self._pending = _cut(pending, use) if use < size else None
        self.samples_drawn += count
        return {key: t.to(device) for key, t in _cat(parts).items()}

    def pending_dict(self) -> Samples | None:
        """A copy of the unread rest of the last data item (checkpoints)."""
        return None if self._pending is None else {key: t.clone() for key, t in self._pending.items()}

    def resume(
        self,
        *,
        items_drawn: int,
        samples_drawn: int,
        discarded: int,
        pending: Mapping[str, Tensor] | None,
        skip_consumed: bool,
    ) -> None:
        """Continue after ``items_drawn`` items: the data is re-iterated and those are skipped (unless
        ``skip_consumed=False``: the data is an iterator already positioned after them)."""
        self.items_drawn, self.samples_drawn, self.discarded = items_drawn, samples_drawn, discarded
        self._iter = None
        self._skip = items_drawn if skip_consumed else 0
        self._pending = None if pending is None else dict(pending)
