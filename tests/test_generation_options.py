"""relaykit.generate's generation options: GenerationConfig, sampling with a torch.Generator, EOS / stop tokens
(a stopped row's later blocks cost it no NFE), suppress_tokens, left padding through attention_mask (each padded
row decodes exactly as alone) and relay.generate; greedy stays the default path."""

from __future__ import annotations

import pytest
import torch
from tiny import TinyMDM, tiny_llama_bidirectional, tiny_qwen2

import relaykit
from relaykit import GenerationConfig, Threshold, TopK
from relaykit.adapters import GenericAdapter
from relaykit.generation import choose_tokens

MASK = 47


def randomise(relay: relaykit.RelayModel, seed: int = 1, std: float = 0.5) -> relaykit.RelayModel:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = relay.channel.proj.weight
        w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * std)
    return relay


@pytest.fixture(scope="module")
def mdm() -> relaykit.RelayModel:
    torch.manual_seed(0)
    relay = relaykit.attach(TinyMDM(max_len=64), embedding="encoder.tok_emb", final_hidden="encoder.norm",
                            mask_token_id=31)  # fmt: skip
    return randomise(relay, std=0.3)


@pytest.fixture(scope="module")
def qwen() -> relaykit.RelayModel:
    relay = relaykit.attach(tiny_qwen2(dtype=torch.float64), adapter=GenericAdapter(token_shift=1), mask_token_id=MASK)
    return randomise(relay)


def prompt(b: int = 3, n: int = 4, vocab: int = 30, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (b, n), generator=torch.Generator().manual_seed(seed))


def test_greedy_default_is_the_plain_path_and_config_or_kwargs_give_the_same(mdm: relaykit.RelayModel) -> None:
    ids = prompt()
    plain = relaykit.generate(mdm, ids, max_new_tokens=8, block_size=4, policy=TopK(2))
    cfg = GenerationConfig(max_new_tokens=8, block_size=4, policy=TopK(2))
    assert choose_tokens(torch.zeros(1, 2, 32), cfg, mask_token_id=31) is None  # no option: commit_step's argmax
    for res in (
        relaykit.generate(mdm, ids, generation_config=cfg),
        mdm.generate(ids, generation_config=cfg),
        relaykit.generate(mdm, ids, max_new_tokens=8, block_size=4, policy=TopK(2), do_sample=False),
        relaykit.generate(
            mdm,
            ids,
            generation_config=GenerationConfig(max_new_tokens=3, block_size=2),
            max_new_tokens=8,
            block_size=4,
            policy=TopK(2),
        ),  # fmt: skip
    ):
        assert torch.equal(res.sequences, plain.sequences) and torch.equal(res.nfe, plain.nfe)


def test_sampling_is_reproducible_with_a_generator_and_varies_without(mdm: relaykit.RelayModel) -> None:
    ids = prompt()
    kw = dict(max_new_tokens=8, block_size=4, do_sample=True, temperature=1.5, top_k=20, top_p=0.95)

    def run(seed: int) -> torch.Tensor:
        return relaykit.generate(mdm, ids, generator=torch.Generator().manual_seed(seed), **kw).sequences

    assert torch.equal(run(0), run(0))
    draws = {tuple(run(seed).flatten().tolist()) for seed in range(4)}
    assert len(draws) > 1
    greedy = relaykit.generate(mdm, ids, max_new_tokens=8, block_size=4).sequences
    assert any(d != tuple(greedy.flatten().tolist()) for d in draws)


def test_sampled_tokens_respect_top_k_top_p_temperature_and_suppression() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 10, generator=g) * 3  # (b, n, V)
    top2 = logits.topk(2, -1).indices
    banned = [int(top2[0, 0, 0]), 9]  # a suppressed token and the mask id
    cfg = GenerationConfig(do_sample=True, top_k=2, suppress_tokens=banned[:1])
    allowed = logits.index_fill(-1, torch.tensor(banned), float("-inf")).topk(2, -1).indices  # (b, n, 2)
    for seed in range(5):
        conf, tok = choose_tokens(logits, cfg, mask_token_id=9, generator=torch.Generator().manual_seed(seed))
        assert bool((tok.unsqueeze(-1) == allowed).any(-1).all())
        assert bool(((conf > 0) & (conf <= 1)).all())
    tiny_p = GenerationConfig(do_sample=True, top_p=1e-6)  # the nucleus is the most probable token alone
    conf, tok = choose_tokens(logits, tiny_p, mask_token_id=99, generator=g)
    assert torch.equal(tok, logits.argmax(-1)) and torch.allclose(conf, torch.ones_like(conf))
    cold = GenerationConfig(do_sample=True, temperature=1e-4)  # near-zero temperature: the argmax
    assert torch.equal(choose_tokens(logits, cold, mask_token_id=99, generator=g)[1], logits.argmax(-1))
    greedy_suppressed = choose_tokens(logits, GenerationConfig(suppress_tokens=[3]), mask_token_id=99)[1]
    assert torch.equal(greedy_suppressed, logits.index_fill(-1, torch.tensor([3]), -1e9).argmax(-1))


def test_suppressed_tokens_never_appear(mdm: relaykit.RelayModel) -> None:
    ids = prompt()
    free = relaykit.generate(mdm, ids, max_new_tokens=8, block_size=4).sequences[:, 4:]
    banned = sorted(set(free.flatten().tolist()))
    res = relaykit.generate(mdm, ids, max_new_tokens=8, block_size=4, suppress_tokens=banned).sequences[:, 4:]
    assert not bool(torch.isin(res, torch.tensor(banned)).any())


@pytest.mark.parametrize("use_cache", [False, "prefix"])
def test_a_row_whose_block_holds_eos_stops_and_later_blocks_cost_it_no_nfe(
    qwen: relaykit.RelayModel, use_cache: bool | str
) -> None:
    eos, pad = 5, 9
    ids = prompt(b=2, n=4, vocab=40)
    kw = dict(max_new_tokens=12, block_size=4, attention="block_causal", use_cache=use_cache, policy=TopK(2))
    base = relaykit.generate(qwen, ids, **kw)
    row0_block0 = base.sequences[0, 4:8]
    stop = int(row0_block0[0])  # row 0 decodes this token in its first block: make it the stop token
    res = relaykit.generate(qwen, ids, eos_token_id=[eos, stop], pad_token_id=pad, **kw)
    assert torch.equal(res.sequences[0, :8], base.sequences[0, :8])  # the block holding EOS is decoded in full
    assert bool((res.sequences[0, 8:] == pad).all())  # later blocks: pad, never decoded
    row1_stops = [i for i in range(3) if bool(torch.isin(base.sequences[1, 4 + 4 * i : 8 + 4 * i],
                                                          torch.tensor([eos, stop])).any())]  # fmt: skip
    blocks1 = (row1_stops[0] + 1) if row1_stops else 3
    assert torch.equal(res.sequences[1, : 4 + 4 * blocks1], base.sequences[1, : 4 + 4 * blocks1])
    assert int(res.steps[0]) == 2  # TopK(2): two steps for its single block, none for the blocks after
    assert int(res.nfe[0]) < int(base.nfe[0])
    if use_cache:  # prefill + 2 steps + the commit pass of its block; no later step or commit pass
        assert int(res.nfe[0]) == 1 + 2 + 1


def test_all_rows_stopped_ends_decoding(mdm: relaykit.RelayModel) -> None:
    ids = prompt()
    base = relaykit.generate(mdm, ids, max_new_tokens=12, block_size=4, policy=TopK(4))
    first = base.sequences[:, 4:8]  # one step commits the whole first block of every row
    stops = sorted(set(first.flatten().tolist()))
    calls = []
    handle = mdm.backbone.register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        res = relaykit.generate(mdm, ids, max_new_tokens=12, block_size=4, policy=TopK(4), eos_token_id=stops)
    finally:
        handle.remove()
    assert len(calls) == 1 and res.nfe.tolist() == [1, 1, 1]
    assert bool((res.sequences[:, 8:] == stops[0]).all())  # filled with the first EOS id (no pad_token_id)


@pytest.mark.parametrize(
    ("build", "kw"),
    [
        (
            lambda: relaykit.attach(tiny_llama_bidirectional(), mask_token_id=MASK),
            dict(policy=TopK(2), attention="bidirectional"),
        ),  # fmt: skip
        (
            lambda: randomise(
                relaykit.attach(
                    tiny_qwen2(dtype=torch.float64), adapter=GenericAdapter(token_shift=1), mask_token_id=MASK
                )
            ),  # fmt: skip
            dict(attention="block_causal", use_cache="prefix", policy=Threshold(0.5)),
        ),
    ],
    ids=["llama-bidirectional", "qwen2-block-causal-cached"],
)
def test_each_row_of_a_left_padded_batch_decodes_exactly_as_alone(build, kw) -> None:  # noqa: ANN001
    relay = build()
    prompts = [prompt(1, n, vocab=40, seed=n)[0] for n in (4, 2, 3)]
    longest = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.zeros(longest - len(p), dtype=torch.long), p]) for p in prompts])
    mask = torch.stack([torch.arange(longest) >= longest - len(p) for p in prompts]).long()
    batched = relaykit.generate(relay, ids, attention_mask=mask, max_new_tokens=8, block_size=4, **kw)
    for row, p in enumerate(prompts):
        alone = relaykit.generate(relay, p[None], max_new_tokens=8, block_size=4, **kw)
        assert torch.equal(batched.sequences[row, longest:], alone.sequences[0, len(p) :]), row
        assert int(batched.steps[row]) == int(alone.steps[0])


def test_bad_options_are_refused(mdm: relaykit.RelayModel) -> None:
    ids = prompt()
    with pytest.raises(ValueError, match="do_sample=True"):
        relaykit.generate(mdm, ids, max_new_tokens=4, temperature=0.7)
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="eos_token_id"):
        GenerationConfig(eos_token_id="</s>")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown generation option"):
        GenerationConfig().updated(num_beams=4)
    with pytest.raises(ValueError, match="max_new_tokens is required"):
        relaykit.generate(mdm, ids)
    with pytest.raises(ValueError, match="LEFT padding"):
        relaykit.generate(mdm, ids, max_new_tokens=4, attention_mask=torch.tensor([[1, 1, 1, 0]] * 3))
    with pytest.raises(ValueError, match="shape of input_ids"):
        relaykit.generate(mdm, ids, max_new_tokens=4, attention_mask=torch.ones(3, 5))
