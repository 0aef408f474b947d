"""relaykit.generate on the family twins, through the family adapters' own cache arguments (decode_kwargs)."""

from __future__ import annotations

import pytest
import torch

import relaykit
from relaykit.policies import Threshold, TopK
from relaykit.testing.twins.fast_dllm_v2 import tiny_fast_dllm_v2
from relaykit.testing.twins.llada import tiny_llada


def _randomise(relay: relaykit.RelayModel, std: float = 0.5) -> relaykit.RelayModel:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        w = relay.channel.proj.weight
        w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * std)
    return relay


def _prompt(b: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 50, (b, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def v2() -> relaykit.RelayModel:
    relay = relaykit.attach(tiny_fast_dllm_v2(dtype=torch.float64), mask_token_id=63)
    assert relay.adapter.name == "fast_dllm_v2" and relay.adapter.attention == "block_causal"
    return _randomise(relay)


@pytest.fixture(scope="module")
def llada() -> relaykit.RelayModel:
    relay = relaykit.attach(tiny_llada(dtype=torch.float64))
    assert relay.adapter.name == "llada"
    return _randomise(relay)


def test_fast_dllm_v2_block_cache_gives_the_recomputed_tokens(v2):
    kw = dict(max_new_tokens=12, block_size=4, policy=Threshold(0.3))
    plain = relaykit.generate(v2, _prompt(2, 8), **kw)
    cached = relaykit.generate(v2, _prompt(2, 8), use_cache=True, **kw)
    assert torch.equal(plain.sequences, cached.sequences)
    assert torch.equal(cached.nfe, plain.nfe + 1 + 2)  # prompt prefill, commit passes but after the last block
    sub = relaykit.generate(v2, _prompt(2, 8), use_cache="sub_block", sub_block_size=2, **kw)
    assert not (sub.sequences == 63).any() and torch.equal(sub.sequences[:, :8], _prompt(2, 8))


def test_fast_dllm_v2_needs_block_aligned_prompts(v2):
    with pytest.raises(ValueError, match=r"block spans 5\.\.8; .* multiple of block_size=4"):
        relaykit.generate(v2, _prompt(1, 5), max_new_tokens=8, block_size=4, use_cache=True)
    with pytest.raises(ValueError, match="does not support use_cache='dual'"):
        relaykit.generate(v2, _prompt(1, 8), max_new_tokens=8, block_size=4, use_cache="dual")


@pytest.mark.parametrize("use_cache", [False, "prefix", "dual"])
def test_llada_with_fast_dllm_v1_caches(llada, use_cache):
    calls: list[int] = []
    handle = llada.backbone.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        res = relaykit.generate(
            llada, _prompt(2, 5), max_new_tokens=8, block_size=4, use_cache=use_cache, policy=TopK(2)
        )
    finally:
        handle.remove()
    assert res.nfe.tolist() == [len(calls)] * 2 == [4, 4]  # the v1 refresh is each block's first step
    assert not (res.sequences == 63).any()
