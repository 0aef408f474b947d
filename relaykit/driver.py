"""PersistentRollout: Algorithm 1's persistent truncated-BPTT training, one ``step()`` per optimiser step.

Legend: B rows kept by the driver (the batch size), n sequence length.

Each of the B rows holds one sample (x0, maskable), its partially unmasked tokens z and its relay state h, carried
from one optimiser step to the next. At every ``step()``:

1. every row that is empty or fully unmasked takes the next sample from the data (in order), with z = x0 masked
   at all its maskable positions and h = 0 for that row (``RelayState.reset(rows)``); rows of the ``"mlm"``
   method (not persistent) take a new sample every step, masked at a random ratio;
2. one :func:`relaykit.bptt_rollout` window of K teacher-forced steps runs on all rows;
3. the new (z, h), h detached, are kept for the next step. A row that finishes inside a window idles (no loss,
   no commit) until the next step replaces it, exactly as Algorithm 1 checks for finished samples before a window.

``state_dict()`` / ``load_state_dict()`` capture everything (rows, h, the unread part of a data batch, the RNG,
how many data items were read), so a resumed run continues exactly.

Example::

    driver = relaykit.PersistentRollout(relay, loader, batch_size=16, method="relay", policy=Threshold(0.9))
    for step in range(1000):
        res = driver.step()              # one window: res.loss, res.step_losses, res.committed ...
        res.loss.backward(); opt.step(); opt.zero_grad()
    torch.save({"driver": driver.state_dict(), "model": ..., "opt": ...}, "ckpt.pt")

Data items may be a pair ``(x0, maskable)`` or a dict with ``"x0"`` (or ``"input_ids"``) and ``"maskable"``,
each either one sample (n,) or a batch (b', n) of any size. A third entry / an ``"order"`` key gives each sample
its own unmasking order, used when the policy is an :class:`~relaykit.policies.Oracle` (e.g. a solver's order).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from relaykit.policies import Oracle, Policy, Threshold
from relaykit.rollout import InitKind, LossKind, RolloutResult, bptt_rollout, check_batch, initial_z, unwrap_relay
from relaykit.state import RelayState

#: the paper's four training methods as driver options (explicit arguments override them)
METHODS: dict[str, dict[str, Any]] = {
    "mlm": {"k": 1, "init": "random", "relay_enabled": False, "stop_gradient": False, "persistent": False},
    "rollout": {"k": 2, "init": "full", "relay_enabled": False, "stop_gradient": False, "persistent": True},
    "relay_sg": {"k": 2, "init": "full", "relay_enabled": True, "stop_gradient": True, "persistent": True},
    "relay": {"k": 2, "init": "full", "relay_enabled": True, "stop_gradient": False, "persistent": True},
}
_FORMAT = 1


class DataExhausted(RuntimeError):
    """The data ran out while rows needed new samples (wrap the data in ``itertools.cycle`` for endless runs)."""


Samples = dict[str, Tensor]  # "x0" (b, n) long, "maskable" (b, n) bool, optionally "order" (b, n)


def _policy_name(policy: Any) -> str:
    """A stable description of the policy for resume checks (repr of Policy objects, qualified name otherwise)."""
    if policy is None:
        return repr(Threshold(0.9))
    if isinstance(policy, Policy):
        return repr(policy)
    return f"{getattr(policy, '__module__', '?')}.{getattr(policy, '__qualname__', type(policy).__qualname__)}"


def as_batch(item: Any) -> Samples:
    """A data item -> samples {"x0": (b', n), "maskable": (b', n)[, "order": (b', n)]}.

    Accepts ``(x0, maskable)``, ``(x0, maskable, order)`` or a dict with ``"x0"`` (or ``"input_ids"``),
    ``"maskable"`` and optionally ``"order"`` (a per-position unmasking order for :class:`Oracle`), each tensor
    either one sample (n,) or a batch (b', n).
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


class PersistentRollout:
    """Algorithm 1: B persistent rows of (x0, z, h) advanced by one K-step BPTT window per ``step()``.

    Args:
        relay: a RelayModel (or a DDP / FSDP / compile wrapper of one).
        data: an iterable of items (see module doc), read in order; re-iterable (list, Dataset, DataLoader with
            a seeded generator) if runs are to be resumed. None when samples come only through ``step(refill=)``.
        batch_size: B, the number of rows; default: the batch size of the first data item (or of ``refill``).
        method: ``"relay"`` (default), ``"relay_sg"``, ``"rollout"`` or ``"mlm"``: presets of the options below.
        k, stop_gradient, relay_enabled, init: override the method's options (see :func:`bptt_rollout`).
        persistent: keep rows across steps (False: every row takes a new sample every step, as MLM does).
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
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        if data is not None and not isinstance(data, Iterable):
            raise TypeError(f"data must be an iterable of samples or batches, got {type(data).__name__}")
        preset = METHODS[method]
        self.relay = relay
        self.core = unwrap_relay(relay)
        self.data = data
        self.batch_size = batch_size
        self.method = method
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise ValueError(f"k (denoising steps per window) must be an int >= 1, got {type(k).__name__} {k!r}")
        self.k = int(preset["k"] if k is None else k)
        self.stop_gradient = bool(preset["stop_gradient"] if stop_gradient is None else stop_gradient)
        self.relay_enabled = bool(preset["relay_enabled"] if relay_enabled is None else relay_enabled)
        self.init: InitKind = preset["init"] if init is None else init
        self.persistent = bool(preset["persistent"] if persistent is None else persistent)
        self.policy = policy
        self.loss: LossKind = loss
        self.sync_counts = sync_counts
        self.backbone_kwargs = dict(backbone_kwargs or {})
        param = next(self.core.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        # rows (allocated at the first step, once the length n is known)
        self._x0: Tensor | None = None  # (B, n)
        self._maskable: Tensor | None = None  # (B, n)
        self._z: Tensor | None = None  # (B, n)
        self._has: Tensor | None = None  # (B,) rows holding a sample
        self._ids: Tensor | None = None  # (B,) data index of each row's sample
        self._state: RelayState | None = None
        # data position
        self._iter: Iterator[Any] | None = None
        self._skip = 0
        self._order: Tensor | None = None  # (B, n) per-sample unmasking order, when the data carries one
        self._pending: Samples | None = None  # unread rest of the last data item
        self.items_drawn = 0
        self.samples_drawn = 0
        self.completed = 0
        self.discarded = 0
        self.steps = 0

    # ------------------------------------------------------------------ reading data
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
        if self.batch_size is None and self._x0 is None and _single(item):
            raise ValueError("the data yields single samples (n,); pass batch_size=... (the number of rows to keep)")
        return samples

    def _take(self, count: int, refill: Any) -> Samples:
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
        return {key: t.to(self.device) for key, t in _cat(parts).items()}

    # ------------------------------------------------------------------ the step
    def _allocate(self, x0: Tensor) -> None:
        if self.batch_size is None:
            self.batch_size = int(x0.shape[0])
        b, n = self.batch_size, x0.shape[1]
        mask = self.core.mask_token_id
        self._x0 = torch.zeros(b, n, dtype=torch.long, device=self.device)
        self._maskable = torch.zeros(b, n, dtype=torch.bool, device=self.device)
        self._z = torch.full((b, n), mask, dtype=torch.long, device=self.device)
        self._has = torch.zeros(b, dtype=torch.bool, device=self.device)
        self._ids = torch.full((b,), -1, dtype=torch.long, device=self.device)

    def step(self, refill: Any = None) -> RolloutResult:
        """Replace finished rows, run one K-step window, keep (z, h). Backpropagate ``result.loss`` yourself.

        ``refill``: an optional batch of fresh samples (e.g. the batch a Hugging Face Trainer hands to
        ``compute_loss``); rows needing a sample take them from it first, the unused rest is discarded
        (counted in ``self.discarded``).
        """
        if self._x0 is None:
            if refill is not None:
                first = as_batch(refill)
            else:
                if self._pending is None:
                    self._pending = self._next_item()
                first = self._pending
            self._allocate(first["x0"])
        assert self._x0 is not None and self._maskable is not None and self._z is not None
        assert self._has is not None and self._ids is not None
        mask = self.core.mask_token_id
        finished = ~((self._z == mask) & self._maskable).any(-1)  # (B,)
        need = ~self._has | finished if self.persistent else torch.ones_like(self._has)
        rows = need.nonzero().flatten()
        if rows.numel():
            new = self._take(int(rows.numel()), refill)
            x_new, m_new = new["x0"], new["maskable"]
            if x_new.shape[1] != self._x0.shape[1]:
                raise ValueError(
                    f"samples must all have the same length: this driver holds length {self._x0.shape[1]}, the data "
                    f"gave {x_new.shape[1]}; pad to a fixed length and mark the padding not maskable"
                )
            check_batch(self.core, x_new, m_new)
            self.completed += int((self._has & finished).sum())
            self._store_order(rows, new.get("order"))
            self._x0[rows] = x_new
            self._maskable[rows] = m_new
            self._z[rows] = initial_z(x_new, m_new, mask, init=self.init, generator=self.generator)
            self._ids[rows] = self.samples_drawn + torch.arange(rows.numel(), device=self.device)
            self._has[rows] = True
            self.samples_drawn += int(rows.numel())
            if self._state is not None:
                self._state = self._state.reset(rows)
        elif refill is not None:
            self.discarded += int(as_batch(refill)["x0"].shape[0])  # no row needed a sample this step
        policy = self.policy
        if isinstance(policy, Oracle) and self._order is not None:
            policy = Oracle(self._order, k=policy.k)  # each row's own order travels with its sample
        res = bptt_rollout(
            self.relay,
            self._x0,
            maskable=self._maskable,
            k=self.k,
            policy=policy,
            stop_gradient=self.stop_gradient,
            state=self._state,
            z=self._z,
            relay_enabled=self.relay_enabled,
            loss=self.loss,
            generator=self.generator,
            sync_counts=self.sync_counts,
            backbone_kwargs=self.backbone_kwargs,
        )
        self._z = res.z
        self._state = res.state  # detached: the window is the truncation
        self.steps += 1
        res.new_rows = need
        res.sample_ids = self._ids.clone()
        return res

    def _store_order(self, rows: Tensor, order: Tensor | None) -> None:
        assert self._x0 is not None
        if order is None:
            if self._order is not None:
                raise ValueError("either every sample carries an 'order' or none does; new samples came without one")
            return
        if self._order is None:
            if bool(self._has.any()):  # type: ignore[union-attr]
                raise ValueError("either every sample carries an 'order' or none does; earlier samples had none")
            self._order = torch.zeros(self._x0.shape, dtype=torch.float32, device=self.device)
        self._order[rows] = order.to(self.device)

    def __iter__(self) -> Iterator[RolloutResult]:
        """``for res in driver:`` runs ``step()`` until the data runs out."""
        while True:
            try:
                yield self.step()
            except DataExhausted:
                return

    # ------------------------------------------------------------------ inspection
    @property
    def z(self) -> Tensor | None:
        """(B, n) current tokens of every row (None before the first step)."""
        return self._z

    @property
    def x0(self) -> Tensor | None:
        return self._x0

    @property
    def relay_state(self) -> RelayState | None:
        return self._state

    def _config(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "method": self.method,
            "k": self.k,
            "stop_gradient": self.stop_gradient,
            "relay_enabled": self.relay_enabled,
            "init": self.init,
            "persistent": self.persistent,
            "loss": self.loss,
            "policy": _policy_name(self.policy),
        }

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"PersistentRollout({cfg}, steps={self.steps}, samples_drawn={self.samples_drawn})"

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: rows, h, data position, unread samples, RNG, counters."""

        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().clone()

        st, pending = self._state, self._pending
        return {
            "format": _FORMAT,
            "config": self._config(),
            "counters": {
                "steps": self.steps,
                "items_drawn": self.items_drawn,
                "samples_drawn": self.samples_drawn,
                "completed": self.completed,
                "discarded": self.discarded,
            },
            "rows": None
            if self._x0 is None
            else {
                "x0": copy(self._x0),
                "maskable": copy(self._maskable),
                "z": copy(self._z),
                "has": copy(self._has),
                "sample_ids": copy(self._ids),
                "order": copy(self._order),
            },
            "relay_state": None
            if st is None
            else {"hidden": copy(st.hidden), "filled": copy(st.filled), "offset": st.offset},
            "pending": None if pending is None else {key: t.clone() for key, t in pending.items()},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(
        self, state_dict: Mapping[str, Any], *, data: Iterable[Any] | None = None, skip_consumed: bool = True
    ) -> None:
        """Continue from ``state_dict()``. The data is re-iterated from its start and the items already read are
        skipped (``skip_consumed=False`` if ``data`` is an iterator already positioned after them)."""
        if state_dict.get("format") != _FORMAT:
            raise ValueError(f"unknown PersistentRollout state format {state_dict.get('format')!r}; expected {_FORMAT}")
        saved, mine = dict(state_dict["config"]), self._config()
        if mine["batch_size"] is None:
            mine["batch_size"] = saved["batch_size"]
        diff = {k: (saved[k], mine[k]) for k in saved if saved[k] != mine.get(k)}
        if diff:
            detail = ", ".join(f"{k}: saved {a!r}, this driver {b!r}" for k, (a, b) in diff.items())
            hint = (
                " (to change the policy on purpose, load with the saved one, then set driver.policy)"
                if "policy" in diff
                else ""
            )
            raise ValueError(
                f"the saved driver was configured differently ({detail}); build it with the same options{hint}"
            )
        self.batch_size = saved["batch_size"]
        counters = state_dict["counters"]
        self.steps = int(counters["steps"])
        self.samples_drawn = int(counters["samples_drawn"])
        self.completed = int(counters["completed"])
        self.discarded = int(counters["discarded"])
        self.items_drawn = int(counters["items_drawn"])
        if data is not None:
            self.data = data
        self._iter = None
        self._skip = self.items_drawn if skip_consumed else 0
        dev = self.device
        rows = state_dict["rows"]
        if rows is None:
            self._x0 = self._maskable = self._z = self._has = self._ids = self._order = None
        else:
            self._x0, self._maskable, self._z = rows["x0"].to(dev), rows["maskable"].to(dev), rows["z"].to(dev)
            self._has, self._ids = rows["has"].to(dev), rows["sample_ids"].to(dev)
            self._order = None if rows["order"] is None else rows["order"].to(dev)
        st = state_dict["relay_state"]
        width = self.core.channel.config.hidden_size
        if st is not None and st["hidden"].shape[-1] != width:
            raise ValueError(
                f"the saved driver's relay state has hidden width {st['hidden'].shape[-1]} but this model's channel "
                f"reads width {width}: the checkpoint was made with another backbone"
            )
        self._state = None if st is None else RelayState(st["hidden"].to(dev), st["filled"].to(dev), int(st["offset"]))
        pending = state_dict["pending"]
        self._pending = None if pending is None else dict(pending)
        self.generator.set_state(state_dict["generator"])
