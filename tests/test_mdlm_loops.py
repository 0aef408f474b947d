"""MDLM's ddpm_cache sampler and BD3-LM's semi-autoregressive sampler, unchanged, inside a relay session.

The samplers are written here in the style of kuleshov-group/mdlm ``diffusion.py:_sample`` and kuleshov-group/bd3lms
``diffusion.py:_semi_ar_sampler`` (SUBS parameterisation, log-linear schedule, sigma = 0 as with the default
``time_conditioning=False``). Their ``p_x0`` reuse goes through ``ddpm_cache_valid`` (the documented way to keep
the shortcut honest with relay). BD3-LM's schedule ends at t = 1/steps (upstream's t = 0 step is never reached
when every token is revealed earlier).
"""

from __future__ import annotations

import pytest
import torch
from backbones import randomise_channel
from hypothesis import given
from hypothesis import strategies as st
from recorder import Recorder, check_committed_frozen, check_locality
from tiny import MASK_ID, TinyMDM

import relaykit
from relaykit import RelayState
from relaykit.adapters import MDLMAdapter, ddpm_cache_valid
from relaykit.testing.twins.bd3lm import tiny_bd3lm
from relaykit.testing.twins.mdlm import tiny_dit, tiny_hf_mdlm

MASK, BOS, BS = 47, 0, 4


def _sample_categorical(probs: torch.Tensor) -> torch.Tensor:
    gumbel = 1e-10 - (torch.rand_like(probs) + 1e-10).log()
    return (probs / gumbel).argmax(dim=-1)


def subs(logits: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    logits = logits.clone()
    logits[:, :, MASK] += -1e6
    logits = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    unmasked = xt != MASK
    logits[unmasked] = -1e6
    logits[unmasked, xt[unmasked]] = 0
    return logits


def mdlm_forward(model, x, **kwargs):
    sigma = torch.zeros(x.shape[0], dtype=torch.float64)  # time_conditioning=False
    out = model(x, sigma, **kwargs) if type(model).__name__ == "DIT" else model(x, sigma, **kwargs).logits
    return subs(out.double(), x)


# ------------------------------------------------------------------------------------------------ MDLM
@torch.no_grad()
def mdlm_sample(model, batch, length, steps=6, eps=1e-5, relay=None):
    x = MASK * torch.ones(batch, length, dtype=torch.int64)
    timesteps = torch.linspace(1, eps, steps + 1)
    dt = (1 - eps) / steps
    p_x0_cache, nfe = None, 0
    for i in range(steps):
        t = timesteps[i]
        if p_x0_cache is None:
            p_x0_cache = mdlm_forward(model, x).exp()
            nfe += 1
        q_xs = p_x0_cache * (t - (t - dt))
        q_xs[:, :, MASK] = t - dt
        copy_flag = (x != MASK).to(x.dtype)
        x_next = copy_flag * x + (1 - copy_flag) * _sample_categorical(q_xs)
        if not ddpm_cache_valid(x, x_next, time_conditioning=False, relay=relay):
            p_x0_cache = None
        x = x_next
    nfe += 1
    return mdlm_forward(model, x).argmax(dim=-1), nfe  # noise removal


MDLMS = {"dit": tiny_dit, "hf": tiny_hf_mdlm}


@pytest.mark.parametrize("build", MDLMS, ids=str)
def test_mdlm_contract1_and_ddpm_cache_recomputes_under_relay(build: str) -> None:
    model = MDLMS[build]()
    torch.manual_seed(0)
    bare, bare_nfe = mdlm_sample(model, 2, 12, steps=24)
    relay = relaykit.attach(model)
    torch.manual_seed(0)
    with relay.session() as session:
        out, nfe = mdlm_sample(model, 2, 12, steps=24, relay=relay)
        assert session.nfe == nfe
    assert torch.equal(out, bare)  # zero-initialised relay: the same samples
    assert nfe == 25 > bare_nfe  # the shortcut is off while relay is active: one forward per step


def test_ddpm_cache_valid_follows_upstream_rule_and_refuses_reuse_under_relay() -> None:
    model = tiny_dit()
    relay = relaykit.attach(model)
    randomise_channel(relay)
    x = torch.full((1, 6), MASK)
    same, changed = x.clone(), x.clone()
    changed[0, 0] = 3
    assert ddpm_cache_valid(x, same)  # upstream's rule without relay
    assert not ddpm_cache_valid(x, same, relay=relay)  # an attached, enabled relay moves h between calls too
    assert not ddpm_cache_valid(x, changed) and not ddpm_cache_valid(x, same, time_conditioning=True)
    with relay.session() as session:
        first = mdlm_forward(model, x)
        assert not ddpm_cache_valid(x, same, relay=relay)
        second = mdlm_forward(model, x)  # same tokens, new h: a different p(x0), so reuse would be stale
        assert session.nfe == 2
    assert not torch.allclose(first, second)
    with relay.session(), relay.disabled():
        assert ddpm_cache_valid(x, same, relay=relay)


def _arange(call) -> torch.Tensor:
    b, q = call.ids.shape
    return torch.arange(q).expand(b, q)


@pytest.mark.parametrize("build", MDLMS, ids=str)
def test_mdlm_contracts_2_3_locality_and_committed_positions_frozen(build: str) -> None:
    model = MDLMS[build]()
    relay = relaykit.attach(model)
    randomise_channel(relay)
    torch.manual_seed(1)
    with relay.session() as session, Recorder(relay, session) as rec:
        mdlm_sample(model, 2, 10, steps=8, relay=relay)
        final = session.state
    assert check_locality(rec.calls, _arange, mask_id=MASK) > 0
    assert check_committed_frozen(rec.calls, _arange, final, mask_id=MASK) > 0


# ------------------------------------------------------------------------------------------------ BD3-LM
def _bd3_update(model, x, t, dt, p_x0, *, kv_cache, relay):
    mask_prob = ((t - dt) / t).clamp(min=0)
    if p_x0 is None:
        if kv_cache:
            p_x0 = mdlm_forward(model, x[:, -BS:], sample_mode=True).exp()
        else:
            p_x0 = mdlm_forward(model, x, sample_mode=True)[:, -BS:].exp()
    q_xs = p_x0 * (1 - mask_prob)
    q_xs[:, :, MASK] = mask_prob
    x_block = _sample_categorical(q_xs)
    copy_flag = (x[:, -BS:] != MASK).to(x.dtype)
    x_block = copy_flag * x[:, -BS:] + (1 - copy_flag) * x_block
    x_new = torch.cat((x[:, :-BS], x_block), dim=-1)
    if kv_cache and MASK not in x_block:  # clean commit pass: store the finished block
        mdlm_forward(model, x_block, sample_mode=True, store_kv=True)
    return (p_x0 if ddpm_cache_valid(x, x_new, relay=relay) else None), x_new


@torch.no_grad()
def bd3_sample(model, n_samples=2, num_steps=4, num_strides=3, *, kv_cache: bool, relay=None):
    if kv_cache:
        model.reset_kv_cache(eval_batch_size=n_samples)
    for stride in range(num_strides):
        block = MASK * torch.ones(n_samples, BS, dtype=torch.int64)
        if stride == 0:
            block[:, 0] = BOS
            x_accum = block
        else:
            x_accum = torch.cat((x_accum, block), dim=1)
        fwd_idx = torch.arange(0, (stride + 1) * BS)
        p_x0_cache = None
        for t in torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)[:-1]:
            if MASK not in x_accum:
                break
            p_x0_cache, x_next = _bd3_update(
                model, x_accum[:, fwd_idx], t, 1 / num_steps, p_x0_cache, kv_cache=kv_cache, relay=relay
            )
            x_accum[:, fwd_idx] = x_next
    return x_accum


def _bd3_positions(call) -> torch.Tensor:
    b, q = call.ids.shape
    return (call.extra + torch.arange(q)).expand(b, q)  # extra: cache_idx with a cache, 0 without


def _bd3_outside_active_block(call) -> torch.Tensor:
    """A cache-free call takes relay in its last (active) block only (a cached call feeds only that block)."""
    outside = torch.ones_like(call.ids, dtype=torch.bool)
    outside[:, -BS:] = False
    return outside


def _bd3_run(relay, model, *, kv_cache: bool, seed: int):
    cache_idx = lambda: model.backbone.blocks[0].cache_idx if model.backbone.blocks[0].kv_cache is not None else 0  # noqa: E731
    torch.manual_seed(seed)
    with relay.session() as session, Recorder(relay, session, snapshot=cache_idx) as rec:
        x = bd3_sample(model, kv_cache=kv_cache, relay=relay)
        final = session.state
    for block in model.backbone.blocks:
        block.kv_cache = None
    return x, final, rec.calls


@pytest.mark.parametrize("kv_cache", [False, True], ids=["cache-free", "kv-cache"])
def test_bd3lm_contracts_1_2_3(kv_cache: bool) -> None:
    model = tiny_bd3lm()
    torch.manual_seed(2)
    bare = bd3_sample(model, kv_cache=kv_cache)
    for block in model.backbone.blocks:
        block.kv_cache = None
    relay = relaykit.attach(model)
    same, _, _ = _bd3_run(relay, model, kv_cache=kv_cache, seed=2)
    assert torch.equal(same, bare) and not bool((bare == MASK).any())  # contract 1
    randomise_channel(relay)
    _, final, calls = _bd3_run(relay, model, kv_cache=kv_cache, seed=3)
    assert check_locality(calls, _bd3_positions, mask_id=MASK, unwritable_of=_bd3_outside_active_block) > 0
    assert check_committed_frozen(calls, _bd3_positions, final, mask_id=MASK) > 0


def test_bd3lm_contract4_commit_pass_caches_the_bare_backbones_qkv() -> None:
    model = tiny_bd3lm(dtype=torch.float64)
    relay = relaykit.attach(model)
    randomise_channel(relay)
    torch.manual_seed(4)
    with relay.session() as session, Recorder(relay, session) as rec:
        bd3_sample(model, kv_cache=True, relay=relay)
    relayed = [block.kv_cache[:, :12].clone() for block in model.backbone.blocks]
    model.reset_kv_cache(2)
    with torch.no_grad():
        for call in rec.calls:
            if call.kwargs.get("store_kv"):
                model(call.ids, torch.zeros(2, dtype=torch.float64), sample_mode=True, store_kv=True)
    for block, cached in zip(model.backbone.blocks, relayed):
        assert torch.equal(block.kv_cache[:, :12], cached)
    assert sum(bool(c.kwargs.get("store_kv")) for c in rec.calls) == 3


def test_bd3lm_contract5_kv_cache_equals_cache_free_sampling() -> None:
    """Same seed, same channel: the cached sampler gives the cache-free sampler's p(x0) at every step, the same
    tokens and the same final state (float64), for any channel and sampling noise hypothesis draws."""
    model = tiny_bd3lm(dtype=torch.float64)
    relay = relaykit.attach(model)

    @given(st.integers(0, 2**16))
    def check(seed: int) -> None:
        randomise_channel(relay, seed=seed)
        free_x, free_state, free_calls = _bd3_run(relay, model, kv_cache=False, seed=seed)
        kv_x, kv_state, kv_calls = _bd3_run(relay, model, kv_cache=True, seed=seed)
        assert torch.equal(free_x, kv_x)
        free_steps = [c.output.logits[:, -BS:] for c in free_calls]
        kv_steps = [c.output.logits for c in kv_calls if not c.kwargs.get("store_kv")]
        assert len(free_steps) == len(kv_steps) > 0
        for a, b in zip(free_steps, kv_steps):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        n = min(free_state.end, kv_state.end)
        torch.testing.assert_close(free_state.hidden[:, :n], kv_state.hidden[:, :n], rtol=0, atol=1e-10)
        assert torch.equal(free_state.filled[:, :n], kv_state.filled[:, :n])

    check()


def test_bd3lm_training_layout_relays_the_noisy_half_only() -> None:
    model = tiny_bd3lm(dtype=torch.float64)
    relay = relaykit.attach(model)
    assert relay.adapter.clean_layout(model) and not relay.adapter.clean_layout(tiny_dit())
    x0 = torch.randint(0, MASK, (2, 16), generator=torch.Generator().manual_seed(5))
    z = x0.clone()
    z[:, 1::3] = MASK
    out = relay(z, clean_ids=x0)  # zero-initialised: upstream's [x_t ; x_0] forward, bare
    with torch.no_grad():
        bare = model(torch.cat([z, x0], 1), torch.zeros(2, dtype=torch.float64)).logits
    assert torch.equal(out.logits, bare) and out.state.hidden.shape == (2, 16, 32)
    assert torch.equal(out.state.filled, z == MASK)
    randomise_channel(relay)
    g = torch.Generator().manual_seed(6)
    state = RelayState(torch.randn(2, 16, 32, generator=g, dtype=torch.float64), torch.ones(2, 16, dtype=torch.bool))
    seen = []
    model.backbone.vocab_embed.register_forward_hook(lambda m, a, o: seen.append(o.detach()))
    second = relay(z, state=state, clean_ids=x0)
    with relay.disabled():
        relay(z, clean_ids=x0)
    assert torch.equal(seen[0][:, 16:], seen[1][:, 16:]) and not torch.equal(seen[0][:, :16], seen[1][:, :16])
    second.logits.square().mean().backward()
    assert relay.channel.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="model_length 16"):
        relay(z[:, :8], clean_ids=x0[:, :8])
    with pytest.raises(TypeError, match="no \\[x_t ; x_0\\] training layout"):
        relaykit.attach(tiny_dit())(z, clean_ids=x0)


def test_contract9_one_adapter_object_serves_two_models_and_keeps_no_state() -> None:
    """Per-attachment facts live in the Binding that bind() returns, not on the adapter (BD3-LM's block layout)."""
    adapter = MDLMAdapter()
    before = dict(vars(adapter))
    bd3, dit = tiny_bd3lm(dtype=torch.float64), tiny_dit(dtype=torch.float64)
    relay_bd3, relay_dit = relaykit.attach(bd3, adapter), relaykit.attach(dit, adapter)
    x0 = torch.randint(0, MASK, (2, 16), generator=torch.Generator().manual_seed(7))
    z = x0.clone()
    z[:, ::2] = MASK
    out_bd3 = relay_bd3(z, clean_ids=x0)  # [x_t ; x_0]: relay on the noisy half only
    out_dit = relay_dit(z)  # the whole sequence
    assert out_bd3.positions.tolist() == out_dit.positions.tolist() == [list(range(16))] * 2
    assert relay_bd3.adapter is relay_dit.adapter is adapter and vars(adapter) == before


def test_bd3lm_module_cache_refuses_update_all() -> None:
    model = tiny_bd3lm()
    relay = relaykit.attach(model, update="all")
    assert relay.adapter.name == "mdlm"
    with torch.no_grad(), relay.session(), pytest.raises(ValueError, match="update='all' writes h"):
        bd3_sample(model, kv_cache=True, relay=relay)
    for block in model.backbone.blocks:
        block.kv_cache = None  # drop the module-held cache, as the sampler's caller does
    with torch.no_grad(), relay.session():
        bd3_sample(model, kv_cache=False, relay=relay)  # cache-free sampling may use update='all'


def test_ddpm_cache_reuse_is_refused_between_explicit_calls() -> None:
    relay = relaykit.attach(TinyMDM(), embedding="encoder.tok_emb", final_hidden="encoder.norm", mask_token_id=MASK_ID)
    x = torch.full((1, 4), MASK_ID)
    relay(x)  # explicit-state sampler: between calls no call or session is open
    assert not ddpm_cache_valid(x, x.clone(), relay=relay)
    with relay.disabled():
        assert ddpm_cache_valid(x, x.clone(), relay=relay)
    relay.detach()
    assert ddpm_cache_valid(x, x.clone(), relay=relay) and not ddpm_cache_valid(x, x + 1, relay=relay)
