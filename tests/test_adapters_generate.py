"""relaykit.generate drives each family through its adapter's decode_kwargs (the loop checks every call's
positions against the adapter's plan_call, so a disagreement raises)."""

from __future__ import annotations

import pytest
import torch
from backbones import randomise_channel

import relaykit
from relaykit.policies import Threshold, TopK
from relaykit.testing.twins.bd3lm import tiny_bd3lm
from relaykit.testing.twins.fast_dllm_v2 import tiny_fast_dllm_v2
from relaykit.testing.twins.llada import tiny_llada
from relaykit.testing.twins.mdlm import tiny_dit


def _v2(dtype: torch.dtype = torch.float32):
    model = tiny_fast_dllm_v2(dtype=dtype)
    relay = relaykit.attach(model, mask_token_id=63)
    randomise_channel(relay)
    return model, relay


@pytest.mark.parametrize("use_cache", [False, "prefix", "dual"], ids=str)
def test_llada_generate_with_fast_dllm_v1_caches(use_cache) -> None:
    model = tiny_llada()
    relay = relaykit.attach(model)
    prompt = torch.randint(0, 63, (2, 4), generator=torch.Generator().manual_seed(0))
    with relay.disabled():
        bare = relaykit.generate(relay, prompt, max_new_tokens=8, block_size=4, use_cache=use_cache)
    same = relaykit.generate(relay, prompt, max_new_tokens=8, block_size=4, use_cache=use_cache)
    assert torch.equal(same.sequences, bare.sequences)  # contract 1 through the relay-aware loop
    randomise_channel(relay)
    out = relaykit.generate(relay, prompt, max_new_tokens=8, block_size=4, use_cache=use_cache, policy=TopK(2))
    assert not bool((out.sequences == 63).any()) and torch.equal(out.sequences[:, :4], prompt)
    assert out.nfe.tolist() == [4, 4]  # two blocks of four, two commits per step


@pytest.mark.parametrize("prompt_len", [4, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_dllm_v2_generate_block_cache_equals_recompute(prompt_len: int, seed: int) -> None:
    """The block-level cache is exact: the same tokens as recomputing (the hypothesis property of contract 5 runs
    through the model's own generate() in test_fast_dllm_v2_loops)."""
    model, relay = _v2(torch.float64)
    randomise_channel(relay, seed=seed)
    prompt = torch.randint(0, 62, (2, prompt_len), generator=torch.Generator().manual_seed(seed))
    kw = dict(max_new_tokens=8, block_size=4, policy=Threshold(0.5))
    free = relaykit.generate(relay, prompt, **kw)
    cached = relaykit.generate(relay, prompt, use_cache="prefix", **kw)
    assert torch.equal(free.sequences, cached.sequences)
    assert (cached.nfe - free.nfe).tolist() == [2, 2]  # the prompt prefill and one commit pass


def test_fast_dllm_v2_generate_sub_block_cache_and_alignment() -> None:
    model, relay = _v2()
    prompt = torch.randint(0, 62, (2, 4), generator=torch.Generator().manual_seed(1))
    out = relaykit.generate(relay, prompt, max_new_tokens=8, block_size=4, use_cache="sub_block", sub_block_size=2)
    assert not bool((out.sequences == 63).any()) and torch.equal(out.sequences[:, :4], prompt)
    with pytest.raises(ValueError, match="multiple of block_size=4"):
        relaykit.generate(relay, prompt[:, :3], max_new_tokens=8, block_size=4, use_cache="prefix")


def test_mdlm_generate_and_bd3lm_refusal() -> None:
    relay = relaykit.attach(tiny_dit())
    randomise_channel(relay)
    out = relaykit.generate(relay, torch.randint(0, 46, (2, 3)), max_new_tokens=6)
    assert out.sequences.shape == (2, 9) and not bool((out.sequences == 47).any())
    with pytest.raises(ValueError, match="does not support use_cache='prefix'"):
        relaykit.generate(relay, torch.randint(0, 46, (2, 4)), max_new_tokens=4, block_size=4, use_cache="prefix")
    with pytest.raises(ValueError, match="does not drive BD3-LM"):
        relaykit.generate(relaykit.attach(tiny_bd3lm()), torch.randint(0, 46, (1, 4)), max_new_tokens=4)


def test_llada_refuses_block_causal_decoding() -> None:
    from relaykit.testing.twins.llada import tiny_llada

    relay = relaykit.attach(tiny_llada())
    prompt = torch.randint(0, 20, (1, 4))
    with pytest.raises(ValueError, match="cannot decode with attention='block_causal'"):
        relaykit.generate(relay, prompt, max_new_tokens=4, block_size=2, attention="block_causal")
