"""Session mode: unchanged third-party decoding loops, written in the style of the upstream ones, get the same
relay behaviour inside ``relay.session()`` as ``relaykit.generate``.

The loops below call the backbone themselves with their own caches and masks and know nothing of relaykit.
"""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_llama_bidirectional, tiny_qwen2

import relaykit
from relaykit.adapters import GenericAdapter
from relaykit.policies import Threshold, TopK

MASK = 47


def _randomise(relay: relaykit.RelayModel, std: float) -> relaykit.RelayModel:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        w = relay.channel.proj.weight
        w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * std)
    return relay


@torch.no_grad()
def v2_style_generate(model, input_ids, *, mask_id, gen_length, block_size, threshold):
    """A Fast-dLLM v2-like loop over a causal-LM class used as a block diffusion model.

    Prompt prefilled into a DynamicCache; per block: forward only the block against the cache under a 4D mask
    (bidirectional inside the block), drop the step's keys again (``cache.crop``), shift the logits right by one
    (the previous position predicts the next token), commit every masked token above the threshold plus always
    the most confident one; then a commit pass stores the finished block and predicts the next block's first token.
    """
    b, p = input_ids.shape
    out = model(input_ids, attention_mask=torch.ones(b, 1, p, p, dtype=torch.bool), use_cache=True)
    cache, last_logits, calls = out.past_key_values, out.logits[:, -1:], 1
    x = input_ids
    for _ in range(gen_length // block_size):
        block = torch.full((b, block_size), mask_id, dtype=torch.long)
        held = cache.get_seq_length()
        full = torch.ones(b, 1, block_size, held + block_size, dtype=torch.bool)
        while (block == mask_id).any():
            logits = model(block, past_key_values=cache, attention_mask=full, use_cache=True).logits
            cache.crop(-block_size)
            calls += 1
            logits = torch.cat([last_logits, logits[:, :-1]], 1)  # token shift
            logits[..., mask_id] = float("-inf")  # a random model must not predict the mask
            conf, pred = logits.softmax(-1).max(-1)
            masked = block == mask_id
            conf = torch.where(masked, conf, torch.full_like(conf, -1.0))
            commit = conf >= threshold
            commit[torch.arange(b), conf.argmax(-1)] = True
            commit &= masked
            block = torch.where(commit, pred, block)
        out = model(block, past_key_values=cache, attention_mask=full, use_cache=True)  # commit pass
        last_logits, calls = out.logits[:, -1:], calls + 1
        x = torch.cat([x, block], 1)
    return x, calls


@torch.no_grad()
def llada_style_generate(model, prompt, *, mask_id, gen_length, block_length, steps):
    """A LLaDA-like loop: prompt + mask canvas, blocks left to right, a fixed number of steps per block, each a
    full-sequence forward; commit the most confident masked tokens of the current block ("low-confidence
    remasking"), the same number per step.

    Every forward gets an all-visible 4D mask, as LLaDA's loop passes its ``attention_mask``: the tiny Llama
    stands in for LLaDA's bidirectional model, and transformers 4.x runs a Llama causally when given no mask
    (5.x honours ``config.is_causal = False``), so the mask makes the loop bidirectional on both.
    """
    b, p = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), mask_id, dtype=torch.long)], 1)
    visible = torch.ones(b, 1, p + gen_length, p + gen_length, dtype=torch.bool)  # (b, 1, T, T)
    per_step = block_length // steps
    calls = 0
    for k in range(gen_length // block_length):
        hi = p + (k + 1) * block_length
        for _ in range(steps):
            logits = model(x, attention_mask=visible).logits
            calls += 1
            logits[..., mask_id] = float("-inf")
            conf, pred = logits.softmax(-1).max(-1)
            conf[:, hi:] = float("-inf")
            conf = torch.where(x == mask_id, conf, torch.full_like(conf, float("-inf")))
            chosen = conf.topk(per_step, dim=-1).indices
            commit = torch.zeros_like(x, dtype=torch.bool).scatter(1, chosen, True)
            x = torch.where(commit, pred, x)
    return x, calls


@pytest.fixture(scope="module")
def v2_relay():
    relay = relaykit.attach(tiny_qwen2(dtype=torch.float64), adapter=GenericAdapter(token_shift=1), mask_token_id=MASK)
    return _randomise(relay, std=0.5)


def _prompt(b, n, seed=0):
    return torch.randint(0, 30, (b, n), generator=torch.Generator().manual_seed(seed))


def test_v2_style_loop_in_a_session_matches_generate(v2_relay):
    prompt = _prompt(2, 5)
    with v2_relay.session() as session:
        looped, calls = v2_style_generate(
            v2_relay.backbone, prompt, mask_id=MASK, gen_length=12, block_size=4, threshold=0.4
        )
        assert session.nfe == calls
        # the commit passes ran relay-free and wrote no h: the state holds exactly the positions fed masked
        assert session.state is not None and int(session.state.filled.sum()) == 2 * 12
    res = relaykit.generate(
        v2_relay,
        prompt,
        max_new_tokens=12,
        block_size=4,
        policy=Threshold(0.4),
        use_cache=True,
        attention="block_causal",
    )
    assert torch.equal(looped, res.sequences)
    # outside a session the same loop is the bare backbone's: relay did change the decode
    bare, _ = v2_style_generate(v2_relay.backbone, prompt, mask_id=MASK, gen_length=12, block_size=4, threshold=0.4)
    assert not torch.equal(bare, looped)
    with v2_relay.disabled():
        assert torch.equal(
            bare,
            relaykit.generate(
                v2_relay,
                prompt,
                max_new_tokens=12,
                block_size=4,
                policy=Threshold(0.4),
                use_cache=True,
                attention="block_causal",
            ).sequences,
        )


def test_v2_style_loop_batch_of_one_counts_the_same_nfe(v2_relay):
    prompt = _prompt(1, 3, seed=2)
    with v2_relay.session() as session:
        v2_style_generate(v2_relay.backbone, prompt, mask_id=MASK, gen_length=8, block_size=4, threshold=0.4)
        nfe = session.nfe
    res = relaykit.generate(
        v2_relay,
        prompt,
        max_new_tokens=8,
        block_size=4,
        policy=Threshold(0.4),
        use_cache=True,
        attention="block_causal",
        return_cache=True,
    )
    assert res.nfe.item() == nfe  # with return_cache the last block is stored too, as the loop does


def test_llada_style_loop_in_a_session_matches_generate():
    relay = _randomise(relaykit.attach(tiny_llama_bidirectional(), mask_token_id=MASK), std=0.5)
    prompt = _prompt(2, 4, seed=1)
    with relay.session() as session:
        looped, calls = llada_style_generate(
            relay.backbone, prompt, mask_id=MASK, gen_length=8, block_length=4, steps=2
        )
        assert session.nfe == calls
    # attention="bidirectional": on transformers 4.x relaykit then passes the all-visible masks the loop passes
    res = relaykit.generate(relay, prompt, max_new_tokens=8, block_size=4, policy=TopK(2), attention="bidirectional")
    assert torch.equal(looped, res.sequences)
    assert res.nfe.tolist() == [calls, calls]
    bare, _ = llada_style_generate(relay.backbone, prompt, mask_id=MASK, gen_length=8, block_length=4, steps=2)
    assert not torch.equal(bare, looped)
