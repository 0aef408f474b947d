"""relay.session(): an unchanged loop that calls the backbone itself gets relay forwarded between its calls."""

from __future__ import annotations

import pytest
import torch
from backbones import GENERIC, Backbone, logits_of

import relaykit


def toy_loop(model: torch.nn.Module, canvas: torch.Tensor, mask_id: int, steps: int) -> torch.Tensor:
    """A third-party decoding loop: full forward, commit the most confident masked position, repeat."""
    z = canvas.clone()
    for _ in range(steps):
        logits = logits_of(model(z))  # calls the backbone directly, knows nothing about relay
        logits[..., mask_id] = float("-inf")
        conf, pred = logits.softmax(-1).max(-1)
        conf[z != mask_id] = -1
        i = conf.argmax(-1)
        z[torch.arange(z.shape[0]), i] = pred[torch.arange(z.shape[0]), i]
    return z


@pytest.mark.parametrize("bb", GENERIC, ids=repr)
def test_session_matches_explicit_state_passing(bb: Backbone) -> None:
    model = bb.build()
    relay = relaykit.attach(model, **bb.attach_kwargs)
    torch.manual_seed(0)
    torch.nn.init.normal_(relay.channel.proj.weight, std=0.5)
    canvas = torch.full((2, 6), bb.mask_id)
    canvas[:, 0] = 3
    with torch.no_grad(), relay.session() as session:
        implicit = toy_loop(model, canvas, bb.mask_id, steps=4)
        assert session.nfe == 4
        assert session.state is not None
    # the same loop with explicit state passing
    z, state = canvas.clone(), None
    with torch.no_grad():
        for _ in range(4):
            out = relay(z, state=state)
            state = out.state
            logits = out.logits.clone()
            logits[..., bb.mask_id] = float("-inf")
            conf, pred = logits.softmax(-1).max(-1)
            conf[z != bb.mask_id] = -1
            i = conf.argmax(-1)
            z[torch.arange(2), i] = pred[torch.arange(2), i]
    assert torch.equal(implicit, z)
    with torch.no_grad(), relay.disabled():
        bare = toy_loop(model, canvas, bb.mask_id, steps=4)
    assert torch.equal(bare, toy_loop(model, canvas, bb.mask_id, steps=4))  # outside a session: bare model


def test_session_clears_state_on_exit_and_reset_rows() -> None:
    bb = GENERIC[0]
    model = bb.build()
    relay = relaykit.attach(model, **bb.attach_kwargs)
    ids = torch.full((3, 5), bb.mask_id)
    with torch.no_grad(), relay.session() as s:
        model(ids)
        s.reset([1])
        assert s.state is not None and not bool(s.state.filled[1].any()) and bool(s.state.filled[0].all())
        s.reset()
        assert s.state is None
    assert s.state is None and relay._slots == []


def test_session_with_gradients_and_detach_state() -> None:
    bb = GENERIC[0]
    model = bb.build()
    relay = relaykit.attach(model, **bb.attach_kwargs)
    torch.nn.init.normal_(relay.channel.proj.weight, std=0.1)
    ids = torch.full((2, 5), bb.mask_id)
    with relay.session() as s:
        model(ids)
        assert s.state is not None and s.state.hidden.requires_grad
        s.detach_state()
        assert not s.state.hidden.requires_grad
        loss = logits_of(model(ids)).sum()
    loss.backward()
    assert relay.channel.proj.weight.grad is not None
