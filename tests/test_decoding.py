"""relaykit.generate: policies, blocks, caches, infilling, NFE, trajectories, and clear errors on bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny import MASK_ID, TinyMDM, tiny_llama_bidirectional, tiny_qwen2

import relaykit
from relaykit.adapters import GenericAdapter
from relaykit.policies import Threshold, TopK

MASK = 47  # tiny_qwen2's mask id (vocab 48)


def _randomise(relay: relaykit.RelayModel, seed: int = 1, std: float = 0.5) -> relaykit.RelayModel:
    """Give the zero-initialised channel weights, so that relay changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = relay.channel.proj.weight
        w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * std)
    return relay


@pytest.fixture(scope="module")
def qwen() -> relaykit.RelayModel:
    """Qwen2 (float64) as a block-causal MDM with a token shift, like Fast-dLLM v2."""
    relay = relaykit.attach(tiny_qwen2(dtype=torch.float64), adapter=GenericAdapter(token_shift=1), mask_token_id=MASK)
    return _randomise(relay)


@pytest.fixture(scope="module")
def mdm() -> relaykit.RelayModel:
    relay = relaykit.attach(
        TinyMDM(max_len=96), embedding="encoder.tok_emb", final_hidden="encoder.norm", mask_token_id=31
    )
    return _randomise(relay, std=0.3)


def _prompt(b: int = 2, n: int = 5, seed: int = 0) -> torch.Tensor:
    """Prompt ids below 30: valid for every tiny backbone and never a mask id."""
    return torch.randint(0, 30, (b, n), generator=torch.Generator().manual_seed(seed))


def _count_calls(model: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: calls.append(1), with_kwargs=True)
    return calls, handle


# ---------------------------------------------------------------------- caches
@pytest.mark.parametrize("policy", [Threshold(0.3), TopK(2)])
def test_prefix_cache_gives_the_recomputed_tokens(qwen, policy):
    kw = dict(max_new_tokens=12, block_size=4, attention="block_causal", policy=policy)
    plain = relaykit.generate(qwen, _prompt(), **kw)
    cached = relaykit.generate(qwen, _prompt(), use_cache=True, **kw)
    assert torch.equal(plain.sequences, cached.sequences)
    assert torch.equal(plain.steps, cached.steps)
    # the cache adds one prompt prefill and one commit pass per block but the last
    assert torch.equal(cached.nfe, plain.nfe + 1 + 2)
    assert not (cached.sequences == MASK).any()


def test_relay_changes_decoding_and_zero_relay_equals_the_bare_loop():
    model = tiny_qwen2(dtype=torch.float64)
    relay = relaykit.attach(model, adapter=GenericAdapter(token_shift=1), mask_token_id=MASK)
    kw = dict(max_new_tokens=8, block_size=4, attention="block_causal", policy=Threshold(0.3), use_cache=True)
    zero = relaykit.generate(relay, _prompt(), **kw)
    with relay.disabled():
        bare = relaykit.generate(relay, _prompt(), **kw)
    assert torch.equal(zero.sequences, bare.sequences)  # contract 1 through the whole loop
    _randomise(relay, std=2.0)
    assert not torch.equal(relaykit.generate(relay, _prompt(), **kw).sequences, bare.sequences)


@pytest.fixture(scope="module")
def llama() -> relaykit.RelayModel:
    """A bidirectional HF model with a DynamicCache (LLaDA-like): Fast-dLLM v1 prefix and dual caches."""
    relay = relaykit.attach(tiny_llama_bidirectional(), mask_token_id=MASK)
    return _randomise(relay, std=0.3)


@pytest.mark.parametrize("use_cache", [False, "prefix", "dual"])
def test_nfe_counts_every_backbone_pass(llama, use_cache):
    calls, handle = _count_calls(llama.backbone)
    try:
        res = relaykit.generate(
            llama, _prompt(1, 4), max_new_tokens=12, block_size=4, use_cache=use_cache, policy=TopK(2),
            attention="bidirectional",  # transformers 4.x runs this Llama causally unless relaykit passes masks
        )  # fmt: skip
    finally:
        handle.remove()
    assert res.nfe.tolist() == [len(calls)]
    assert res.steps.tolist() == [6]  # 3 blocks x 4 masks / 2 per step


@pytest.mark.parametrize("use_cache", [True, "sub_block"])
def test_nfe_counts_cache_passes(qwen, use_cache):
    calls, handle = _count_calls(qwen.backbone)
    try:
        res = relaykit.generate(
            qwen,
            _prompt(1, 4),
            max_new_tokens=12,
            block_size=4,
            use_cache=use_cache,
            sub_block_size=2,
            attention="block_causal",
            policy=TopK(1),
        )
    finally:
        handle.remove()
    assert res.nfe.tolist() == [len(calls)]
    assert res.nfe.tolist() == [12 + 1 + 2]  # steps, prompt prefill, commit passes (not after the last block)


@pytest.mark.parametrize("use_cache", [False, True])
def test_each_row_decodes_as_if_alone(qwen, use_cache):
    prompts = _prompt(3, 6, seed=4)
    kw = dict(max_new_tokens=8, block_size=4, attention="block_causal", policy=Threshold(0.5), use_cache=use_cache)
    batch = relaykit.generate(qwen, prompts, **kw)
    for row in range(3):
        alone = relaykit.generate(qwen, prompts[row : row + 1], **kw)
        assert torch.equal(alone.sequences[0], batch.sequences[row])
        assert alone.nfe.item() == batch.nfe[row].item()


def test_sub_block_cache_commits_sub_blocks_left_to_right(qwen):
    res = relaykit.generate(
        qwen,
        _prompt(),
        max_new_tokens=8,
        block_size=8,
        sub_block_size=4,
        use_cache="sub_block",
        attention="block_causal",
        policy=Threshold(0.2),
        return_trajectory=True,
    )
    order = res.order[:, 5:]  # (b, 8)
    assert (order >= 0).all()
    assert (order[:, :4].max(-1).values < order[:, 4:].min(-1).values).all()
    assert not (res.sequences == MASK).any()


def test_bidirectional_caches_refresh_each_block(llama):
    res = {
        m: relaykit.generate(
            llama,
            _prompt(2, 4),
            max_new_tokens=8,
            block_size=4,
            use_cache=m,
            policy=TopK(1),
            return_trajectory=True,
            attention="bidirectional",
        )  # fmt: skip
        for m in (False, "prefix", "dual")
    }
    for r in res.values():
        assert torch.equal(r.steps, torch.full((2,), 8))
        assert torch.equal(r.nfe, r.steps)  # the refresh is each block's first step
        assert not (r.sequences == MASK).any()
    # a block's first step is a full forward, as without a cache: the same first decision
    for m in ("prefix", "dual"):
        first = res[False].trajectory[0]
        assert torch.equal(res[m].trajectory[0], first)
        assert torch.equal(res[m].sequences[first], res[False].sequences[first])


# ---------------------------------------------------------------------- policies and the loop itself
def test_topk_takes_ceil_of_masks_over_k_steps(mdm):
    res = relaykit.generate(mdm, _prompt(2, 4), max_new_tokens=12, block_size=6, policy=TopK(4))
    assert res.steps.tolist() == [4, 4]  # per block of 6: 4 + 2


def test_threshold_one_commits_one_per_step(mdm):
    res = relaykit.generate(mdm, _prompt(1, 3), max_new_tokens=6, policy=Threshold(1.0), return_trajectory=True)
    assert res.steps.tolist() == [6]
    assert [int(t.sum()) for t in res.trajectory] == [1] * 6


class MaskLover(torch.nn.Module):
    """A backbone whose favourite prediction is the mask token: it must not stall the loop."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = TinyMDM(max_len=64)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits = self.inner(input_ids)
        return logits + 100.0 * torch.nn.functional.one_hot(torch.tensor(31), 32)  # (b, n, V)


@pytest.mark.parametrize("policy", [Threshold(0.9), TopK(1)])
def test_a_backbone_predicting_the_mask_cannot_stall(policy):
    relay = relaykit.attach(
        MaskLover(), embedding="inner.encoder.tok_emb", final_hidden="inner.encoder.norm", mask_token_id=31
    )
    res = relaykit.generate(relay, _prompt(2, 4), max_new_tokens=10, block_size=5, policy=policy)
    assert not (res.sequences == 31).any()
    assert (res.steps <= 10).all()


def test_infill_a_canvas_with_maskable_and_callback(mdm):
    g = torch.Generator().manual_seed(3)
    board = torch.randint(0, 9, (2, 81), generator=g)
    blanks = torch.rand(2, 81, generator=g) < 0.6
    board[blanks] = 31
    maskable = torch.ones(2, 81, dtype=torch.bool)
    maskable[:, :9] = False  # keep the first row's blanks blank
    seen: list[tuple[int, torch.Tensor]] = []
    res = relaykit.generate(
        mdm,
        board,
        max_new_tokens=0,
        policy=Threshold(0.85),
        maskable=maskable,
        callback=lambda step, tokens: seen.append((step, tokens)),
        return_trajectory=True,
    )
    out = res.sequences
    assert torch.equal(out[~blanks], board[~blanks])  # givens untouched
    assert torch.equal(out[:, :9], board[:, :9])  # not maskable: left masked
    assert not (out[:, 9:] == 31).any()
    assert [s for s, _ in seen] == list(range(len(res.trajectory)))
    for (_, tokens), committed in zip(seen, res.trajectory):
        assert not (tokens[committed] == 31).any()
    assert torch.equal(res.order >= 0, blanks & maskable)
    assert torch.equal(res.steps, torch.stack([t.any(-1) for t in res.trajectory]).sum(0))


@pytest.mark.parametrize("use_cache", [False, True])
def test_nothing_to_decode_returns_at_once(qwen, use_cache):
    res = relaykit.generate(
        qwen, _prompt(2, 6), max_new_tokens=0, block_size=3, use_cache=use_cache, attention="block_causal"
    )
    assert torch.equal(res.sequences, _prompt(2, 6)) and res.nfe.tolist() == [0, 0]


def test_initial_state_must_cover_the_canvas(mdm):
    state = relaykit.RelayState.zeros(2, 12, 16)
    res = relaykit.generate(mdm, _prompt(2, 4), max_new_tokens=8, state=state)
    assert res.sequences.shape == (2, 12)
    with pytest.raises(ValueError, match=r"covers 2 rows at positions 0\.\.9, but the canvas has 2 rows of length 12"):
        relaykit.generate(mdm, _prompt(2, 4), max_new_tokens=8, state=relaykit.RelayState.zeros(2, 10, 16))
    with pytest.raises(ValueError, match=r"covers 3 rows at positions 0\.\.11, but the canvas has 2 rows of length 12"):
        relaykit.generate(mdm, _prompt(2, 4), max_new_tokens=8, state=relaykit.RelayState.zeros(3, 12, 16))


# ---------------------------------------------------------------------- reusing a cache
def test_prompt_cache_reuse_skips_the_cached_prefill(qwen):
    kw = dict(block_size=4, attention="block_causal", policy=Threshold(0.3), use_cache=True)
    first = relaykit.generate(qwen, _prompt(), max_new_tokens=8, return_cache=True, **kw)
    assert first.cache is not None and first.cache.length == 13
    follow = torch.cat([first.sequences, _prompt(2, 3, seed=9)], 1)  # the next turn: 3 new prompt tokens
    lengths: list[int] = []
    handle = qwen.backbone.register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1]))
    try:
        again = relaykit.generate(qwen, follow, max_new_tokens=4, cache=first.cache, **kw)
    finally:
        handle.remove()
    assert lengths[0] == 3  # only the new prompt tokens are prefilled
    assert torch.equal(again.sequences[:, :16], follow)
    assert again.nfe.tolist() == (again.steps + 1).tolist()


def test_reused_cache_from_another_batch_or_stale_is_refused(qwen):
    kw = dict(block_size=4, attention="block_causal", policy=Threshold(0.3), use_cache=True)
    first = relaykit.generate(qwen, _prompt(), max_new_tokens=4, return_cache=True, **kw)
    with pytest.raises(ValueError, match="holds 2 rows but input_ids has 3: it comes from another batch"):
        relaykit.generate(qwen, _prompt(3, 9), max_new_tokens=4, cache=first.cache, **kw)
    changed = first.sequences.clone()
    changed[1, 2] = (changed[1, 2] + 1) % 30
    with pytest.raises(ValueError, match=r"stale cache: .* differ from input_ids at positions \[2\]"):
        relaykit.generate(qwen, changed, max_new_tokens=4, cache=first.cache, **kw)
    with pytest.raises(ValueError, match="holds 9 positions but only 5 prompt positions"):
        relaykit.generate(qwen, first.sequences[:, :5], max_new_tokens=4, cache=first.cache, **kw)


def test_a_cache_from_another_batch_is_refused_by_the_hook(qwen):
    with torch.no_grad():
        cache = qwen.backbone(_prompt(3, 4), use_cache=True).past_key_values
        with pytest.raises(ValueError, match="cache passed to this call holds 3 rows but the input has 2"):
            qwen(_prompt(2, 2), past_key_values=cache, use_cache=True)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(max_new_tokens=300), "canvas of 305 positions, longer than the backbone's 256 positions"),
        (dict(max_new_tokens=10, block_size=4), "block_size 4 does not divide the canvas of 10 positions"),
        (dict(max_new_tokens=8, use_cache=True), "pass block_size=... as well"),
        (dict(max_new_tokens=8, block_size=4, use_cache="fast"), "use_cache must be False, True, 'prefix'"),
        (dict(max_new_tokens=8, block_size=4, use_cache="sub_block", attention="block_causal"), "sub_block_size"),
        (dict(max_new_tokens=8, block_size=4, sub_block_size=3), "sub_block_size must be a positive int dividing"),
        (dict(max_new_tokens=8, block_size=4, use_cache="dual", attention="block_causal"), "bidirectional"),
        (dict(max_new_tokens=8, block_size=4, attention="causal"), "attention must be one of"),
        (dict(max_new_tokens=8, block_size=4, return_cache=True), "return_cache=True needs an exact block cache"),
        (dict(max_new_tokens=-1), "max_new_tokens must be an int >= 0"),
        (dict(max_new_tokens=8, policy="greedy"), "policy must be a relaykit.policies.Policy"),
        (dict(max_new_tokens=8, maskable=torch.ones(2, 7, dtype=torch.bool)), r"maskable has shape \(2, 7\)"),
        (dict(max_new_tokens=8, block_size=4, use_cache=True, attention=None), "attends causally"),
    ],
)
def test_bad_arguments_name_the_mismatch(qwen, kwargs, message):
    kwargs = {"attention": "bidirectional", **kwargs}  # Qwen2 attends causally: generate asks for attention=
    with pytest.raises((ValueError, TypeError), match=message):
        relaykit.generate(qwen, _prompt(), **kwargs)


def test_masks_in_the_prompt_need_infill_mode(qwen):
    prompt = _prompt()
    prompt[0, 3] = MASK
    with pytest.raises(ValueError, match=r"mask tokens at prompt positions \[3\] and max_new_tokens=4"):
        relaykit.generate(qwen, prompt, max_new_tokens=4)


def test_token_shift_cannot_predict_position_zero(qwen):
    canvas = _prompt()
    canvas[:, 0] = MASK
    with pytest.raises(ValueError, match="position 0 is masked but the backbone has a token shift of 1"):
        relaykit.generate(qwen, canvas, max_new_tokens=0, attention="bidirectional")


def test_an_adapter_whose_positions_disagree_is_caught(mdm):
    class Off(GenericAdapter):
        def plan_call(self, binding, ids, args, kwargs, *, mask_token_id):
            plan = super().plan_call(binding, ids, args, kwargs, mask_token_id=mask_token_id)
            return dataclasses.replace(plan, positions=plan.positions + 1, span=None)  # span None: read the tensor

    relay = relaykit.attach(TinyMDM(max_len=64), adapter=Off("encoder.tok_emb", "encoder.norm"), mask_token_id=31)
    with pytest.raises(RuntimeError, match=r"reports positions 1\.\.12 for a call that feeds positions 0\.\.11"):
        relaykit.generate(relay, _prompt(1, 4), max_new_tokens=8)


def test_a_plan_whose_span_disagrees_with_its_positions_is_caught_in_debug_mode(mdm, monkeypatch):
    """CallPlan.span saves the hooks a host sync; RelayCore.debug_checks (on in this suite) verifies it."""

    class Off(GenericAdapter):
        def plan_call(self, binding, ids, args, kwargs, *, mask_token_id):
            plan = super().plan_call(binding, ids, args, kwargs, mask_token_id=mask_token_id)
            return dataclasses.replace(plan, positions=plan.positions + 1)  # the span still says 0..11

    relay = relaykit.attach(TinyMDM(max_len=64), adapter=Off("encoder.tok_emb", "encoder.norm"), mask_token_id=31)
    monkeypatch.setattr(type(relay), "debug_checks", True)
    with pytest.raises(
        RuntimeError, match=r"planned positions 0\.\.11 \(CallPlan.span\) but its positions tensor holds 1\.\.12"
    ):
        relay(torch.full((1, 12), 31))


def test_a_backbone_without_cache_arguments_is_refused(mdm):
    with pytest.raises(TypeError, match="TinyMDM.forward takes no KV cache"):
        relaykit.generate(mdm, _prompt(1, 4), max_new_tokens=8, block_size=4, use_cache="prefix")


def test_an_adapter_without_a_cache_mode_is_refused(mdm):
    class NoDual(GenericAdapter):
        decode_modes = ("prefix",)

    relay = relaykit.attach(TinyMDM(max_len=64), adapter=NoDual("encoder.tok_emb", "encoder.norm"), mask_token_id=31)
    with pytest.raises(ValueError, match=r"does not support use_cache='dual'; it supports \['prefix'\]"):
        relaykit.generate(relay, _prompt(1, 4), max_new_tokens=8, block_size=4, use_cache="dual")


def test_prompt_cache_without_tail_is_refused_under_token_shift() -> None:
    import dataclasses

    from tiny import tiny_qwen2

    from relaykit.adapters import GenericAdapter
    from relaykit.policies import TopK

    relay = relaykit.attach(tiny_qwen2(), GenericAdapter(token_shift=1))
    kw = dict(block_size=4, attention="block_causal", policy=TopK(1), use_cache=True)
    prompt = torch.randint(0, 40, (1, 4), generator=torch.Generator().manual_seed(0))
    first = relaykit.generate(relay, prompt, max_new_tokens=4, return_cache=True, **kw)
    assert first.cache is not None and first.cache.tail is not None
    tailless = dataclasses.replace(first.cache, tail=None)
    with pytest.raises(ValueError, match="PromptCache needs its tail"):
        relaykit.generate(relay, first.sequences, max_new_tokens=4, cache=tailless, **kw)


def test_generate_takes_wrappers_and_callable_policies_like_bptt_rollout() -> None:
    class Wrapper(torch.nn.Module):  # the shape of DDP / FSDP wrappers: the model under .module
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    relay = relaykit.attach(TinyMDM(), embedding="encoder.tok_emb", final_hidden="encoder.norm", mask_token_id=MASK_ID)

    def first_candidate(confidence: torch.Tensor, candidates: torch.Tensor, generator: object = None) -> torch.Tensor:
        return candidates & (candidates.cumsum(-1) == 1)  # leftmost masked position

    prompt = torch.randint(0, 30, (2, 3))
    res = relaykit.generate(Wrapper(relay), prompt, max_new_tokens=4, policy=first_candidate, return_trajectory=True)
    assert res.steps.tolist() == [4, 4] and res.order[0, 3:].tolist() == [0, 1, 2, 3]
    with pytest.raises(TypeError, match="policy must be a relaykit.policies.Policy"):
        relaykit.generate(relay, prompt, max_new_tokens=4, policy=0.9)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"generate\(\) expects a RelayModel"):
        relaykit.generate(TinyMDM(), prompt, max_new_tokens=4)  # type: ignore[arg-type]
