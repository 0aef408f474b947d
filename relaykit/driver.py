"""PersistentRollout: Algorithm 1's persistent truncated-BPTT training, one ``step()`` per optimiser step.

Legend: B rows kept by the driver (the batch size), n sequence length.

Each of the B rows holds one sample (x0, maskable), its partially unmasked tokens z and its relay state h, carried
from one optimiser step to the next. At every ``step()``: (1) every row that is empty or fully unmasked takes the
next sample (z = x0 masked at all its maskable positions, h = 0 for that row; a non-persistent method such as
``"mlm"`` renews every row, masked at a random ratio); (2) one :func:`relaykit.bptt_rollout` window of K
teacher-forced steps runs on all rows; (3) the new (z, h), h detached, are kept. A row that finishes inside a window
idles until the next step replaces it, as Algorithm 1 checks for finished samples before a window.

Parts: :mod:`relaykit.samples` (the sample stream and the data item formats), :mod:`relaykit.carry` (the rows
carried), :mod:`relaykit.intake` (rows taking new samples), :mod:`relaykit.methods` (the four methods),
:mod:`relaykit.resume` (the checkpoint format). ``state_dict()`` / ``load_state_dict()`` capture everything (rows,
h, the unread part of a data item, the RNG, how many items were read), so a resumed run continues exactly.

Example::

    driver = relaykit.PersistentRollout(relay, loader, batch_size=16, method="relay", policy=Threshold(0.9))
    for step in range(1000):
        res = driver.step()              # one window: res.loss, res.step_losses, res.committed ...
        res.loss.backward(); opt.step(); opt.zero_grad()
    torch.save({"driver": driver.state_dict(), "model": ..., "opt": ...}, "ckpt.pt")
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from relaykit import intake, resume
from relaykit.carry import CarriedRows
from relaykit.checks import is_int
from relaykit.methods import METHODS, InitKind, Method
from relaykit.policies import Oracle, Policy
from relaykit.rollout import LossKind, RolloutResult, bptt_rollout, unwrap_relay
from relaykit.samples import DataExhausted, SampleStream
from relaykit.state import RelayState

__all__ = ["METHODS", "DataExhausted", "Method", "PersistentRollout"]


class PersistentRollout:
    """Algorithm 1: B persistent rows of (x0, z, h) advanced by one K-step BPTT window per ``step()``.

    Args:
        relay: a RelayModel (or a DDP / FSDP / compile wrapper of one).
        data: an iterable of items (see :mod:`relaykit.samples`), read in order; re-iterable (list, Dataset,
            DataLoader with a seeded generator) if runs are to be resumed. None when samples come only through
            ``step(refill=)``.
        batch_size: B, the number of rows; default: the batch size of the first data item (or of ``refill``).
        method: ``"relay"`` (default), ``"relay_sg"``, ``"rollout"`` or ``"mlm"`` (:data:`relaykit.METHODS`).
        k, stop_gradient, relay_enabled, init, persistent: override the method's options (:class:`Method`).
        policy: unmasking policy (default ``Threshold(0.9)``).
        loss: ``"mean"`` or ``"llada"``; sync_counts: see :func:`bptt_rollout` (for DDP).
        seed: seeds the driver's own RNG (random masks, random policies); saved in ``state_dict()``.
        backbone_kwargs: extra keyword arguments for every backbone call.
    """

    def __init__(
        self,
        relay: nn.Module,
        data: Iterable[Any] | None = None,
        *,
        batch_size: int | None = None,
        method: str = "relay",
        k: int | None = None,
        policy: Policy | None = None,
        stop_gradient: bool | None = None,
        relay_enabled: bool | None = None,
        init: InitKind | None = None,
        persistent: bool | None = None,
        loss: LossKind = "mean",
        sync_counts: bool = False,
        seed: int = 0,
        backbone_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
        if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        self.stream = SampleStream(data)
        self.options: Method = METHODS[method].override(
            k=k, init=init, relay_enabled=relay_enabled, stop_gradient=stop_gradient, persistent=persistent
        )
        self.relay = relay
        self.core = unwrap_relay(relay)
        self.batch_size = batch_size
        self.method = method
        self.policy = policy
        self.loss: LossKind = loss
        self.sync_counts = sync_counts
        self.backbone_kwargs = dict(backbone_kwargs or {})
        param = next(self.core.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.rows: CarriedRows | None = None  # allocated at the first step, once the length n is known
        self.completed = 0
        self.steps = 0

    # the method's options, read-only (see Method)
    k = property(lambda self: self.options.k, doc="Denoising steps per window.")
    stop_gradient = property(lambda self: self.options.stop_gradient, doc="h detached between steps.")
    relay_enabled = property(lambda self: self.options.relay_enabled, doc="False: the bare backbone.")
    init = property(lambda self: self.options.init, doc="How new samples are masked.")
    persistent = property(lambda self: self.options.persistent, doc="Rows kept across steps.")

    # ------------------------------------------------------------------ the step
    def step(self, refill: Any = None) -> RolloutResult:
        """Replace finished rows, run one K-step window, keep (z, h). Backpropagate ``result.loss`` yourself.

        ``refill``: an optional batch of fresh samples (e.g. the batch a Hugging Face Trainer hands to
        ``compute_loss``); rows needing a sample take them from it first, the unused rest is discarded
        (counted in ``self.discarded``).
        """
        mask, stream = self.core.mask_token_id, self.stream
        if self.rows is None:  # allocated once the length n is known
            self.rows = intake.allocate(
                stream, refill, batch_size=self.batch_size, mask_token_id=mask, device=self.device
            )
            self.batch_size = self.rows.x0.shape[0]
        rows = self.rows
        need = rows.needing(persistent=self.persistent, mask_token_id=mask)  # (B,)
        self.completed += intake.refill(
            rows, need, stream, refill, relay=self.core, init=self.init, generator=self.generator
        )
        policy = self.policy
        if isinstance(policy, Oracle) and rows.order is not None:
            policy = Oracle(rows.order, k=policy.k)  # each row's own order travels with its sample
        res = bptt_rollout(
            self.relay,
            rows.x0,
            maskable=rows.maskable,
            k=self.k,
            policy=policy,
            stop_gradient=self.stop_gradient,
            state=rows.state,
            z=rows.z,
            relay_enabled=self.relay_enabled,
            loss=self.loss,
            generator=self.generator,
            sync_counts=self.sync_counts,
            backbone_kwargs=self.backbone_kwargs,
        )
        rows.z = res.z
        rows.state = res.state  # detached: the window is the truncation
        self.steps += 1
        res.new_rows = need
        res.sample_ids = rows.sample_ids.clone()
        return res

    def __iter__(self) -> Iterator[RolloutResult]:
        """``for res in driver:`` runs ``step()`` until the data runs out."""
        while True:
            try:
                yield self.step()
            except DataExhausted:
                return

    # ------------------------------------------------------------------ inspection
    @property
    def z(self) -> torch.Tensor | None:
        """(B, n) current tokens of every row (None before the first step)."""
        return None if self.rows is None else self.rows.z

    @property
    def x0(self) -> torch.Tensor | None:
        """(B, n) the sample each row holds (None before the first step)."""
        return None if self.rows is None else self.rows.x0

    @property
    def relay_state(self) -> RelayState | None:
        """h of every row (None before the first step or while h = 0 everywhere)."""
        return None if self.rows is None else self.rows.state

    items_drawn = property(lambda self: self.stream.items_drawn, doc="Data items read so far (int).")
    samples_drawn = property(lambda self: self.stream.samples_drawn, doc="Samples handed to rows so far (int).")
    discarded = property(lambda self: self.stream.discarded, doc="Refill samples no row needed (int).")

    def _config(self) -> dict[str, Any]:
        o, b = self.options, self.batch_size
        return resume.driver_config(batch_size=b, method=self.method, options=o, loss=self.loss, policy=self.policy)

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"PersistentRollout({cfg}, steps={self.steps}, samples_drawn={self.samples_drawn})"

    # ------------------------------------------------------------------ checkpointing (format: relaykit.resume)
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: rows, h, data position, unread samples, RNG, counters."""
        counts = dict(steps=self.steps, completed=self.completed)
        return resume.pack(self._config(), **counts, stream=self.stream, rows=self.rows, generator=self.generator)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], *, data: Iterable[Any] | None = None, skip_consumed: bool = True
    ) -> None:
        """Continue from ``state_dict()``. The data is re-iterated from its start and the items already read are
        skipped (``skip_consumed=False`` if ``data`` is an iterator already positioned after them)."""
        resume.check_loadable(state_dict, self._config())
        self.batch_size = state_dict["config"]["batch_size"]
        self.steps, self.completed = (int(state_dict["counters"][key]) for key in ("steps", "completed"))
        resume.restore_stream(self.stream, state_dict, data=data, skip_consumed=skip_consumed)
        width = self.core.channel.config.hidden_size
        self.rows = resume.unpack_rows(state_dict, width=width, device=self.device)
        self.generator.set_state(state_dict["generator"])
