"""RelayCore: a backbone with a relay channel attached through hooks registered once (no persistence).

Legend: b batch, q positions fed by one call, d hidden width, e embedding width.

How it works. At attach, three hooks are registered and never changed afterwards (torch.compile, DDP and
optimisers see one fixed module tree):

* a pre-hook on the adapter's *call module* records the call's arguments (caches, ``replace_position`` ...);
* a forward hook on the *embedding* adds R(h) at the positions the call feeds (where a state exists);
* a hook on the *final hidden* point captures the new h and writes it into the state, only where the input
  token is the mask token (``update="masked"``, the default, required with KV caches) or everywhere
  (``update="all"``, Algorithm 1 as printed, cache-free use only).

Positions without a state (never written: h = 0) get no relay term by default (``empty="skip"``: the bare
embedding). ``empty="zero"`` adds R(0) there, as Algorithm 1 does with h_0 = 0 (after training R(0) is a learned
bias; before, R is zero-initialised so attaching stays the identity); cache-free use only, like ``update="all"``.

Hooks do nothing unless a *slot* is active: an explicit ``relay(input_ids, state=...)`` call opens one for
the call, ``relay.session()`` opens one for an unchanged third-party decoding loop. The channel lives in one
child module of the backbone (``relay_channel``) so DDP/FSDP and optimisers see it; ``detach()`` removes it
and every hook.

``relaykit.RelayModel`` (relaykit/relay.py) is this class plus ``save_pretrained`` / ``from_pretrained`` /
``push_to_hub``; persistence sits above this module, so the model never imports it (see docs/design.md).

Example::

    relay = relaykit.attach(model, embedding="tok", final_hidden="norm", mask_token_id=3)
    out = relay(x)                       # out.logits (b, n, V), out.state.hidden (b, n, d)
    out = relay(x2, state=out.state)     # forwards h
    with relay.session() as s:           # implicit state for loops that call `model(...)` themselves
        model(x); model(x2); print(s.nfe)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from relaykit.adapter import Adapter
from relaykit.channel import ChannelConfig, RelayChannel
from relaykit.checks import check_state_width, check_token_ids
from relaykit.fingerprint import fingerprint
from relaykit.legacy import checked_bind
from relaykit.plan import Binding, fed_span, relay_ids
from relaykit.resolve import float_dtype_device
from relaykit.slots import (
    Call,
    Empty,
    RelayOutput,
    RelaySession,
    Slot,
    Update,
    capture,
    check_cache_batch,
    check_cache_modes,
    check_empty,
    check_update,
    embedding_ids,
    read_state,
)
from relaykit.state import RelayState

__all__ = ["CHANNEL_ATTR", "Empty", "RelayCore", "RelayOutput", "RelaySession", "Update", "unwrap_relay"]

CHANNEL_ATTR = "relay_channel"
R = TypeVar("R", bound="RelayCore")


class RelayCore(nn.Module):
    """A backbone plus its relay channel: hooks, calls, sessions, detach. Users get the subclass
    :class:`relaykit.RelayModel` (from :func:`relaykit.attach` or ``RelayModel.from_pretrained``)."""

    #: Compare each call's planned position range with its positions tensor (one host sync per call; off by
    #: default so relay forwards compile without graph breaks). The test suite turns it on.
    debug_checks: bool = False

    def __init__(
        self,
        backbone: nn.Module,
        adapter: Adapter,
        channel: RelayChannel,
        *,
        mask_token_id: int,
        update: Update = "masked",
        empty: Empty = "skip",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter
        self.mask_token_id = int(mask_token_id)
        self.update = check_update(update)
        self.empty = check_empty(empty)
        # plain attributes (not submodules): the channel is registered once, on the backbone
        object.__setattr__(self, "_channel", channel)
        self._slots: list[Slot] = []
        self._call: Call | None = None
        self._disabled = 0
        self._handles: list[RemovableHandle] = []
        self._attached = False
        self._binding: Binding = checked_bind(adapter, backbone)  # a Binding, whatever bind() returned
        # what save_pretrained(backbone="auto") compares against: the backbone as it was handed to relaykit
        self._backbone_reference = fingerprint(backbone, skip_prefix=CHANNEL_ATTR)
        self._register()

    @classmethod
    def build(
        cls: type[R],
        backbone: nn.Module,
        adapter: Adapter,
        config: ChannelConfig,
        *,
        mask_token_id: int,
        update: Update = "masked",
        empty: Empty = "skip",
    ) -> R:
        """Attach a fresh (zero-initialised) channel of design ``config`` to ``backbone``, in the dtype and device of
        the adapter's embedding. ``attach`` and persistence both build through here once they have resolved the
        adapter, the widths and the mask id."""
        channel = RelayChannel(config)
        dtype, device = float_dtype_device(adapter.embedding(backbone))
        if dtype is not None:
            channel = channel.to(dtype=dtype, device=device)
        return cls(backbone, adapter, channel, mask_token_id=mask_token_id, update=update, empty=empty)

    # ------------------------------------------------------------------ attach / detach
    def _register(self) -> None:
        backbone = self.backbone
        if hasattr(backbone, CHANNEL_ATTR):
            raise RuntimeError(
                f"{type(backbone).__name__} already has a relay attached (attribute {CHANNEL_ATTR!r}); call "
                f"relay.detach() on the existing RelayModel first"
            )
        bound = self._binding
        emb, final, side, call = bound.embedding, bound.final_hidden, bound.side, bound.call_module
        backbone.add_module(CHANNEL_ATTR, self._channel)
        self._attached = True
        try:
            self._handles.append(call.register_forward_pre_hook(self._on_call, with_kwargs=True))
            self._handles.append(call.register_forward_hook(self._on_call_end, always_call=True))
            self._handles.append(emb.register_forward_hook(self._on_embedding))
            if side == "output":
                self._handles.append(final.register_forward_hook(self._on_final_output))
            else:
                self._handles.append(final.register_forward_pre_hook(self._on_final_input))
        except Exception:
            self.detach()
            raise

    def detach(self) -> nn.Module:
        """Remove every hook and the channel from the backbone and return it, exactly as it was. Idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._attached and getattr(self.backbone, CHANNEL_ATTR, None) is self._channel:
            delattr(self.backbone, CHANNEL_ATTR)
        self._attached = False
        self._slots.clear()
        self._call = None
        return self.backbone

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def active(self) -> bool:
        """Whether a relay call or session is open and relay is not disabled (the next forward adds R(h))."""
        return self._active() is not None

    @property
    def enabled(self) -> bool:
        """False inside ``relay.disabled()``: calls then run the bare backbone."""
        return not self._disabled

    @property
    def channel(self) -> RelayChannel:
        """The relay channel R (still readable after detach, e.g. to save it)."""
        return self._channel

    def relay_parameters(self) -> Iterator[nn.Parameter]:
        """Only the channel's parameters (for an optimiser that trains relay alone)."""
        return self._channel.parameters()

    def _require_attached(self) -> None:
        if not self._attached:
            raise RuntimeError("this RelayModel was detached; attach again with relaykit.attach(backbone)")

    # ------------------------------------------------------------------ hooks (pure given the active slot)
    def _active(self) -> Slot | None:
        if self._disabled or not self._slots:
            return None
        return self._slots[-1]

    def _on_call(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        slot = self._active()
        if slot is None:
            return None
        self._call = Call(args, kwargs)
        return None

    def _on_call_end(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._call = None

    def _on_embedding(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
        slot = self._active()
        if slot is None:
            return None
        call = self._call
        if call is None:
            raise RuntimeError(
                "relay is active but the backbone was not called through its __call__ (the pre-hook on the "
                "adapter's call module did not fire): call model(...) rather than model.forward(...)"
            )
        fed = embedding_ids(args)  # (b, q) as fed
        plan = self.adapter.plan_call(self._binding, fed, call.args, call.kwargs, mask_token_id=self.mask_token_id)
        check_cache_modes(plan.uses_cache, update=slot.update, empty=self.empty)
        check_cache_batch(plan.cache, fed.shape[0])
        ids, columns = relay_ids(plan, fed, self.adapter.name)  # (b, q'): e.g. the noisy half of [x_t ; x_0]
        lo, end = fed_span(plan, self.adapter.name, check=self.debug_checks)  # Python ints: the plan's, or read once
        call.ids, call.end = ids, end
        call.plan = plan if columns == plan.columns else replace(plan, columns=columns)  # the normalised slice
        read = read_state(slot, plan, lo, end)  # h (b, q', d) and where a state exists (b, q'); None: no state
        zero = self.empty == "zero"  # positions without a state take R(0) (Algorithm 1's h_0 = 0)
        if read is None:
            if not zero:
                return None  # h = 0 everywhere: no relay contribution, output exactly the bare embedding
            d = self._channel.config.hidden_size
            hidden = output.new_zeros(*ids.shape, d, dtype=self._channel.proj.weight.dtype)  # (b, q, d)
            filled = torch.zeros_like(ids, dtype=torch.bool)  # (b, q)
        else:
            hidden, filled = read
        if zero:
            hidden = hidden.masked_fill(~filled.unsqueeze(-1), 0)  # (b, q, d): h = 0 where no state exists
        use = (~plan.bare if zero else filled & ~plan.bare).unsqueeze(-1)  # (b, q, 1) relay where a state exists
        # No "skip when nothing takes relay" branch: it would need a host sync (and a graph break under compile);
        # the channel costs about one d x d matmul per token, and torch.where keeps the bare embedding bit for bit.
        if torch.is_grad_enabled():  # keep unused positions out of the channel's graph (a NaN there would reach
            # the weights' gradients); without autograd the channel maps each position on its own and torch.where
            # drops the unused ones below: the same values, one pass over h less
            hidden = torch.where(use, hidden, 0.0)  # (b, q, d)
        delta = self._channel(hidden)  # (b, q, e)
        delta = delta if delta.dtype == output.dtype else delta.to(output.dtype)
        if columns is None:
            return torch.where(use, output + delta, output)
        a, b = columns.start, columns.stop
        part = output[:, a:b]  # (b, q', e)
        return torch.cat([output[:, :a], torch.where(use, part + delta, part), output[:, b:]], dim=1)

    def _on_final_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        hidden = output if isinstance(output, Tensor) else output[0]
        self._capture(hidden)

    def _on_final_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._capture(args[0])

    def _capture(self, hidden: Tensor) -> None:
        slot = self._active()
        if slot is not None and self._call is not None:
            capture(slot, self._call, hidden, self.mask_token_id)

    # ------------------------------------------------------------------ public calls
    def forward(
        self,
        input_ids: Tensor,
        state: RelayState | None = None,
        *,
        update: Update | None = None,
        clean_ids: Tensor | None = None,
        **backbone_kwargs: Any,
    ) -> RelayOutput:
        """One relay forward: ``input_ids`` (b, q) with h from ``state`` (None: h = 0); returns logits and new state.

        Extra keyword arguments go to the backbone unchanged (caches, timesteps, attention masks ...).
        ``clean_ids`` (b, q) feeds a block-diffusion family's ``[x_t ; x_0]`` training layout (adapters with
        whose ``clean_layout(backbone)`` is true): relay runs on the noisy half only and the logits cover it.
        """
        self._require_attached()
        # Reading the ids' range is a host sync: done in eager mode on CPU (where compute is synchronous anyway),
        # skipped under torch.compile (it would break the graph) and on accelerators (it would stall the stream)
        # unless debug_checks is on; the embedding's own index check still refuses ids outside the vocabulary.
        on_cpu = isinstance(input_ids, Tensor) and input_ids.device.type == "cpu"
        eager_cpu = on_cpu and not torch.compiler.is_compiling()
        read = eager_cpu or self.debug_checks
        check_token_ids(input_ids, self.adapter.vocab_size(self.backbone) if read else None, read_range=read)
        check_state_width(state, self._channel.config.hidden_size)
        run = self.adapter.call_backbone
        if self._disabled:
            output = run(self.backbone, input_ids, clean_ids=clean_ids, **backbone_kwargs)
            return RelayOutput(self.adapter.logits(output), state, output)
        slot = Slot(state=state, update=check_update(update or self.update))
        self._slots.append(slot)
        try:
            output = run(self.backbone, input_ids, clean_ids=clean_ids, **backbone_kwargs)
        finally:
            self._slots.pop()
            self._call = None
        if slot.last_positions is None:
            raise RuntimeError(
                "relay hooks did not see this forward (the embedding or the final hidden module was not called); "
                "check the adapter with relaykit.inspect(model)"
            )
        return RelayOutput(self.adapter.logits(output), slot.state, output, slot.last_positions, slot.last_span)

    @contextlib.contextmanager
    def session(self, state: RelayState | None = None, *, update: Update | None = None) -> Iterator[RelaySession]:
        """Keep h inside the relay between backbone calls, for third-party loops that call the model themselves.

        Leaving the block clears the state. Sessions do not nest.
        """
        self._require_attached()
        check_state_width(state, self._channel.config.hidden_size)
        if self._slots:
            raise RuntimeError("a relay session or call is already active on this model; sessions do not nest")
        slot = Slot(state=state, update=check_update(update or self.update))
        self._slots.append(slot)
        try:
            yield RelaySession(slot)
        finally:
            self._slots.remove(slot)
            self._call = None
            slot.state = None

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the bare backbone inside the block: no relay added, no state written (commit passes, baselines)."""
        self._disabled += 1
        try:
            yield
        finally:
            self._disabled -= 1

    def extra_repr(self) -> str:
        return (
            f"adapter={self.adapter.name}, mask_token_id={self.mask_token_id}, update={self.update}, empty={self.empty}"
        )


def unwrap_relay(model: nn.Module, *, caller: str = "bptt_rollout") -> RelayCore:
    """The RelayModel inside a DDP / FSDP / torch.compile wrapper (or the model itself)."""
    seen = model
    for _ in range(8):
        if isinstance(seen, RelayCore):
            return seen
        inner = getattr(seen, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(seen, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        seen = inner
    raise TypeError(
        f"{caller} expects a RelayModel (from relaykit.attach) or a DDP/FSDP/compile wrapper of one; got "
        f"{type(model).__name__}"
    )
