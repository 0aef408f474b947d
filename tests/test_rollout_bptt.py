"""Contract 8, BPTT is real: with stop_gradient=False the loss at step k reaches R through h_{k-1}; with
stop_gradient=True it does not; a float64 gradcheck passes through two relay steps on a tiny model."""

from __future__ import annotations

import torch
from rollout_util import batch, tiny_relay
from tiny import MASK_ID
from torch import nn

from relaykit import RelayModel, RelayState, bptt_rollout
from relaykit.policies import Oracle


def start(relay: RelayModel, b: int = 2, n: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, RelayState]:
    """A batch mid-rollout: all maskable positions masked and a filled state h_0 from one earlier forward."""
    x0, maskable = batch(b, n, p_maskable=1.0)
    z = x0.masked_fill(maskable, MASK_ID)
    with torch.no_grad():
        state = relay(z).state
    return x0, maskable, z, state


def oracle(b: int, n: int) -> Oracle:
    """A fixed unmasking order, so the commits do not depend on the logits (the loss is then smooth)."""
    return Oracle(torch.arange(n).expand(b, n), k=2)


def channel_grads(loss: torch.Tensor, relay: RelayModel) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(relay.channel.parameters()), allow_unused=True, retain_graph=True))


def test_contract8_step_loss_reaches_h_of_the_previous_step_only_without_stop_gradient() -> None:
    relay = tiny_relay(dtype=torch.float64)
    x0, maskable, z, state = start(relay)
    h0 = state.hidden.clone().requires_grad_(True)  # h_0 as a leaf: watch the gradient arriving through h
    grads = {}
    for sg in (False, True):
        res = bptt_rollout(relay, x0, maskable=maskable, z=z, state=RelayState(h0, state.filled), k=2,
                           policy=oracle(2, 5), stop_gradient=sg)  # fmt: skip
        (grads[sg],) = torch.autograd.grad(res.step_losses[1], h0, retain_graph=True)
        (first,) = torch.autograd.grad(res.step_losses[0], h0)
        assert first.abs().sum() > 0  # step 0 reads h_0 directly in both modes
    assert grads[False].abs().sum() > 0  # step 1 reaches h_0 through h_1 = f(Emb(z_0) + R(h_0))
    assert torch.equal(grads[True], torch.zeros_like(grads[True]))  # cut by the stop-gradient


def test_contract8_gradient_wrt_channel_through_h() -> None:
    """d loss_1 / d theta_R = direct use at step 1 + the path through h_1 (only without stop-gradient).

    With stop_gradient=True the gradient equals that of a fresh one-step window started from the detached state
    (the direct path alone), bit for bit; without it, the difference is the through-h path and is non-zero.
    """
    relay = tiny_relay(dtype=torch.float64)
    x0, maskable, z, state = start(relay)
    pol = oracle(2, 5)
    full = bptt_rollout(relay, x0, maskable=maskable, z=z, state=state, k=2, policy=pol)
    sg = bptt_rollout(relay, x0, maskable=maskable, z=z, state=state, k=2, policy=pol, stop_gradient=True)
    step0 = bptt_rollout(relay, x0, maskable=maskable, z=z, state=state, k=1, policy=pol)
    direct = bptt_rollout(relay, x0, maskable=maskable, z=step0.z, state=step0.state, k=1, policy=pol)
    assert torch.equal(full.step_losses.detach(), sg.step_losses.detach())  # detaching changes no value
    g_full, g_sg, g_direct = (channel_grads(r.step_losses[-1], relay) for r in (full, sg, direct))
    for a, b in zip(g_sg, g_direct):
        assert torch.equal(a, b)
    through_h = sum(float((a - b).abs().sum()) for a, b in zip(g_full, g_sg))
    assert through_h > 1e-6


def test_contract8_gradcheck_through_two_relay_steps_float64() -> None:
    relay = tiny_relay(width=8, dtype=torch.float64)
    x0, maskable, z, state = start(relay, 2, 4)
    pol = oracle(2, 4)

    def loss_of_h0(h0: torch.Tensor) -> torch.Tensor:
        return bptt_rollout(relay, x0, maskable=maskable, z=z, state=RelayState(h0, state.filled), k=2,
                            policy=pol).loss  # fmt: skip

    assert torch.autograd.gradcheck(loss_of_h0, (state.hidden.clone().requires_grad_(True),))

    class Window(nn.Module):  # the whole two-step window as a module, so functional_call can swap R's weight
        def __init__(self) -> None:
            super().__init__()
            self.relay = relay

        def forward(self) -> torch.Tensor:
            return bptt_rollout(self.relay, x0, maskable=maskable, z=z, state=state, k=2, policy=pol).loss

    window = Window()
    name = "relay.backbone.relay_channel.proj.weight"
    weight = dict(window.named_parameters())[name].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: torch.func.functional_call(window, {name: w}, ()), (weight,))
