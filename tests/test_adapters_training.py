"""One relay training step through ``relaykit.bptt_rollout`` on every family's twin (K = 2, gradients through h)."""

from __future__ import annotations

import pytest
import torch
from backbones import FAMILIES, Backbone, randomise_channel

import relaykit


@pytest.mark.parametrize("family", FAMILIES, ids=repr)
def test_one_bptt_step_trains_the_channel_through_h(family: Backbone) -> None:
    model = family.build()
    relay = relaykit.attach(model, **family.attach_kwargs)
    randomise_channel(relay, std=0.1)
    b, n = 2, min(16, family.max_len)
    x0 = torch.randint(1, family.mask_id, (b, n), generator=torch.Generator().manual_seed(0))
    maskable = torch.ones(b, n, dtype=torch.bool)
    maskable[:, :2] = False  # a prompt: the first token is never masked (Fast-dLLM v2's token shift needs it)
    kwargs = family.call_kwargs(b)
    kwargs.pop("sample_mode", None)  # training: BD3-LM's [x_t ; x_0] layout, not its sampling mode
    clean = relay.adapter.clean_layout(model)
    if clean:
        model.train()  # Fast-dLLM v2 selects its training layout with train mode (no dropout in the twins)
    optimiser = torch.optim.SGD(relay.relay_parameters(), lr=0.1)
    before = relay.channel.proj.weight.detach().clone()
    res = relaykit.bptt_rollout(relay, x0, maskable=maskable, k=2, backbone_kwargs=kwargs)
    assert torch.isfinite(res.loss) and res.step_losses.shape == (2,)
    assert res.state is not None and res.state.hidden.shape[:2] == (b, n)  # the noisy half only, for [z ; x0]
    res.loss.backward()
    grad = relay.channel.proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0  # step 1 sees R(h_0): the channel gets a gradient
    optimiser.step()
    assert not torch.equal(relay.channel.proj.weight.detach(), before)
    assert clean == (family.name in ("bd3lm", "fast-dllm-v2"))
