"""The persistent driver's checkpoint: what ``PersistentRollout.state_dict()`` holds and what loading it checks.

Legend: B rows (the driver's batch size), n sequence length, d hidden width.

A checkpoint is a plain dict of tensors, ints and strings (``torch.save`` it beside the model and optimiser):

* ``"format"``: :data:`FORMAT`; ``"config"``: the options a resumed driver must share (:func:`driver_config`);
* ``"counters"``: optimiser steps, finished samples, data items read, samples handed out, refill samples discarded;
* ``"rows"``: the carried rows (``CarriedRows.rows_dict``: x0, maskable, z (B, n) ...);
  ``"relay_state"``: their h (``RelayState.to_dict``, hidden (B, n, d)), or None before the first step;
* ``"pending"``: the unread rest of the last data item; ``"generator"``: the driver's RNG state.

Example::

    >>> import torch
    >>> from relaykit.methods import METHODS
    >>> from relaykit.samples import SampleStream
    >>> config = driver_config(batch_size=2, method="relay", options=METHODS["relay"], loss="mean", policy=None)
    >>> ckpt = pack(config, steps=0, completed=0, stream=SampleStream(None), rows=None, generator=torch.Generator())
    >>> check_loadable(ckpt, config)                  # the same options: loads
    >>> sorted(ckpt)
    ['config', 'counters', 'format', 'generator', 'pending', 'relay_state', 'rows']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from relaykit.carry import CarriedRows
from relaykit.methods import Method
from relaykit.policies import Policy, Threshold
from relaykit.samples import SampleStream

__all__ = ["FORMAT", "check_loadable", "driver_config", "pack", "policy_name", "restore_stream", "unpack_rows"]

#: the checkpoint layout this module writes and reads
FORMAT = 1


def policy_name(policy: Any) -> str:
    """A stable description of the policy for resume checks (repr of Policy objects, qualified name otherwise)."""
    if policy is None:
        return repr(Threshold(0.9))
    if isinstance(policy, Policy):
        return repr(policy)
    return f"{getattr(policy, '__module__', '?')}.{getattr(policy, '__qualname__', type(policy).__qualname__)}"


def driver_config(*, batch_size: int | None, method: str, options: Method, loss: str, policy: Any) -> dict[str, Any]:
    """The driver options a checkpoint records and a resumed driver must match (``batch_size`` None: not yet
    known, the saved one is adopted)."""
    return {
        "batch_size": batch_size,
        "method": method,
        "k": options.k,
        "stop_gradient": options.stop_gradient,
        "relay_enabled": options.relay_enabled,
        "init": options.init,
        "persistent": options.persistent,
        "loss": loss,
        "policy": policy_name(policy),
    }


def pack(
    config: Mapping[str, Any],
    *,
    steps: int,
    completed: int,
    stream: SampleStream,
    rows: CarriedRows | None,
    generator: torch.Generator,
) -> dict[str, Any]:
    """The checkpoint dict (see the module doc): copies, so later steps do not change it."""
    counters = {"steps": steps, "items_drawn": stream.items_drawn, "samples_drawn": stream.samples_drawn}
    return {
        "format": FORMAT,
        "config": dict(config),
        "counters": counters | {"completed": completed, "discarded": stream.discarded},
        "rows": None if rows is None else rows.rows_dict(),
        "relay_state": None if rows is None or rows.state is None else rows.state.to_dict(),
        "pending": stream.pending_dict(),
        "generator": generator.get_state(),
    }


def check_loadable(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Refuse a checkpoint of another format, or one saved by a driver with other options than ``config``."""
    if state_dict.get("format") != FORMAT:
        raise ValueError(f"unknown PersistentRollout state format {state_dict.get('format')!r}; expected {FORMAT}")
    saved, mine = dict(state_dict["config"]), dict(config)
    if mine["batch_size"] is None:
        mine["batch_size"] = saved["batch_size"]
    diff = {k: (saved[k], mine[k]) for k in saved if saved[k] != mine.get(k)}
    if diff:
        detail = ", ".join(f"{k}: saved {a!r}, this driver {b!r}" for k, (a, b) in diff.items())
        hint = " (to change the policy on purpose, load with the saved one, then set driver.policy)"
        raise ValueError(
            f"the saved driver was configured differently ({detail}); build it with the same options"
            + (hint if "policy" in diff else "")
        )


def restore_stream(
    stream: SampleStream, state_dict: Mapping[str, Any], *, data: Iterable[Any] | None, skip_consumed: bool
) -> None:
    """Put the sample stream where the checkpoint left it (``data``: a new iterable to read from, if given)."""
    counters = state_dict["counters"]
    if data is not None:
        stream.data = data
    stream.resume(
        items_drawn=int(counters["items_drawn"]),
        samples_drawn=int(counters["samples_drawn"]),
        discarded=int(counters["discarded"]),
        pending=state_dict["pending"],
        skip_consumed=skip_consumed,
    )


def unpack_rows(state_dict: Mapping[str, Any], *, width: int, device: torch.device) -> CarriedRows | None:
    """The carried rows with their h on ``device`` (None if saved before the first step); refuses an h of another
    hidden width than ``width`` (the channel's)."""
    rows, st = state_dict["rows"], state_dict["relay_state"]
    if st is not None and st["hidden"].shape[-1] != width:
        raise ValueError(
            f"the saved driver's relay state has hidden width {st['hidden'].shape[-1]} but this model's channel "
            f"reads width {width}: the checkpoint was made with another backbone"
        )
    return None if rows is None else CarriedRows.from_dicts(rows, st, device=device)
