"""The rows the persistent driver carries between optimiser steps: (x0, maskable, z, h) per row, and checkpoints.

Legend: B rows (the driver's batch size), n sequence length, d hidden width.

Each row holds one sample: its ground truth x0, which positions are maskable, its partially unmasked tokens z,
its relay state h (one :class:`~relaykit.state.RelayState` for all rows), the sample's id in the stream and, when
the data carries one, its own unmasking order. Rows are allocated at the first step, once n is known.

Example::

    >>> import torch
    >>> rows = CarriedRows.allocate(batch=2, length=4, mask_token_id=9, device=torch.device("cpu"))
    >>> rows.needing(persistent=True).tolist()            # empty rows need a sample
    [True, True]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from relaykit.checks import still_masked
from relaykit.state import RelayState


@dataclass
class CarriedRows:
    """B rows of samples in flight (see the module doc). Tensors are updated in place row by row."""

    x0: Tensor  # (B, n) long
    maskable: Tensor  # (B, n) bool
    z: Tensor  # (B, n) long, current tokens
    has: Tensor  # (B,) bool, rows holding a sample
    sample_ids: Tensor  # (B,) long, index of each row's sample in the stream (-1: none yet)
    order: Tensor | None = None  # (B, n) float per-sample unmasking order, when the data carries one
    state: RelayState | None = None  # h of every row (None: h = 0 everywhere)

    @classmethod
    def allocate(cls, *, batch: int, length: int, mask_token_id: int, device: torch.device) -> CarriedRows:
        """B empty rows of length n (no sample yet, everything masked)."""
        return cls(
            x0=torch.zeros(batch, length, dtype=torch.long, device=device),
            maskable=torch.zeros(batch, length, dtype=torch.bool, device=device),
            z=torch.full((batch, length), mask_token_id, dtype=torch.long, device=device),
            has=torch.zeros(batch, dtype=torch.bool, device=device),
            sample_ids=torch.full((batch,), -1, dtype=torch.long, device=device),
        )

    @property
    def length(self) -> int:
        return self.x0.shape[1]

    def finished(self, mask_token_id: int) -> Tensor:
        """(B,) bool: rows with no masked maskable position left."""
        return ~still_masked(self.z, mask_token_id, self.maskable).any(-1)

    def needing(self, *, persistent: bool, mask_token_id: int | None = None) -> Tensor:
        """(B,) bool: rows that take a new sample now (empty or finished; every row when not persistent)."""
        if not persistent:
            return torch.ones_like(self.has)
        if mask_token_id is None:
            return ~self.has
        return ~self.has | self.finished(mask_token_id)

    def fill(self, rows: Tensor, samples: Mapping[str, Tensor], z: Tensor, first_id: int) -> None:
        """Put new samples (x0, maskable[, order]) with their starting tokens ``z`` into ``rows``; h = 0 there."""
        self._store_order(rows, samples.get("order"))
        self.x0[rows] = samples["x0"]
        self.maskable[rows] = samples["maskable"]
        self.z[rows] = z
        self.sample_ids[rows] = first_id + torch.arange(rows.numel(), device=self.x0.device)
        self.has[rows] = True
        if self.state is not None:
            self.state = self.state.reset(rows)

    def _store_order(self, rows: Tensor, order: Tensor | None) -> None:
        if order is None:
            if self.order is not None:
                raise ValueError("either every sample carries an 'order' or none does; new samples came without one")
            return
        if self.order is None:
            if bool(self.has.any()):
                raise ValueError("either every sample carries an 'order' or none does; earlier samples had none")
            self.order = torch.zeros(self.x0.shape, dtype=torch.float32, device=self.x0.device)
        self.order[rows] = order.to(self.x0.device)

    # ------------------------------------------------------------------ checkpoints
    def rows_dict(self) -> dict[str, Tensor | None]:
        """Detached copies of the row tensors (the driver checkpoint's ``"rows"``)."""

        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().clone()

        return {
            "x0": copy(self.x0),
            "maskable": copy(self.maskable),
            "z": copy(self.z),
            "has": copy(self.has),
            "sample_ids": copy(self.sample_ids),
            "order": copy(self.order),
        }

    @classmethod
    def from_dicts(
        cls, rows: Mapping[str, Any], state: Mapping[str, Any] | None, *, device: torch.device
    ) -> CarriedRows:
        """The rows :meth:`rows_dict` wrote, with the state ``RelayState.to_dict`` wrote (or None), on ``device``."""
        return cls(
            x0=rows["x0"].to(device),
            maskable=rows["maskable"].to(device),
            z=rows["z"].to(device),
            has=rows["has"].to(device),
            sample_ids=rows["sample_ids"].to(device),
            order=None if rows["order"] is None else rows["order"].to(device),
            state=None if state is None else RelayState.from_dict(state, device=device),
        )
