"""Fast-dLLM v2's own generate(), unchanged, inside a relay session; its training layouts. Contracts 1 to 5.

``generate()`` calls ``self.forward(...)`` directly, so relay sees each call on ``model.model`` (the adapter's
call module). The exact cache mode is the block-level cache (``use_block_cache=False``); the sub-block cache is
approximate upstream, so it is checked for contracts 1 to 4 only.
"""

from __future__ import annotations

import pytest
import torch
from backbones import randomise_channel
from hypothesis import given
from hypothesis import strategies as st
from recorder import Recorder, check_committed_frozen, check_locality

import relaykit
from relaykit import RelayState
from relaykit.testing.twins.fast_dllm_v2 import tiny_fast_dllm_v2

MASK, BS, SMALL = 63, 4, 2


def build(dtype: torch.dtype = torch.float32):
    model = tiny_fast_dllm_v2(dtype=dtype)
    # a random twin must never predict the mask token, or generate() loops forever (see backbones.md)
    model.lm_head.register_forward_hook(lambda m, a, out: out.index_fill(-1, torch.tensor([MASK]), -1e4))
    return model


def run(model, prompt, *, use_block_cache: bool, threshold: float = 0.9, max_new_tokens: int = 8):
    return model.generate(
        prompt,
        max_new_tokens=max_new_tokens,
        mask_id=MASK,
        threshold=threshold,
        small_block_size=SMALL,
        block_size=BS,
        use_block_cache=use_block_cache,
    )


def positions_of(call) -> torch.Tensor:
    """Upstream: cache_len + arange(q); with the sub-block cache cache_len + replace_position + arange(q)."""
    b, q = call.ids.shape
    start = call.cache_len
    if call.kwargs.get("use_block_cache") and call.kwargs.get("replace_position") is not None:
        start += call.kwargs["replace_position"]
    return (start + torch.arange(q)).expand(b, q)


def _prompt(b: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, MASK - 1, (b, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("use_block_cache", [False, True], ids=["block-cache", "sub-block-cache"])
def test_contract1_zero_initialised_relay_leaves_generate_unchanged(use_block_cache: bool) -> None:
    model = build()
    prompt = _prompt(2, 6, 0)
    bare = run(model, prompt, use_block_cache=use_block_cache)
    calls = []
    model.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    relay = relaykit.attach(model, mask_token_id=MASK)
    with relay.session() as session:
        out = run(model, prompt, use_block_cache=use_block_cache)
        assert session.nfe == len(calls) > 0  # every forward counts, commit passes included
    assert torch.equal(out, bare)


@pytest.mark.parametrize("use_block_cache", [False, True], ids=["block-cache", "sub-block-cache"])
def test_contracts_2_3_locality_and_committed_positions_frozen(use_block_cache: bool) -> None:
    model = build()
    relay = relaykit.attach(model, mask_token_id=MASK)
    randomise_channel(relay)
    with relay.session() as session, Recorder(relay, session) as rec:
        out = run(model, _prompt(2, 6, 1), use_block_cache=use_block_cache, threshold=0.5)
        final = session.state
    assert not bool((out == MASK).any())
    if use_block_cache:
        assert any(c.kwargs.get("replace_position") is not None for c in rec.calls)  # sub-block calls happened
    assert check_locality(rec.calls, positions_of, mask_id=MASK) > 0
    assert check_committed_frozen(rec.calls, positions_of, final, mask_id=MASK) > 0


@pytest.mark.parametrize("use_block_cache", [False, True], ids=["block-cache", "sub-block-cache"])
def test_contract4_commit_passes_cache_the_bare_backbones_keys_and_values(use_block_cache: bool) -> None:
    model = build(torch.float64)
    relay = relaykit.attach(model, mask_token_id=MASK)
    randomise_channel(relay)
    with relay.session() as session, Recorder(relay, session) as rec:
        run(model, _prompt(1, 6, 2), use_block_cache=use_block_cache, max_new_tokens=12)
    commits = [c for c in rec.calls if c.kwargs.get("update_past_key_values")]
    assert len(commits) == 4  # the prompt's full block, then three generated blocks
    cache = commits[-1].output.past_key_values
    bare = None
    with torch.no_grad():
        for call in commits:  # the same calls, on the bare backbone
            bare = model(call.ids, use_cache=True, past_key_values=bare, update_past_key_values=True, block_size=BS)
            bare = bare.past_key_values
    assert cache.get_seq_length() == bare.get_seq_length() == 16
    for layer, bare_layer in zip(cache.layers, bare.layers):
        assert torch.equal(layer.keys, bare_layer.keys) and torch.equal(layer.values, bare_layer.values)


examples = st.tuples(st.integers(0, 2**16), st.sampled_from([2, 3, 5, 6, 7, 9]), st.sampled_from([0.5, 0.9, 1.0]))


def test_contract5_block_cache_equals_recompute() -> None:
    """Every cached step equals a cache-free block-causal forward over [committed blocks ; active block] whose
    committed blocks are relay-free: logits and state, float64, for any trajectory hypothesis draws."""
    model = build(torch.float64)
    relay = relaykit.attach(model, mask_token_id=MASK)

    @given(examples)
    def check(example: tuple) -> None:
        seed, prompt_len, threshold = example
        randomise_channel(relay, seed=seed)
        with relay.session() as session, Recorder(relay, session) as rec:
            run(model, _prompt(2, prompt_len, seed), use_block_cache=False, threshold=threshold)
        committed, checked = None, 0
        for call in rec.calls:
            if call.kwargs.get("update_past_key_values"):
                committed = call.ids if committed is None else torch.cat([committed, call.ids], dim=1)
                continue
            cache_len = 0 if committed is None else committed.shape[1]
            full = call.ids if committed is None else torch.cat([committed, call.ids], dim=1)  # (b, L)
            before = call.before
            keep = torch.zeros_like(before.filled) if before is not None else None
            if before is not None:
                keep[:, cache_len:] = before.filled[:, cache_len:]  # relay only inside the active block
            state = RelayState(before.hidden, keep, before.offset) if before is not None else None
            with torch.no_grad():
                ref = relay(full, state=state, block_size=BS)
                cached_logits = model.lm_head(call.output.last_hidden_state)
            torch.testing.assert_close(cached_logits, ref.logits[:, cache_len:], rtol=0, atol=1e-10)
            torch.testing.assert_close(
                call.after.hidden[:, cache_len:], ref.state.hidden[:, cache_len:], rtol=0, atol=1e-10
            )
            checked += 1
        assert checked

    check()


def test_upstream_training_forward_takes_relay_on_the_noisy_half_only() -> None:
    model = build().train()
    relay = relaykit.attach(model, mask_token_id=MASK)
    randomise_channel(relay)
    seen = []
    model.model.embed_tokens.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    x = _prompt(2, 8, 3)
    labels = x.clone()
    labels[:, :2] = -100
    g = torch.Generator().manual_seed(0)
    state = RelayState(torch.randn(4, 8, 32, generator=g), torch.ones(4, 8, dtype=torch.bool))  # 2b rows: complement
    torch.manual_seed(1)
    with relay.disabled():
        bare = model(x, labels=labels, mask_id=MASK)
    torch.manual_seed(1)
    with relay.session(state) as session:
        out = model(x, labels=labels, mask_id=MASK)
        new = session.state
    assert seen[0].shape == seen[1].shape == (4, 16, 32)
    assert torch.equal(seen[1][:, 8:], seen[0][:, 8:])  # the clean half x_0 is relay-free
    noisy = torch.cat([x, x], 0) != 0  # every noisy position has a state here
    assert not torch.equal(seen[1][:, :8][noisy], seen[0][:, :8][noisy])
    assert new.hidden.shape == (4, 8, 32) and torch.isfinite(out.loss) and out.loss != bare.loss
    out.loss.backward()
    assert relay.channel.proj.weight.grad.abs().sum() > 0


def test_clean_ids_builds_the_training_layout_without_renoising() -> None:
    model = build(torch.float64)
    relay = relaykit.attach(model, mask_token_id=MASK)
    x0 = _prompt(2, 8, 4)
    z = x0.clone()
    z[:, 3::2] = MASK
    with pytest.raises(RuntimeError, match="model.train"):
        relay(z, clean_ids=x0)
    model.train()
    out = relay(z, clean_ids=x0)  # zero-initialised channel: exactly upstream's layout, bare
    with torch.no_grad():
        hidden = model.model(input_ids=torch.cat([z, x0], 1), labels=x0).last_hidden_state
    assert torch.equal(out.logits, model.lm_head(hidden[:, :8])) and out.logits.shape == (2, 8, 64)
    assert out.state.hidden.shape == (2, 8, 32) and torch.equal(out.state.filled, z == MASK)
    randomise_channel(relay)
    second = relay(z, state=out.state, clean_ids=x0)
    second.logits.square().mean().backward()
    assert relay.channel.proj.weight.grad.abs().sum() > 0
    assert relay.adapter.clean_layout(model)
