"""LLaDA and Fast-dLLM v1 decoding loops, unchanged, inside a relay session: contracts 1 to 5 on the LLaDA twin.

The three loops are written here in the style of ML-GSAI/LLaDA and NVlabs/Fast-dLLM ``v1/llada/generate.py``
(plain, prefix cache, dual cache; low-confidence top-k or threshold commits). They call ``model(...)`` exactly as
upstream does; the only addition is suppressing the mask logit, which a random twin might otherwise predict
forever (see backbones.md).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backbones import randomise_channel
from hypothesis import given
from hypothesis import strategies as st
from recorder import Recorder, check_committed_frozen, check_locality

import relaykit
from relaykit import RelayState
from relaykit.testing.twins.llada import tiny_llada

MASK = 63


def get_num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base, remainder = mask_num // steps, mask_num % steps
    num = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num[i, : remainder[i]] += 1
    return num


def get_transfer_index(logits, mask_index, x, num_transfer_tokens, threshold=None):
    logits = logits.clone()
    logits[..., MASK] = -torch.inf  # a random twin must never commit the mask token
    x0 = torch.argmax(logits, dim=-1)
    p = F.softmax(logits.to(torch.float64), dim=-1)
    x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, -torch.inf)
    transfer_index = torch.zeros_like(x0, dtype=torch.bool)
    if threshold is not None:
        num_transfer_tokens = mask_index.sum(dim=1, keepdim=True)
    for j in range(confidence.shape[0]):
        _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j]))
        transfer_index[j, select_index] = True
        if threshold is not None:
            for k in range(1, int(num_transfer_tokens[j])):
                if confidence[j, select_index[k]] < threshold:
                    transfer_index[j, select_index[k]] = False
    return x0, transfer_index


@torch.no_grad()
def generate(model, prompt, steps=8, gen_length=8, block_length=4, threshold=None):
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), MASK, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    nfe = 0
    for num_block in range(num_blocks):
        s = prompt.shape[1] + num_block * block_length
        num_transfer_tokens = get_num_transfer_tokens(x[:, s : s + block_length] == MASK, steps)
        i = 0
        while True:
            nfe += 1
            mask_index = x == MASK
            logits = model(x).logits
            mask_index[:, s + block_length :] = 0
            x0, transfer_index = get_transfer_index(
                logits, mask_index, x, num_transfer_tokens[:, min(i, steps - 1)], threshold
            )
            x[transfer_index] = x0[transfer_index]
            i += 1
            if (x[:, s : s + block_length] == MASK).sum() == 0:
                break
    return x, nfe


@torch.no_grad()
def generate_with_prefix_cache(model, prompt, steps=8, gen_length=8, block_length=4, threshold=None):
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), MASK, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    nfe = 0
    for num_block in range(num_blocks):
        s = prompt.shape[1] + num_block * block_length
        e = s + block_length
        num_transfer_tokens = get_num_transfer_tokens(x[:, s:e] == MASK, steps)
        output = model(x, use_cache=True)
        mask_index = x == MASK
        mask_index[:, e:] = 0
        x0, transfer_index = get_transfer_index(output.logits, mask_index, x, num_transfer_tokens[:, 0], threshold)
        x[transfer_index] = x0[transfer_index]
        past_key_values = [tuple(t[:, :, :s] for t in layer) for layer in output.past_key_values]
        nfe += 1
        i = 1
        while (x[:, s:e] == MASK).sum() > 0:
            nfe += 1
            mask_index = x[:, s:] == MASK
            mask_index[:, block_length:] = 0
            logits = model(x[:, s:], past_key_values=past_key_values, use_cache=True).logits
            x0, transfer_index = get_transfer_index(
                logits, mask_index, x[:, s:], num_transfer_tokens[:, min(i, steps - 1)], threshold
            )
            x[:, s:][transfer_index] = x0[transfer_index]
            i += 1
    return x, nfe


@torch.no_grad()
def generate_with_dual_cache(model, prompt, steps=8, gen_length=8, block_length=4, threshold=None):
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), MASK, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    nfe = 0
    for num_block in range(num_blocks):
        s = prompt.shape[1] + num_block * block_length
        e = s + block_length
        num_transfer_tokens = get_num_transfer_tokens(x[:, s:e] == MASK, steps)
        output = model(x, use_cache=True)
        past_key_values = output.past_key_values
        mask_index = x == MASK
        mask_index[:, e:] = 0
        x0, transfer_index = get_transfer_index(output.logits, mask_index, x, num_transfer_tokens[:, 0], threshold)
        x[transfer_index] = x0[transfer_index]
        nfe += 1
        i = 1
        replace_position = torch.zeros_like(x, dtype=torch.bool)
        replace_position[:, s:e] = 1
        while (x[:, s:e] == MASK).sum() > 0:
            nfe += 1
            mask_index = x[:, s:e] == MASK
            logits = model(
                x[:, s:e], past_key_values=past_key_values, use_cache=True, replace_position=replace_position
            ).logits
            x0, transfer_index = get_transfer_index(
                logits, mask_index, x[:, s:e], num_transfer_tokens[:, min(i, steps - 1)], threshold
            )
            x[:, s:e][transfer_index] = x0[transfer_index]
            i += 1
    return x, nfe


LOOPS = {"plain": generate, "prefix": generate_with_prefix_cache, "dual": generate_with_dual_cache}


def positions_of(call) -> torch.Tensor:
    """Upstream semantics: full forward 0..L-1; prefix step past_len + arange(q); dual step: True columns."""
    b, q = call.ids.shape
    replace = call.kwargs.get("replace_position")
    if replace is not None:
        return replace.nonzero()[:, 1].view(b, q)
    past = call.kwargs.get("past_key_values")
    start = past[0][0].shape[-2] if past else 0
    return (start + torch.arange(q)).expand(b, q)


def _prompt(b: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, MASK, (b, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("loop", LOOPS, ids=str)
def test_contract1_zero_initialised_relay_leaves_the_loops_unchanged(loop: str) -> None:
    model = tiny_llada()
    prompt = _prompt(2, 3, 0)
    bare = LOOPS[loop](model, prompt, threshold=0.5)
    relay = relaykit.attach(model)
    with relay.session() as session:
        out = LOOPS[loop](model, prompt, threshold=0.5)
        assert session.nfe == out[1] and session.state is not None
    assert torch.equal(out[0], bare[0]) and out[1] == bare[1]


@pytest.mark.parametrize("loop", LOOPS, ids=str)
def test_contracts_2_3_locality_and_committed_positions_frozen(loop: str) -> None:
    model = tiny_llada()
    relay = relaykit.attach(model)
    randomise_channel(relay)
    with relay.session() as session, Recorder(relay, session) as rec:
        x, nfe = LOOPS[loop](model, _prompt(2, 3, 1), steps=8, gen_length=8, block_length=4)
        final = session.state
    assert len(rec.calls) == nfe and not bool((x == MASK).any())
    assert check_locality(rec.calls, positions_of, mask_id=MASK) > 0
    assert check_committed_frozen(rec.calls, positions_of, final, mask_id=MASK) > 0


def test_contract4_refresh_caches_the_bare_backbones_keys_and_values() -> None:
    """The refresh (the full forward that refills the cache) is relay-free: every key and value it caches equals the
    bare backbone's for the same tokens, although h is filled and recorded at its masked positions."""
    model = tiny_llada(dtype=torch.float64)
    relay = relaykit.attach(model)
    randomise_channel(relay)
    with relay.session() as session, Recorder(relay, session) as rec:
        generate_with_prefix_cache(model, _prompt(2, 3, 2), steps=8, gen_length=8, block_length=4)
    refreshes = [c for c in rec.calls if c.kwargs.get("past_key_values") is None]
    assert len(refreshes) == 2 and bool(refreshes[-1].before.filled.any())
    for call in refreshes:
        with torch.no_grad():
            bare = model(call.ids, use_cache=True).past_key_values
        for (k, v), (bk, bv) in zip(call.output.past_key_values, bare):
            assert torch.equal(k, bk) and torch.equal(v, bv)
        assert bool(call.after.filled[call.ids == MASK].all())  # h still recorded at the masked positions


settings_examples = st.tuples(st.integers(0, 2**16), st.integers(2, 5), st.sampled_from([None, 0.3, 0.7]))


def test_contract5_prefix_cache_equals_recompute_in_one_layer() -> None:
    """With one layer the prefix cache is exact: each cached step equals a full recompute whose committed prefix
    is relay-free (float64), for any prompt, threshold and channel hypothesis draws."""
    model = tiny_llada(layers=1, dtype=torch.float64)
    relay = relaykit.attach(model)

    @given(settings_examples)
    def check(example: tuple) -> None:
        seed, prompt_len, threshold = example
        randomise_channel(relay, seed=seed)
        with relay.session() as session, Recorder(relay, session) as rec:
            generate_with_prefix_cache(
                model, _prompt(2, prompt_len, seed), gen_length=8, block_length=4, threshold=threshold
            )
        checked, refresh = 0, None
        for call in rec.calls:
            if call.kwargs.get("past_key_values") is None:
                refresh = call  # the full forward that built this block's prefix cache
                continue
            s = call.kwargs["past_key_values"][0][0].shape[-2]
            full = torch.cat([refresh.ids[:, :s], call.ids], dim=1)  # (b, L): the prefix is committed, unchanged
            before = call.before
            keep = before.filled.clone()
            keep[:, :s] = False  # committed prefix: relay-free, as the refresh stored it
            with torch.no_grad():
                ref = relay(full, state=RelayState(before.hidden, keep, before.offset))
            torch.testing.assert_close(call.output.logits, ref.logits[:, s:], rtol=0, atol=1e-10)
            torch.testing.assert_close(call.after.hidden[:, s:], ref.state.hidden[:, s:], rtol=0, atol=1e-10)
            assert torch.equal(call.after.filled[:, s:], ref.state.filled[:, s:])
            checked += 1
        assert checked

    check()


def test_dual_cache_steps_touch_only_their_block_in_the_cache() -> None:
    model = tiny_llada()
    relay = relaykit.attach(model)
    randomise_channel(relay)
    snapshots = []
    with relay.session() as session, Recorder(relay, session) as rec:
        orig = model.forward

        def spy(*args, **kwargs):
            past = kwargs.get("past_key_values")
            if past is not None:
                snapshots.append(
                    (kwargs["replace_position"], [tuple(t.clone() for t in layer) for layer in past], past)
                )
            return orig(*args, **kwargs)

        model.forward = spy
        try:
            generate_with_dual_cache(model, _prompt(1, 3, 3), gen_length=8, block_length=4)
        finally:
            del model.forward
    assert snapshots and len(rec.calls) > len(snapshots)
    for replace, before, after in snapshots:
        outside = ~replace[0]
        for (k0, v0), (k1, v1) in zip(before, after):
            assert torch.equal(k0[:, :, outside], k1[:, :, outside]) and torch.equal(
                v0[:, :, outside], v1[:, :, outside]
            )
