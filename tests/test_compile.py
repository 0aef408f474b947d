"""Relay forwards make no host sync: torch.compile(fullgraph=True) compiles them and dynamo sees no graph break.

Covers the explicit-state call (state in, new state out), a call against a KV cache (prefix cache, block-causal
Qwen2), a relay-free commit pass, and one training step of ``bptt_rollout`` through a ``fullgraph=True`` compiled
relay (the block-diffusion ``[x_t ; x_0]`` layout of Fast-dLLM v2 included). Backend ``aot_eager``: dynamo and
AOT autograd trace exactly what inductor would get, without its C++ compile on CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch._dynamo as dynamo
from backbones import FAMILIES, randomise_channel
from rollout_util import batch, tiny_relay
from tiny import MASK_ID, tiny_qwen2

import relaykit
from relaykit.model import RelayCore
from relaykit.policies import TopK


@pytest.fixture(autouse=True)
def no_debug_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The suite turns on ``debug_checks`` (a sync per call that verifies every CallPlan.span); here it is off,
    as it is for users."""
    monkeypatch.setattr(RelayCore, "debug_checks", False)
    dynamo.reset()
    yield
    dynamo.reset()


def _breaks(fn: Any, *args: Any, **kwargs: Any) -> tuple[int, list[str]]:
    ex = dynamo.explain(fn)(*args, **kwargs)
    return ex.graph_break_count, [str(b.reason) for b in ex.break_reasons]


def _same_state(a: relaykit.RelayState, b: relaykit.RelayState) -> None:
    assert a.offset == b.offset
    assert torch.equal(a.filled, b.filled)
    torch.testing.assert_close(a.hidden, b.hidden)


def test_explicit_state_call_compiles_fullgraph() -> None:
    relay = tiny_relay()
    x0, maskable = batch(3, 8)
    z = torch.where(maskable, torch.full_like(x0, MASK_ID), x0)
    with torch.no_grad():
        state = relay(z).state
        assert _breaks(relay, z, state=state) == (0, [])
        compiled = torch.compile(relay, fullgraph=True, backend="aot_eager")
        got, want = compiled(z, state=state), relay(z, state=state)
    torch.testing.assert_close(got.logits, want.logits)
    _same_state(got.state, want.state)
    assert not torch.equal(want.logits, relay.backbone(z))  # the channel really ran


def test_kv_cache_calls_compile_fullgraph() -> None:
    """A prefix-cache step of a block-causal Qwen2 (DynamicCache) and the relay-free commit pass after it."""
    from transformers import DynamicCache

    torch.manual_seed(0)
    relay = relaykit.attach(tiny_qwen2(), mask_token_id=47)
    randomise_channel(relay, std=0.1)
    prompt = torch.randint(0, 46, (2, 6))
    block = torch.full((2, 4), 47)
    block[:, 0] = 5  # one committed token, three masked

    def step(cache: Any, state: relaykit.RelayState | None) -> relaykit.RelayOutput:
        return relay(block, state=state, past_key_values=cache, use_cache=True)

    with torch.no_grad():
        cache = DynamicCache()
        relay(prompt, past_key_values=cache, use_cache=True)  # prefill: the cache holds positions 0..5
        state = relay(block, past_key_values=_copy(cache), use_cache=True).state  # h at 6..9
        assert _breaks(step, _copy(cache), state) == (0, [])
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        got, want = compiled(_copy(cache), state), step(_copy(cache), state)
        torch.testing.assert_close(got.logits, want.logits)
        _same_state(got.state, want.state)
        assert got.state.end == 10
        clean = torch.randint(0, 46, (2, 4))  # the commit pass: relay-free, h written nowhere (nothing masked)

        def commit(cache: Any, state: relaykit.RelayState) -> relaykit.RelayOutput:
            return relay(clean, state=state, past_key_values=cache, use_cache=True)

        assert _breaks(commit, _copy(cache), state) == (0, [])
        out = torch.compile(commit, fullgraph=True, backend="aot_eager")(_copy(cache), state)
        bare = relay.backbone(clean, past_key_values=_copy(cache)).logits
    torch.testing.assert_close(out.logits, bare, rtol=0, atol=0)


def _copy(cache: Any) -> Any:
    from transformers import DynamicCache

    fresh = DynamicCache()
    for i, layer in enumerate(cache.layers):
        fresh.update(layer.keys.clone(), layer.values.clone(), i)
    return fresh


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.name in ("llada", "fast-dllm-v2")], ids=repr)
def test_rollout_step_compiles_fullgraph(family: Any) -> None:
    """One bptt_rollout window through a fullgraph-compiled relay: every step's forward is one graph (a break
    would raise), losses and gradients match eager. LLaDA: full sequence; Fast-dLLM v2: [x_t ; x_0]."""
    torch.manual_seed(0)
    results = []
    for compiled in (False, True):
        relay = relaykit.attach(family.build(), **family.attach_kwargs)
        randomise_channel(relay, std=0.1)
        relay.train()  # training (Fast-dLLM v2 selects its [x_t ; x_0] layout in train mode; no dropout)
        x0 = torch.randint(0, family.vocab - 1, (2, 8), generator=torch.Generator().manual_seed(1))
        maskable = torch.ones_like(x0, dtype=torch.bool)
        maskable[:, 0] = False
        model = torch.compile(relay, fullgraph=True, backend="aot_eager") if compiled else relay
        res = relaykit.bptt_rollout(model, x0, maskable=maskable, k=2, policy=TopK(2))
        res.loss.backward()
        results.append((res.step_losses.detach(), [p.grad for p in relay.relay_parameters()]))
        if compiled:  # and dynamo's own count for one step's forward, with a state carried in and grad on
            kwargs = {"clean_ids": x0} if relay.adapter.clean_layout(relay.backbone) else {}
            assert _breaks(relay, res.z, state=res.state, **kwargs) == (0, [])
    torch.testing.assert_close(results[1][0], results[0][0])
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b)
